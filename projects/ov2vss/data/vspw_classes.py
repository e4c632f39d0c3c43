"""VSPW class names (read from the shipped official ``label_num_dic_final.json``).

The json maps every name to its raw mask value: ``"others": 0`` and the 124 classes
``1..124``. Seen classes are raw ids 1..80, unseen classes 81..124 (paper IV-C).
The file is read on first use only (not at import), through ``importlib.resources`` so that
it also works from an installed wheel.
"""

import functools
import importlib.resources
import json
from typing import IO, List, Union

__all__ = [
    "VSPW_NUM_CLASSES",
    "VSPW_NUM_SEEN",
    "VSPW_BACKGROUND_NAME",
    "parse_label_num_dic",
    "get_vspw_class_names",
    "get_vspw_seen_class_names",
    "get_vspw_unseen_class_names",
    "class_name_to_text",
]

VSPW_NUM_CLASSES = 124
VSPW_NUM_SEEN = 80  # paper IV-C: the first 80 classes (VSPW order) are seen in training
VSPW_BACKGROUND_NAME = "others"  # raw value 0: ignored like 255 ("void")
_LABEL_NUM_DIC = "label_num_dic_final.json"


def parse_label_num_dic(source: Union[str, IO[str]]) -> List[str]:
    """Read a VSPW-style ``{name: raw_id}`` json and return the class names in raw-id order.

    Raw id 0 must be the background ``"others"`` (not a class); the classes must use the
    contiguous raw ids 1..N. Used for the official VSPW file and for the toy dataset's.

    Args:
        source: path of the json file or an open text file.
    Returns:
        names of raw ids 1..N (index i holds raw id i + 1).
    """
    where = source if isinstance(source, str) else getattr(source, "name", "<label json>")
    if isinstance(source, str):
        with open(source, encoding="utf-8") as f:
            table = json.load(f)
    else:
        table = json.load(source)
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{where}: expected a non-empty json object {{name: raw_id}}")
    by_id = {}
    for name, raw in table.items():
        if not isinstance(raw, int) or raw in by_id:
            raise ValueError(f"{where}: raw id of {name!r} is {raw!r} (not an int, or repeated)")
        by_id[raw] = name
    if by_id.get(0) != VSPW_BACKGROUND_NAME:
        raise ValueError(
            f"{where}: raw id 0 must be {VSPW_BACKGROUND_NAME!r}, got {by_id.get(0)!r}"
        )
    num = len(by_id) - 1
    if sorted(by_id) != list(range(num + 1)):
        raise ValueError(f"{where}: raw ids must be contiguous 0..{num}, got {sorted(by_id)}")
    return [by_id[raw] for raw in range(1, num + 1)]


@functools.lru_cache(maxsize=None)
def _vspw_class_names() -> tuple:
    resource = importlib.resources.files("ov2vss.data").joinpath(_LABEL_NUM_DIC)
    with resource.open("r", encoding="utf-8") as f:
        names = parse_label_num_dic(f)
    if len(names) != VSPW_NUM_CLASSES:
        raise ValueError(
            f"ov2vss/data/{_LABEL_NUM_DIC}: expected {VSPW_NUM_CLASSES} classes, got {len(names)}"
        )
    return tuple(names)


def get_vspw_class_names() -> List[str]:
    """The 124 official VSPW class names in raw-id order (raw id = index + 1)."""
    return list(_vspw_class_names())


def get_vspw_seen_class_names() -> List[str]:
    """The 80 seen class names (raw ids 1..80)."""
    return list(_vspw_class_names()[:VSPW_NUM_SEEN])


def get_vspw_unseen_class_names() -> List[str]:
    """The 44 unseen class names (raw ids 81..124)."""
    return list(_vspw_class_names()[VSPW_NUM_SEEN:])


def class_name_to_text(name: str) -> str:
    """Prompt text of a class name: ``"handrail_or_fence"`` -> ``"handrail, fence"``.

    ``_or_`` separates synonyms and becomes ", "; the remaining underscores become spaces.
    Names that are already plain text (toy, Cityscapes) are returned unchanged.
    """
    return name.replace("_or_", ", ").replace("_", " ")
