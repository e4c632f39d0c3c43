"""The config: every key declared once, unknown keys refused by name, dead keys gone."""

import pytest

from ov2vss.config import get_ov2vss_cfg


def test_an_unknown_key_is_an_error_naming_it(tmp_path):
    """INPUT.CLIP.* (the window keys' old name, now INPUT.TEMPORAL.*) is not a key: a config
    file or an override holding it fails with detectron2's error naming it."""
    yaml = tmp_path / "old.yaml"
    yaml.write_text("INPUT:\n  CLIP:\n    RANDOM_FRAME: False\n")
    with pytest.raises(KeyError, match="Non-existent config key: INPUT.CLIP"):
        get_ov2vss_cfg(str(yaml))
    with pytest.raises(AssertionError, match="Non-existent key: INPUT.CLIP.REFERENCE_OFFSETS"):
        get_ov2vss_cfg(opts=["INPUT.CLIP.REFERENCE_OFFSETS", [4, 2]])


def test_defaults_and_removed_keys():
    cfg = get_ov2vss_cfg()
    assert (
        list(cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS) == [9, 6, 3] and cfg.INPUT.TEMPORAL.RANDOM_FRAME
    )
    assert "DATASET_MAPPER_NAME" not in cfg.INPUT  # declared once, never read: removed
    with pytest.raises(AssertionError, match="Non-existent key: INPUT.DATASET_MAPPER_NAME"):
        get_ov2vss_cfg(opts=["INPUT.DATASET_MAPPER_NAME", "video_sem_seg"])
