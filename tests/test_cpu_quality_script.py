"""experiments/cpu_quality.py: the pipeline command it builds and the table it writes from
finished runs (here hand-written results.json files, so no training is needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from reccocktail.utils.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("cpu_quality", ROOT / "experiments" / "cpu_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_command_runs_the_chosen_dataset_stages_and_omfa_budget():
    mod = _script()
    cmds = []
    mod.run_logged = lambda cmd, name, dry: cmds.append((cmd, dry))
    assert mod.main(["--dataset", "beauty", "--scenarios", "cold", "--stages", "data,baselines",
                     "--baselines", "pop,p5,omfa", "--general-windows", "30",
                     "--specific-windows", "70", "--dry-run", "--", "tuning.batch_size=4"]) == 0
    ((cmd, dry),) = cmds
    assert dry
    assert "+experiment=beauty_cold" in cmd
    assert "stages=[data,baselines]" in cmd and "baseline=[pop,p5,omfa]" in cmd
    assert "baselines.omfa.general_windows=30" in cmd and "baselines.omfa.target_windows=70" in cmd
    assert "tuning.specific.max_samples=70" in cmd
    assert cmd[-1] == "tuning.batch_size=4"  # the user's overrides come last and win


def test_report_lists_the_llm_baselines_beside_the_pop_reference(tmp_path):
    mod = _script()
    row = {"metrics": {"ndcg@1": 0.25, "ndcg@3": 0.4}, "ci": {"ndcg@1": [0.2, 0.3]},
           "train_seconds": 321.0}
    variants = {"pop": {"metrics": {"ndcg@1": 0.22, "ndcg@3": 0.36}, "train_seconds": 0.1},
                "p5": row, "omfa": {**row, "metrics": {"ndcg@1": 0.05, "ndcg@3": 0.1}}}
    write_json(tmp_path / "warm" / "results.json", {"variants": variants})
    args = type("A", (), {"out": str(tmp_path), "scenarios": ["warm"], "dataset": "beauty",
                          "machine": "test"})()
    md = mod.report(args)
    assert "Amazon Beauty" in md
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "0.220" in lines["Popularity"]  # `--stages data,baselines` has no eval-stage row
    assert "0.250 [0.200, 0.300]" in lines["P5 (SmolLM2-135M, full fine-tuning)"]
    assert "0.050" in lines["One-Model-for-All-style (SmolLM2-135M, LoRA)"]
    assert '"p5": 321.0' in md  # each row's training seconds, in the budget line
