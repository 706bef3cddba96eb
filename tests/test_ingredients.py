"""Any number of ingredients (`ingredients:`): the stage list, λ by name, the simplex grid,
uniform WA, one results row per ingredient; and the default pair [general, specific] keeps the
stages, keys, grid points and files of the two-ingredient code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

import reccocktail.models.stage as model_stage
from reccocktail.cocktail.stage import grid_points, grid_search, simplex_grid
from reccocktail.config_check import config_errors
from reccocktail.evaluation.config import eval_config
from reccocktail.evaluation.results import ordered_variants
from reccocktail.ingredients import downstream, expand, ingredient_names, resolve_weights
from reccocktail.models import adapters as ad
from reccocktail.models.adapters import read_lora
from reccocktail.models.training import result_config, specific_plan, tuning_config
from reccocktail.models.tuning_config import parse_tuning
from reccocktail.pipeline import STAGES, run
from reccocktail.utils.io import stable_hash, to_plain

ROOT = Path(__file__).resolve().parents[1]
EXTRA = "ml100k_extra"  # a second general source of the demo domain, added by the tests


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("run", overrides=["logger=none", *overrides])


def make_cfg(shared_data: Path, out: Path, cache: Path, *overrides: str):
    """debug=fast on ML-100k with a second general source (another seeded user part of the
    same file, its own id namespace), so a source's ingredient trains on rows G also has but
    not on all of them."""
    backbone_cache = os.environ["RECCOCKTAIL_CACHE"]
    cfg = compose_cfg("debug=fast", f"paths.data_root={shared_data}", f"paths.output_dir={out}",
                      f"paths.cache_dir={cache}", f"backbone.cache_dir={backbone_cache}",
                      f"backbone.tokenizer.cache_dir={backbone_cache}", *overrides)
    with open_dict(cfg):
        extra = OmegaConf.to_container(cfg.domain.general.sources.ml100k_rest, resolve=True)
        extra.update(name="ml100k-extra", user_subset={"fraction": 0.5, "seed": 7,
                                                       "complement": False})
        cfg.domain.general.sources[EXTRA] = extra
    return cfg


# -- the two-ingredient behaviour, as the code before the list computed it ---------------------

OLD_STAGES = {
    "data": "reccocktail.data.stage:run_data_stage",
    "general": "reccocktail.models.stage:run_general_stage",
    "specific": "reccocktail.models.stage:run_specific_stage",
    "mix": "reccocktail.cocktail.stage:run_mix_stage",
    "eval": "reccocktail.evaluation.stage:run_eval_stage",
    "baselines": "reccocktail.baselines.stage:run_baselines_stage",
}
OLD_DOWNSTREAM = {
    "data": ("general", "specific", "mix", "eval", "baselines"),
    "general": ("specific", "mix", "eval"),
    "specific": ("mix", "eval"),
    "mix": ("eval",),
    "eval": (),
    "baselines": (),
}


def old_tuning_config(cfg, stage: str) -> dict:
    """The stage's tuning config as the two-ingredient code built it."""
    plain = to_plain(cfg.tuning)
    t = {k: v for k, v in plain.items() if k not in ("general", "specific")}
    for k, v in (plain.get(stage) or {}).items():
        both = isinstance(v, dict) and isinstance(t.get(k), dict)
        t[k] = {**t[k], **v} if both else v
    t["init_seed"] = int(cfg.seed) if t["init_seed"] is None else t["init_seed"]
    t["seed"] = int(cfg.seed) if t["seed"] is None else t["seed"]
    t["precision"] = str(cfg.trainer.precision)
    return t


def old_result_config(t: dict) -> dict:
    """What of a stage's tuning dict entered an adapter's key, as the dict-based code took it."""
    out = {k: v for k, v in t.items() if k not in ("ckpt_path", "resume", "num_workers",
                                                   "checkpoint_every_n_steps", "reuse",
                                                   "log_every_n_steps")}
    if out["mode"] == "lora":
        out.pop("mode")
        out.pop("full")
    if not out["early_stopping"]["enabled"]:
        out.pop("early_stopping")
    if out["loss_normalization"] == "micro_batch":
        out.pop("loss_normalization")
    return out


def old_keys(cfg, out: Path) -> dict[str, str]:
    """G's and S's cache keys by the two-ingredient code's rules."""
    from reccocktail.data.prompts import prompt_wording

    data = out / "data"
    g = old_tuning_config(cfg, "general")
    s = old_tuning_config(cfg, "specific")
    extra = specific_plan(cfg, out, parse_tuning(s))
    return {"general": ad.general_cache_key(cfg.backbone, ad.general_data_hash(data),
                                            old_result_config(g), prompt_wording(cfg, True)),
            "specific": stable_hash(ad.backbone_identity(cfg.backbone), ad.target_data_hash(data),
                                    old_result_config(s), extra["prompt"], extra)}


TUNING_OPTIONS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" /
                                         "tuning").glob("*.yaml"))


@pytest.mark.parametrize("option", TUNING_OPTIONS)
@pytest.mark.parametrize("overrides", [
    (), ("tuning.loss_normalization=micro_batch",), ("tuning.early_stopping.enabled=true",),
    ("tuning.specific.init_from=general", "tuning.lr=1e-4"),
])
def test_the_typed_tuning_config_keys_adapters_byte_for_byte_as_the_dict_did(option, overrides):
    """The typed config's key part (`result_config`) is the dict-based code's, byte for byte,
    for every shipped tuning option and stage: adapters cached before the type keep their keys."""
    cfg = compose_cfg(f"tuning={option}", *overrides)
    for stage in ("general", "specific"):
        t = tuning_config(cfg, stage)
        old = old_tuning_config(cfg, stage)
        assert json.dumps(result_config(t)) == json.dumps(old_result_config(old))
        assert stable_hash(result_config(t)) == stable_hash(old_result_config(old))
        assert t.lr == float(old["lr"]) and t.betas == tuple(old["betas"])


def test_the_default_is_the_paper_pair_with_the_old_stages_and_variants():
    cfg = compose_cfg()
    names = ingredient_names(cfg)
    assert names == ["general", "specific"]
    assert expand(cfg.stages, names) == ["data", "general", "specific", "mix", "eval"]
    assert list(eval_config(cfg).variants) == ["zero_shot", "general", "specific", "wa",
                                               "cocktail"]
    assert STAGES == OLD_STAGES
    assert downstream(names) == OLD_DOWNSTREAM
    # the list spelt out keeps working, and so does a stage list that names ingredients
    assert expand(["data", "general", "specific", "mix", "eval"], names) == \
        expand(cfg.stages, names)


def test_stages_and_stale_rules_follow_the_list():
    names = ["general", "specific", "games"]
    assert expand(["data", "ingredients", "mix", "eval"], names) == ["data", *names, "mix", "eval"]
    d = downstream(names)
    assert d["data"] == (*names, "mix", "eval", "baselines")
    assert d["games"] == ("mix", "eval") and d["general"] == ("specific", "mix", "eval")
    assert downstream(["specific", "games"])["specific"] == ("mix", "eval")
    from reccocktail.evaluation.stage import adapter_stages

    assert adapter_stages(names) == {"general": "general", "specific": "specific",
                                     "games": "games", "wa": "mix", "cocktail": "mix"}


def test_grid_points_for_two_ingredients_are_the_old_grid():
    old = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    pairs = [[g, 1.0 - g] for g in old]  # the two-ingredient grid_search's points
    assert grid_points(old, None, 2) == pairs
    assert simplex_grid(2, 0.1) == pairs  # bit-equal floats, so the same scores and choice


@pytest.mark.parametrize("k,step", [(3, 0.5), (3, 0.1), (4, 0.25)])
def test_the_simplex_grid_is_every_point_of_its_step(k, step):
    from itertools import product
    from math import comb

    n = round(1 / step)
    points = simplex_grid(k, step)
    want = {c for c in product(range(n + 1), repeat=k) if sum(c) == n}
    got = {tuple(round(x * n) for x in p) for p in points}
    assert got == want and len(points) == len(want) == comb(n + k - 1, k - 1)
    for p in points:
        assert len(p) == k and min(p) >= 0 and abs(sum(p) - 1) < 1e-12
        assert all(abs(x * n - round(x * n)) < 1e-9 for x in p)


def test_grid_search_visits_exactly_the_simplex_points():
    class Mixer:
        def __init__(self):
            self.seen = []

        def set_weights(self, w):
            self.seen.append([float(x) for x in w])

    class Scorer:  # best at λ = (0.5, 0, 0.5)
        def __init__(self, model, builder, batch_size=8, normalize=False):
            pass

        def score(self, samples):
            w = mixer.seen[-1]
            s = torch.zeros(len(samples), 2)
            s[:, 0] = 1.0 if w == pytest.approx([0.5, 0.0, 0.5]) else -1.0
            return s

    def metrics(scores, target, ks=(1, 3)):
        hit = float((scores.argmax(1) == target).float().mean())
        return {"ndcg@1": hit, "ndcg@3": hit}

    class S:
        target_index = 0

    mixer = Mixer()
    points = simplex_grid(3, 0.5)
    best, rows = grid_search(None, mixer, None, [S(), S()], points, scorer_factory=Scorer,
                             metrics_fn=metrics)
    assert mixer.seen == points and [r["lambda"] for r in rows] == points
    assert best == [0.5, 0.0, 0.5]


# -- bad input: early, naming the key ------------------------------------------------------

THREE = f"ingredients=[general,specific,{EXTRA}]"


@pytest.mark.parametrize("overrides,match", [
    (["ingredients=[general,specific,nope]"],
     r"ingredients: unknown name\(s\) \['nope'\]; choose from \['general', 'specific', "
     r"'ml100k_rest'\]"),
    (["ingredients=[general,specific,general]"], r"ingredients: \['general'\] given twice"),
    (["ingredients=[specific]"], r"ingredients: .* a cocktail mixes at least 2"),
    (["ingredients=[specific,general]", "tuning.specific.init_from=general"],
     r"tuning.specific.init_from=general: .* must list general before specific"),
    (["mix=fixed", "ingredients=[general,specific,ml100k_rest]", "mix.lambdas=[0.5,0.5]"],
     r"mix.lambdas: 2 weight\(s\) for 3 ingredients"),
    (["mix=fixed", "mix.lambdas={general:0.5,sports:0.5}"],
     r"mix.lambdas: a mapping must name every ingredient .* missing \['specific'\]; "
     r"not an ingredient: \['sports'\]"),
    (["mix=fixed", "mix.lambdas={general:0.7,specific:0.7}"],
     r"mix.lambdas: expected 2 non-negative weights summing to 1"),
    (["mix=grid", "ingredients=[general,specific,ml100k_rest]"], r"set mix.grid_step"),
    (["mix=grid", "mix.grid_step=0.3"], r"mix.grid_step=0.3: expected 1/n"),
    (["mix.init_lambdas={general:1.0}"], r"mix.init_lambdas: a mapping must name every"),
])
def test_bad_ingredients_and_lambdas_fail_naming_the_key(overrides, match):
    errors = config_errors(compose_cfg(*overrides))
    assert any(__import__("re").search(match, e) for e in errors), errors


def test_a_source_trains_with_the_general_block_and_its_own_over_it():
    plain = compose_cfg("ingredients=[general,specific,ml100k_rest]")
    own = compose_cfg("ingredients=[general,specific,ml100k_rest]",
                      "+tuning.ml100k_rest.max_samples=5", "+tuning.ml100k_rest.lr=0.001")
    assert config_errors(own) == []
    assert tuning_config(plain, "ml100k_rest") == tuning_config(plain, "general")
    t = tuning_config(own, "ml100k_rest")
    assert (t.max_samples, t.lr) == (5, 0.001)
    # G (and so its key) does not see the source's block
    assert tuning_config(own, "general") == tuning_config(plain, "general")
    bad = compose_cfg("ingredients=[general,specific,ml100k_rest]", "+tuning.ml100k_rest.lr=-1",
                      "+tuning.ml100k_rest.nope=1")
    errors = config_errors(bad)
    assert any(e.startswith("tuning.ml100k_rest.lr=-1") for e in errors), errors
    assert any(e.startswith("tuning.ml100k_rest.nope: unknown key") for e in errors), errors


def test_lambdas_by_name_or_in_order_are_the_same_weights():
    names = ["general", "specific", "games"]
    as_map = resolve_weights({"games": 0.3, "general": 0.2, "specific": 0.5}, names, "mix.lambdas")
    assert as_map == resolve_weights([0.2, 0.5, 0.3], names, "mix.lambdas") == [0.2, 0.5, 0.3]
    # the mix key sees the weights, not their spelling; null (uniform) keys as [0.5, 0.5]
    from reccocktail.cocktail.stage import mix_config

    by_list = mix_config(compose_cfg("mix=fixed", "mix.lambdas=[0.5,0.5]"))
    by_map = mix_config(compose_cfg("mix=fixed", "mix.lambdas={specific:0.5,general:0.5}"))
    uniform = mix_config(compose_cfg("mix=fixed"))
    assert by_list.block == by_map.block == uniform.block
    assert uniform.lambdas == [0.5, 0.5]


def test_the_readme_override_passes_the_config_check_and_preflight(shared_data):
    """`python run.py +experiment=beauty_cold 'ingredients=[general,specific,games]'`, with the
    plumbing-check settings (the experiment's own backbone and GPU are machine facts)."""
    from reccocktail.preflight import preflight_problems

    cfg = compose_cfg("+experiment=beauty_cold", "ingredients=[general,specific,games]",
                      "debug=fast", "backbone=tiny_llama", "trainer=cpu",
                      f"paths.data_root={shared_data}")
    assert config_errors(cfg) == []
    stages = expand(cfg.stages, ingredient_names(cfg))
    assert stages == ["data", "general", "specific", "games", "mix", "eval"]
    assert preflight_problems(cfg, stages, []) == []
    assert list(eval_config(cfg).variants) == ["zero_shot", "general", "specific", "games", "wa",
                                               "cocktail"]


# -- a three-ingredient run end to end ------------------------------------------------------

@pytest.fixture
def trained(monkeypatch):
    calls: list[str] = []
    real = model_stage.train_adapter

    def spy(cfg, out_dir, stage, *args, **kwargs):
        calls.append(stage)
        return real(cfg, out_dir, stage, *args, **kwargs)

    monkeypatch.setattr(model_stage, "train_adapter", spy)
    return calls


def _factors(path: Path):
    a = read_lora(path)
    return a, {m: (a.A[m].double(), a.B[m].double()) for m in a.modules}


def test_three_ingredients_train_mix_and_score_each(shared_data, tmp_path, trained):
    out, cache = tmp_path / "run", tmp_path / "cache"
    lam = {"general": 0.2, "specific": 0.5, EXTRA: 0.3}
    cfg = make_cfg(shared_data, out, cache, THREE, "mix=fixed",
                   f"mix.lambdas={{general:0.2,specific:0.5,{EXTRA}:0.3}}")
    summaries = run(cfg)
    names = ["general", "specific", EXTRA]
    assert list(summaries) == ["data", *names, "mix", "eval"]
    assert trained == names
    # G and S are the two-ingredient code's adapters: the same keys
    assert {n: summaries[n]["key"] for n in ("general", "specific")} == old_keys(cfg, out)

    # the source's ingredient: trained like G, on its own rows of the pool only
    m = ad.read_manifest(out / "adapters" / EXTRA)
    assert m["kind"] == "source" and m["config"]["source"]["user_prefix"] == "ml100k-extra:"
    pool = [json.loads(x) for x in (out / "data" / "general" / "train.jsonl").read_text().splitlines()]
    mine = [r for r in pool if r["user"].startswith("ml100k-extra:")]
    assert 0 < m["metrics"]["train_samples"] <= len(mine) < len(pool)
    assert summaries[EXTRA]["key"] != summaries["general"]["key"]
    assert (cache / "adapters" / "source" / summaries[EXTRA]["key"]).is_dir()

    # the fixed mix is Σ λ_i (A_i, B_i), WA the uniform average (mode ab, equal scalings)
    parts = [_factors(out / "adapters" / n) for n in names]
    assert len({round(a.scaling, 12) for a, _ in parts}) == 1
    for variant, weights in (("cocktail", [lam[n] for n in names]), ("wa", [1 / 3] * 3)):
        mixed, f = _factors(out / "adapters" / variant)
        assert mixed.scaling == pytest.approx(parts[0][0].scaling)
        for mod, (A, B) in f.items():
            want_a = sum(w * p[1][mod][0] for w, p in zip(weights, parts))
            want_b = sum(w * p[1][mod][1] for w, p in zip(weights, parts))
            assert torch.allclose(A, want_a, atol=1e-6) and torch.allclose(B, want_b, atol=1e-6)
    info = json.loads((out / "mix" / "lambda.json").read_text())
    assert info["ingredients"] == info["adapters"] == names
    assert info["lambdas"] == pytest.approx([lam[n] for n in names])  # float32, as before
    assert info["lambda_by_name"] == pytest.approx(lam)

    # one results row per ingredient, in list order, between zero-shot and WA
    rows = json.loads((out / "results.json").read_text())["variants"]
    llm = [v for v in ordered_variants(rows) if v not in ("random", "popularity")]
    assert llm == ["zero_shot", *names, "wa", "cocktail"]
    assert rows[EXTRA]["adapter_kind"] == "source"
    assert "RecCocktail-ml100k_extra (ingredient)" in (out / "results.md").read_text()

    # entropy: one learned weight per ingredient, summing to 1 (the adapters are reused)
    ent = run(make_cfg(shared_data, out, cache, THREE, "stages=[mix]", "mix.steps=1"))
    assert trained == names and ent["mix"]["reused"] is False
    info = json.loads((out / "mix" / "lambda.json").read_text())
    assert len(info["lambdas"]) == 3 and abs(sum(info["lambdas"]) - 1) < 1e-6
    assert set(info["lambda_by_name"]) == set(names)
