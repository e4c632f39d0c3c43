"""ov2vss.vocabulary: parsing class names, the one duplicate rule, dataset vocabularies."""

import re

import pytest
from detectron2.data import MetadataCatalog

from ov2vss.vocabulary import (
    dataset_vocabulary,
    parse_vocabulary,
    validate_vocabulary,
    vocabulary_key,
)


def test_vocabulary_parsing():
    assert parse_vocabulary(" road ,car,, person ,") == ["road", "car", "person"]
    with pytest.raises(ValueError, match="empty"):
        parse_vocabulary(" , ")
    with pytest.raises(ValueError, match=r"duplicate class names in --vocabulary: \['Car'\]"):
        parse_vocabulary("car, road, Car")
    with pytest.raises(ValueError, match=r"the vocabulary is empty \(--vocabulary\)"):
        parse_vocabulary(None)
    with pytest.raises(ValueError, match="not both"):
        parse_vocabulary("car", "names.txt")


def test_vocabulary_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("# street scene\nroad\nbillboard, Bulletin Board\nsky  # the top\n\n")
    # one class per line: commas stay inside a name, comments and blank lines are dropped
    assert parse_vocabulary(file=str(path)) == ["road", "billboard, Bulletin Board", "sky"]
    path.write_text("road\nRoad  \n")
    with pytest.raises(
        ValueError, match="duplicate class names in vocabulary file " + re.escape(str(path))
    ):
        parse_vocabulary(file=str(path))
    path.write_text("# nothing\n\n")
    with pytest.raises(
        ValueError, match=re.escape(f"the vocabulary is empty (vocabulary file {path})")
    ):
        parse_vocabulary(file=str(path))
    path.write_bytes(b"road\n\xff\xfe car\n")
    with pytest.raises(ValueError, match=re.escape(f"vocabulary file {path} is not UTF-8")):
        parse_vocabulary(file=str(path))
    with pytest.raises(FileNotFoundError, match=r"vocabulary file not found: .*nope\.txt"):
        parse_vocabulary(file=str(tmp_path / "nope.txt"))


def test_duplicates_ignore_case_and_whitespace():
    assert vocabulary_key("  Traffic \t Light ") == "traffic light"
    for names, dupes in [
        (["dog", "cat", "dog"], "['dog']"),
        (["car", "road", "Car"], "['Car']"),
        (["traffic light", "Traffic  light", "sky"], "['Traffic  light']"),
        (["a", "A", "a "], "['A', 'a']"),
    ]:
        with pytest.raises(ValueError, match=r"duplicate class names in the vocabulary: ") as e:
            validate_vocabulary(names)
        assert dupes in str(e.value)
    # names are stripped, order and inner spelling are kept
    assert validate_vocabulary([" road", "Car ", "traffic light"]) == [
        "road",
        "Car",
        "traffic light",
    ]


def test_empty_vocabularies_and_names():
    with pytest.raises(ValueError, match="non-empty"):
        validate_vocabulary([])
    with pytest.raises(ValueError, match=r"non-empty: entries \[1\] of the vocabulary"):
        validate_vocabulary(["car", "  "])
    with pytest.raises(TypeError, match="list of class names, got the string 'car, road'"):
        validate_vocabulary("car, road")
    with pytest.raises(ValueError, match=r"duplicate class names in MY SOURCE"):
        validate_vocabulary(["x", "X"], source="MY SOURCE")


def test_dataset_vocabulary():
    from ov2vss.data.datasets.register_vspw_toy import TOY_CLASS_NAMES

    # in label-id order (the label maps' ids index it): raw id r is label r - 1 under "all",
    # the seen protocol keeps the first 28, the unseen one relabels raw 29..36 as 0..7
    vocab = dataset_vocabulary("vspw_toy_val_all")
    assert vocab == validate_vocabulary(vocab) == TOY_CLASS_NAMES
    assert dataset_vocabulary("vspw_toy_val_seen") == TOY_CLASS_NAMES[:28]
    assert dataset_vocabulary("vspw_toy_val_unseen") == TOY_CLASS_NAMES[28:]
    # a fixed order, not a set: checkpoints and label maps depend on it
    assert TOY_CLASS_NAMES[:2] == ["red triangle", "red star"]
    assert TOY_CLASS_NAMES[28:] == [
        "red circle", "red square", "green square", "green triangle",
        "blue triangle", "blue star", "yellow star", "yellow circle",
    ]  # fmt: skip
    # class_texts come first; stuff_classes when a dataset has no class_texts
    MetadataCatalog.get("vocab_test_stuff_only").set(stuff_classes=["b", "a"])
    try:
        assert dataset_vocabulary("vocab_test_stuff_only") == ["b", "a"]
    finally:
        MetadataCatalog.remove("vocab_test_stuff_only")
    with pytest.raises(ValueError, match="'no_such_dataset' has no class_texts"):
        dataset_vocabulary("no_such_dataset")
