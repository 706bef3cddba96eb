"""Stage `eval` end to end on a tiny backbone with random LoRA adapters: same samples for every
variant, adapters really swapped, results.json/.md, predictions, loggers, clear errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import run_config
from omegaconf import OmegaConf

from reccocktail.data.samples import Sample, load_items, load_samples, write_items
from reccocktail.evaluation.metrics import random_expectation, ranking_metrics
from reccocktail.evaluation.results import load_results, record_results, render_markdown
from reccocktail.utils.io import read_jsonl, write_json, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
N_USERS, N_CAND = 10, 30


def _write_data(data_dir: Path) -> None:
    rng = random.Random(0)
    words = ["Silent", "Broken", "Golden", "Hidden", "Wild", "Dark", "Lost", "Red"]
    nouns = ["River", "Empire", "Garden", "Summer", "Station", "Heart", "Island", "Road"]
    titles = [f"{a} {b}" for a in words for b in nouns]
    items = {str(i): f"{t} ({1960 + i % 40})" for i, t in enumerate(titles)}
    write_items(data_dir / "items.tsv", items)
    ids = list(items)
    test, seqs = [], []
    for u in range(N_USERS):
        chosen = rng.sample(ids, 4 + N_CAND)
        hist, cands = chosen[:4], chosen[4:]
        target = cands[rng.randrange(N_CAND)]
        test.append(Sample(f"u{u}-test", f"u{u}", hist, target, cands).to_json())
        seqs.append({"user": f"u{u}", "items": hist + rng.sample(ids, 6)})
    write_jsonl(data_dir / "test.jsonl", test)
    write_jsonl(data_dir / "sequences.jsonl", seqs)


def _write_adapter(path: Path, backbone_cfg, seed: int, backbone_name: str) -> None:
    from peft import LoraConfig, get_peft_model

    from reccocktail.models.backbone import load_backbone

    model, _ = load_backbone(backbone_cfg)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                     init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(str(path))
    write_json(path / "manifest.json", {"kind": "specific", "backbone": backbone_name,
                                        "init_seed": seed, "data_hash": "x", "config": {},
                                        "metrics": {}})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama_cfg):
    out = tmp_path_factory.mktemp("run")
    _write_data(out / "data")
    for seed, name in enumerate(["general", "specific"], start=1):
        _write_adapter(out / "adapters" / name, tiny_llama_cfg, seed, "tiny_llama")
    return out


def make_cfg(out: Path, backbone_cfg, selection: dict | None = None, **eval_overrides):
    ecfg = OmegaConf.load(ROOT / "conf" / "eval" / "default.yaml")
    ecfg.variants = ["zero_shot", "general", "specific"]
    ecfg.progress = False
    ecfg.print = False
    for k, v in eval_overrides.items():
        ecfg[k] = v
    return run_config({
        "seed": 7,
        "paths": {"output_dir": str(out)},
        "backbone": backbone_cfg,
        "domain": {"name": "toy", "prompt": {"noun": "movie", "verb": "watched"}},
        "data": {"max_title_tokens": 32, "num_candidates": N_CAND},
        "selection": {"lambda_users": 2, "transductive": False, "max_scored_users": None,
                      **(selection or {})},
        "logger": {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger",
                           "save_dir": str(out), "name": "logs"}},
        "eval": ecfg,
    }, "tuning=default")


def _score_alone(run_dir, tiny_llama_cfg, adapter: str, samples):
    """Reference scores of one variant from a freshly loaded model (no adapter swapping)."""
    from peft import PeftModel

    from reccocktail.data.prompts import PromptBuilder
    from reccocktail.evaluation.scorers import LikelihoodScorer
    from reccocktail.models.backbone import load_backbone

    model, tok = load_backbone(tiny_llama_cfg)
    model = PeftModel.from_pretrained(model, str(run_dir / "adapters" / adapter))
    pb = PromptBuilder(tok, load_items(run_dir / "data" / "items.tsv"), noun="movie",
                       verb="watched")
    return LikelihoodScorer(model, pb).score(samples)


def test_eval_stage_end_to_end(run_dir, tiny_llama_cfg):
    from reccocktail.evaluation.stage import run_eval_stage
    from reccocktail.pipeline import finish_loggers

    cfg = make_cfg(run_dir, tiny_llama_cfg)
    summary = run_eval_stage(cfg, run_dir)
    finish_loggers(cfg)
    results = load_results(run_dir)["variants"]
    assert set(results) == {"random", "popularity", "zero_shot", "general", "specific"}
    # two prompts from held-out users: those users are scored by no variant
    assert summary["num_tuning_users"] >= 1
    n_scored = N_USERS - summary["num_tuning_users"]
    for name in ("popularity", "zero_shot", "general", "specific"):
        row = results[name]
        assert row["num_users"] == n_scored and row["transductive"] is False
        assert set(row["metrics"]) >= {"ndcg@1", "ndcg@3", "hr@10", "mrr"}
    assert results["general"]["adapter"].endswith("adapters/general")
    assert results["zero_shot"]["adapter"] is None
    assert results["random"]["metrics"] == pytest.approx(random_expectation(N_CAND))

    preds = {n: read_jsonl(run_dir / "predictions" / f"{n}.jsonl")
             for n in ("popularity", "zero_shot", "general", "specific")}
    ids = [r["id"] for r in preds["zero_shot"]]
    assert len(ids) == n_scored
    assert all([r["id"] for r in p] == ids for p in preds.values())  # the very same samples
    # the metrics in results.json are those of the written scores
    targets = [r["candidates"].index(r["target"]) for r in preds["general"]]
    again = ranking_metrics(torch.tensor([r["scores"] for r in preds["general"]]), targets)
    assert again == pytest.approx(results["general"]["metrics"], abs=1e-6)
    mrr = sum(1 / r["rank"] for r in preds["general"]) / len(preds["general"])
    assert mrr == pytest.approx(results["general"]["metrics"]["mrr"])
    # adapters were swapped for real: each variant equals that adapter loaded alone
    test = {s.id: s for s in load_samples(run_dir / "data" / "test.jsonl")}
    samples = [test[i] for i in ids]
    zs = torch.tensor([r["scores"] for r in preds["zero_shot"]])
    for name in ("general", "specific"):
        got = torch.tensor([r["scores"] for r in preds[name]])
        torch.testing.assert_close(got, _score_alone(run_dir, tiny_llama_cfg, name, samples),
                                   atol=1e-4, rtol=0)
        assert (got - zs).abs().max() > 1e-3

    md = (run_dir / "results.md").read_text()
    assert "| Method | NDCG@1 | NDCG@3" in md
    assert md.index("Random (expectation)") < md.index("Popularity") < md.index("Zero-shot")
    assert md.index("RecCocktail-G") < md.index("RecCocktail-S")
    metrics_csv = next((run_dir / "logs").rglob("metrics.csv")).read_text()
    assert "eval/general/ndcg@1" in metrics_csv


def test_eval_stage_generate_and_wandb_table(run_dir, tiny_llama_cfg, monkeypatch):
    import reccocktail.runtime as pipeline  # stages build trainers and loggers there
    from reccocktail.evaluation.stage import run_eval_stage

    class FakeWandb:
        def __init__(self):
            self.metrics, self.tables = {}, []

        def log_metrics(self, metrics):
            self.metrics.update(metrics)

        def log_table(self, key, columns, data):
            self.tables.append((key, columns, data))

        def save(self):
            pass

    fake = FakeWandb()
    monkeypatch.setattr(pipeline, "make_loggers", lambda cfg: [fake])
    cfg = make_cfg(run_dir, tiny_llama_cfg, variants=["general"], scorer=["generate"],
                   max_new_tokens=4, reference=False, selection={"max_scored_users": 3},
                   adapters={"extra": str(run_dir / "adapters" / "specific")})
    run_eval_stage(cfg, run_dir)
    results = load_results(run_dir)["variants"]
    for key in ("general.generate", "extra.generate"):
        row = results[key]
        assert row["scorer"] == "generate" and row["num_users"] == 3
        assert 0.0 <= row["valid_ratio"] <= 1.0
        preds = read_jsonl(run_dir / "predictions" / f"{key}.jsonl")
        assert len(preds) == 3 and all("output" in p and "match_rule" in p for p in preds)
    assert "eval/general.generate/ndcg@1" in fake.metrics
    key, columns, data = fake.tables[-1]
    assert key == "eval/results" and columns[:3] == ["variant", "ndcg@1", "ndcg@3"]
    assert any(r[0] == "general.generate" for r in data)
    assert "Valid output" in (run_dir / "results.md").read_text()


def test_missing_adapter_names_the_stage(tmp_path, tiny_llama_cfg):
    from reccocktail.evaluation.stage import run_eval_stage

    _write_data(tmp_path / "data")
    cfg = make_cfg(tmp_path, tiny_llama_cfg, variants=["zero_shot", "cocktail", "specific"])
    with pytest.raises(FileNotFoundError, match=r"cocktail: .*run the `mix` stage") as err:
        run_eval_stage(cfg, tmp_path)
    assert "run the `specific` stage" in str(err.value)
    assert not (tmp_path / "results.json").exists()  # failed before scoring anything


def test_adapter_of_another_backbone_is_rejected(run_dir, tiny_llama_cfg, tmp_path):
    from reccocktail.evaluation.stage import run_eval_stage

    other = tmp_path / "other"
    _write_adapter(other, tiny_llama_cfg, 3, "qwen2_7b")
    cfg = make_cfg(run_dir, tiny_llama_cfg, variants=[], adapters={"other": str(other)},
                   reference=False)
    with pytest.raises(ValueError, match="qwen2_7b"):
        run_eval_stage(cfg, run_dir)


def test_corrupt_adapter_fails_before_any_variant_is_scored(run_dir, tiny_llama_cfg, tmp_path):
    import shutil

    from reccocktail.evaluation.stage import run_eval_stage
    from reccocktail.models.adapters import AdapterError

    out = tmp_path / "run"
    shutil.copytree(run_dir / "data", out / "data")
    shutil.copytree(run_dir / "adapters", out / "adapters")
    weights = out / "adapters" / "specific" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterError, match=rf"eval: adapter 'specific': {weights}: not a "
                                           "readable safetensors file"):
        run_eval_stage(make_cfg(out, tiny_llama_cfg), out)
    assert not (out / "predictions").exists() and not (out / "results.json").exists()
    cfg = make_cfg(out, tiny_llama_cfg, variants=["zero_shot"])
    cfg.eval.adapters = {"../../x": str(run_dir / "adapters" / "general")}
    with pytest.raises(ValueError, match=r"eval.adapters: name '\.\./\.\./x' is not allowed"):
        run_eval_stage(cfg, out)


def test_adapter_of_another_run_is_refused_or_recorded(run_dir, tiny_llama_cfg, tmp_path):
    import shutil

    from reccocktail.evaluation.stage import run_eval_stage
    from reccocktail.models.adapters import AdapterError
    from reccocktail.utils.io import read_json

    out = tmp_path / "run"
    shutil.copytree(run_dir / "data", out / "data")
    shutil.copytree(run_dir / "adapters" / "specific", out / "adapters" / "specific")
    write_json(out / "data" / "manifest.json", {"data_hash": "this-run"})  # S records "x"
    cfg = make_cfg(out, tiny_llama_cfg, variants=["specific"], reference=False)
    with pytest.raises(AdapterError, match=r"eval: adapter 'specific': .* data_hash: 'x' "
                                           r"\(adapter\) vs 'this-run' \(this run\)"):
        run_eval_stage(cfg, out)
    cfg.allow_foreign_adapters = True
    run_eval_stage(cfg, out)
    row = read_json(out / "results.json")["variants"]["specific"]
    assert row["foreign"] == ["data_hash: 'x' (adapter) vs 'this-run' (this run)"]


def test_transductive_scores_every_user(run_dir, tiny_llama_cfg, tmp_path):
    from reccocktail.evaluation.stage import eval_samples

    cfg = make_cfg(run_dir, tiny_llama_cfg)
    held_out, info = eval_samples(cfg, run_dir)
    cfg.selection.transductive = True
    everyone, info_t = eval_samples(cfg, run_dir)
    assert len(everyone) == N_USERS and info_t["transductive"] is True
    assert len(held_out) == N_USERS - info["num_tuning_users"]
    cfg.selection.max_scored_users = 4
    few, info_few = eval_samples(cfg, run_dir)
    assert info_few["num_users"] == 4 and [s.id for s in few] == [
        s.id for s in everyone if s.user in {f.user for f in few}]  # file order kept
    assert [s.id for s in eval_samples(cfg, run_dir)[0]] == [s.id for s in few]  # seeded


def test_record_results_merges_rows(tmp_path):
    record_results(tmp_path, "cocktail", {"ndcg@1": 0.3, "ndcg@3": 0.4}, scorer="likelihood",
                   num_users=5)
    record_results(tmp_path, "sasrec", {"ndcg@1": 0.2, "ndcg@3": 0.5}, kind="baseline",
                   num_samples=5)
    record_results(tmp_path, "random", {"ndcg@1": 0.1, "ndcg@3": 0.9}, scorer="expectation")
    record_results(tmp_path, "cocktail", {"ndcg@1": 0.35, "ndcg@3": 0.45}, scorer="likelihood",
                   num_users=5)  # replaces the earlier row
    data = load_results(tmp_path)
    assert list(data["variants"]) == ["cocktail", "sasrec", "random"]
    assert data["variants"]["cocktail"]["metrics"]["ndcg@1"] == 0.35
    md = render_markdown(data)
    assert md.index("Random") < md.index("SASRec") < md.index("RecCocktail")
    assert "**0.3500**" in md and "**0.5000**" in md  # best per column
    assert "**0.9000**" not in md  # the random expectation never counts as best
    record_results(tmp_path, "random", {"ndcg@1": 0.35, "ndcg@3": 0.1}, scorer="expectation")
    md = (tmp_path / "results.md").read_text()
    assert md.count("**0.3500**") == 1  # a tie with the random row is bold only on the method
    assert (tmp_path / "results.md").read_text() == md
    record_results(tmp_path, "wa", {"ndcg@1": 0.1, "ndcg@3": 0.2}, scorer="likelihood",
                   normalize=True, num_users=5)
    assert "| likelihood (mean) |" in (tmp_path / "results.md").read_text()
    assert "| likelihood |" in (tmp_path / "results.md").read_text()  # the summed rows
    with pytest.raises(ValueError, match="non-numeric"):
        record_results(tmp_path, "bad", {"ndcg@1": "high"})


class FakeSwitcher:
    """Stands in for AdapterSwitcher in stage tests: the "model" is the adapter folder's name
    (None for the bare backbone), so an injected scorer knows which variant it scores."""

    def __init__(self, base):
        pass

    def use(self, path):
        return None if path is None else Path(path).name

    def drop(self):
        pass


def test_results_table_shows_popularity_once_when_the_pop_baseline_repeats_it():
    row = {"metrics": {"ndcg@1": 0.2, "ndcg@3": 0.3}, "num_users": 10, "num_samples": 10}
    data = {"variants": {"popularity": dict(row), "pop": {**row, "kind": "baseline"},
                         "sasrec": {**row, "metrics": {"ndcg@1": 0.4, "ndcg@3": 0.5}}}}
    md = render_markdown(data)
    assert md.count("| Popularity") == 1 and "| SASRec |" in md
    data["variants"]["pop"]["metrics"] = {"ndcg@1": 0.1, "ndcg@3": 0.3}  # not the same row
    md = render_markdown(data)
    assert "| Popularity |" in md and "| Popularity (baseline) |" in md
    data["variants"]["pop"] = {**row, "num_samples": 9}  # other samples
    assert "| Popularity (baseline) |" in render_markdown(data)
