"""Label spaces of VSPW-layout datasets and where their label maps live.

detectron2's convention (ADE20K's ``annotations_detectron2``, Cityscapes' ``labelTrainIds``)
is that a dataset record's ``sem_seg_file_name`` already holds label ids in the dataset's
label space, so that any stock mapper or evaluator reads correct labels. VSPW ships raw masks
(0 = "others", 1..124 = classes, 255 = "void"); every registered protocol has its own label
space (its ``stuff_classes``), so each raw mask gets one label map per space::

    <root>/annotations_detectron2/<space>/<video>/<frame>.png

with ``<space>`` one of "seen" (ids 0..num_seen-1 = raw 1..num_seen), "unseen" (ids
0..N-num_seen-1 = raw num_seen+1..N) and "all" (ids 0..N-1 = raw 1..N); every other pixel is
255. A protocol's vocabulary decides the ids, so its label space is the protocol itself:
``vspw_train_seen`` and ``vspw_val_seen`` share "seen". Training splits only need the seen
space (``SPLIT_PROTOCOLS``), evaluation splits need all three. :mod:`ov2vss.data.prepare_vspw`
writes the label maps (see datasets/README.md).
"""

import os
from typing import Dict, List, Sequence

__all__ = [
    "LABEL_MAP_DIR",
    "LABEL_SPACES",
    "SPLIT_PROTOCOLS",
    "EVAL_PROTOCOLS",
    "IGNORE_LABEL",
    "protocols_of_split",
    "label_map_root",
    "label_map_path",
    "protocol_lut",
]

IGNORE_LABEL = 255
LABEL_MAP_DIR = "annotations_detectron2"
LABEL_SPACES = ("seen", "unseen", "all")  # each protocol has its own label space
# Training data is only used with the seen vocabulary; evaluation splits get all three protocols.
SPLIT_PROTOCOLS: Dict[str, Sequence[str]] = {"train": ("seen",)}
EVAL_PROTOCOLS = ("unseen", "seen", "all")


def protocols_of_split(split: str) -> Sequence[str]:
    """The protocols registered for ``split``: "seen" for "train", all three otherwise."""
    return SPLIT_PROTOCOLS.get(split, EVAL_PROTOCOLS)


def label_map_root(root: str, space: str) -> str:
    """``<root>/annotations_detectron2/<space>``: the label maps of one space."""
    return os.path.join(root, LABEL_MAP_DIR, space)


def label_map_path(root: str, space: str, video: str, mask_name: str) -> str:
    """Label map of the raw mask ``<root>/data/<video>/mask/<mask_name>`` in ``space``."""
    return os.path.join(label_map_root(root, space), video, os.path.splitext(mask_name)[0] + ".png")


def protocol_lut(num_classes: int, num_seen: int, space: str) -> List[int]:
    """256-entry table raw mask value -> label id of ``space`` (255 = ignored, -1 = not allowed).

    Raw ids 1..num_classes are classes (the first ``num_seen`` seen), 0 ("others") and 255
    ("void") are ignored, every other raw value is not allowed.
    """
    if not 0 < num_classes <= 254:
        raise ValueError(f"a VSPW-layout dataset needs 1..254 classes, got {num_classes}")
    if not 0 <= num_seen <= num_classes:
        raise ValueError(f"num_seen={num_seen} must lie in [0, {num_classes}]")
    if space not in LABEL_SPACES:
        raise ValueError(f"unknown protocol {space!r}; expected one of {LABEL_SPACES}")
    first, last = {
        "seen": (1, num_seen),
        "unseen": (num_seen + 1, num_classes),
        "all": (1, num_classes),
    }[space]
    lut = [-1] * 256
    lut[0] = lut[IGNORE_LABEL] = IGNORE_LABEL
    for raw in range(1, num_classes + 1):
        lut[raw] = raw - first if first <= raw <= last else IGNORE_LABEL
    return lut
