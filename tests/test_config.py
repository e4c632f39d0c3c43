"""The config: every key declared once, renamed keys still accepted, dead keys gone."""

import logging

import pytest
from detectron2.config import get_cfg

from ov2vss.config import add_ov2vss_config, check_renamed_keys, get_ov2vss_cfg


def test_old_window_key_names_still_work_with_a_deprecation_message(tmp_path, caplog):
    yaml = tmp_path / "old.yaml"
    yaml.write_text("INPUT:\n  CLIP:\n    RANDOM_FRAME: False\n")
    with caplog.at_level(logging.WARNING, logger="ov2vss.config"):
        cfg = get_ov2vss_cfg(str(yaml), ["INPUT.CLIP.REFERENCE_OFFSETS", [4, 2]])
    assert list(cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS) == [4, 2]
    assert cfg.INPUT.TEMPORAL.RANDOM_FRAME is False
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert (
        "INPUT.CLIP.REFERENCE_OFFSETS is deprecated: use INPUT.TEMPORAL.REFERENCE_OFFSETS"
        in messages
    )
    assert "INPUT.CLIP.RANDOM_FRAME is deprecated: use INPUT.TEMPORAL.RANDOM_FRAME" in messages
    check_renamed_keys(cfg)  # moved: nothing left under the old names


def test_an_unmoved_old_key_is_refused_not_ignored():
    cfg = get_cfg()
    add_ov2vss_config(cfg)
    cfg.merge_from_list(["INPUT.CLIP.REFERENCE_OFFSETS", [4, 2]])  # bypasses get_ov2vss_cfg
    with pytest.raises(
        ValueError, match="INPUT.CLIP.REFERENCE_OFFSETS is deprecated.*INPUT.TEMPORAL"
    ):
        check_renamed_keys(cfg)


def test_defaults_and_removed_keys():
    cfg = get_ov2vss_cfg()
    assert (
        list(cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS) == [9, 6, 3] and cfg.INPUT.TEMPORAL.RANDOM_FRAME
    )
    assert "DATASET_MAPPER_NAME" not in cfg.INPUT  # declared once, never read: removed
    with pytest.raises(AssertionError, match="Non-existent key: INPUT.DATASET_MAPPER_NAME"):
        get_ov2vss_cfg(opts=["INPUT.DATASET_MAPPER_NAME", "video_sem_seg"])
