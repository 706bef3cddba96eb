"""task=recommend on the tiny backbone: rankings agree with an independent likelihood, with and
without a saved LoRA adapter; bad requests fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from reccocktail.data.prompts import build_prompt_builder
from reccocktail.data.samples import write_items
from reccocktail.recommend import ItemResolver, load_model, run_recommend

ROOT = Path(__file__).resolve().parents[1]
ITEMS = {
    "1": "Toy Story (1995)", "2": "GoldenEye (1995)", "3": "Four Rooms (1995)",
    "4": "Get Shorty (1995)", "5": "Copycat (1995)", "6": "Heat (1995)", "7": "Casino (1995)",
}


def make_cfg(**recommend) -> DictConfig:
    overrides = ["task=recommend", "backbone=tiny_llama",
                 "logger=none", "recommend.print=false", "recommend.output=null"]
    overrides += [f"recommend.{k}={v}" for k, v in recommend.items()]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="run", overrides=overrides)
    return cfg


def reference_scores(model, cfg: DictConfig, items: dict[str, str], history: list[str],
                     candidates: list[str], fmt: str) -> torch.Tensor:
    """log p(answer | prompt) from one full forward pass per candidate (no shared cache), in
    the prompt format `fmt` that recommend used."""
    from reccocktail.models.backbone import load_tokenizer

    pb = build_prompt_builder(load_tokenizer(cfg.backbone), items, cfg.domain, cfg.backbone,
                              cfg.data.max_title_tokens, fmt=fmt)
    out = []
    with torch.no_grad():
        for c in candidates:
            p, r = pb.prompt_ids(history, candidates), pb.response_ids(c)
            logits = model(input_ids=torch.tensor([p + r])).logits[0].float()
            logp = torch.log_softmax(logits[len(p) - 1 : -1], dim=-1)
            out.append(logp.gather(-1, torch.tensor(r)[:, None]).sum())
    return torch.stack(out)


@pytest.fixture()
def items_tsv(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "data" / "items.tsv"
    write_items(path, ITEMS)
    return path


@pytest.fixture()
def lora_adapter(tmp_path: Path, items_tsv: Path) -> Path:
    """A random (non-zero) LoRA adapter saved like the pipeline does, in <run>/adapters/cocktail."""
    from peft import get_peft_model

    from reccocktail.models.backbone import load_backbone, lora_config

    cfg = make_cfg()
    model, _ = load_backbone(cfg.backbone)
    peft_model = get_peft_model(model, lora_config(cfg.backbone))
    gen = torch.Generator().manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.5
    out = items_tsv.parent.parent / "adapters" / "cocktail"
    peft_model.save_pretrained(str(out))
    (out / "manifest.json").write_text(json.dumps(manifest()))
    return out


def manifest(**over) -> dict:
    """A complete adapter manifest (every key `read_manifest` requires)."""
    return {"kind": "mixed", "backbone": "tiny_llama", "init_seed": 0, "data_hash": "x",
            "config": {}, "metrics": {}, **over}


def test_resolver_ids_titles_and_free_text():
    r = ItemResolver(ITEMS)
    assert r.resolve("3", "x") == "3"
    assert r.resolve(6, "x") == "6"  # hydra parses bare numbers as ints
    assert r.resolve("  heat  (1995) ", "x") == "6"  # titles match case/space-insensitively
    free = r.resolve("Some Unknown Film", "x")
    assert free.startswith("title:") and r.items[free] == "Some Unknown Film"
    assert r.resolve("some unknown film", "x") == free
    with pytest.raises(ValueError, match="history"):
        r.resolve(" ", "history[0]")


def test_bare_backbone_ranking_matches_reference(items_tsv: Path):
    cfg = make_cfg(items=str(items_tsv), history="[1,'GoldenEye (1995)']",
                   candidates="[3,4,5,6,'Not In Catalog']")
    res = run_recommend(cfg)["requests"][0]
    ranking = res["ranking"]
    assert sorted(r["item"] for r in ranking) == ["3", "4", "5", "6", "title:Not In Catalog"]
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True)
    assert sum(r["share"] for r in ranking) == pytest.approx(1.0)
    assert res["history"] == ["Toy Story (1995)", "GoldenEye (1995)"]
    model, _, fmt = load_model(cfg)
    items = {**ITEMS, "title:Not In Catalog": "Not In Catalog"}
    cands = ["3", "4", "5", "6", "title:Not In Catalog"]
    ref = reference_scores(model, cfg, items, ["1", "2"], cands, fmt)
    got = torch.tensor([next(r["score"] for r in ranking if r["item"] == c) for c in cands])
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-4)


def test_adapter_changes_scores_and_items_come_from_run(lora_adapter: Path):
    cands = "[2,3,4,5,6,7]"
    with_adapter = run_recommend(make_cfg(adapter=str(lora_adapter), history="[1]",
                                          candidates=cands))
    bare = run_recommend(make_cfg(items=str(lora_adapter.parent.parent / "data" / "items.tsv"),
                                  history="[1]", candidates=cands))
    assert with_adapter["items"].endswith("data/items.tsv")  # found beside the adapter
    a = {r["item"]: r["score"] for r in with_adapter["requests"][0]["ranking"]}
    b = {r["item"]: r["score"] for r in bare["requests"][0]["ranking"]}
    assert max(abs(a[k] - b[k]) for k in a) > 1e-3  # the adapter is really applied
    cfg = make_cfg(adapter=str(lora_adapter))
    model, _, fmt = load_model(cfg)
    order = ["2", "3", "4", "5", "6", "7"]
    ref = reference_scores(model, cfg, ITEMS, ["1"], order, fmt)
    torch.testing.assert_close(torch.tensor([a[k] for k in order]), ref, atol=1e-3, rtol=1e-4)


def test_adapter_of_another_backbone_is_refused(lora_adapter: Path):
    (lora_adapter / "manifest.json").write_text(json.dumps(manifest(backbone="qwen2_7b")))
    with pytest.raises(ValueError, match="trained on backbone 'qwen2_7b'"):
        run_recommend(make_cfg(adapter=str(lora_adapter), history="[1]", candidates="[2,3]"))
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        run_recommend(make_cfg(adapter=str(lora_adapter.parent), history="[1]", candidates="[2,3]"))


def test_file_requests_with_explanation(tmp_path: Path, items_tsv: Path):
    req = tmp_path / "requests.jsonl"
    req.write_text(json.dumps({"id": "u1", "history": ["1", "2"], "candidates": ["3", "4"]}) + "\n"
                   + json.dumps({"history": [], "candidates": ["Heat (1995)", "7", "5"]}) + "\n")
    out = tmp_path / "recs.jsonl"
    cfg = make_cfg(items=str(items_tsv), file=str(req), explain="true",
                   explain_max_new_tokens=6)
    cfg.recommend.output = str(out)
    cfg.recommend.print = True  # the rich table path runs too
    res = run_recommend(cfg)["requests"]
    assert [r["id"] for r in res] == ["u1", "2"]
    assert len(res[1]["ranking"]) == 3
    from reccocktail.models.backbone import load_tokenizer

    tok = load_tokenizer(cfg.backbone)
    for r in res:
        assert isinstance(r["explanation"], str)
        assert len(tok(r["explanation"], add_special_tokens=False)["input_ids"]) <= 6 + 2
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["u1", "2"]


def test_bad_requests_fail_clearly(tmp_path: Path, items_tsv: Path):
    with pytest.raises(ValueError, match="listed twice"):
        run_recommend(make_cfg(items=str(items_tsv), history="[1]", candidates="[2,2,3]"))
    with pytest.raises(ValueError, match="no candidates"):
        run_recommend(make_cfg(items=str(items_tsv), history="[1]"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"history": [], "candidates": ["1"]}\n{"history": "1", "candidates": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'history' must be a list"):
        run_recommend(make_cfg(items=str(items_tsv), file=str(bad)))
    with pytest.raises(FileNotFoundError, match="recommend.items"):
        run_recommend(make_cfg(items=str(tmp_path / "none.tsv"), candidates="[1]"))


def test_pipeline_dispatches_recommend(items_tsv: Path, monkeypatch):
    from reccocktail import pipeline

    cfg = make_cfg(items=str(items_tsv), history="[1]", candidates="[2,3]")
    assert OmegaConf.select(cfg, "task") == "recommend"
    res = pipeline.run(cfg)
    assert len(res["requests"][0]["ranking"]) == 2


def test_unknown_ids_are_refused_per_request(tmp_path: Path, items_tsv: Path):
    """"99999" is an unknown film, not a film titled "99999": refused, naming the request and
    the entry; the other requests of the file are still ranked."""
    r = ItemResolver(ITEMS)
    with pytest.raises(ValueError, match=r"candidates\[1\]: unknown item id '99999'"):
        r.resolve("99999", "candidates[1]")
    with pytest.raises(ValueError, match="unknown item id '42'"):
        r.resolve(42, "x")  # a JSON number is an id too
    assert r.items[r.resolve("title:1984", "x")] == "1984"  # free text on purpose
    req = tmp_path / "requests.jsonl"
    req.write_text(json.dumps({"id": "a", "history": ["1"], "candidates": ["2", "99999"]}) + "\n"
                   + json.dumps({"id": "b", "history": ["1"], "candidates": ["2", "3"]}) + "\n")
    res = run_recommend(make_cfg(items=str(items_tsv), file=str(req)))["requests"]
    assert [r["id"] for r in res] == ["a", "b"]
    assert "requests.jsonl:1: candidates[1]: unknown item id '99999'" in res[0]["error"]
    assert res[0]["ranking"] == [] and [x["item"] for x in res[1]["ranking"]] != []
    with pytest.raises(ValueError, match="unknown item id '99999'"):  # the only request
        run_recommend(make_cfg(items=str(items_tsv), history="[1]", candidates="[2,99999]"))


def test_invisible_characters_and_escapes(tmp_path: Path, items_tsv: Path, capsys):
    """Titles match after NFKC and without control/zero-width characters (as the data stage
    cleans them); an invisible entry is refused; nothing from a request reaches the terminal
    raw (escape sequences, rich markup)."""
    r = ItemResolver(ITEMS)
    assert r.resolve("Heat\u200b (1995)", "x") == "6"
    assert r.resolve("\ufeffＨｅａｔ (1995)\u200d", "x") == "6"  # BOM, full-width letters
    with pytest.raises(ValueError, match=r"candidates\[0\]: empty item"):
        r.resolve("\u200b\u200c\u2060", "candidates[0]")
    req = tmp_path / "requests.jsonl"
    req.write_text(json.dumps({"id": "\x1b[2J\x1b]0;pwned\x07", "history": ["1"],
                               "candidates": ["2", "[bold red]Fake[/bold red] \x1b[31mfilm"]})
                   + "\n")
    cfg = make_cfg(items=str(items_tsv), file=str(req))
    cfg.recommend.print = True
    res = run_recommend(cfg)["requests"][0]
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J" in out  # the id, escaped
    assert "[bold red]Fake[/bold red] [31mfilm" in " ".join(out.split())  # shown, not applied
    assert res["ranking"][1]["title"].startswith("[bold red]Fake") or \
        res["ranking"][0]["title"].startswith("[bold red]Fake")


def test_adapter_of_another_domain_or_without_manifest(lora_adapter: Path):
    cands = dict(adapter=str(lora_adapter), history="[1]", candidates="[2,3]")
    (lora_adapter / "manifest.json").write_text(json.dumps(manifest(run={"domain": "beauty"})))
    with pytest.raises(ValueError, match=r"domain: 'beauty' \(adapter\) vs 'ml100k' \(this run\)"):
        run_recommend(make_cfg(**cands))
    (lora_adapter / "manifest.json").unlink()
    with pytest.raises(ValueError, match="no adapter manifest.*allow_foreign_adapters=true"):
        run_recommend(make_cfg(**cands))
    cfg = make_cfg(**cands)
    cfg.allow_foreign_adapters = True
    res = run_recommend(cfg)
    assert "no usable manifest" in res["foreign"][0] and len(res["requests"][0]["ranking"]) == 2


def test_corrupt_adapter_is_named(lora_adapter: Path):
    weights = lora_adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(ValueError, match=rf"recommend.adapter: .*{weights}: not a readable "
                                         "safetensors file"):
        run_recommend(make_cfg(adapter=str(lora_adapter), history="[1]", candidates="[2,3]"))


def test_module_entry_point(tmp_path: Path, items_tsv: Path):
    """`python -m reccocktail.recommend` runs the recommend task (it used to do nothing)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "reccocktail.recommend", "backbone=tiny_llama", "logger=none",
           f"recommend.items={items_tsv}", "recommend.history=[1]", "recommend.candidates=[2,3]",
           f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "out" / "recommendations.jsonl").read_text()
            .splitlines()]
    assert sorted(r["item"] for r in rows[0]["ranking"]) == ["2", "3"]
