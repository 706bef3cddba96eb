"""A stage that restarts never leaves old rows beside new ones: an interrupted evaluation
leaves fewer rows and a stale mark, the report refuses such a run, and a completed rerun lifts
the mark and gives the files of a run that was never interrupted (SIGKILL in a subprocess)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reccocktail.evaluation.results import load_results
from reccocktail.utils.io import write_json


def fake_adapter(folder: Path, kind: str) -> None:
    """An adapter folder the stage's checks accept (complete files, a complete manifest); the
    scorers below never read its weights."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "adapter_config.json", {})
    save_file({"x.lora_A.weight": torch.zeros(1, 1)}, str(folder / "adapter_model.safetensors"))
    write_json(folder / "manifest.json", {"kind": "mixed" if kind == "cocktail" else kind,
                                          "backbone": "tiny_llama", "init_seed": 0,
                                          "data_hash": "x", "config": {}, "metrics": {}})


def _fakes(monkeypatch, killed: set[str]):
    from test_eval_stage import N_CAND, FakeSwitcher

    import reccocktail.evaluation.scorers as scorers
    from reccocktail.evaluation import stage

    class Scorer:
        def __init__(self, variant):
            self.variant = variant

        def score(self, samples):
            if self.variant in killed:
                raise RuntimeError("killed")
            scores = torch.zeros(len(samples), N_CAND)
            for i, s in enumerate(samples):
                if self.variant == "cocktail":
                    scores[i, s.target_index] = 1.0
            return scores

    monkeypatch.setattr(stage, "AdapterSwitcher", FakeSwitcher)
    monkeypatch.setattr(scorers, "build_scorer",
                        lambda name, model, pb, cfg: Scorer(model or "zero_shot"))
    return stage


def test_interrupted_eval_leaves_no_old_rows_and_the_report_refuses_it(tmp_path, tiny_llama_cfg,
                                                                        monkeypatch):
    from test_eval_stage import _write_data, make_cfg

    from reccocktail.pipeline import invalidate
    from reccocktail.reporting.runs import collect_runs, stale_reason

    _write_data(tmp_path / "data")
    for name in ("cocktail", "specific"):
        fake_adapter(tmp_path / "adapters" / name, name)
    cfg = make_cfg(tmp_path, tiny_llama_cfg, variants=["zero_shot", "specific", "cocktail"])
    stage = _fakes(monkeypatch, killed=set())
    stage.run_eval_stage(cfg, tmp_path)
    write_json(tmp_path / "stages" / "eval.json", {"done": True})
    assert "stale" not in load_results(tmp_path)
    assert load_results(tmp_path)["variants"]["cocktail"]["metrics"]["ndcg@1"] == 1.0

    # a new mix starts: the eval summary goes, results.json is marked stale
    invalidate(tmp_path, "mix")
    assert not (tmp_path / "stages" / "eval.json").exists()
    assert "mix" in load_results(tmp_path)["stale"]
    # ... and the evaluation that follows is interrupted at the cocktail
    stage = _fakes(monkeypatch, killed={"cocktail"})
    with pytest.raises(RuntimeError, match="killed"):
        stage.run_eval_stage(cfg, tmp_path)
    data = load_results(tmp_path)
    assert "cocktail" not in data["variants"]  # the old cocktail row is gone, not kept
    assert {"zero_shot", "specific", "popularity"} <= set(data["variants"])
    assert set(data["stale"]) == {"mix", "eval"} and "paired" not in data
    assert (tmp_path / "results.md").read_text().count("**Incomplete:**") == 1
    assert "did not complete" in stale_reason(tmp_path / "results.json")
    assert collect_runs([tmp_path]) == []

    # a completed rerun lifts the mark and the report takes the run again
    stage = _fakes(monkeypatch, killed=set())
    stage.run_eval_stage(cfg, tmp_path)
    write_json(tmp_path / "stages" / "eval.json", {"done": True})
    data = load_results(tmp_path)
    assert "stale" not in data and data["variants"]["cocktail"]["metrics"]["ndcg@1"] == 1.0
    assert stale_reason(tmp_path / "results.json") is None
    assert "Incomplete" not in (tmp_path / "results.md").read_text()


_KILLED_EVAL = '''
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
sys.path.insert(0, str(Path({tests!r}).parent))  # the checkout under test, not an installed copy
import pytest
from conftest import backbone_cfg
from test_stale_results import _fakes
from test_eval_stage import make_cfg

class MP:  # the two setattr calls _fakes makes, without pytest
    def setattr(self, obj, name, value):
        setattr(obj, name, value)

stage = _fakes(MP(), killed=set())
import reccocktail.evaluation.scorers as scorers
inner = scorers.build_scorer
def build(name, model, pb, cfg):
    if model == "cocktail":
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the evaluation
    return inner(name, model, pb, cfg)
scorers.build_scorer = build
out = Path({out!r})
stage.run_eval_stage(make_cfg(out, backbone_cfg("tiny_llama"),
                              variants=["zero_shot", "specific", "cocktail"]), out)
'''


def test_sigkilled_eval_then_rerun_gives_the_files_of_an_uninterrupted_run(
        tmp_path, tiny_llama_cfg, monkeypatch):
    import subprocess
    import sys

    from test_eval_stage import _write_data, make_cfg

    def prepare(out: Path) -> None:
        _write_data(out / "data")
        for name in ("cocktail", "specific"):
            fake_adapter(out / "adapters" / name, name)

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for out in (killed, clean):
        prepare(out)
    cfg = lambda out: make_cfg(out, tiny_llama_cfg, variants=["zero_shot", "specific", "cocktail"])  # noqa: E731
    stage = _fakes(monkeypatch, killed=set())
    stage.run_eval_stage(cfg(killed), killed)  # a finished evaluation ...
    script = tmp_path / "killed_eval.py"
    script.write_text(_KILLED_EVAL.format(tests=str(Path(__file__).parent), out=str(killed)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]  # ... rerun and SIGKILLed mid-way
    data = load_results(killed)
    assert "cocktail" not in data["variants"] and "eval" in data["stale"]
    assert not list(killed.glob("**/.*.tmp"))  # no half-written file
    stage.run_eval_stage(cfg(killed), killed)  # the rerun completes ...
    stage.run_eval_stage(cfg(clean), clean)  # ... like a run that was never interrupted
    a, b = load_results(killed), load_results(clean)
    for d in (a, b):
        for row in d["variants"].values():
            for k in ("recorded_at", "seconds", "users_per_s", "adapter"):  # time, place
                row.pop(k, None)
    assert a == b
    for name in ("zero_shot", "specific", "cocktail", "popularity"):
        assert ((killed / "predictions" / f"{name}.jsonl").read_bytes()
                == (clean / "predictions" / f"{name}.jsonl").read_bytes())
