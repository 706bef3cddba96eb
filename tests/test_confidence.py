"""Confidence intervals (bootstrap over users) and the paired sign-flip test: exact values on
hand-computed cases, the results.json/.md format, and the eval stage writing both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reccocktail.evaluation.confidence import (
    bootstrap_ci,
    bootstrap_cis,
    ci_fields,
    holm,
    paired_test,
    paired_tests,
    rank_metric_values,
)
from reccocktail.evaluation.metrics import metric_names
from reccocktail.evaluation.results import (
    load_results,
    paired_block,
    print_results,
    record_results,
    render_markdown,
    results_table,
    update_paired,
)
from reccocktail.utils.io import read_jsonl, write_jsonl

C = 30  # candidates


# --------------------------------------------------------------------------- bootstrap CI
def test_constant_scorers_give_degenerate_intervals():
    users = [f"u{i // 2}" for i in range(40)]  # two samples per user
    assert bootstrap_ci(np.zeros(40)) == (0.0, 0.0)
    assert bootstrap_ci(np.ones(40), users) == (1.0, 1.0)
    assert bootstrap_ci([0.1] * 7, list("aabbccd")) == (0.1, 0.1)  # exact, no rounding of sums
    # a constant scorer ranks the positive last (ties against it); a perfect one first
    worst = ci_fields(torch.full((40,), C), users, (1, 3, 5, 10))
    assert set(worst["ci"]) == set(metric_names((1, 3, 5, 10)))
    assert worst["ci"]["ndcg@1"] == [0.0, 0.0] and worst["ci"]["hr@10"] == [0.0, 0.0]
    assert worst["ci"]["mrr"] == [1 / C, 1 / C]
    best = ci_fields(torch.ones(40, dtype=torch.long), users, (1, 3, 5, 10))
    assert all(v == [1.0, 1.0] for v in best["ci"].values())
    assert best["ci_method"] == "percentile bootstrap over users" and best["n_boot"] == 2000
    assert best["ci_level"] == 0.95


def test_interval_contains_the_mean_narrows_with_users_and_is_seeded():
    rng = np.random.default_rng(3)
    small = (rng.random(50) < 0.3).astype(float)
    large = (rng.random(2000) < 0.3).astype(float)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < 0.3 * (hi_s - lo_s)  # width ~ 1/sqrt(n): sqrt(50/2000) = 0.16
    cont = rng.random(50)
    assert bootstrap_ci(cont, seed=1) == bootstrap_ci(cont, seed=1)
    assert bootstrap_ci(cont, seed=1) != bootstrap_ci(cont, seed=2)
    # a torch tensor is accepted; several metrics at once match one at a time
    assert bootstrap_ci(torch.tensor(small)) == (lo_s, hi_s)
    both = bootstrap_cis({"a": small, "b": 1 - small})
    assert both["a"] == pytest.approx((lo_s, hi_s), abs=1e-12)
    assert both["b"] == pytest.approx((1 - hi_s, 1 - lo_s), abs=1e-12)
    with pytest.raises(ValueError, match="users"):
        bootstrap_ci(small, users=["u"] * 3)


def test_user_resampling_differs_from_sample_resampling():
    # 20 users with 10 samples each; a user is all hits or all misses. Resampling samples
    # treats the 200 values as independent; resampling users sees only 20 independent draws.
    users = [f"u{i // 10}" for i in range(200)]
    values = np.array([float((i // 10) % 2) for i in range(200)])
    lo_u, hi_u = bootstrap_ci(values, users)
    lo_s, hi_s = bootstrap_ci(values)
    assert lo_u < 0.5 < hi_u and lo_s < 0.5 < hi_s
    assert (hi_u - lo_u) > 2.5 * (hi_s - lo_s)  # sqrt(200 / 20) = 3.2 times wider
    # with one sample per user, the user bootstrap is the plain bootstrap
    assert bootstrap_ci(values, [f"s{i}" for i in range(200)]) == (lo_s, hi_s)


# --------------------------------------------------------------------------- paired test
def test_paired_test_exact_on_hand_computed_cases():
    # 4 users, each +1: of the 16 sign patterns only ++++ and ---- reach |T| = 1 -> p = 2/16
    r = paired_test([1, 1, 1, 1], [0, 0, 0, 0])
    assert (r.diff, r.ci, r.p, r.test) == (1.0, (1.0, 1.0), 0.125, "exact")
    assert r["p"] == 0.125 and r.n_users == 4 and r.n_nonzero == 4 and r.n_draws == 16
    # users with no difference are skipped by the enumeration: still 2/16
    assert paired_test([1, 1, 1, 1, 0.5, 0.2], [0, 0, 0, 0, 0.5, 0.2]).p == 0.125
    # differences +1 +1 +1 -1: |sum| >= 2 for all patterns but the 6 that sum to 0 -> 10/16
    assert paired_test([1, 1, 1, 0], [0, 0, 0, 1]).p == 0.625
    # several samples per user: per-user mean differences 0.5, 1, 0.5 (T = 2/3); of the 8
    # patterns only +++ and --- reach |T| >= 2/3 -> p = 2/8
    r = paired_test([1, 0, 1, 1, 0.5, 0.5], [0, 0, 0, 0, 0, 0], users=list("aabbcc"))
    assert r.p == 0.25 and r.n_users == 3 and r.diff == pytest.approx(2 / 3)


def test_identical_variants_give_zero_difference_and_p_one():
    a = np.random.default_rng(0).random(300)
    r = paired_test(a, a.copy(), users=[f"u{i % 100}" for i in range(300)])
    assert r.diff == 0.0 and r.ci == (0.0, 0.0) and r.p == 1.0 and r.n_nonzero == 0
    with pytest.raises(ValueError, match="same samples"):
        paired_test(a, a[:10])


def test_paired_test_monte_carlo_beyond_16_users():
    rng = np.random.default_rng(1)
    a = rng.random(40)
    r = paired_test(a + 0.5, a)  # every user better: no random pattern beats the observed one
    assert r.test == "monte_carlo" and r.n_draws == 10_000
    assert r.p == pytest.approx(1 / 10_001)  # never 0
    assert r.ci[0] == pytest.approx(0.5) and r.ci[1] == pytest.approx(0.5)
    # Monte Carlo agrees with exact enumeration (18 users: 2**18 patterns)
    x, y = rng.random(18), rng.random(18)
    mc, exact = paired_test(x, y), paired_test(x, y, exact_max=20)
    assert mc.test == "monte_carlo" and exact.test == "exact" and exact.n_draws == 2 ** 18
    assert mc.p == pytest.approx(exact.p, abs=0.02)
    assert paired_test(x, y) == mc  # seeded
    # several metrics at once: the same answers as one at a time
    many = paired_tests({"x": x, "up": x + 0.5}, {"x": y, "up": x})
    assert many["x"].p == mc.p and many["up"].p == paired_test(x + 0.5, x).p == 1 / 10_001
    assert many["x"].ci == pytest.approx(mc.ci, abs=1e-12)


# --------------------------------------------------------------------------- results files
def _write_predictions(out: Path, name: str, ranks: list[int], users: list[str],
                       ids: list[str] | None = None) -> None:
    ids = ids or [f"s{i}" for i in range(len(ranks))]
    write_jsonl(out / "predictions" / f"{name}.jsonl",
                [{"id": i, "user": u, "rank": r} for i, u, r in zip(ids, users, ranks)])


def _record(out: Path, name: str, ranks: list[int], users: list[str], **meta) -> None:
    ks = (1, 3, 5, 10)
    vals = rank_metric_values(torch.tensor(ranks), ks)
    record_results(out, name, {k: float(v.mean()) for k, v in vals.items()},
                   **ci_fields(torch.tensor(ranks), users, ks), **meta)
    _write_predictions(out, name, ranks, users)


def test_results_rows_carry_ci_and_markdown_shows_it(tmp_path):
    users = [f"u{i}" for i in range(12)]
    _record(tmp_path, "cocktail", [1, 1, 2, 1, 3, 1, 1, 5, 1, 2, 1, 1], users, scorer="likelihood")
    _record(tmp_path, "zero_shot", [C] * 12, users, scorer="likelihood")
    record_results(tmp_path, "random", {"ndcg@1": 1 / C, "mrr": 0.13}, scorer="expectation")
    data = load_results(tmp_path)
    row = data["variants"]["cocktail"]
    assert set(row["ci"]) == set(row["metrics"]) and row["n_boot"] == 2000
    for m, (lo, hi) in row["ci"].items():
        assert lo <= row["metrics"][m] <= hi
    assert data["variants"]["zero_shot"]["ci"]["ndcg@1"] == [0.0, 0.0]
    assert "ci" not in data["variants"]["random"]  # closed form: no interval
    md = render_markdown(data)
    lo, hi = row["ci"]["ndcg@1"]
    assert f"**{row['metrics']['ndcg@1']:.4f}** [{lo:.3f}, {hi:.3f}]" in md
    assert "0.0000 [0.000, 0.000]" in md and "percentile bootstrap CI over users" in md
    # plain numeric columns for loggers; the intervals as extra columns on request
    columns, rows = results_table(data)
    assert not any(c.endswith(("_lo", "_hi")) for c in columns)
    columns, rows = results_table(data, ci=True)
    by_name = {r[0]: dict(zip(columns, r)) for r in rows}
    assert by_name["cocktail"]["ndcg@1_ci_lo"] == lo and by_name["random"]["mrr_ci_hi"] is None
    with pytest.raises(ValueError, match="no ci for"):
        record_results(tmp_path, "bad", {"ndcg@1": 0.1, "mrr": 0.2}, ci={"ndcg@1": [0, 1]})
    with pytest.raises(ValueError, match="not an interval"):
        record_results(tmp_path, "bad", {"ndcg@1": 0.1}, ci={"ndcg@1": [0.5, 0.1]})


def test_paired_block_from_predictions(tmp_path, capsys):
    users = [f"u{i}" for i in range(8)]
    _record(tmp_path, "cocktail", [1] * 8, users)
    _record(tmp_path, "zero_shot", [C] * 8, users)
    _record(tmp_path, "sasrec", [1, 1, 1, 1, 2, 2, 2, 2], users, kind="baseline")
    record_results(tmp_path, "random", {"ndcg@1": 1 / C}, scorer="expectation")
    data = update_paired(tmp_path)
    assert set(data["paired"]) == {"cocktail_vs_zero_shot", "cocktail_vs_sasrec"}
    zs = data["paired"]["cocktail_vs_zero_shot"]
    assert set(zs) == set(metric_names((1, 3, 5, 10)))
    assert zs["ndcg@1"]["diff"] == 1.0 and zs["ndcg@1"]["ci"] == [1.0, 1.0]
    assert zs["ndcg@1"]["p"] == 2 / 2 ** 8 and zs["ndcg@1"]["test"] == "exact"
    assert zs["mrr"]["diff"] == pytest.approx(1 - 1 / C)
    sas = data["paired"]["cocktail_vs_sasrec"]
    assert sas["ndcg@1"]["diff"] == 0.5 and sas["ndcg@1"]["p"] == 2 / 2 ** 4  # 4 users differ
    assert sas["hr@3"] == {"diff": 0.0, "ci": [0.0, 0.0], "p": 1.0, "test": "exact",
                           "n_users": 8, "n_nonzero": 0, "n_draws": 1}
    assert data["paired_info"]["reference"] == "cocktail"
    assert data["paired_info"]["num_samples"] == 8 and data["paired_info"]["n_boot"] == 2000
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["paired"] == data["paired"]
    md = (tmp_path / "results.md").read_text()
    assert "## Paired tests (RecCocktail vs …)" in md
    # zero-shot and the best (only) baseline on NDCG@1/3: a family of 4, Holm-adjusted
    assert "| Zero-shot backbone | NDCG@1 | +1.0000 | [+1.000, +1.000] | 0.0078 | 0.0312 |" in md
    assert "| Zero-shot backbone | MRR | " in md and md.count("| 0.0078 | – |") == 1  # MRR
    assert "| SASRec | MRR |" in md and "| SASRec | HR@3 |" not in md  # md: ndcg@1/3, mrr
    print_results(data)
    out = capsys.readouterr().out
    assert "Paired tests (cocktail vs" in out and "+1.0000" in out and "[1.000, 1.000]" in out
    # re-recording a compared row drops its (now stale) comparison; cocktail drops them all
    _record(tmp_path, "sasrec", [2] * 8, users, kind="baseline")
    assert set(load_results(tmp_path)["paired"]) == {"cocktail_vs_zero_shot"}
    _record(tmp_path, "cocktail", [1] * 8, users)
    assert "paired" not in load_results(tmp_path)
    assert "Paired tests" not in (tmp_path / "results.md").read_text()
    assert set(update_paired(tmp_path)["paired"]) == {"cocktail_vs_zero_shot", "cocktail_vs_sasrec"}


def test_paired_block_flags_rows_with_the_reference_s_very_scores(tmp_path):
    """Two rows with the same per-sample scores are the same model or a shared or stale
    predictions file: the block says so (and results.md); equal ranks from other scores
    (a coincidence of hit counts) are not flagged."""
    users = [f"u{i}" for i in range(4)]
    for name in ("cocktail", "specific", "p5"):
        _record(tmp_path, name, [1, 2, 1, 3], users)

    def scores(name: str, rows: list[list[float]]) -> None:
        path = tmp_path / "predictions" / f"{name}.jsonl"
        write_jsonl(path, [{**r, "scores": sc} for r, sc in zip(read_jsonl(path), rows)])

    same = [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.5]]
    scores("cocktail", same)
    scores("specific", same)
    scores("p5", [[0.8, 0.1], [0.2, 0.9], [0.6, 0.3], [0.2, 0.5]])
    data = update_paired(tmp_path)
    assert data["paired_info"]["identical_scores"] == ["specific"]
    assert data["paired"]["cocktail_vs_p5"]["ndcg@1"]["p"] == 1.0  # Δ = 0 exactly: p = 1
    assert "**Identical per-sample scores:** specific" in (tmp_path / "results.md").read_text()
    scores("specific", [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.6]])
    assert "identical_scores" not in update_paired(tmp_path)["paired_info"]


def test_holm_equals_a_hand_computation():
    """Holm (1979) by hand: sorted p 0.005, 0.01, 0.03, 0.04 of m = 4 tests are multiplied by
    4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04, made non-decreasing -> 0.02, 0.03, 0.06, 0.06, and
    returned in the input order; products above 1 are cut at 1."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 2 * 0.5 = 1.0; 0.6 lifted to the running max
    assert holm([0.04]) == [0.04] and holm([]) == []
    assert holm([0.01, 0.01, 0.2]) == pytest.approx([0.03, 0.03, 0.2])  # ties: 3p, max(3p, 2p)
    # never below the raw p, never above 1, and stricter than Bonferroni only where it may be
    ps = [0.001, 0.2, 0.012, 0.03, 0.5, 0.04]
    adj = holm(ps)
    assert all(p <= a <= min(1.0, len(ps) * p) for p, a in zip(ps, adj))
    for bad in ([0.1, -0.01], [1.2], [float("nan")]):
        with pytest.raises(ValueError, match="holm"):
            holm(bad)


def test_paired_block_holm_adjusts_the_primary_comparisons(tmp_path):
    """The family: cocktail vs G, S, WA, zero-shot, popularity and the best baseline (here
    sasrec, above gru4rec), on NDCG@1 and NDCG@3; p_holm equals Holm over exactly those raw p;
    other baselines, scorer variants and metrics keep their raw p only. Re-recording a row
    removes the adjusted values until the block is recomputed."""
    users = [f"u{i}" for i in range(20)]
    _record(tmp_path, "cocktail", [1] * 10 + [2] * 10, users, scorer="likelihood")
    for name, ranks, meta in (
            ("general", [2] * 20, {}), ("specific", [1] * 14 + [3] * 6, {}),
            ("wa", [1] * 9 + [2] * 11, {}), ("zero_shot", [C] * 20, {}),
            ("popularity", [4] * 20, {"scorer": "popularity"}),
            ("sasrec", [1] * 8 + [3] * 12, {"kind": "baseline"}),
            ("gru4rec", [3] * 20, {"kind": "baseline"}),
            ("pop", [1] * 20, {"kind": "baseline"}),  # the popularity repeat: never "best"
            ("cocktail.beam", [2] * 20, {"scorer": "beam"})):
        _record(tmp_path, name, ranks, users, **meta)
    data = update_paired(tmp_path)
    primary = data["paired_info"]["primary"]
    assert primary["comparisons"] == ["general", "specific", "wa", "zero_shot", "popularity",
                                      "sasrec"]
    assert primary["best_baseline"] == "sasrec" and primary["metrics"] == ["ndcg@1", "ndcg@3"]
    assert primary["family_size"] == 12
    paired = data["paired"]
    family = [(f"cocktail_vs_{r}", m) for r in primary["comparisons"] for m in ("ndcg@1", "ndcg@3")]
    expected = holm([paired[k][m]["p"] for k, m in family])
    assert [paired[k][m]["p_holm"] for k, m in family] == pytest.approx(expected)
    assert any(paired[k][m]["p_holm"] > paired[k][m]["p"] for k, m in family)
    for k, tests in paired.items():
        for m, t in tests.items():
            assert ("p_holm" in t) == ((k, m) in family), (k, m)
    md = (tmp_path / "results.md").read_text()
    assert "p (Holm)" in md and "12 tests" in md and "SASRec (best baseline)" in md
    gru = [ln for ln in md.splitlines() if ln.startswith("| GRU4Rec | NDCG@1 |")]
    assert len(gru) == 1 and gru[0].endswith("| – |")
    _record(tmp_path, "gru4rec", [1] * 20, users, kind="baseline")  # now the best baseline
    stale = load_results(tmp_path)
    assert "primary" not in stale["paired_info"]
    assert not any("p_holm" in t for tests in stale["paired"].values() for t in tests.values())
    assert update_paired(tmp_path)["paired_info"]["primary"]["best_baseline"] == "gru4rec"


def test_paired_refuses_different_sample_sets(tmp_path):
    users = [f"u{i}" for i in range(6)]
    _record(tmp_path, "cocktail", [1] * 6, users)
    _record(tmp_path, "zero_shot", [3] * 6, users)
    # the same samples in another order are matched by id
    rows = read_jsonl(tmp_path / "predictions" / "zero_shot.jsonl")
    write_jsonl(tmp_path / "predictions" / "zero_shot.jsonl", rows[::-1])
    assert update_paired(tmp_path)["paired"]["cocktail_vs_zero_shot"]["hr@1"]["diff"] == 1.0
    _write_predictions(tmp_path, "zero_shot", [3] * 6, users,
                       ids=[f"s{i}" for i in range(5)] + ["other"])
    with pytest.raises(ValueError, match=r"cocktail vs zero_shot: not the same samples.*"
                                         r"1 only in zero_shot \['other'\]"):
        update_paired(tmp_path)
    # no cocktail row (or no predictions of it): no block
    data = {"variants": {"zero_shot": load_results(tmp_path)["variants"]["zero_shot"]}}
    assert paired_block(data, tmp_path / "predictions") == ({}, {})


def test_paired_refuses_rows_with_other_candidates_or_data(tmp_path):
    """Same sample ids are not enough: a row whose predictions hold another candidate list or
    target for an id, or whose results row names another data hash, is refused naming both
    rows and files; the same questions in another file order pair."""
    users = [f"u{i}" for i in range(6)]
    _record(tmp_path, "cocktail", [1] * 6, users, data_hash="h1")
    _record(tmp_path, "zero_shot", [3] * 6, users, data_hash="h1")
    cands = {f"s{i}": [f"t{i}", *(f"n{i}_{j}" for j in range(4))] for i in range(6)}

    def with_questions(name: str, change: dict[str, dict] | None = None) -> None:
        path = tmp_path / "predictions" / f"{name}.jsonl"
        rows = read_jsonl(path)
        for r in rows:
            r.update({"target": cands[r["id"]][0], "candidates": cands[r["id"]],
                      **(change or {}).get(r["id"], {})})
        write_jsonl(path, rows)

    with_questions("cocktail")
    with_questions("zero_shot")
    assert update_paired(tmp_path)["paired"]["cocktail_vs_zero_shot"]["hr@1"]["diff"] == 1.0
    other = [*cands["s2"][:1], "elsewhere", *cands["s2"][2:]]
    with_questions("zero_shot", {"s2": {"candidates": other}, "s4": {"candidates": other}})
    with pytest.raises(ValueError, match=r"cocktail vs zero_shot: same sample ids, different "
                                         r"questions \(candidates differs on 2 sample\(s\) "
                                         r"\['s2', 's4'\]\).*cocktail.jsonl.*zero_shot.jsonl"):
        update_paired(tmp_path)
    # the same candidates in another order: another prompt for an instruction-format LLM
    with_questions("zero_shot", {"s0": {"candidates": cands["s0"][::-1]}})
    with pytest.raises(ValueError, match=r"candidates differs on 1 sample\(s\) \['s0'\]"):
        update_paired(tmp_path)
    with_questions("zero_shot", {"s5": {"target": "n5_1"}})
    with pytest.raises(ValueError, match=r"target differs on 1 sample\(s\) \['s5'\]"):
        update_paired(tmp_path)
    with_questions("zero_shot")
    data = load_results(tmp_path)
    data["variants"]["zero_shot"]["data_hash"] = "h2"
    with pytest.raises(ValueError, match=r"cocktail vs zero_shot: rows built from different "
                                         r"data \(data_hash h1 .* vs h2"):
        paired_block(data, tmp_path / "predictions")


# --------------------------------------------------------------------------- eval stage
def test_eval_stage_writes_ci_and_paired_block(tmp_path, tiny_llama_cfg, monkeypatch):
    """The stage with injected scorers (no adapter is loaded): cocktail ranks every positive
    first, the zero-shot backbone scores every candidate alike (rank 30)."""
    from test_eval_stage import N_CAND, FakeSwitcher, _write_data, make_cfg
    from test_stale_results import fake_adapter

    import reccocktail.evaluation.scorers as scorers
    from reccocktail.evaluation import stage

    _write_data(tmp_path / "data")
    for name in ("cocktail", "specific"):
        fake_adapter(tmp_path / "adapters" / name, name)

    class Scorer:
        def __init__(self, variant):
            self.variant = variant

        def score(self, samples):
            scores = torch.zeros(len(samples), N_CAND)
            for i, s in enumerate(samples):
                if self.variant == "cocktail":
                    scores[i, s.target_index] = 1.0
                elif self.variant == "specific":
                    scores[i] = torch.arange(N_CAND, dtype=torch.float).roll(i)
            return scores

    monkeypatch.setattr(stage, "AdapterSwitcher", FakeSwitcher)
    monkeypatch.setattr(scorers, "build_scorer",
                        lambda name, model, pb, cfg: Scorer(model or "zero_shot"))
    cfg = make_cfg(tmp_path, tiny_llama_cfg, variants=["zero_shot", "specific", "cocktail"])
    stage.run_eval_stage(cfg, tmp_path)

    data = load_results(tmp_path)
    scored = ("popularity", "zero_shot", "specific", "cocktail")
    for name in scored:
        row = data["variants"][name]
        assert set(row["ci"]) == set(row["metrics"]) and row["ci_method"]
        assert all(lo <= row["metrics"][m] <= hi for m, (lo, hi) in row["ci"].items())
    assert "ci" not in data["variants"]["random"]
    assert data["variants"]["cocktail"]["ci"]["ndcg@1"] == [1.0, 1.0]
    assert data["variants"]["zero_shot"]["ci"]["ndcg@1"] == [0.0, 0.0]
    n = data["variants"]["cocktail"]["num_users"]
    assert set(data["paired"]) == {f"cocktail_vs_{o}" for o in scored if o != "cocktail"}
    for other in ("popularity", "zero_shot", "specific"):
        block = data["paired"][f"cocktail_vs_{other}"]
        for m in ("ndcg@1", "ndcg@3", "mrr"):
            want = data["variants"]["cocktail"]["metrics"][m] - data["variants"][other]["metrics"][m]
            assert block[m]["diff"] == pytest.approx(want, abs=1e-12)
            assert block[m]["ci"][0] <= block[m]["diff"] <= block[m]["ci"][1]
            assert 0.0 < block[m]["p"] <= 1.0
    assert data["paired"]["cocktail_vs_zero_shot"]["ndcg@1"]["p"] == 2 / 2 ** n  # exact
    md = (tmp_path / "results.md").read_text()
    assert "## Paired tests (RecCocktail vs …)" in md and "| **1.0000** [1.000, 1.000] |" in md

    # a variant scored on other samples is refused, not compared
    preds = read_jsonl(tmp_path / "predictions" / "specific.jsonl")
    write_jsonl(tmp_path / "predictions" / "specific.jsonl", preds[:-1])
    with pytest.raises(ValueError, match="not the same samples"):
        update_paired(tmp_path)


def test_table_title_names_the_scorer_normalisation_and_format():
    from reccocktail.evaluation.results import render_markdown, table_title

    data = {"variants": {
        "random": {"metrics": {"ndcg@1": 1 / 30}, "scorer": "expectation"},
        "specific": {"metrics": {"ndcg@1": 0.2}, "scorer": "likelihood", "normalize": False,
                     "objective": "sequence"},
        "specific.generate": {"metrics": {"ndcg@1": 0.1}, "scorer": "generate",
                              "objective": "sequence"}}}
    title = table_title(data)
    assert title == ("Results (likelihood ranking, sum of log-probs; sequence prompts | "
                     "generate-and-match; sequence prompts)")
    assert render_markdown(data).startswith(f"# {title}\n")
    data["variants"]["specific"]["normalize"] = True
    assert "mean log-prob per token" in table_title(data)
    assert table_title({"variants": {}}) == "Results"
