"""The `reccocktail` console script: its pyproject entry resolves, every subcommand answers
--help with examples, `run` is `python run.py`, and `recommend` quotes any title for Hydra."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from conftest import run_config

from reccocktail import cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_console_script_in_pyproject_resolves():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "reccocktail" in scripts
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_help_lists_the_commands_and_examples(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("run", "report", "recommend"):
        assert f"reccocktail {cmd} " in out
    assert cli.main(["run", "--help"]) == 0
    assert "+experiment=" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["recommend", "--help"])
    assert e.value.code == 0 and "--history" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    assert "folders" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2


def test_run_composes_like_run_py(capsys):
    """`reccocktail run --cfg job <overrides>` prints the config python run.py composes."""
    cli.main(["run", "--cfg", "job", "+experiment=ml1m_cold", "seed=7"])
    out = capsys.readouterr().out
    assert "name: qwen2_7b" in out and "seed: 7" in out and "new_item_fraction" in out


TITLES = ["Schindler's List (1993)", 'a "quoted", title = [x]', "Tom &amp; Jerry",
          "costs ${price} or $5", "back\\slash\\", "Heat (1995)"]


def test_recommend_arguments_reach_the_config_unchanged(tmp_path):
    overrides = cli.recommend_overrides([
        "--adapter", str(tmp_path / "it's here"), "--history", *TITLES[:3],
        "--candidates", *TITLES[3:], "--top-k", "2", "--explain", "seed=3"])
    cfg = run_config(None, *overrides)
    assert cfg.task == "recommend" and cfg.seed == 3
    assert list(cfg.recommend.history) == TITLES[:3]
    assert list(cfg.recommend.candidates) == TITLES[3:]
    assert cfg.recommend.adapter == str(tmp_path / "it's here")
    assert cfg.recommend.top_k == 2 and cfg.recommend.explain is True


def test_recommend_needs_candidates_or_a_file():
    with pytest.raises(SystemExit):
        cli.recommend_overrides(["--history", "1", "2"])
    assert "recommend.file='r.jsonl'" in cli.recommend_overrides(["--file", "r.jsonl"])


def test_report_runs_on_a_folder(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path), "--no-plots"]) == 0
    assert (tmp_path / "report.md").exists()
