"""The repository's layout rules (README "Layout"): entry points reach the package by import,
comments cite only what is in the repository, tests share code through conftest.py only."""

import os
import re
from typing import Iterator, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT_DIRS = ("tools", "tests", "demo", "benchmarks", "datasets")
SOURCE_DIRS = ("projects", "configs", *SCRIPT_DIRS)
# built from pieces, so that this file does not match its own patterns
PATH_EDIT = re.compile(r"sys\.path\.(insert|append)\(|spec_from_" + r"file_location")
OUTSIDE_DOC = re.compile(r"(?-i:\bSP" + r"EC\b)|\biss" + r"ues? #?\d+", re.IGNORECASE)
TEST_IMPORT = re.compile(r"^\s*(from|import)\s+(tests\.)?test_\w+", re.MULTILINE)


def source_files(dirs, suffixes=(".py", ".yaml", ".sh")) -> Iterator[Tuple[str, str]]:
    """(path relative to the repository, text) of every source file below ``dirs``."""
    for top in dirs:
        for root, subdirs, files in os.walk(os.path.join(REPO, top)):
            subdirs[:] = [d for d in subdirs if d not in ("__pycache__", ".venv")]
            for name in sorted(files):
                if name.endswith(suffixes):
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8") as f:
                        yield os.path.relpath(path, REPO), f.read()


def test_the_rules_catch_what_they_are_for():
    assert PATH_EDIT.search("sys.path." + "insert(0, REPO)")
    assert PATH_EDIT.search("importlib.util." + "spec_from_" + "file_location('x', 'x.py')")
    assert OUTSIDE_DOC.search("# as SP" + "EC section 4 says")
    assert OUTSIDE_DOC.search("# see iss" + "ue 12")
    assert not OUTSIDE_DOC.search("# a known issue with PyAV")
    assert not OUTSIDE_DOC.search("spec = importlib.util.find_spec(name)")
    assert TEST_IMPORT.search("from test_mapper import make_cfg")
    assert TEST_IMPORT.search("import tests.test_demo")
    assert not TEST_IMPORT.search("from ov2vss.data import test_augmentations")


def test_no_script_edits_sys_path_or_loads_a_file_by_path():
    offenders = [
        f"{path}:{text[: m.start()].count(chr(10)) + 1}"
        for path, text in source_files(SCRIPT_DIRS + ("train_net.py",))
        for m in PATH_EDIT.finditer(text)
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("top", SOURCE_DIRS)
def test_comments_cite_only_what_the_repository_holds(top):
    offenders = [
        f"{path}:{text[: m.start()].count(chr(10)) + 1}: {m.group(0)}"
        for path, text in source_files((top,))
        for m in OUTSIDE_DOC.finditer(text)
    ]
    assert not offenders, offenders


def test_tests_share_code_through_conftest_only():
    offenders = [path for path, text in source_files(("tests",)) if TEST_IMPORT.search(text)]
    assert not offenders, offenders


def test_train_net_is_a_thin_entry_point():
    with open(os.path.join(REPO, "train_net.py"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) < 80, len(lines)
    assert "from ov2vss.engine import" in "\n".join(lines)
