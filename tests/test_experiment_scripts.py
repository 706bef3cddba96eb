"""The scripts in `experiments/` run as a user runs them: `python experiments/<name>.py`, from
any directory, importing the installed package; none of them edits `sys.path`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "experiments").glob("*.py"))
BENCHMARKS = sorted(p for p in (ROOT / "experiments" / "benchmarks").glob("*.py")
                    if "__main__" in p.read_text())  # common.py, scale_*.py are imported only


@pytest.fixture(scope="module")
def script_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a shell after `make setup` (the package installed in editable mode).
    In a checkout where the installed copy is elsewhere or missing, PYTHONPATH stands in for the
    installation; the scripts themselves get no help either way."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    probe = subprocess.run(
        [sys.executable, "-c", "import reccocktail, sys; sys.stdout.write(reccocktail.__file__)"],
        cwd=tmp_path_factory.mktemp("probe"), capture_output=True, text=True, env=env)
    if probe.returncode != 0 or not Path(probe.stdout).resolve().is_relative_to(ROOT):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _help(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, *cmd, "--help"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
    return proc.stdout


def test_no_script_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for p in [*SCRIPTS, *(ROOT / "experiments").rglob("*.py")]
                 if re.search(r"sys\.path\.(insert|append)", p.read_text())]
    assert not offenders, f"import the installed package instead: {sorted(set(offenders))}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_experiment_help_runs_from_another_directory(script: Path, tmp_path: Path, script_env):
    _help([str(script)], tmp_path, script_env)
    assert not any(tmp_path.iterdir())  # --help writes nothing


def test_report_command_help(tmp_path: Path, script_env):
    assert "folders" in _help(["-m", "reccocktail.report"], tmp_path, script_env)


@pytest.mark.slow  # each imports torch at the top (~25 s together)
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_help_runs_from_another_directory(script: Path, tmp_path: Path, script_env):
    """The benchmarks import their sibling `common.py` as scripts do (the script's folder is
    first on sys.path), so they run from any directory."""
    _help([str(script)], tmp_path, script_env)
