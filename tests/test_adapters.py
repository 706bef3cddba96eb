"""Adapters on disk: PEFT round trip, manifests, the base-spirit cache across domains."""

from __future__ import annotations

import logging

import pytest
import torch
from test_tuning import make_cfg, make_items, make_samples, write_domain

from reccocktail.data.prompts import PromptBuilder
from reccocktail.models import adapters as ad
from reccocktail.models.datamodule import collate
from reccocktail.utils.io import read_json, write_json, write_jsonl


def _manifest(**kw):
    m = {"kind": "specific", "backbone": "tiny_llama", "init_seed": 3, "data_hash": "abc",
         "config": {"lr": 1.0}, "metrics": {"loss": 0.5}}
    m.update(kw)
    return m


def test_saved_adapter_reloads_with_identical_outputs(tiny_qwen2_cfg, tokenizer, tmp_path):
    from peft import PeftModel

    from reccocktail.models.backbone import load_backbone
    from reccocktail.models.tuning import build_peft_model

    model = build_peft_model(tiny_qwen2_cfg, init_seed=3)
    with torch.no_grad():  # a non-trivial adapter: B is zero at initialisation
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.eval()
    items = make_items()
    builder = PromptBuilder(tokenizer, items)
    batch = collate([builder.example(s.history, s.candidates, s.target)
                     for s in make_samples(items, 2, 4)], tokenizer.pad_token_id)
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    path = ad.save_adapter(model, tmp_path / "adapters" / "specific", _manifest())
    assert ad.is_adapter_dir(path)
    assert read_json(path / "adapter_config.json")["r"] == tiny_qwen2_cfg.lora.r
    assert ad.read_manifest(path)["init_seed"] == 3

    base, _ = load_backbone(tiny_qwen2_cfg)
    reloaded = PeftModel.from_pretrained(base, str(path))
    reloaded.eval()
    with torch.no_grad():
        got = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(got, want)
    base2, _ = load_backbone(tiny_qwen2_cfg)
    with torch.no_grad():
        bare = base2(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(bare, want)  # the adapter does change the outputs
    weights = ad.load_adapter_weights(path)
    assert weights and all("lora_" in k for k in weights)


def test_manifest_is_validated(tmp_path):
    with pytest.raises(ValueError, match="missing key"):
        ad.save_adapter(object(), tmp_path / "x", {"kind": "general"})
    with pytest.raises(ValueError, match="kind"):
        ad.save_adapter(object(), tmp_path / "x", _manifest(kind="other"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(FileNotFoundError, match="manifest"):
        ad.read_manifest(tmp_path / "nothing")
    write_json(tmp_path / "bad" / "manifest.json", {"kind": "general"})
    with pytest.raises(ValueError, match=r"bad/manifest.json: missing key"):
        ad.read_manifest(tmp_path / "bad")


def test_general_data_hash_follows_the_pool_not_the_target(tmp_path):
    a, b = tmp_path / "a" / "data", tmp_path / "b" / "data"
    write_domain(a)
    write_domain(b)
    # another target domain (its own train split) with the same general pool
    items = make_items()
    write_jsonl(b / "train.jsonl", [s.to_json() for s in make_samples(items, 5, 99)])
    assert ad.general_data_hash(a) == ad.general_data_hash(b)
    assert ad.target_data_hash(a) != ad.target_data_hash(b)
    write_domain(tmp_path / "c" / "data", general_seed=5)
    assert ad.general_data_hash(tmp_path / "c" / "data") != ad.general_data_hash(a)
    write_json(a / "manifest.json", {"data_hash": "T", "general_hash": "G"})
    assert ad.general_data_hash(a) == "G" and ad.target_data_hash(a) == "T"
    with pytest.raises(FileNotFoundError, match="data"):
        ad.general_data_hash(tmp_path / "empty")
    assert ad.backbone_identity({"name": "x", "cache_dir": "/a", "tok": {"cache_dir": "/b"}}) == {
        "name": "x", "tok": {}}


def test_base_spirit_is_trained_once_and_reused_by_another_domain(tiny_llama_cfg, tmp_path, caplog):
    from reccocktail.models.stage import run_general_stage, run_specific_stage

    run_a = tmp_path / "run_a"
    write_domain(run_a / "data")
    cfg = make_cfg(run_a, tiny_llama_cfg, max_steps=2)
    out_a = run_general_stage(cfg, run_a)
    assert out_a["reused"] is False and out_a["metrics"]["steps"] == 2
    assert out_a["metrics"]["val_loss"] is not None  # validated on general/valid.jsonl
    g_a = run_a / "adapters" / "general"
    m = ad.read_manifest(g_a)
    assert m["kind"] == "general" and m["init_seed"] == 0 and m["key"] == out_a["key"]
    assert m["data_hash"] == ad.general_data_hash(run_a / "data")
    cached = ad.lookup_cached(tmp_path / "cache", out_a["key"], "general")
    assert cached is not None

    # a second domain's run: same general pool, another target split -> reuses G and says so
    run_b = tmp_path / "run_b"
    write_domain(run_b / "data")
    write_jsonl(run_b / "data" / "train.jsonl",
                [s.to_json() for s in make_samples(make_items(), 6, 42)])
    with caplog.at_level(logging.INFO, logger="reccocktail.models.stage"):
        out_b = run_general_stage(make_cfg(run_b, tiny_llama_cfg, max_steps=2), run_b)
    assert out_b["reused"] == "cache" and out_b["key"] == out_a["key"]
    assert "reusing cached adapter" in caplog.text
    for f in ad.ADAPTER_FILES:
        assert (run_b / "adapters" / "general" / f).read_bytes() == (g_a / f).read_bytes()

    # another tuning config is another base spirit
    run_c = tmp_path / "run_c"
    write_domain(run_c / "data")
    out_c = run_general_stage(make_cfg(run_c, tiny_llama_cfg, max_steps=2, lr=1e-3), run_c)
    assert out_c["reused"] is False and out_c["key"] != out_a["key"]

    # second-round fine-tuning: S starts from G, with G's init seed
    cfg_s = make_cfg(run_b, tiny_llama_cfg, max_steps=1, specific={"init_from": "general"})
    out_s = run_specific_stage(cfg_s, run_b)
    ms = ad.read_manifest(run_b / "adapters" / "specific")
    assert ms["config"]["init_from"]["key"] == out_a["key"] and ms["init_seed"] == m["init_seed"]
    g = ad.load_adapter_weights(g_a)
    s = ad.load_adapter_weights(run_b / "adapters" / "specific")
    assert out_s["metrics"]["steps"] == 1 and g.keys() == s.keys()
    assert all(g[k].shape == s[k].shape for k in g)
    assert any(not torch.equal(g[k], s[k]) for k in g)
