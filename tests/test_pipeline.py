"""The whole pipeline through `run(cfg)` and `run.py`: end to end on a tiny Llama and a slice of
real ML-100k, continuing after a failure without retraining, the base spirit shared by two
domains, and a two-job Hydra multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

import reccocktail.models.stage as model_stage
from reccocktail.pipeline import optimized_value, run

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["zero_shot", "general", "specific", "wa", "cocktail"]


def make_cfg(shared_data: Path, out: Path, cache: Path, *overrides: str):
    backbone_cache = os.environ["RECCOCKTAIL_CACHE"]  # the converted tokenizer, shared
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("run", overrides=[
            "debug=fast", "logger=none", f"paths.data_root={shared_data}",
            f"paths.output_dir={out}", f"paths.cache_dir={cache}",
            f"backbone.cache_dir={backbone_cache}", f"backbone.tokenizer.cache_dir={backbone_cache}",
            *overrides])


def _spy_into(calls: list[str]):
    """train_adapter, recording which stage actually trained."""
    real = model_stage.train_adapter

    def spy(cfg, out_dir, stage, *args, **kwargs):
        calls.append(stage)
        return real(cfg, out_dir, stage, *args, **kwargs)

    return spy


@pytest.fixture
def trained(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(model_stage, "train_adapter", _spy_into(calls))
    return calls


def test_pipeline_end_to_end_and_continues_after_a_failure(shared_data, tmp_path, trained,
                                                           monkeypatch):
    out, cache = tmp_path / "run", tmp_path / "cache"
    cfg = make_cfg(shared_data, out, cache, "baseline=pop")

    # First attempt dies in `specific`: data and general stay, nothing of specific is left.
    def boom(cfg, out_dir):
        raise RuntimeError("killed during specific")

    with monkeypatch.context() as m:
        m.setattr(model_stage, "run_specific_stage", boom)
        with pytest.raises(RuntimeError, match="killed during specific"):
            run(cfg)
    assert trained == ["general"]
    assert (out / "adapters" / "general" / "adapter_model.safetensors").is_file()
    assert (out / "stages" / "general.json").is_file()
    assert not (out / "stages" / "specific.json").exists()

    # The same command again continues: G is not trained again, everything else runs.
    summaries = run(cfg)
    assert trained == ["general", "specific"]
    assert summaries["data"]["reused_cache"] is True
    assert summaries["general"]["reused"] == "run"
    assert summaries["specific"]["reused"] is False
    assert list(summaries) == ["data", "general", "specific", "mix", "eval", "baselines"]

    results = json.loads((out / "results.json").read_text())["variants"]
    assert set(VARIANTS + ["random", "popularity", "pop"]) <= set(results)
    assert {results[v]["num_users"] for v in VARIANTS} == {12}, "all variants on the same users"
    assert results["pop"]["num_samples"] == results["cocktail"]["num_samples"]
    ids = None
    for v in VARIANTS + ["pop"]:
        rows = [json.loads(x) for x in (out / "predictions" / f"{v}.jsonl").read_text().splitlines()]
        assert len(rows) == results[v]["num_samples"]
        assert all(len(r["candidates"]) == len(r["scores"]) == 30 for r in rows)
        ids = ids or [r["id"] for r in rows]
        assert [r["id"] for r in rows] == ids, f"{v} scored other samples"
    lam = json.loads((out / "mix" / "lambda.json").read_text())
    assert len(lam["curve"]) == 2 and abs(sum(lam["lambdas"]) - 1) < 1e-5
    assert lam["entropy_before"] > 0 and lam["entropy_after"] > 0
    assert "| RecCocktail |" in (out / "results.md").read_text()
    metric_cfg = OmegaConf.merge(cfg, {"optimized_metric": "eval.variants.cocktail.ndcg@1"})
    assert optimized_value(metric_cfg, summaries) == results["cocktail"]["metrics"]["ndcg@1"]

    # A third run trains nothing: the adapters and the mix are all reused.
    again = run(cfg)
    assert trained == ["general", "specific"]
    assert again["specific"]["reused"] == "run" and again["mix"]["reused"] is True

    # The same command in a new run folder (Hydra's default: a new timestamp) takes both
    # adapters from the cache.
    fresh = run(make_cfg(shared_data, tmp_path / "run2", cache, "stages=[data,general,specific]"))
    assert trained == ["general", "specific"]
    assert fresh["general"]["reused"] == fresh["specific"]["reused"] == "cache"


def test_base_spirit_is_shared_by_two_domains(shared_data, tmp_path, trained):
    """ML-100k and a second target (MovieLens latest-small) over the same general pool: the
    second domain's run takes G from the cache instead of training it."""
    cache = tmp_path / "cache"
    first = run(make_cfg(shared_data, tmp_path / "a", cache, "stages=[data,general]"))
    cfg_b = make_cfg(shared_data, tmp_path / "b", cache, "stages=[data,general]")
    with open_dict(cfg_b):
        cfg_b.domain.name = "mlsmall"
        cfg_b.domain.source = OmegaConf.load(ROOT / "conf" / "source" / "ml_latest_small.yaml")
    second = run(cfg_b)
    assert trained == ["general"]
    assert first["general"]["reused"] is False
    assert second["general"]["reused"] == "cache"
    assert second["general"]["key"] == first["general"]["key"]
    a = json.loads((tmp_path / "a" / "data" / "stats.json").read_text())
    b = json.loads((tmp_path / "b" / "data" / "stats.json").read_text())
    assert (a["domain"], b["domain"]) == ("ml100k", "mlsmall")
    assert a["source"] != b["source"], "two different target domains"
    g = "adapters/general/adapter_model.safetensors"
    assert (tmp_path / "b" / g).read_bytes() == (tmp_path / "a" / g).read_bytes()


def test_two_job_multirun_gives_two_runs(shared_data, tmp_path):
    sweep = tmp_path / "sweep"
    cache = os.environ["RECCOCKTAIL_CACHE"]
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "debug=fast", "seed=1,2",
           "stages=[data,eval]", "eval.variants=[zero_shot]", "selection.max_scored_users=6",
           f"paths.data_root={shared_data}", f"paths.cache_dir={tmp_path / 'cache'}",
           f"backbone.cache_dir={cache}", f"backbone.tokenizer.cache_dir={cache}",
           f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "results.json").exists())
    assert [j.name for j in jobs] == ["0_debug_ml100k_warm", "1_debug_ml100k_warm"]
    seeds, ids = [], []
    for job in jobs:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        seeds.append(cfg.seed)
        res = json.loads((job / "results.json").read_text())["variants"]["zero_shot"]
        assert res["num_users"] == 6
        ids.append(sorted(json.loads(x)["id"] for x in
                          (job / "predictions" / "zero_shot.jsonl").read_text().splitlines()))
        assert list((job / "logs").iterdir()), "each job has its own logger run"
    assert seeds == [1, 2]
    assert ids[0] != ids[1], "the seeds draw different samples"


@pytest.mark.slow  # trains G and S on the tiny Llama (minutes on a shared 2-core CPU)
def test_cold_run_with_new_negatives_and_the_cold_validation_grid(shared_data, tmp_path):
    """A small cold run end to end with scenario.cold_negatives=new and mix=grid: the grid
    scores cold validation samples (validation-new targets and negatives) that S never trained
    on, and every scored test list holds test-new items only."""
    out = tmp_path / "run"
    cfg = make_cfg(shared_data, out, tmp_path / "cache", "scenario=cold",
                   "scenario.cold_negatives=new", "mix=grid", "mix.grid=[0.0,0.5,1.0]",
                   "mix.grid_max_users=4", "baseline=pop")
    run(cfg)
    new = json.loads((out / "data" / "new_items.json").read_text())
    lam = json.loads((out / "mix" / "lambda.json").read_text())
    valid = [json.loads(x) for x in (out / "data" / "valid.jsonl").read_text().splitlines()]
    grid_users = set(lam["valid_users"])
    assert len(grid_users) == 4 and grid_users <= {s["user"] for s in valid}
    for s in valid:
        assert s["target"] in new["valid"] and set(s["candidates"]) <= set(new["valid"])
    manifest = json.loads((out / "adapters" / "specific" / "manifest.json").read_text())
    assert manifest["config"]["valid_users_trained"] == []
    rows = json.loads((out / "results.json").read_text())["variants"]
    assert {"cocktail", "specific", "pop"} <= set(rows)
    for name in ("cocktail", "pop"):
        for line in (out / "predictions" / f"{name}.jsonl").read_text().splitlines():
            assert set(json.loads(line)["candidates"]) <= set(new["test"])
