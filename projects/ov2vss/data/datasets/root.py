"""Where the datasets live: ``$DETECTRON2_DATASETS`` (detectron2's convention), default "datasets"."""

import os


def datasets_root() -> str:
    """The folder holding ``VSPW_480p/``, ``cityscapes/`` and ``VSPW_toy/`` (read at each call,
    so a changed environment variable is seen)."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")
