"""Registration of the embedded toy dataset (datasets/README.md, "Toy dataset"), stored in the
VSPW layout.

Registered at import (root ``$DETECTRON2_DATASETS/VSPW_toy``, nothing read from disk):
``vspw_toy_train_seen``, ``vspw_toy_val_unseen``, ``vspw_toy_val_seen``, ``vspw_toy_val_all``.
As for VSPW, records point at the label maps under ``annotations_detectron2/<space>/``, which
the generator writes (through the same code as datasets/prepare_vspw.py).
The class design (compositional "<colour> <shape>" names, held-out combinations) is defined
here, so that registration needs no disk; ``ov2vss.data.toy`` draws the videos from it.
Call :func:`register_toy` with another root (e.g. ``cfg.DATASETS.TOY.ROOT``) to point the
same names elsewhere. Generate the data with ``python -m ov2vss.data.toy --root DIR``.
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

from .register_vspw import register_vspw_family
from .root import datasets_root

__all__ = [
    "TOY_COLORS",
    "TOY_SHAPES",
    "TOY_UNSEEN_PAIRS",
    "TOY_CLASS_NAMES",
    "TOY_NUM_SEEN",
    "TOY_PREFIX",
    "default_toy_root",
    "register_toy",
]

TOY_PREFIX = "vspw_toy"

# Clearly distinct RGB values (pairwise distance > 100); the background is low-saturation grey.
TOY_COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 40),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 35),
    "purple": (150, 45, 210),
    "cyan": (30, 205, 215),
}
TOY_SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
# (colour index, shape index) of the held-out classes: a cycle over colours 0..3 and shapes
# 0..3, so each of those colours and shapes appears exactly twice among the unseen classes.
TOY_UNSEEN_PAIRS: Tuple[Tuple[int, int], ...] = (
    (0, 0),
    (0, 1),
    (1, 1),
    (1, 2),
    (2, 2),
    (2, 3),
    (3, 3),
    (3, 0),
)


def _class_names() -> List[str]:
    colours = list(TOY_COLORS)
    unseen = [f"{colours[c]} {TOY_SHAPES[s]}" for c, s in TOY_UNSEEN_PAIRS]
    seen = [f"{c} {s}" for c in colours for s in TOY_SHAPES if f"{c} {s}" not in unseen]
    return seen + unseen


TOY_CLASS_NAMES: List[str] = _class_names()  # raw id = index + 1; seen first
TOY_NUM_SEEN: int = len(TOY_CLASS_NAMES) - len(TOY_UNSEEN_PAIRS)


def default_toy_root() -> str:
    """``$DETECTRON2_DATASETS/VSPW_toy`` (DETECTRON2_DATASETS defaults to "datasets")."""
    return os.path.join(datasets_root(), "VSPW_toy")


def register_toy(root: Optional[str] = None, splits: Sequence[str] = ("train", "val")) -> List[str]:
    """(Re-)register the toy datasets on ``root`` (default :func:`default_toy_root`).

    Existing registrations of the same names are replaced, so this can be called again with
    another root. Class texts are the class names themselves ("red circle").

    Args:
        root: the toy dataset root; "" or None means the default.
        splits: the splits to register; add "test" when the data was generated with test videos.
    Returns:
        the registered dataset names.
    """
    root = root or default_toy_root()
    return register_vspw_family(
        TOY_PREFIX,
        root,
        TOY_CLASS_NAMES,
        TOY_NUM_SEEN,
        splits=splits,
        class_texts=TOY_CLASS_NAMES,
        overwrite=True,
        generate_command=f"python -m ov2vss.data.toy --root {root}",
    )


register_toy()
