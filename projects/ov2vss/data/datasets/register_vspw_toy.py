"""Registration of the embedded toy dataset (SPEC section 8), stored in the VSPW layout.

Registered at import (root ``$DETECTRON2_DATASETS/VSPW_toy``, nothing read from disk):
``vspw_toy_train_seen``, ``vspw_toy_val_unseen``, ``vspw_toy_val_seen``, ``vspw_toy_val_all``.
Call :func:`register_toy` with another root (e.g. ``cfg.DATASETS.TOY.ROOT``) to point the
same names elsewhere. Generate the data with ``python -m ov2vss.data.toy --root DIR``.
"""
import os
from typing import List, Optional, Sequence

from ..toy import TOY_CLASS_NAMES, TOY_NUM_SEEN
from .register_vspw import register_vspw_family

__all__ = ["TOY_PREFIX", "default_toy_root", "register_toy"]

TOY_PREFIX = "vspw_toy"


def default_toy_root() -> str:
    """``$DETECTRON2_DATASETS/VSPW_toy`` (DETECTRON2_DATASETS defaults to "datasets")."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "VSPW_toy")


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
        hint=f"generate it with `python -m ov2vss.data.toy --root {root}`; see datasets/README.md",
        overwrite=True,
    )


register_toy()
