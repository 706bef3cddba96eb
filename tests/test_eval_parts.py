"""The eval stage is its parts (plan, reference rows, score candidates / full catalogue, record):
run one by one they write the rows the stage writes; the eval block is parsed once per stage
and no part reads raw `eval.*` keys after that; the scorers and the full-catalogue protocol get
their own small configs, equal to what the raw keys say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_eval_stage import _write_data, make_cfg
from test_stale_results import _fakes, fake_adapter

from reccocktail.evaluation import full_catalogue as fc
from reccocktail.evaluation import samples as samples_mod
from reccocktail.evaluation.config import EvalConfig, ScorerConfig, eval_config
from reccocktail.evaluation.results import load_results
from reccocktail.evaluation.scorers import build_scorer
from reccocktail.utils.io import read_jsonl

VARIANTS = ["zero_shot", "specific", "cocktail"]
TIMING = ("seconds", "users_per_s", "recorded_at")


def _run_folder(out: Path) -> Path:
    _write_data(out / "data")
    for name in VARIANTS[1:]:
        fake_adapter(out / "adapters" / name, name)
    return out


def _rows(out: Path) -> dict:
    data = load_results(out)
    rows = {k: {f: v for f, v in row.items() if f not in TIMING}
            for k, row in data["variants"].items()}
    for row in rows.values():  # adapter paths differ by run folder only
        if row.get("adapter"):
            row["adapter"] = Path(row["adapter"]).name
    return {"variants": rows, "paired": data.get("paired")}


def test_the_parts_write_the_rows_the_stage_writes(tmp_path, tiny_llama_cfg, monkeypatch):
    stage = _fakes(monkeypatch, killed=set())
    a, b = _run_folder(tmp_path / "a"), _run_folder(tmp_path / "b")
    summary = stage.run_eval_stage(make_cfg(a, tiny_llama_cfg, variants=VARIANTS), a)

    cfg = make_cfg(b, tiny_llama_cfg, variants=VARIANTS)
    plan = stage.plan_eval(cfg, b)
    assert [n for n, _ in plan.variants] == VARIANTS and plan.catalogue is None
    assert isinstance(plan.ec, EvalConfig) and len(plan.samples) == plan.info["num_samples"]
    stage.start_rows(b, ["random", "popularity", *VARIANTS], "eval")
    keys = stage.record_reference_rows(b, plan)
    assert keys == ["random", "popularity"]
    keys += stage.score_variants(cfg, b, plan)
    parts = stage.record_eval(cfg, b, plan, keys)

    assert keys == ["random", "popularity", *VARIANTS]
    assert _rows(a) == _rows(b)
    assert parts["variants"] == summary["variants"]
    for k in keys[1:]:
        assert read_jsonl(a / "predictions" / f"{k}.jsonl") == read_jsonl(
            b / "predictions" / f"{k}.jsonl")
    # the fake cocktail ranks every target first: the rows are really its scores
    assert load_results(b)["variants"]["cocktail"]["metrics"]["ndcg@1"] == 1.0


def test_the_eval_block_is_parsed_once_and_never_read_raw_again(tmp_path, tiny_llama_cfg,
                                                                monkeypatch):
    stage = _fakes(monkeypatch, killed=set())
    out = _run_folder(tmp_path / "run")
    parsed, raw = [], []

    def counting(cfg):
        parsed.append(1)
        return eval_config(cfg)

    def recording(real):
        def need(cfg, key, where=None):
            raw.append(key if where is None else f"{where}.{key}")
            return real(cfg, key, where)
        return need

    for mod in (stage, fc):
        monkeypatch.setattr(mod, "eval_config", counting)
    for mod in (stage, fc, samples_mod):
        monkeypatch.setattr(mod, "need", recording(mod.need))
    stage.run_eval_stage(make_cfg(out, tiny_llama_cfg, variants=VARIANTS), out)
    assert len(parsed) == 1
    assert raw and not [k for k in raw if k.startswith("eval.")]  # backbone.name etc. only
    assert load_results(out)["variants"]["cocktail"]["metrics"]["ndcg@1"] == 1.0


def test_scorer_config_is_the_scorer_part_of_the_eval_block():
    from test_typed_configs import cfg_of

    for overrides in ((), ("eval=beam", "eval.search=exact"), ("eval=generate",
                                                                "eval.max_new_tokens=7")):
        ec = eval_config(cfg_of(*overrides))
        sc = ec.scorers
        assert isinstance(sc, ScorerConfig)
        assert {f.name: getattr(ec, f.name) for f in dataclasses.fields(ScorerConfig)} == \
            dataclasses.asdict(sc)
        for name in ec.scorer:  # built from either, the scorer is the same
            a, b = build_scorer(name, None, None, ec), build_scorer(name, None, None, sc)
            assert type(a) is type(b) and a == b
    beam = build_scorer("beam", None, None, eval_config(cfg_of("eval=beam", "eval.search=exact")))
    assert beam.search_mode == "exact" and beam.beam_size == 10
    with pytest.raises(ValueError, match="eval.scorer: unknown scorer 'beem'"):
        build_scorer("beem", None, None, sc)


def test_catalogue_config_parses_what_the_raw_keys_say(tmp_path):
    from test_typed_configs import cfg_of

    from reccocktail.data.samples import load_samples

    assert fc.catalogue_config(cfg_of()) is None  # sampled candidates
    cfg = cfg_of("eval.candidates=all", "eval.full_ks=[1,5]", "eval.beam_size=12",
                 "eval.exclude_seen=false")
    cc = fc.catalogue_config(cfg)
    assert (cc.ks, cc.cutoff) == fc.full_settings(cfg) == ((1, 5), 12)
    assert cc.exclude_seen is False and cc.scenario == "warm"
    default = fc.catalogue_config(cfg_of("eval.candidates=all"))
    assert (default.ks, default.cutoff) == ((1, 5, 10, 20), 20)  # beam null: the largest cut-off
    for overrides, key in ((("eval.candidates=all", "eval.beam_size=10"), "eval.beam_size=10"),
                           (("eval.candidates=all", "eval=generate"), "eval.scorer=generate"),
                           (("eval.candidates=every",), "eval.candidates=every")):
        bad = cfg_of(*overrides)
        with pytest.raises(ValueError, match=key):
            fc.catalogue_config(bad)
        assert key in fc.check_config(bad)[0]  # the config check says the same
    # the catalogue loads from the parsed settings alone, as from the raw config
    _write_data(tmp_path / "data")
    samples = load_samples(tmp_path / "data" / "test.jsonl")
    a = fc.FullCatalogue.load(cc, tmp_path, samples)
    b = fc.FullCatalogue.load(cfg, tmp_path, samples)
    assert (a.items, a.excluded, a.ks, a.cutoff) == (b.items, b.excluded, b.ks, b.cutoff)
    # no stats.json and no scenario in the config: the missing key is named
    with pytest.raises(KeyError, match="scenario.name"):
        fc.catalogue_mask(tmp_path / "data", a.items, None, None)
    with pytest.raises(ValueError, match="eval.candidates=sampled"):
        fc.FullCatalogue.load(cfg_of(), tmp_path, samples)
