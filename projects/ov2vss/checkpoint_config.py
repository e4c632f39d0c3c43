"""The config stored in checkpoints, compared with the run's: which keys are the architecture.

A trained checkpoint only fits a model that computes what it was trained to compute. Tensor
names and shapes say little of that (attention heads, the decoder stride, the input format or
the pixel statistics change no shape), so strict loading (:mod:`ov2vss.checkpoint`) also
compares the config saved in the checkpoint with the run's on every *architecture* key of
the table below; the other keys are *free*: test-time settings (sizes, ``SEEN_BIAS``,
``CLASS_CHUNK``, the vocabulary), training-only settings (losses, augmentation, which weights
train) and keys nothing reads. docs/GETTING_STARTED.md, "Checkpoints from elsewhere, safe and
strict loading", points here.

Every leaf of ``MODEL.*`` and ``INPUT.*`` in :func:`ov2vss.config.get_ov2vss_cfg` is
classified (a test enumerates them); a key added without a class is treated as architecture.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

__all__ = [
    "ARCHITECTURE",
    "FREE",
    "BACKBONE_SUBTREES",
    "CONFIG_KEY_CLASSES",
    "architecture_differences",
    "config_hint",
    "describe_differences",
    "flatten_config",
    "key_class",
]

ARCHITECTURE = "architecture"  # refused when it differs from the checkpoint's
FREE = "free"  # may differ

# key (a leaf) or subtree (ending in ".") -> class; the longest matching entry decides. The
# project's keys are listed one by one (a new one must be classified: a test fails otherwise);
# subtrees only for detectron2's own keys
CONFIG_KEY_CLASSES: Dict[str, str] = {
    # ------------------------------------------------------------------ detectron2's MODEL
    "MODEL.META_ARCHITECTURE": ARCHITECTURE,
    "MODEL.BACKBONE.NAME": ARCHITECTURE,
    "MODEL.BACKBONE.FREEZE_AT": FREE,  # which stages train; frozen BN = BN at inference
    "MODEL.PIXEL_MEAN": ARCHITECTURE,  # input normalisation
    "MODEL.PIXEL_STD": ARCHITECTURE,
    "MODEL.WEIGHTS": FREE,  # the checkpoint itself
    "MODEL.DEVICE": FREE,
    # read by their backbones only (BACKBONE_SUBTREES): compared when the backbone reads them
    "MODEL.RESNETS.": ARCHITECTURE,  # every key: depth, widths, norm, strides, dilation, ...
    "MODEL.FPN.": ARCHITECTURE,
    "MODEL.CLIP_VIT.OUT_LAYERS": ARCHITECTURE,
    "MODEL.CLIP_VIT.OUT_STRIDES": ARCHITECTURE,
    "MODEL.CLIP_VIT.OUT_CHANNELS": ARCHITECTURE,
    "MODEL.SAM_VIT.EMBED_DIM": ARCHITECTURE,
    "MODEL.SAM_VIT.DEPTH": ARCHITECTURE,
    "MODEL.SAM_VIT.NUM_HEADS": ARCHITECTURE,
    "MODEL.SAM_VIT.WINDOW_SIZE": ARCHITECTURE,
    "MODEL.SAM_VIT.GLOBAL_BLOCKS": ARCHITECTURE,
    "MODEL.SAM_VIT.OUT_BLOCKS": ARCHITECTURE,
    "MODEL.SAM_VIT.OUT_CHANNELS": ARCHITECTURE,
    "MODEL.SAM_VIT.PRETRAIN_IMG_SIZE": ARCHITECTURE,  # the position grid
    "MODEL.SAM_VIT.USE_ACT_CHECKPOINT": FREE,  # recomputation in backward: same numbers
    "MODEL.SAM_VIT.DROP_PATH_RATE": FREE,  # stochastic depth: identity at inference
    # detectron2's detection / panoptic heads: OV2VSS never reads them
    "MODEL.ANCHOR_GENERATOR.": FREE,
    "MODEL.PROPOSAL_GENERATOR.": FREE,
    "MODEL.RPN.": FREE,
    "MODEL.ROI_HEADS.": FREE,
    "MODEL.ROI_BOX_HEAD.": FREE,
    "MODEL.ROI_BOX_CASCADE_HEAD.": FREE,
    "MODEL.ROI_MASK_HEAD.": FREE,
    "MODEL.ROI_KEYPOINT_HEAD.": FREE,
    "MODEL.RETINANET.": FREE,
    "MODEL.SEM_SEG_HEAD.": FREE,
    "MODEL.PANOPTIC_FPN.": FREE,
    "MODEL.KEYPOINT_ON": FREE,
    "MODEL.MASK_ON": FREE,
    "MODEL.LOAD_PROPOSALS": FREE,
    # ------------------------------------------------------------------ CLIP
    "MODEL.CLIP.ARCH": ARCHITECTURE,
    "MODEL.CLIP.PRETRAINED": FREE,  # the checkpoint holds CLIP's tensors
    "MODEL.CLIP.FINETUNE": FREE,  # which CLIP weights train
    "MODEL.CLIP.PROMPT_TEMPLATES": ARCHITECTURE,  # the text embeddings F^T
    "MODEL.CLIP.TEMPLATE_MODE": ARCHITECTURE,
    "MODEL.CLIP.INPUT_SIZE": ARCHITECTURE,  # the grid of the dense features F^V
    "MODEL.CLIP.DENSE_MODE": ARCHITECTURE,
    # ------------------------------------------------------------------ OV2VSS
    "MODEL.OV2VSS.IN_FEATURES": ARCHITECTURE,
    "MODEL.OV2VSS.HIDDEN_DIM": ARCHITECTURE,
    "MODEL.OV2VSS.POOL_SIZES": ARCHITECTURE,
    "MODEL.OV2VSS.POOL_MODE": ARCHITECTURE,
    "MODEL.OV2VSS.POOL_RATIOS": ARCHITECTURE,
    "MODEL.OV2VSS.POOL_RATIO_STRIDE": ARCHITECTURE,
    "MODEL.OV2VSS.NUM_HEADS": ARCHITECTURE,
    "MODEL.OV2VSS.STCF.ENABLED": ARCHITECTURE,
    "MODEL.OV2VSS.STCF.FUSION": ARCHITECTURE,
    "MODEL.OV2VSS.STCF.AGGREGATE": ARCHITECTURE,
    "MODEL.OV2VSS.RFE.ENABLED": ARCHITECTURE,
    "MODEL.OV2VSS.RFE.NUM_REGIONS": ARCHITECTURE,
    "MODEL.OV2VSS.RFE.REGION_HEAD": ARCHITECTURE,
    "MODEL.OV2VSS.VTE.ENABLED": ARCHITECTURE,
    "MODEL.OV2VSS.VTE.USE_FFN": ARCHITECTURE,
    "MODEL.OV2VSS.VTE.CLIP_FRAMES": ARCHITECTURE,
    "MODEL.OV2VSS.HEAD.COST_DIM": ARCHITECTURE,
    "MODEL.OV2VSS.HEAD.POS_DIM": ARCHITECTURE,
    "MODEL.OV2VSS.HEAD.DECODER_DIM": ARCHITECTURE,
    "MODEL.OV2VSS.HEAD.DECODER_STRIDE": ARCHITECTURE,
    "MODEL.OV2VSS.HEAD.TEMPERATURE_INIT": FREE,  # initial value of a learnt parameter
    "MODEL.OV2VSS.MAIN_LOSS_WEIGHT": FREE,  # losses: training only
    "MODEL.OV2VSS.AUX_LOSS_WEIGHT": FREE,  # (whether the aux head exists: its tensors say)
    "MODEL.OV2VSS.IGNORE_VALUE": FREE,
    "MODEL.OV2VSS.CLASS_CHUNK": FREE,  # memory only, same results
    "MODEL.OV2VSS.TEST_VOCABULARY": FREE,
    "MODEL.OV2VSS.SEEN_BIAS": FREE,  # calibration at inference (docs/METRICS.md)
    # ------------------------------------------------------------------ INPUT
    "INPUT.FORMAT": ARCHITECTURE,  # channel order the network was trained on
    "INPUT.TEMPORAL.REFERENCE_OFFSETS": ARCHITECTURE,  # the window STCF fuses (paper IV-B)
    "INPUT.TEMPORAL.RANDOM_FRAME": ARCHITECTURE,  # RFE's input
    "INPUT.TEMPORAL.REVERSE_PROB": FREE,  # training augmentation
    "INPUT.MIN_SIZE_TEST": FREE,  # test size
    "INPUT.MAX_SIZE_TEST": FREE,
    "INPUT.SIZE_DIVISIBILITY": FREE,  # padding of the test frames
    "INPUT.MIN_SIZE_TRAIN": FREE,  # training augmentation from here on
    "INPUT.MAX_SIZE_TRAIN": FREE,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": FREE,
    "INPUT.CROP.": FREE,
    "INPUT.RANDOM_FLIP": FREE,
    "INPUT.COLOR_AUG_SSD": FREE,
    "INPUT.COLOR_AUG_PER_FRAME": FREE,
    "INPUT.MASK_UNSEEN_PIXELS": FREE,
    "INPUT.MASK_FORMAT": FREE,  # instance masks: never read
}

# backbone-specific subtrees -> the MODEL.BACKBONE.NAME values that read them (detectron2's
# ResNet builders; the project's CLIP ViT and SAM ViT); compared only under such a backbone
# (or under a backbone this table does not know, to be safe)
BACKBONE_SUBTREES: Dict[str, Tuple[str, ...]] = {
    "MODEL.RESNETS.": (
        "build_resnet_backbone",
        "build_resnet_fpn_backbone",
        "build_retinanet_resnet_fpn_backbone",
    ),
    "MODEL.FPN.": ("build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone"),
    "MODEL.CLIP_VIT.": ("build_clip_vit_backbone",),
    "MODEL.SAM_VIT.": ("build_sam_vit_backbone",),
}
_KNOWN_BACKBONES = {name for names in BACKBONE_SUBTREES.values() for name in names}


def _entry(key: str) -> Optional[str]:
    """The table entry that decides ``key``: the key itself, else its longest subtree."""
    if key in CONFIG_KEY_CLASSES:
        return key
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i]) + "."
        if prefix in CONFIG_KEY_CLASSES:
            return prefix
    return None


def key_class(key: str) -> Optional[str]:
    """:data:`ARCHITECTURE` or :data:`FREE` for a config key such as
    ``"MODEL.OV2VSS.NUM_HEADS"``; None when the table does not classify it."""
    entry = _entry(key)
    return CONFIG_KEY_CLASSES[entry] if entry is not None else None


def flatten_config(node: Any, prefix: str = "") -> Dict[str, Any]:
    """A nested dict (a loaded config yaml) as ``{"A.B.C": leaf value}``."""
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _is_compared(key: str, backbone: str) -> bool:
    if not key.startswith(("MODEL.", "INPUT.")):
        return False
    cls = key_class(key)
    if cls == FREE:
        return False
    for subtree, readers in BACKBONE_SUBTREES.items():
        if key.startswith(subtree):
            return backbone in readers or backbone not in _KNOWN_BACKBONES
    return True  # architecture, or a key added without a class: compared, to be safe


def _normal(value: Any) -> Any:
    """Lists and tuples compare alike (yaml writes tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value


def architecture_differences(
    saved_yaml: str, config: Any
) -> Tuple[List[Tuple[str, Any, Any]], List[str]]:
    """Compare a checkpoint's saved config (yaml text) with ``config`` on the architecture keys.

    Returns:
        ``[(key, saved value, this value)]`` for every architecture key that differs, and the
        architecture keys of ``config`` the saved config does not have (written before the key
        existed: not compared).

    Raises:
        ValueError: the saved text is not a yaml mapping.
    """
    try:
        loaded = yaml.safe_load(saved_yaml)
    except yaml.YAMLError as e:
        raise ValueError(f"its stored config is not valid yaml: {e}") from e
    if not isinstance(loaded, dict):
        raise ValueError("its stored config is not a yaml mapping")
    saved = flatten_config(loaded)
    current = flatten_config(yaml.safe_load(config.dump()))
    backbone = str(current.get("MODEL.BACKBONE.NAME", ""))
    diffs, absent = [], []
    for key in sorted(current):
        if not _is_compared(key, backbone):
            continue
        if key not in saved:
            absent.append(key)
        elif _normal(saved[key]) != _normal(current[key]):
            diffs.append((key, saved[key], current[key]))
    return diffs, absent


def describe_differences(diffs: Sequence[Tuple[str, Any, Any]]) -> str:
    """``"KEY: saved there, current here; ..."`` for every difference."""
    return "; ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in diffs)


def config_hint(saved_config: Optional[str], path: Optional[str], config: Optional[Any]) -> str:
    """Which config the checkpoint file ``path`` was probably trained with — the one saved in
    it, else the ``config.yaml`` beside it — and its architecture keys that differ from
    ``config`` (for the message of a tensor mismatch)."""
    source = "the config saved in it"
    if not saved_config and path and "://" not in path:
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), "config.yaml")
        if os.path.isfile(beside):
            with open(beside, encoding="utf-8") as f:
                saved_config, source = f.read(), beside
    if not saved_config:
        return (
            "It was trained with another config (no config.yaml beside it to compare): "
            "use the config of the run that wrote it"
        )
    if config is None:
        return f"It was probably trained with {source}"
    try:
        diffs, _ = architecture_differences(saved_config, config)
    except ValueError:
        return f"It was probably trained with {source}"
    if not diffs:
        return f"It was probably trained with {source} (its architecture keys equal this config's)"
    return f"It was probably trained with {source}, which differs in " + describe_differences(diffs)
