"""Full-catalogue ranking (`eval.candidates=all`): the beam over the trie of every title stays
in the catalogue and returns k distinct items, a wide beam is the exhaustive likelihood ranking,
truncated metrics on planted ranks equal hand-computed values, baselines rank every item with
the same exclusion rule, and a beam narrower than the largest cut-off fails early."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_config
from omegaconf import OmegaConf

from reccocktail.evaluation import full_catalogue as fc
from reccocktail.evaluation.chance import random_full_expectation

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sharp_llama(tiny_llama_cfg):
    """The tiny random Llama with sharper logits (embeddings x8): its ranking is far from flat,
    so a wrong beam order or a wrong score shows."""
    from reccocktail.models.backbone import load_backbone

    model, tok = load_backbone(tiny_llama_cfg)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(8.0)
    yield model, tok
    with torch.no_grad():
        model.get_input_embeddings().weight.div_(8.0)


def _catalogue_setup(sharp_llama, n_items: int = 40):
    from test_scorers import builder, make_items, make_samples

    model, tok = sharp_llama
    items = make_items(n_items)
    pb = builder(tok, items)
    samples = make_samples(items, n_users=3, n_cand=5, hist=4, seed=3)
    excluded = [set(s.history) for s in samples]  # seen items leave the ranking
    return model, pb, list(items), samples, excluded


def _exhaustive(model, pb, item_ids, sample, excluded) -> list[tuple[str, float]]:
    from reccocktail.evaluation.scorers import LikelihoodScorer

    allowed = [i for i in item_ids if i not in excluded]
    with torch.inference_mode():
        scores = LikelihoodScorer(model, pb).score_ids(
            pb.prompt_ids(sample.history, []), [pb.response_ids(i) for i in allowed])
    return sorted(zip(allowed, scores.tolist()), key=lambda kv: -kv[1])


def test_beam_over_catalogue_stays_in_it_returns_k_distinct_and_exact_scores(sharp_llama):
    from reccocktail.evaluation.scorers import CatalogueBeamScorer

    model, pb, ids, samples, excluded = _catalogue_setup(sharp_llama)
    scorer = CatalogueBeamScorer(model, pb, beam_size=5, item_ids=ids)
    trie_before = id(scorer.trie)
    lists = scorer.rank(samples, excluded)
    assert id(scorer.trie) == trie_before  # one trie for every user
    for s, ex, lst in zip(samples, excluded, lists):
        got = [i for i, _ in lst]
        assert len(got) == 5 == len(set(got))          # k distinct items
        assert set(got) <= set(ids) and not set(got) & ex   # catalogue only, seen excluded
        scores = [v for _, v in lst]
        assert scores == sorted(scores, reverse=True)  # best first
        exact = dict(_exhaustive(model, pb, ids, s, ex))
        for i, v in lst:  # every returned item carries its exact log-likelihood
            assert abs(v - exact[i]) < 1e-4


def test_wide_beam_is_the_exhaustive_ranking_of_all_items(sharp_llama):
    from reccocktail.evaluation.scorers import CatalogueBeamScorer

    model, pb, ids, samples, excluded = _catalogue_setup(sharp_llama, n_items=30)
    lists = CatalogueBeamScorer(model, pb, beam_size=len(ids), item_ids=ids).rank(samples,
                                                                                 excluded)
    for s, ex, lst in zip(samples, excluded, lists):
        exact = _exhaustive(model, pb, ids, s, ex)
        assert [i for i, _ in lst] == [i for i, _ in exact]
        torch.testing.assert_close(torch.tensor([v for _, v in lst]),
                                   torch.tensor([v for _, v in exact]), atol=1e-4, rtol=0)


def test_truncated_metrics_on_planted_ranks_equal_hand_values():
    ks, cutoff = (1, 5, 10, 20), 20
    # ranked lists planted so that the targets land at 1, 3, 7, 20 and beyond the list
    top = [f"i{j}" for j in range(1, 21)]
    lists = [[(i, -float(j)) for j, i in enumerate(top)] for _ in range(5)]
    targets = ["i1", "i3", "i7", "i20", "i99"]
    ranks = torch.tensor([fc.list_rank(lst, t, cutoff) for lst, t in zip(lists, targets)])
    assert ranks.tolist() == [1, 3, 7, 20, 21]
    m = fc.truncated_metrics(ranks, ks, cutoff)
    g = [1.0, 1 / math.log2(4), 1 / math.log2(8), 1 / math.log2(21), 0.0]
    assert m["hr@1"] == pytest.approx(1 / 5)
    assert m["hr@5"] == pytest.approx(2 / 5)
    assert m["hr@10"] == pytest.approx(3 / 5)
    assert m["hr@20"] == pytest.approx(4 / 5)
    assert m["ndcg@5"] == pytest.approx(sum(g[:2]) / 5)
    assert m["ndcg@10"] == pytest.approx(sum(g[:3]) / 5)
    assert m["ndcg@20"] == pytest.approx(sum(g[:4]) / 5)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 3 + 1 / 7 + 1 / 20) / 5)
    # a tie with the target counts against it
    assert fc.list_rank([("a", -1.0), ("t", -2.0), ("b", -2.0)], "t", 20) == 3


def test_catalogue_ranks_apply_exclusion_and_pessimistic_ties():
    scores = torch.tensor([[5.0, 4.0, 3.0, 3.0, 1.0],
                           [9.0, 8.0, 7.0, 6.0, 5.0]])
    allowed = torch.tensor([[True, False, True, True, True],   # item 1 (4.0) seen
                            [False, False, True, True, True]])  # items 0 and 1 seen
    ranks = fc.catalogue_ranks(scores, torch.tensor([2, 3]), allowed)
    assert ranks.tolist() == [3, 2]  # row 0: 5.0 above, 3.0 tied; row 1: 7.0 above only
    with pytest.raises(ValueError, match="excluded"):
        fc.catalogue_ranks(scores, torch.tensor([1, 3]), allowed)


def test_random_full_expectation_hand_values():
    r = random_full_expectation([10, 40], (1, 20), cutoff=20)
    assert r["hr@20"] == pytest.approx((1.0 + 20 / 40) / 2)
    assert r["hr@1"] == pytest.approx((1 / 10 + 1 / 40) / 2)
    h10 = sum(1 / j for j in range(1, 11))
    h20 = sum(1 / j for j in range(1, 21))
    assert r["mrr@20"] == pytest.approx((h10 / 10 + h20 / 40) / 2)


def test_bad_config_fails_early_naming_the_key(tmp_path, tiny_llama_cfg):
    from test_eval_stage import make_cfg

    from reccocktail.evaluation.stage import run_eval_stage

    cfg = make_cfg(tmp_path, tiny_llama_cfg, candidates="all", beam_size=10, scorer="beam")
    errors = fc.check_config(cfg)
    assert len(errors) == 1 and "eval.beam_size=10" in errors[0] and "20" in errors[0]
    # the stage refuses before reading data or loading a model (tmp_path holds neither)
    with pytest.raises(ValueError, match="eval.beam_size"):
        run_eval_stage(cfg, tmp_path)
    cfg.eval.candidates = "every"
    assert "eval.candidates" in fc.check_config(cfg)[0]
    cfg.eval.candidates, cfg.eval.beam_size, cfg.eval.scorer = "all", 20, "generate"
    assert "eval.scorer=generate" in fc.check_config(cfg)[0]


def test_eval_stage_full_catalogue_rows(tmp_path, tiny_llama_cfg):
    from test_eval_stage import _write_data, make_cfg

    from reccocktail.data.samples import load_items
    from reccocktail.evaluation.results import render_markdown
    from reccocktail.evaluation.stage import run_eval_stage
    from reccocktail.utils.io import read_json, read_jsonl

    _write_data(tmp_path / "data")
    # eval.candidates=all with the default beam size (null: the largest cut-off, 20)
    cfg = make_cfg(tmp_path, tiny_llama_cfg, candidates="all", scorer="beam",
                   variants=["zero_shot"])
    run_eval_stage(cfg, tmp_path)
    data = read_json(tmp_path / "results.json")
    n_items = len(load_items(tmp_path / "data" / "items.tsv"))
    seqs = {r["user"]: set(r["items"]) for r in read_jsonl(tmp_path / "data" / "sequences.jsonl")}
    for name in ("random", "popularity", "zero_shot.beam"):
        row = data["variants"][name]
        assert row["candidates"] == "all" and row["catalogue_size"] == n_items
        assert row["exclude_seen"] is True and row["cutoff"] == 20
        assert set(row["metrics"]) == {"ndcg@1", "ndcg@5", "ndcg@10", "ndcg@20", "hr@1",
                                       "hr@5", "hr@10", "hr@20", "mrr@20"}
    assert data["variants"]["zero_shot.beam"]["normalize"] is False  # what the search ranks by
    for name in ("popularity", "zero_shot.beam"):
        preds = read_jsonl(tmp_path / "predictions" / f"{name}.jsonl")
        for p in preds:
            seen = seqs[p["user"]] - {p["target"]}
            assert len(p["ranked"]) == 20 == len(set(p["ranked"]))
            assert not set(p["ranked"]) & seen
            if p["rank"] <= 20:  # within the cut-off: in the list (ties may put it there too)
                assert p["target"] in p["ranked"]
        ranks = torch.tensor([p["rank"] for p in preds])
        recorded = data["variants"][name]["metrics"]
        for k, v in fc.truncated_metrics(ranks, (1, 5, 10, 20), 20).items():
            assert recorded[k] == pytest.approx(v)
    assert f"full catalogue ({n_items} items, seen items excluded)" in render_markdown(data)


def test_baselines_rank_every_item_with_the_exclusion_rule(tmp_path):
    from test_baselines import make_planted

    from reccocktail.baselines import stage as bstage
    from reccocktail.baselines.models import score_loader
    from reccocktail.baselines.stage import make_datamodule, score_all_items
    from reccocktail.utils.io import read_json, read_jsonl

    out = tmp_path / "run"
    make_planted(out, num_users=60)
    group = OmegaConf.load(ROOT / "conf" / "baselines" / "default.yaml")
    group.pop("defaults")
    for n in ("pop", "gru4rec"):
        group[n] = OmegaConf.load(ROOT / "conf" / "baselines" / f"{n}.yaml")
    group.common.update(max_epochs=1, max_len=12)
    ecfg = OmegaConf.load(ROOT / "conf" / "eval" / "default.yaml")
    ecfg.update(candidates="all", beam_size=20)
    cfg = run_config({
        "seed": 1, "baseline": ["pop", "gru4rec"], "baselines": group, "eval": ecfg,
        "selection": {"lambda_users": 0, "transductive": False, "max_scored_users": None},
        "paths": {"output_dir": str(out), "cache_dir": str(tmp_path / "cache")},
        "trainer": {"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "devices": 1,
                    "max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
        "logger": None,
    })
    bstage.run_baselines_stage(cfg, out)
    results = read_json(out / "results.json")["variants"]
    seqs = {r["user"]: set(r["items"]) for r in read_jsonl(out / "data" / "sequences.jsonl")}
    tests = {r["id"]: r for r in read_jsonl(out / "data" / "test.jsonl")}
    counts: dict[str, int] = {}
    for items in seqs.values():
        for i in items:
            counts[i] = counts.get(i, 0) + 1
    n_items = 60
    for name in ("pop", "gru4rec"):
        assert results[name]["candidates"] == "all"
        assert results[name]["catalogue_size"] == n_items
        for p in read_jsonl(out / "predictions" / f"{name}.jsonl"):
            t = tests[p["id"]]
            seen = (seqs[p["user"]] | set(t["history"])) - {t["target"]}
            assert p["num_ranked"] == n_items - len(seen)
            assert len(p["ranked"]) == 20 and not set(p["ranked"]) & seen
            if name == "pop":  # rank among unseen items, ties against the target
                c = counts.get(t["target"], 0)
                expect = sum(1 for i in map(lambda k: f"i{k // 20}_{k % 20}", range(n_items))
                             if i not in seen and counts.get(i, 0) >= c)
                assert p["rank"] == expect
    # full scoring is the module's own scoring rule: equal on the stored candidates
    settings = bstage.settings_for(cfg, "gru4rec")
    dm = make_datamodule(out / "data", settings, 1)
    module = bstage.build_module("gru4rec", settings, dm)
    samples = dm.test_samples[:8]
    full = score_all_items(module, dm, samples)
    stored = score_loader(module, dm.samples_dataloader(samples))
    cols = torch.tensor([dm.vocab.encode(s.candidates) for s in samples])
    torch.testing.assert_close(full.gather(1, cols), stored, atol=1e-5, rtol=0)
    assert torch.isinf(full[:, 0]).all()  # padding is never an item
    json.dumps(results)  # plain JSON


def test_cold_catalogue_is_read_from_the_data_stages_new_items(tmp_path):
    """Cold: the catalogue is every item but the validation-new ones (mixed) or the test-new
    items only (new); a data folder without the list fails naming the file."""
    from reccocktail.utils.io import write_json

    ids = [str(i) for i in range(10)]
    write_json(tmp_path / "stats.json", {"scenario": "cold", "cold_negatives": "mixed"})
    with pytest.raises(FileNotFoundError, match="new_items.json"):
        fc.catalogue_mask(tmp_path, ids, "cold", "mixed")
    write_json(tmp_path / "new_items.json", {"test": ["1", "2"], "valid": ["7"]})
    keep, rule = fc.catalogue_mask(tmp_path, ids, "cold", "mixed")
    assert [i for i, k in zip(ids, keep) if not k] == ["7"] and "validation-new" in rule
    write_json(tmp_path / "stats.json", {"scenario": "cold", "cold_negatives": "new"})
    keep, _ = fc.catalogue_mask(tmp_path, ids, "cold", "mixed")
    assert [i for i, k in zip(ids, keep) if k] == ["1", "2"]


def test_cold_exclusion_follows_the_training_part(shared_data, tmp_path):
    """eval.exclude_seen removes the user's training part (sequences.jsonl): with
    scenario.cold_train_part=before_test that is what preceded the test event, with all_non_new
    also what came after it."""
    from hydra import compose, initialize_config_dir

    from reccocktail.data.samples import load_samples
    from reccocktail.data.stage import run_data_stage
    from reccocktail.utils.io import read_json, read_jsonl

    excluded = {}
    for part in ("before_test", "all_non_new"):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("run", overrides=[
                f"paths.data_root={shared_data}", f"paths.cache_dir={tmp_path / 'cache'}",
                "logger=none", "scenario=cold", f"scenario.cold_train_part={part}",
                "eval.candidates=all", "eval.beam_size=20"])
        out = tmp_path / part
        run_data_stage(cfg, out)
        test = load_samples(out / "data" / "test.jsonl")
        cat = fc.FullCatalogue.load(cfg, out, test)
        assert not set(read_json(out / "data" / "new_items.json")["valid"]) & set(cat.items)
        seqs = {r["user"]: set(r["items"]) for r in read_jsonl(out / "data" / "sequences.jsonl")}
        for s, ex in zip(test, cat.excluded):
            assert ex == (seqs[s.user] | set(s.history)) - {s.target}
            if part == "before_test":
                assert ex == set(s.history) or len(s.history) == 10  # nothing after the test
        excluded[part] = {s.id: ex for s, ex in zip(test, cat.excluded)}
    before, everything = excluded["before_test"], excluded["all_non_new"]
    assert before.keys() == everything.keys()
    assert all(before[k] <= everything[k] for k in before)
    assert sum(before[k] < everything[k] for k in before) > len(before) / 2
