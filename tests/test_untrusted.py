"""Files and configs from elsewhere: corrupt or foreign adapters are named and never used (a
corrupt one is repaired from the cache or retrained), late config values fail before the first
stage, a received run folder is reported without resolving anything in its config, a resume
never unpickles code, `trust_remote_code` is announced, a failed multirun job logs its error."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_config
from hydra import compose, initialize_config_dir
from test_tuning import make_cfg as tuning_cfg
from test_tuning import write_domain

from reccocktail.models import adapters as ad
from reccocktail.utils.io import write_json

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
WEIGHTS = "adapter_model.safetensors"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def scramble(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def saved_adapter(path: Path, backbone_cfg, seed: int = 0, **manifest) -> Path:
    """A small PEFT LoRA saved by `save_adapter` (the manifest records its content hashes)."""
    from peft import LoraConfig, get_peft_model

    from reccocktail.models.backbone import load_backbone

    model, _ = load_backbone(backbone_cfg)
    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                            init_lora_weights=False))
    return ad.save_adapter(peft, path, {"kind": "specific", "backbone": "tiny_llama",
                                        "init_seed": seed, "data_hash": "d", "config": {},
                                        "metrics": {}, **manifest})


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("run", overrides=list(overrides))


# -- 1. corrupt adapters ------------------------------------------------------------------------

@pytest.mark.parametrize("damage", [truncate, scramble], ids=["truncated", "random-bytes"])
def test_corrupt_adapter_is_named_on_every_read(tmp_path, tiny_llama_cfg, damage):
    path = saved_adapter(tmp_path / "a", tiny_llama_cfg)
    assert set(ad.read_manifest(path)["files"]) == set(ad.ADAPTER_FILES)
    assert ad.is_intact(path)
    damage(path / WEIGHTS)
    assert not ad.is_intact(path)
    for read in (ad.check_content, ad.read_lora,
                 lambda p: ad.verify_adapter(p, "eval: adapter 'a'"),
                 lambda p: ad.copy_adapter(p, tmp_path / "copy")):
        with pytest.raises(ad.AdapterError, match=rf"{path / WEIGHTS}: content hash .* differs"):
            read(path)
    assert not (tmp_path / "copy").exists()  # a corrupt adapter is never spread
    # a folder whose manifest records no hashes (older, or from elsewhere): still named
    manifest = ad.read_manifest(path)
    manifest.pop("files")
    write_json(path / "manifest.json", manifest)
    with pytest.raises(ad.AdapterError, match=rf"{path / WEIGHTS}: not a readable safetensors"):
        ad.check_content(path)


def test_corrupt_adapter_is_repaired_from_the_cache_or_retrained(tmp_path, tiny_llama_cfg,
                                                                  monkeypatch, caplog):
    """A run holding a corrupt G (same key) takes the cache's intact copy; with the cache
    entry corrupt too, G is trained again and both copies are replaced. Never reused."""
    import reccocktail.models.stage as model_stage

    calls: list[str] = []
    real = model_stage.train_adapter
    monkeypatch.setattr(model_stage, "train_adapter",
                        lambda cfg, out, stage, *a, **kw: calls.append(stage) or
                        real(cfg, out, stage, *a, **kw))
    run = tmp_path / "run"
    write_domain(run / "data")
    cfg = tuning_cfg(run, tiny_llama_cfg, max_steps=1)
    first = model_stage.run_general_stage(cfg, run)
    dest = run / "adapters" / "general"
    cached = ad.adapter_cache_dir(tmp_path / "cache", first["key"], "general")
    good = (dest / WEIGHTS).read_bytes()
    assert first["reused"] is False and (cached / WEIGHTS).read_bytes() == good

    truncate(dest / WEIGHTS)
    with caplog.at_level(logging.WARNING):
        again = model_stage.run_general_stage(cfg, run)
    assert again["reused"] == "cache" and (dest / WEIGHTS).read_bytes() == good
    assert f"{dest / WEIGHTS}: content hash" in caplog.text
    assert calls == ["general"]

    scramble(dest / WEIGHTS)
    scramble(cached / WEIGHTS)
    third = model_stage.run_general_stage(cfg, run)
    assert third["reused"] is False and calls == ["general", "general"]
    assert ad.is_intact(dest) and ad.is_intact(cached)
    assert (cached / WEIGHTS).read_bytes() == (dest / WEIGHTS).read_bytes()


# -- 2. adapters without a manifest, or of another run -----------------------------------------

def test_foreign_adapters_are_refused_naming_the_difference(tmp_path, tiny_llama_cfg):
    run = tmp_path / "run"
    write_json(run / "data" / "manifest.json", {"data_hash": "warm-hash", "general_hash": "g"})
    cfg = run_config({"backbone": dict(tiny_llama_cfg), "domain": {"name": "ml100k"},
                      "paths": {"output_dir": str(run)}}, "scenario=warm", "tuning=default")
    cold = saved_adapter(run / "adapters" / "specific", tiny_llama_cfg, data_hash="cold-hash",
                         run={"domain": "ml100k", "scenario": "cold", "objective": "instruction",
                              "data_hash": "cold-hash"})
    with pytest.raises(ad.AdapterError, match=r"scenario: 'cold' \(adapter\) vs 'warm' \(this "
                                              r"run\).*data_hash: 'cold-hash'.*'warm-hash'"):
        ad.verify_adapter(cold, "mix: adapter 'specific'", cfg, run)
    # G is shared across domains and scenarios: only its pool and objective are compared
    g = saved_adapter(run / "adapters" / "general", tiny_llama_cfg, kind="general",
                      data_hash="g", run={"domain": "beauty", "scenario": "cold"})
    assert ad.verify_adapter(g, "mix: adapter 'general'", cfg, run)["kind"] == "general"
    (cold / "manifest.json").unlink()
    with pytest.raises(ad.AdapterError, match="no adapter manifest.*allow_foreign_adapters"):
        ad.verify_adapter(cold, "eval: adapter 'specific'", cfg, run)
    cfg.allow_foreign_adapters = True  # deliberate reuse: used, and what differs is returned
    assert "no usable manifest" in ad.verify_adapter(cold, "x", cfg, run)["foreign"][0]


# -- 3. config values checked before the first stage --------------------------------------------

@pytest.mark.parametrize("overrides,named", [
    (["+backbone.lora.rr=3"], "backbone.lora.rr: unknown key (did you mean backbone.lora.r?)"),
    (["+trainer.max_step=2"], "trainer.max_step: unknown key"),
    (["mix=fixed", "mix.lambdas=[0.7,0.7]"], "mix.lambdas: expected 2 non-negative weights"),
    (["backbone.lora.dropout=1.5"], "backbone.lora.dropout=1.5: expected a number in [0, 1)"),
    (["+eval.adapters.x-y=/tmp/a", "eval.variants=[zero_shot,a.b]"], "eval.variants: name 'a.b'"),
])
def test_late_config_values_fail_before_the_data_stage(tmp_path, monkeypatch, overrides, named):
    from reccocktail import pipeline

    ran: list[str] = []
    monkeypatch.setattr(pipeline, "_resolve", lambda target: ran.append(target))
    cfg = cfg_of(*overrides, f"paths.output_dir={tmp_path}", "logger=none")
    with pytest.raises(ValueError, match="config: .*" + named.replace("[", r"\[")
                       .replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        pipeline.run(cfg)
    assert ran == []  # no stage started


def test_full_catalogue_composes_with_the_defaults():
    from reccocktail.config_check import config_errors
    from reccocktail.evaluation.full_catalogue import full_settings
    from reccocktail.evaluation.stage import eval_config

    cfg = cfg_of("eval.candidates=all")
    assert config_errors(cfg) == []
    assert full_settings(cfg) == ((1, 5, 10, 20), 20) and eval_config(cfg).beam_size == 20
    assert eval_config(cfg_of()).beam_size == 10  # sampled candidates: max(eval.ks)
    assert "eval.beam_size=10 is smaller" in "; ".join(
        config_errors(cfg_of("eval.candidates=all", "eval.beam_size=10")))


def test_every_rule_names_a_real_key():
    """A range rule for a key no config file sets would check nothing."""
    from reccocktail.config_check import RULES, known_keys, trainer_keys

    known = set().union(*known_keys().values()) | {f"trainer.{k}" for k in trainer_keys()} | \
        {"seed", "allow_foreign_adapters"}
    assert sorted(k for k in RULES if k not in known) == []


# -- 5. a received run folder --------------------------------------------------------------------

def test_received_run_config_is_reported_without_resolving(tmp_path, monkeypatch):
    from reccocktail.data import fetch
    from reccocktail.reporting.cli import build_report
    from reccocktail.reporting.runs import load_run

    calls: list[tuple] = []
    monkeypatch.setattr(fetch, "ml100k_dir", lambda *a: calls.append(a) or "/fetched")
    monkeypatch.setenv("RECCOCKTAIL_TEST_SECRET", "s3cr3t-value")
    run = tmp_path / "received" / "run1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "seed: 3\nrun_name: ${domain.name}_${scenario.name}\n"
        "domain:\n  name: ml100k\n  note: ${oc.env:RECCOCKTAIL_TEST_SECRET}\n"
        "  source:\n    reader:\n      path: ${ml100k_dir:/tmp/evil,/tmp/evil2}\n"
        "scenario:\n  name: warm\ndata:\n  num_candidates: ${oc.env:RECCOCKTAIL_TEST_SECRET}\n"
        "  seed: ${seed}\n")
    (run / "results.json").write_text(json.dumps(
        {"variants": {"cocktail": {"metrics": {"ndcg@1": 0.5}, "num_users": 10}},
         "meta": {"num_candidates": 30}}))
    out = tmp_path / "report"
    keys = ["domain.note", "domain.source.reader.path", "data.seed", "run_name"]
    report = build_report([tmp_path / "received"], out, group_by=keys, plots=False)
    assert report["num_runs"] == 1
    text = "".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert "s3cr3t-value" not in text and calls == [] and not Path("/tmp/evil").exists()
    r = load_run(run / "results.json", keys)
    assert r.setting == {"domain.note": "${oc.env:RECCOCKTAIL_TEST_SECRET}",  # as written
                         "domain.source.reader.path": "${ml100k_dir:/tmp/evil,/tmp/evil2}",
                         "data.seed": 3, "run_name": "ml100k_warm"}  # plain references: filled
    assert r.num_candidates == 30  # an unresolvable value falls back to results.json
    assert calls == []


# -- 6. checkpoints ------------------------------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/reccocktail-pwned",))


def test_resume_loads_weights_only(tmp_path):
    """A checkpoint holding pickled code is refused by the loader `trainer.fit(ckpt_path=...)`
    uses, and torch>=2.6 (where that is torch.load's default) is required."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from reccocktail.utils.leftovers import check_checkpoint, loads_weights_only

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "x": _Payload()}, ckpt)
    check_checkpoint(ckpt)  # a complete archive: the format check passes
    assert loads_weights_only()
    with pytest.raises(Exception, match="(?i)weights"):  # what the Trainer's strategy calls
        TorchCheckpointIO().load_checkpoint(ckpt)
    assert not Path("/tmp/reccocktail-pwned").exists()
    assert '"torch>=2.6"' in (ROOT / "pyproject.toml").read_text()


# -- 7./8. names from config keys, trust_remote_code --------------------------------------------

def test_adapter_names_cannot_leave_the_run_folder(tmp_path):
    from reccocktail.evaluation.stage import eval_config, resolve_variants

    cfg = cfg_of()
    cfg.eval.adapters = {"../x": str(tmp_path)}
    with pytest.raises(ValueError, match=r"eval.adapters: name '\.\./x' is not allowed"):
        resolve_variants(eval_config(cfg), tmp_path / "run")
    from reccocktail.config_check import config_errors

    assert any("'../x' is not allowed" in e for e in config_errors(cfg))


def test_trust_remote_code_is_announced(tiny_llama_cfg, caplog):
    from reccocktail.models.backbone import load_tokenizer

    cfg = tiny_llama_cfg.copy()
    cfg.trust_remote_code = True
    with caplog.at_level(logging.WARNING, logger="reccocktail.models.backbone"):
        load_tokenizer(cfg)
    assert "backbone 'tiny_llama'" in caplog.text and "trust_remote_code=true" in caplog.text


# -- also: the failed job of a multirun ---------------------------------------------------------

def test_failed_multirun_job_logs_its_error_in_its_own_folder(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "mix.mode=abx,abz", "logger=none",
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    logs = {p.parent.name: p.read_text() for p in sweep.glob("*/run.log")}
    assert len(logs) == 2
    for job, text in logs.items():
        mode = "abx" if job.startswith("0_") else "abz"
        assert f"run failed: ValueError: config: mix.mode={mode}: not one of" in text
