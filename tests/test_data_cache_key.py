"""The data stage's cache key cannot go stale by omission: every reader argument that names a
file is fingerprinted whatever it is called, and the code hash covers every module the data
stage can import."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_config

import reccocktail.data.readers as readers
from reccocktail.data.stage import code_files, data_key, file_args, input_fingerprints
from reccocktail.utils.imports import imported_files

TARGET = "reccocktail.data.readers.read_pairs"


def read_pairs(ratings, titles_file: str | Path, sep: str = ",", encoding: str = "auto"):
    """A reader as a newcomer might add it: a file argument with no path annotation and one
    with, neither named `path`."""
    raise AssertionError("the cache key does not call the reader")


@pytest.fixture
def pairs_reader(monkeypatch, tmp_path):
    monkeypatch.setattr(readers, "read_pairs", read_pairs, raising=False)
    ratings, titles = tmp_path / "ratings.csv", tmp_path / "titles"
    ratings.write_text("u1,i1,1\n")
    titles.mkdir()
    (titles / "part-0.csv").write_text("i1,Title\n")
    return ratings, titles


def _cfg(ratings: Path, titles: Path):
    cfg = run_config()
    cfg.domain.general = None
    cfg.domain.source = {"name": "pairs", "reader": {"_target_": TARGET, "ratings": str(ratings),
                                                     "titles_file": str(titles), "sep": ","}}
    return cfg


def test_file_arguments_of_any_name_are_fingerprinted(pairs_reader):
    ratings, titles = pairs_reader
    reader = {"_target_": TARGET, "ratings": str(ratings), "titles_file": str(titles), "sep": ","}
    assert file_args(reader, "domain.source") == ["ratings", "titles_file"]
    prints = input_fingerprints({"reader": reader}, "domain.source")
    assert [Path(f["path"]).name for f in prints["ratings"]] == ["ratings.csv"]
    assert [Path(f["path"]).name for f in prints["titles_file"]] == ["part-0.csv"]


def test_a_changed_file_of_a_new_reader_argument_changes_the_key(pairs_reader):
    ratings, titles = pairs_reader
    key, _ = data_key(_cfg(ratings, titles))
    assert data_key(_cfg(ratings, titles))[0] == key  # nothing changed: the same key
    ratings.write_text("u1,i1,1\nu2,i1,1\n")
    changed, _ = data_key(_cfg(ratings, titles))
    assert changed != key
    (titles / "part-0.csv").write_text("i1,Another title\n")
    assert data_key(_cfg(ratings, titles))[0] != changed


def test_a_missing_file_of_an_annotated_argument_fails_naming_it(pairs_reader, tmp_path):
    ratings, _ = pairs_reader
    with pytest.raises(FileNotFoundError, match=r"domain\.source\.reader\.titles_file: .*nowhere"):
        data_key(_cfg(ratings, tmp_path / "nowhere"))


def test_the_code_hash_covers_every_module_the_data_stage_imports(tmp_path):
    """A module the stage imports, even inside a function or one added later, is hashed; one it
    does not import is not (editing prompt code does not rebuild the splits)."""
    names = {f.relative_to(f.parents[1]).as_posix() for f in code_files()}
    assert {"data/stage.py", "data/readers.py", "data/splits.py", "utils/io.py"} <= names
    assert "data/prompts.py" not in names
    pkg = tmp_path / "reccocktail"
    for d in ("data", "utils"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "stage.py").write_text(
        "from . import splits\n\n\ndef build():\n    from reccocktail.utils.new import f\n")
    (pkg / "data" / "splits.py").write_text("")
    (pkg / "data" / "unused.py").write_text("")
    (pkg / "utils" / "new.py").write_text("def f():\n    pass\n")
    files = imported_files("reccocktail.data.stage", pkg)
    assert [f.relative_to(pkg).as_posix() for f in files] == [
        "data/splits.py", "data/stage.py", "utils/new.py"]
