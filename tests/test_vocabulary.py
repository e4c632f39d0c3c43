"""ov2vss.vocabulary: parsing class names, the one duplicate rule, dataset vocabularies."""

import re

import pytest

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

    vocab = dataset_vocabulary("vspw_toy_val_all")
    assert vocab == validate_vocabulary(vocab)
    assert set(vocab) <= set(TOY_CLASS_NAMES) and len(vocab) > 0
    with pytest.raises(ValueError, match="'no_such_dataset' has no class_texts"):
        dataset_vocabulary("no_such_dataset")
