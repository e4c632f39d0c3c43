"""Vocabularies: the class names OV2VSS scores every pixel against (any list, any size).

One rule for every vocabulary, whether it comes from the command line, a file, the config
(``MODEL.OV2VSS.TEST_VOCABULARY``) or a dataset's metadata (:func:`validate_vocabulary`):

* names are stripped of surrounding whitespace and must not be empty;
* the list must not be empty;
* no two names may be equal once case and runs of whitespace are ignored ("Car" and "car ",
  "traffic  light" and "Traffic light" are duplicates): CLIP's tokenizer lower-cases and
  splits on whitespace, so such names would get the same text embedding and one class could
  never win.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional

from detectron2.data import MetadataCatalog

__all__ = ["parse_vocabulary", "validate_vocabulary", "dataset_vocabulary", "vocabulary_key"]


def vocabulary_key(name: str) -> str:
    """The form two class names are compared in: lower case, whitespace runs collapsed (what
    CLIP's tokenizer does to a text before encoding it)."""
    return " ".join(name.lower().split())


def validate_vocabulary(class_texts: Iterable[str], source: Optional[str] = None) -> List[str]:
    """Check a vocabulary against the rule of the module docstring.

    Args:
        class_texts: the class names, in label order.
        source: where the names come from, for the messages ("--vocabulary",
            "vocabulary file names.txt", ...); None: "the vocabulary".

    Returns:
        the names, stripped, in the given order.

    Raises:
        TypeError: ``class_texts`` is one string instead of a list of names.
        ValueError: the list is empty, a name is empty, or names are duplicates; the message
            names ``source`` and the offending names.
    """
    where = source or "the vocabulary"
    if isinstance(class_texts, str):
        raise TypeError(
            f"{where}: expected a list of class names, got the string {class_texts!r} "
            "(split it with ov2vss.vocabulary.parse_vocabulary)"
        )
    given = list(class_texts)
    texts = [str(t).strip() for t in given]
    if not texts:
        origin = f" ({source})" if source else ""
        raise ValueError(f"the vocabulary is empty{origin}: give at least one non-empty class name")
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        raise ValueError(
            f"class names must be non-empty: entries {empty} of {where} are empty, got {given}"
        )
    seen: Dict[str, str] = {}
    dupes = []
    for name in texts:
        key = vocabulary_key(name)
        if key in seen:
            dupes.append(name)
        seen.setdefault(key, name)
    if dupes:
        raise ValueError(
            f"duplicate class names in {where}: {dupes} "
            "(names are compared ignoring case and extra whitespace)"
        )
    return texts


def parse_vocabulary(names: Optional[str] = None, file: Optional[str] = None) -> List[str]:
    """Class names from a comma-separated string or a text file, checked by
    :func:`validate_vocabulary`.

    Args:
        names: comma separated, ``"road, car, person"`` (the demo's ``--vocabulary``), or one
            name per line when it holds several lines (commas then stay inside a name, as in the
            web app's text box); empty entries (``"road,,car,"``) are dropped.
        file: a UTF-8 text file with one class name per line (the demo's
            ``--vocabulary-file``): commas stay inside a name, ``#`` starts a comment, blank
            lines are dropped.

    Raises:
        FileNotFoundError: ``file`` does not exist.
        ValueError: both ``names`` and ``file`` given, or the names break the rule of
            :func:`validate_vocabulary`; the message names ``--vocabulary`` or the file.
    """
    if names is not None and file is not None:
        raise ValueError("give the class names either as a string or as a file, not both")
    if file is not None:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"vocabulary file not found: {file}")
        try:
            with open(file, encoding="utf-8") as f:
                vocab = [line.split("#", 1)[0].strip() for line in f]
        except UnicodeDecodeError as e:
            raise ValueError(f"vocabulary file {file} is not UTF-8 text: {e}") from e
        source = f"vocabulary file {file}"
    else:
        lines = [line for line in (names or "").splitlines() if line.strip()]
        vocab = [n.strip() for n in (lines if len(lines) > 1 else (names or "").split(","))]
        source = "--vocabulary"
    return validate_vocabulary([n for n in vocab if n], source)


def dataset_vocabulary(dataset_name: str) -> List[str]:
    """The class texts (prompt names) of a registered dataset, in label-id order:
    its ``class_texts`` metadata, else its ``stuff_classes``.

    Raises:
        ValueError: the dataset has neither (naming the dataset).
    """
    meta = MetadataCatalog.get(dataset_name)
    texts = meta.get("class_texts", None) or meta.get("stuff_classes", None)
    if not texts:
        raise ValueError(f"dataset {dataset_name!r} has no class_texts/stuff_classes metadata")
    return list(texts)
