"""The Optuna hparams_search config and the SLURM launcher config compose, and a short Optuna
sweep over the real config tree runs with a stand-in task function."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def _search_override(name: str) -> str:
    """`hparams_search=X` when run.yaml lists the group in its defaults, else `+hparams_search=X`."""
    defaults = yaml.safe_load((CONF / "run.yaml").read_text()).get("defaults", [])
    listed = any(isinstance(d, dict) and any("hparams_search" in k for k in d) for d in defaults)
    return f"{'' if listed else '+'}hparams_search={name}"


needs_optuna = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="hydra-optuna-sweeper is not installed (pip install -e .[sweeps])")
needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher is not installed (pip install -e .[sweeps])")


@needs_optuna
def test_optuna_search_composes():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[_search_override("ml100k_optuna")],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert str(sweeper.direction) in ("maximize", "Direction.maximize")
    assert set(sweeper.params) == {"++tuning.specific.lr", "mix.lr", "mix.k"}
    assert cfg.eval.split == "valid"  # never tuned on the test split
    assert cfg.optimized_metric.startswith("eval.variants.cocktail.")
    assert cfg.mix.name == "entropy"


@needs_optuna
def test_optuna_sweep_runs(tmp_path: Path):
    """Three trials with a stand-in task returning a function of the searched values: every
    override applies to the real config tree, and the sweeper records the best parameters."""
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(f"""
        import hydra, math

        @hydra.main(version_base="1.3", config_path={str(CONF)!r}, config_name="run")
        def main(cfg):
            lr = cfg.tuning.specific.lr
            assert 1e-5 <= lr <= 1e-3 and cfg.mix.k in (3, 4, 5)
            return -abs(math.log10(cfg.mix.lr) + 1.3) - abs(math.log10(lr) + 4)

        main()
    """))
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, str(app), "-m", _search_override("ml100k_optuna"),
           "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep_dir}", "logger=none",
           "hydra.job.chdir=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"++tuning.specific.lr", "mix.lr", "mix.k"}
    assert len([p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit()]) == 3


@needs_submitit
def test_slurm_launcher_composes():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=["hydra/launcher=slurm",
                                                    "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu"
    assert launcher.gpus_per_node >= 1 and launcher.tasks_per_node == 1
    assert launcher.max_num_timeout > 0  # requeued jobs resume from their checkpoints
