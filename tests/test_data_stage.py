"""The data stage on the real datasets: every invariant of the on-disk contract, the cache, and
the errors for bad input. Training prompts are capped per user to keep the suite fast; the
invariants do not depend on the caps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from reccocktail.data.readers import read_recbole
from reccocktail.data.samples import load_items, load_samples
from reccocktail.data.stage import load_source, run_data_stage
from reccocktail.data.titles import normalise_title
from reccocktail.utils.io import read_json, read_jsonl

CONF = Path(__file__).resolve().parents[1] / "conf"
C = 30
# the root config holds the demo caps; these tests check the full splits
UNCAPPED = ["data.max_train_prompts=null", "data.max_test_users=null", "data.max_valid_users=null"]


def make_cfg(shared_data: Path, cache: Path, *overrides: str, uncapped: bool = True):
    caps = UNCAPPED if uncapped else []
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("run", overrides=[f"paths.data_root={shared_data}", *caps,
                                         f"paths.cache_dir={cache}", "logger=none", *overrides])


def user_items(folder: Path) -> dict[str, set[str]]:
    df = read_recbole(folder).interactions
    return df.groupby("user")["item"].agg(set).to_dict()


def check_samples(samples, touched: dict[str, set[str]] | None, history_len: int = 10):
    for s in samples:
        assert len(s.candidates) == C and len(set(s.candidates)) == C, s.id
        assert s.target in s.candidates
        assert 1 <= len(s.history) <= history_len
        if touched is not None:
            negs = set(s.candidates) - {s.target}
            assert not negs & touched[s.user], (s.id, negs & touched[s.user])


def check_target_contract(d: Path, touched: dict[str, set[str]]) -> dict:
    items = load_items(d / "items.tsv")
    splits = {k: load_samples(d / f"{k}.jsonl", items) for k in ("train", "valid", "test")}
    for samples in splits.values():
        check_samples(samples, touched)
    assert len({s.id for v in splits.values() for s in v}) == sum(len(v) for v in splits.values())
    stats = read_json(d / "stats.json")
    assert stats["samples"] == {k: len(v) for k, v in splits.items()}
    seqs = read_jsonl(d / "sequences.jsonl")
    assert {r["user"] for r in seqs} >= {s.user for s in splits["test"]}
    assert all(i in items for r in seqs for i in r["items"])
    assert read_json(d / "manifest.json")["data_hash"]
    return splits


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ml1m_touched(shared_data):
    return user_items(shared_data / "ml-1m")


def test_ml1m_warm_contract_and_cache(shared_data, cache, tmp_path, ml1m_touched):
    cfg = make_cfg(shared_data, cache, "domain=ml1m", "scenario=warm",
                   "data.max_train_prompts_per_user=3", "domain.general.max_train_prompts=3000")
    out = run_data_stage(cfg, tmp_path)
    assert out["reused_cache"] is False
    d = tmp_path / "data"
    splits = check_target_contract(d, ml1m_touched)
    # warm: the test target is the user's last item, the valid target the second-last
    seqs = {r["user"]: r["items"] for r in read_jsonl(d / "sequences.jsonl")}
    valid = {s.user: s for s in splits["valid"]}
    for s in splits["test"][:500]:
        assert s.history[-1] == valid[s.user].target
        assert valid[s.user].history == seqs[s.user][-10:]
    assert len(splits["test"]) == 6040
    gen = load_samples(d / "general" / "train.jsonl", load_items(d / "general" / "items.tsv"))
    assert len(gen) == 3000 and all(s.target.startswith("ml-latest-small:") for s in gen)

    # the same config again: reused, hard-linked, and said so
    again = run_data_stage(cfg, tmp_path / "second")
    assert again["reused_cache"] is True and again["data_hash"] == out["data_hash"]
    a, b = Path(out["cache_dir"]) / "test.jsonl", tmp_path / "second" / "data" / "test.jsonl"
    assert os.stat(a).st_ino == os.stat(b).st_ino or a.read_bytes() == b.read_bytes()
    # a different data config is a different cache entry; the test split does not change
    # when only training prompts are capped differently
    other = run_data_stage(make_cfg(shared_data, cache, "domain=ml1m",
                                    "data.max_train_prompts_per_user=1",
                                    "domain.general.max_train_prompts=100"), tmp_path / "third")
    assert other["data_hash"] != out["data_hash"]
    assert (tmp_path / "third/data/test.jsonl").read_bytes() == (d / "test.jsonl").read_bytes()


def test_ml1m_cold_contract(shared_data, cache, tmp_path, ml1m_touched):
    cfg = make_cfg(shared_data, cache, "domain=ml1m", "scenario=cold",
                   "data.max_train_prompts_per_user=3", "domain.general.max_train_prompts=100")
    run_data_stage(cfg, tmp_path)
    d = tmp_path / "data"
    splits = check_target_contract(d, ml1m_touched)
    new_targets = {s.target for s in splits["test"]}
    assert len(new_targets) > 100
    for name in ("train", "valid"):
        for s in splits[name]:
            line = {*s.history, s.target, *s.candidates}
            assert not line & new_targets, (s.id, line & new_targets)
    for r in read_jsonl(d / "sequences.jsonl"):
        assert not set(r["items"]) & new_targets
    stats = read_json(d / "stats.json")["split"]
    assert stats["scenario"] == "cold" and stats["new_items"] > 0
    assert len(splits["test"]) == (stats["users_with_a_new_item"]
                                   - stats["users_whose_first_item_is_new"])


def test_beauty_with_general_pool(shared_data, cache, tmp_path):
    cfg = make_cfg(shared_data, cache, "domain=beauty", "scenario=warm",
                   "data.max_train_prompts_per_user=2", "domain.general.max_train_prompts=4000",
                   "domain.general.max_valid_prompts=1000")
    run_data_stage(cfg, tmp_path)
    d = tmp_path / "data"
    check_target_contract(d, user_items(shared_data / "amazon-beauty"))
    items = load_items(d / "items.tsv")
    g_items = load_items(d / "general" / "items.tsv")
    g_train = load_samples(d / "general" / "train.jsonl", g_items)
    g_valid = load_samples(d / "general" / "valid.jsonl", g_items)
    assert len(g_train) == 4000 and len(g_valid) == 1000
    check_samples(g_train + g_valid, None)
    # no shared item (by normalised title) and no shared id; users are namespaced per source
    target_titles = {normalise_title(t) for t in items.values()}
    assert not {normalise_title(t) for t in g_items.values()} & target_titles
    assert not set(g_items) & set(items)
    assert all(i.split(":", 1)[0] in {"sports", "games"} for i in g_items)
    assert {s.user.split(":", 1)[0] for s in g_train} == {"sports", "games"}
    stats = read_json(d / "stats.json")["general"]
    assert set(stats["sources"]) == {"sports", "games"}
    assert stats["samples"] == {"train": 4000, "valid": 1000}
    assert len(read_json(d / "manifest.json")["general_hash"]) == 16


def test_ml100k_demo_sizes(shared_data, cache, tmp_path):
    cfg = make_cfg(shared_data, cache, "+experiment=ml100k_demo", uncapped=False)
    out = run_data_stage(cfg, tmp_path)
    assert out["samples"] == {"train": 128, "valid": 30, "test": 100}
    assert out["general_samples"] == {"train": 128, "valid": 30}
    d = tmp_path / "data"
    items = load_items(d / "items.tsv")
    test = load_samples(d / "test.jsonl", items)
    g = load_samples(d / "general" / "train.jsonl", load_items(d / "general" / "items.tsv"))
    # the general pool is the other half of ML-100k's users
    assert not {s.user for s in test} & {s.user.split(":", 1)[1] for s in g}


def test_popularity_negatives_and_prompt_only_settings(shared_data, cache, tmp_path):
    base = ["domain=ml100k", "data.max_train_prompts_per_user=5"]
    uni = run_data_stage(make_cfg(shared_data, cache, *base), tmp_path / "u")
    pop = run_data_stage(make_cfg(shared_data, cache, *base, "data.negatives=popularity"),
                         tmp_path / "p")
    assert uni["data_hash"] != pop["data_hash"]
    counts: dict[str, int] = {}
    for r in read_jsonl(tmp_path / "u/data/sequences.jsonl"):
        for i in r["items"]:
            counts[i] = counts.get(i, 0) + 1

    def mean_pop(run: str) -> float:
        test = load_samples(tmp_path / run / "data/test.jsonl")
        negs = [c for s in test for c in s.candidates if c != s.target]
        return sum(counts.get(c, 0) for c in negs) / len(negs)

    check_samples(load_samples(tmp_path / "p/data/train.jsonl"), None)
    assert mean_pop("p") > 1.5 * mean_pop("u")
    # the wording and the title budget do not change the splits: the cache is reused
    again = run_data_stage(make_cfg(shared_data, cache, *base, "data.max_title_tokens=8",
                                    "domain.prompt.noun=film"), tmp_path / "w")
    assert again["reused_cache"] and again["data_hash"] == uni["data_hash"]


# -- bad input ------------------------------------------------------------------------------------

def test_missing_dataset_names_the_path(shared_data, cache, tmp_path):
    cfg = make_cfg(shared_data, cache, "domain=toys")
    with pytest.raises(FileNotFoundError, match=r"domain\.source\.reader\.path: .*amazon-toys"):
        run_data_stage(cfg, tmp_path)


def test_empty_general_pool_fails_and_leaves_nothing(shared_data, cache, tmp_path):
    cfg = make_cfg(shared_data, tmp_path / "cache", "domain=ml100k",
                   "domain.general.remove_overlap=[items,users]")
    with pytest.raises(ValueError, match="general pool is empty.*remove_overlap"):
        run_data_stage(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "data").exists()
    assert list((tmp_path / "cache" / "data").iterdir()) == []  # no half-written cache entry


def test_unknown_scenario_and_sampler(shared_data, cache, tmp_path):
    with pytest.raises(ValueError, match="scenario.name"):
        run_data_stage(make_cfg(shared_data, cache, "scenario.name=hot"), tmp_path)
    with pytest.raises(ValueError, match="data.negatives"):
        run_data_stage(make_cfg(shared_data, cache, "data.negatives=hard"), tmp_path)


def test_too_small_domain_after_filtering(shared_data, cache, tmp_path):
    cfg = make_cfg(shared_data, cache, "data.min_core=100000")
    with pytest.raises(ValueError, match="no user is left.*data.min_core"):
        run_data_stage(cfg, tmp_path)


@pytest.mark.parametrize("cold_negatives", ["mixed", "new"])
def test_cold_negatives_new_items_only(shared_data, cache, tmp_path, cold_negatives):
    """scenario.cold_negatives=new: every test candidate is a new item (never in training or
    validation), so the target is not the one unfamiliar title; mixed: most negatives are warm."""
    cfg = make_cfg(shared_data, cache, "scenario=cold", f"scenario.cold_negatives={cold_negatives}")
    run_data_stage(cfg, tmp_path)
    d = tmp_path / "data"
    new = read_json(d / "new_items.json")
    warm = set(load_items(d / "items.tsv")) - set(new["test"]) - set(new["valid"])
    trained = {i for r in read_jsonl(d / "sequences.jsonl") for i in r["items"]}
    trained |= {i for s in load_samples(d / "train.jsonl") for i in (*s.history, s.target)}
    assert trained <= warm
    test = load_samples(d / "test.jsonl")
    negs = [c for s in test for c in s.candidates if c != s.target]
    warm_share = sum(c in warm for c in negs) / len(negs)
    if cold_negatives == "new":
        assert warm_share == 0.0
    else:
        assert warm_share > 0.7
    assert all(s.target not in warm for s in test)
    assert read_json(d / "stats.json")["cold_negatives"] == cold_negatives
    check_samples(test, None)


# -- the cold protocol ----------------------------------------------------------------------------

def _cold(shared_data, cache, tmp_path, *overrides):
    """The demo domain (ML-100k; its general pool is the other half of the same users), cold."""
    run_data_stage(make_cfg(shared_data, cache, "scenario=cold", *overrides), tmp_path)
    d = tmp_path / "data"
    items = load_items(d / "items.tsv")
    splits = {k: load_samples(d / f"{k}.jsonl", items) for k in ("train", "valid", "test")}
    seqs = {r["user"]: r["items"] for r in read_jsonl(d / "sequences.jsonl")}
    return d, items, splits, seqs, read_json(d / "new_items.json"), read_json(d / "stats.json")


def test_cold_ml100k_general_pool_holds_no_new_item(shared_data, cache, tmp_path):
    """The pool is the same movies watched by other users: every new item (test or validation)
    would be in it; the cold data stage drops them by normalised title and counts them."""
    d, items, _, _, new, stats = _cold(shared_data, cache, tmp_path)
    new_titles = {normalise_title(items[i]) for i in new["test"] + new["valid"]}
    g_items = load_items(d / "general" / "items.tsv")
    g_titles = {i: normalise_title(t) for i, t in g_items.items()}
    assert not set(g_titles.values()) & new_titles
    for f in ("train.jsonl", "valid.jsonl"):
        for s in load_samples(d / "general" / f, g_items):
            assert not {g_titles[i] for i in (*s.history, *s.candidates)} & new_titles, s.id
    for r in read_jsonl(d / "general" / "sequences.jsonl"):
        assert not {g_titles[i] for i in r["items"]} & new_titles
    removed = stats["general"]["new_items_removed"]
    assert removed == stats["general"]["sources"]["ml100k-rest"]["new_items_removed"] > 0
    # warm titles stay in the pool (remove_overlap: [users] only)
    assert len(set(g_titles.values()) & {normalise_title(t) for t in items.values()}) > 500


@pytest.mark.parametrize("part", ["before_test", "all_non_new"])
def test_cold_training_part_and_validation_split_on_ml100k(shared_data, cache, tmp_path, part):
    d, items, splits, seqs, new, stats = _cold(shared_data, cache, tmp_path,
                                               f"scenario.cold_train_part={part}")
    assert stats["cold_train_part"] == stats["split"]["cold_train_part"] == part
    assert read_json(d / "manifest.json")["cold_train_part"] == part
    test_new, valid_new = set(new["test"]), set(new["valid"])
    assert test_new and valid_new and not test_new & valid_new
    src = OmegaConf.to_container(make_cfg(shared_data, cache).domain.source, resolve=True)
    df = load_source(src, "domain.source").interactions
    touched = df.groupby("user")["item"].agg(set).to_dict()
    after = 0
    for s in splits["test"]:
        assert s.target in test_new and not set(s.candidates) & valid_new
        # before_test: the training part is exactly what precedes the test event
        after += seqs[s.user][-10:] != s.history
    if part == "before_test":
        assert after == 0
    else:
        assert after > len(splits["test"]) / 2  # the old rule trains on the user's future
    # the cold validation split: targets validation-new, nothing test-new, no trained item
    valid = splits["valid"]
    assert valid and all(s.target in valid_new for s in valid)
    assert not {i for s in valid for i in (*s.history, *s.candidates)} & test_new
    trained = {i for v in seqs.values() for i in v}
    trained |= {i for s in splits["train"] for i in (*s.history, s.target, *s.candidates)}
    assert not trained & (valid_new | test_new)
    assert stats["cold_valid"]["samples"] == len(valid)
    assert stats["cold_valid"]["new_items"] == len(valid_new)
    for s in valid[:50]:
        assert set(s.candidates) - {s.target} <= set(items) - touched.get(s.user, set())


def test_cold_new_negatives_for_validation_and_test(shared_data, cache, tmp_path):
    """scenario.cold_negatives=new: test lists hold test-new items only, validation lists
    validation-new items only (the same protocol, the other new items)."""
    _, _, splits, _, new, stats = _cold(shared_data, cache, tmp_path, "scenario.cold_negatives=new")
    assert all(set(s.candidates) <= set(new["test"]) for s in splits["test"])
    assert all(set(s.candidates) <= set(new["valid"]) for s in splits["valid"])
    assert stats["cold_valid"]["samples"] == len(splits["valid"]) > 100
    assert "valid_samples_without_enough_new_negatives" in stats["split"]


def test_cold_protocol_keys_are_in_the_data_hash(shared_data, cache):
    from reccocktail.data.stage import data_key

    keys = {data_key(make_cfg(shared_data, cache, "scenario=cold", *o))[0] for o in (
        [], ["scenario.cold_train_part=all_non_new"], ["scenario.valid_new_item_fraction=0.1"])}
    assert len(keys) == 3
