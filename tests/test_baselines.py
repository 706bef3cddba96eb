"""Baselines: sequence plumbing, causality, cold items, learning a planted pattern,
the stage's outputs, and (slow) SASRec on ML-1M warm."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import experiment_script, run_config
from omegaconf import OmegaConf

from reccocktail.baselines import stage as bstage
from reccocktail.baselines.models import FMLPRec, GRU4Rec, SASRec, score_loader
from reccocktail.baselines.sequential import (
    SequenceDataModule,
    left_pad,
    load_sequences,
    merge_history,
    training_windows,
)
from reccocktail.data.samples import write_items
from reccocktail.utils.io import read_json, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
RANDOM_NDCG1 = 1 / 30


# --------------------------------------------------------------------------- synthetic data
def make_planted(root: Path, num_users: int = 240, clusters: int = 3, per_cluster: int = 20,
                 length: int = 12, history_len: int = 5, seed: int = 0) -> Path:
    """Contract files with a planted pattern: each user walks one cluster's items in a fixed
    cyclic order from a random start (item k is followed by item k+1). Titles name the cluster
    and the position, so the text model can learn the same rule from text."""
    rng = random.Random(seed)
    genres = ["jazz", "horror", "garden", "chess", "sailing"][:clusters]
    numbers = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
               "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
               "eighteen", "nineteen", "twenty"]
    items = {f"i{c}_{k}": f"{genres[c]} volume {numbers[k]}"
             for c in range(clusters) for k in range(per_cluster)}
    all_items = list(items)
    seqs, valid, test = [], [], []
    for u in range(num_users):
        c, start = rng.randrange(clusters), rng.randrange(per_cluster)
        walk = [f"i{c}_{(start + j) % per_cluster}" for j in range(length)]
        seqs.append({"user": f"u{u}", "items": walk[:-2]})
        for split, pos in (("valid", length - 2), ("test", length - 1)):
            negs = rng.sample([i for i in all_items if i not in walk], 29)
            cands = negs + [walk[pos]]
            rng.shuffle(cands)
            row = {"id": f"u{u}:{split}", "user": f"u{u}", "history": walk[:pos][-history_len:],
                   "target": walk[pos], "candidates": cands}
            (valid if split == "valid" else test).append(row)
    data = root / "data"
    write_items(data / "items.tsv", items)
    write_jsonl(data / "sequences.jsonl", seqs)
    write_jsonl(data / "valid.jsonl", valid)
    write_jsonl(data / "test.jsonl", test)
    write_jsonl(data / "train.jsonl", [])
    return data


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run several times faster on one thread, above all on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return make_planted(tmp_path_factory.mktemp("planted"))


def settings(name: str, **over) -> dict:
    common = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "baselines" / "default.yaml").common)
    own = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "baselines" / f"{name}.yaml"))
    out = {**common, **own, "max_len": 12, "batch_size": 64, "max_epochs": 30, "patience": 30}
    out.update(over)
    return out


def trainer_factory(callbacks=None, **overrides) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks or [], **overrides)


def ndcg1(scores: torch.Tensor, samples) -> float:
    from reccocktail.evaluation.metrics import ranking_metrics

    return ranking_metrics(scores, [s.target_index for s in samples], ks=(1, 3))["ndcg@1"]


# --------------------------------------------------------------------------- plumbing
def test_left_pad_and_windows_cover_every_target_once():
    assert left_pad([1, 2, 3], 5) == [0, 0, 1, 2, 3]
    assert left_pad([1, 2, 3, 4], 2) == [3, 4]
    seq = list(range(1, 12))  # 11 items -> 10 next-item targets
    windows = training_windows(seq, max_len=4, max_windows=None)
    targets = [t for w in windows for t in w[1:]]
    assert sorted(targets) == seq[1:]
    assert all(len(w) <= 5 for w in windows)
    assert windows[0][-1] == 11  # most recent first
    assert training_windows(seq, max_len=4, max_windows=1) == [seq[-5:]]
    assert training_windows([7], max_len=4, max_windows=None) == []


def test_merge_history_extends_only_a_continuing_history():
    train = ["a", "b", "c", "d"]
    assert merge_history(train, ["c", "d"]) == train  # validation sample
    assert merge_history(train, ["c", "d", "v"]) == [*train, "v"]  # test sample
    # a history from the middle of the sequence (cold target): never glued to later items
    assert merge_history(train, ["a", "b"]) == ["a", "b"]
    assert merge_history([], ["x"]) == ["x"]


def test_load_sequences_names_the_bad_line(tmp_path):
    p = tmp_path / "sequences.jsonl"
    p.write_text('{"user": "u1", "items": ["a"]}\n{"user": "u2", "items": "a"}\n')
    with pytest.raises(ValueError, match=r"sequences.jsonl:2"):
        load_sequences(p)


def test_unknown_item_is_reported(tmp_path):
    data = make_planted(tmp_path, num_users=10)
    with open(data / "sequences.jsonl", "a") as fh:
        fh.write(json.dumps({"user": "zz", "items": ["i0_1", "nope"]}) + "\n")
    with pytest.raises(ValueError, match="'nope' is not in items.tsv"):
        SequenceDataModule(data).load()


@pytest.mark.parametrize("cls", [SASRec, FMLPRec, GRU4Rec])
def test_sequence_models_are_causal(cls):
    """The state at position t must not depend on items after t (training sees every position)."""
    torch.manual_seed(0)
    model = cls(num_items=30, dim=16, max_len=8, dropout=0.0).eval()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    changed = seq.clone()
    changed[0, 6:] = torch.tensor([20, 21])
    a = model.encode(seq, torch.zeros(1, dtype=torch.long))
    b = model.encode(changed, torch.zeros(1, dtype=torch.long))
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)
    assert not torch.allclose(a[:, 7], b[:, 7], atol=1e-5)


# --------------------------------------------------------------------------- learning
# BPR-MF's ceiling here is knowing the user's cluster (~6 in-cluster candidates): NDCG@1 ~ 0.17;
# its user vectors move slowly at lr 1e-3 on 9 pairs per user, so the test trains it at 1e-2.
@pytest.mark.parametrize("name,floor,over", [
    ("bpr", 2.5 * RANDOM_NDCG1, {"lr": 1e-2, "max_epochs": 15}),
    ("gru4rec", 0.4, {"max_epochs": 25}),
    ("sasrec", 0.5, {"max_epochs": 12}),
    ("fmlp", 0.5, {"max_epochs": 12}),
])
def test_id_baseline_learns_planted_pattern(planted, name, floor, over):
    """Sequential models must learn the successor rule; BPR-MF (order-blind) at least the
    user's cluster. Both far above the random NDCG@1 = 1/30."""
    s = settings(name, patience=4, **over)
    dm = bstage.make_datamodule(planted, s, seed=0)
    dm.load()
    L.seed_everything(0, verbose=False)
    module = bstage.build_module(name, s, dm)
    info = bstage.fit_baseline(module, dm, s, trainer_factory)
    scores = score_loader(module, dm.samples_dataloader(dm.test_samples))
    assert scores.shape == (len(dm.test_samples), 30)
    assert info["best_epoch"] is not None
    assert ndcg1(scores, dm.test_samples) > floor


def test_untrained_items_keep_their_initial_embedding(tmp_path):
    """Items that never occur in training (cold items) are no softmax negatives either."""
    data = make_planted(tmp_path, num_users=60)
    # declare a fourth "cluster" of items that only exist in items.tsv
    items = {**{f"new{k}": f"brand new thing {k}" for k in range(5)}}
    from reccocktail.data.samples import load_items

    write_items(data / "items.tsv", {**load_items(data / "items.tsv"), **items})
    s = settings("sasrec", max_epochs=2)
    dm = bstage.make_datamodule(data, s, seed=0)
    module = bstage.build_module("sasrec", s, dm)
    new_rows = [dm.vocab.index[f"new{k}"] for k in range(5)]
    seen_row = dm.vocab.index["i0_1"]
    before = module.model.items.weight.detach().clone()
    bstage.fit_baseline(module, dm, s, trainer_factory)
    after = module.model.items.weight.detach()
    assert torch.equal(before[new_rows], after[new_rows])
    assert not torch.equal(before[seen_row], after[seen_row])


def test_popularity_ranks_by_training_counts(planted):
    dm = SequenceDataModule(planted)
    dm.load()
    scores = bstage.popularity_scores(dm, dm.test_samples[:3])
    s = dm.test_samples[0]
    counts = {i: sum(seq.count(i) for seq in dm.sequences.values()) for i in s.candidates}
    assert scores[0].tolist() == [float(counts[i]) for i in s.candidates]


def test_text_model_learns_planted_pattern(planted, tmp_path):
    pytest.importorskip("transformers")
    from reccocktail.baselines.text import locate_encoder, title_embeddings

    try:
        locate_encoder()
    except RuntimeError as err:
        pytest.skip(str(err))
    s = settings("unisrec", max_epochs=20, patience=4)
    dm = bstage.make_datamodule(planted, s, seed=0)
    dm.load()
    L.seed_everything(0, verbose=False)
    module = bstage.build_module("unisrec", s, dm, cache_dir=tmp_path)
    assert len(list((tmp_path / "text_embeddings").glob("*.safetensors"))) == 1
    cached = title_embeddings(dm.items, tmp_path)  # from the cache now
    assert torch.allclose(cached, module.model.text[1:])
    bstage.fit_baseline(module, dm, s, trainer_factory)
    scores = score_loader(module, dm.samples_dataloader(dm.test_samples))
    assert ndcg1(scores, dm.test_samples) > 0.3


# --------------------------------------------------------------------------- stage
def stage_config(out: Path, tmp_path: Path, names: list[str], group):
    """The composed run config of a baselines-stage test: `names` with the settings `group`,
    20 λ users set aside, a one-epoch CPU trainer, no logger."""
    return run_config({
        "seed": 1, "baseline": list(names), "baselines": group,
        "selection": {"lambda_users": 20, "transductive": False, "max_scored_users": None},
        "paths": {"output_dir": str(out), "cache_dir": str(tmp_path / "cache")},
        "trainer": {"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "devices": 1,
                    "max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
        "logger": None,
    })


def _fake_record_results(out_dir, variant, metrics, **meta):
    path = Path(out_dir) / "results.json"
    res = read_json(path) if path.exists() else {"variants": {}}
    res["variants"][variant] = {"metrics": metrics, **meta}
    path.write_text(json.dumps(res))


def test_stage_scores_the_eval_stages_samples(planted, tmp_path, monkeypatch):
    try:
        import reccocktail.evaluation.results  # noqa: F401
    except ImportError:  # the evaluation work lands it; until then a stand-in, tests only
        fake = type(sys)("reccocktail.evaluation.results")
        fake.record_results = _fake_record_results
        monkeypatch.setitem(sys.modules, "reccocktail.evaluation.results", fake)
    out = tmp_path / "run"
    (out / "data").mkdir(parents=True)
    for f in planted.iterdir():
        (out / "data" / f.name).write_bytes(f.read_bytes())
    group = OmegaConf.load(ROOT / "conf" / "baselines" / "default.yaml")
    group.pop("defaults")
    for n in ("pop", "gru4rec"):
        group[n] = OmegaConf.load(ROOT / "conf" / "baselines" / f"{n}.yaml")
    group.common.update(max_epochs=2, max_len=12)
    cfg = stage_config(out, tmp_path, ["pop", "gru4rec"], group)
    summary = bstage.run_baselines_stage(cfg, out)
    from reccocktail.data.samples import load_samples
    from reccocktail.data.selection import split_unlabeled

    _, scored = split_unlabeled(load_samples(out / "data" / "test.jsonl"), 20, 1, False)
    assert summary["scored_samples"] == len(scored) < 240
    results = read_json(out / "results.json")["variants"]
    for name in ("pop", "gru4rec"):
        preds = [json.loads(x) for x in (out / "predictions" / f"{name}.jsonl").read_text().splitlines()]
        assert [p["id"] for p in preds] == [s.id for s in scored]
        assert all(len(p["scores"]) == 30 and 1 <= p["rank"] <= 30 for p in preds)
        assert results[name]["kind"] == "baseline"
        assert 0.0 <= results[name]["metrics"]["ndcg@1"] <= 1.0
        ci = results[name]["ci"]  # a 95 % bootstrap interval for every metric
        assert set(ci) == set(results[name]["metrics"])
        assert all(lo <= results[name]["metrics"][m] <= hi for m, (lo, hi) in ci.items())
    with pytest.raises(ValueError, match="unknown name"):
        bstage.baseline_names(["sasrec", "bert4rec"])


def test_hydra_group_merges_common_and_model_settings():
    from hydra import compose, initialize_config_dir

    run_yaml = (ROOT / "conf" / "run.yaml").read_text()
    group = "baselines=default" if "baselines: default" in run_yaml else "+baselines=default"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=[group, "+baselines.sasrec.max_len=7",
                                        "baselines.common.lr=0.005", "baseline=[sasrec,pop]"])
    s = bstage.settings_for(cfg, "sasrec")
    assert s["max_len"] == 7 and s["lr"] == 0.005 and s["kind"] == "id"
    assert s["model"]["num_layers"] == 2
    assert bstage.settings_for(cfg, "fmlp")["max_len"] == 50  # per-model override stays local
    assert bstage.baseline_names(cfg.baseline) == ["sasrec", "pop"]
    assert bstage.baseline_names("bpr") == ["bpr"]
    with pytest.raises(ValueError, match="baselines.sasrec: no settings"):
        bstage.settings_for(OmegaConf.create({"baseline": "sasrec"}), "sasrec")


# --------------------------------------------------------------------------- real data
@pytest.mark.slow
def test_sasrec_ml1m_warm_in_plausible_range(shared_data, tmp_path):
    """Paper (RecCocktail, Table 2): SASRec NDCG@1 = 0.2257 on ML-1M. With the same protocol
    (leave-one-out, 29 uniform negatives) popularity alone reaches about 0.23, so a trained
    SASRec should land clearly above random and in the range of published numbers; training is
    capped here (2000 users, latest window of 50 items, <= 8 epochs, full softmax; measured
    0.2735 in 66 s on the 2-core CPU), so the bar is loose: 0.15 .. 0.60."""
    table = experiment_script("baselines_table")
    data = table.build_contract(shared_data / "ml-1m", tmp_path / "ml1m_warm", "warm",
                                max_users=2000, seed=42)
    s = settings("sasrec", max_len=50, batch_size=256, max_epochs=8, patience=3,
                 max_windows_per_user=1)
    dm = bstage.make_datamodule(data, s, seed=0)
    dm.load()
    L.seed_everything(0, verbose=False)
    module = bstage.build_module("sasrec", s, dm)
    bstage.fit_baseline(module, dm, s, trainer_factory)
    score = ndcg1(score_loader(module, dm.samples_dataloader(dm.test_samples)), dm.test_samples)
    print(f"SASRec ml-1m warm NDCG@1 = {score:.4f}")
    assert 0.15 < score < 0.60


def _tiny_recbole(folder: Path, users: int = 40, items: int = 30, per_user: int = 12) -> None:
    import random as _random

    rng = _random.Random(0)
    folder.mkdir(parents=True)
    name = folder.name
    rows = ["item_id:token\ttitle:token_seq"] + [f"i{i}\tMovie {i}" for i in range(items)]
    (folder / f"{name}.item").write_text("\n".join(rows) + "\n")
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(users):
        for t, i in enumerate(rng.sample(range(items), per_user)):
            inter.append(f"u{u}\ti{i}\t{t}")
    (folder / f"{name}.inter").write_text("\n".join(inter) + "\n")


def test_baselines_table_cold_contract_follows_the_pipeline_split(tmp_path):
    """The table's cold data ends each training part at the user's test event by default (the
    pipeline's rule) and `all_non_new` restores the longer part; no new item ever trains."""
    table = experiment_script("baselines_table")
    src = tmp_path / "tiny"
    _tiny_recbole(src)
    parts = {}
    for rule in ("before_test", "all_non_new"):
        data = table.build_contract(src, tmp_path / rule, "cold", seed=3, cold_fraction=0.2,
                                    num_candidates=5, cold_train_part=rule)
        seqs = {r["user"]: r["items"] for r in map(json.loads, open(data / "sequences.jsonl"))}
        test = [json.loads(line) for line in open(data / "test.jsonl")]
        valid = [json.loads(line) for line in open(data / "valid.jsonl")]
        assert test and valid
        new = {t["target"] for t in test} | {v["target"] for v in valid}
        assert not new & {i for s in seqs.values() for i in s}   # no new item trains
        assert not {t["target"] for t in test} & {v["target"] for v in valid}
        parts[rule] = (seqs, test)
    seqs, test = parts["before_test"]
    for t in test:  # the training part is exactly the history before the test event
        if t["user"] in seqs:
            part, hist = seqs[t["user"]], t["history"]
            k = min(len(part), len(hist))
            assert part[-k:] == hist[-k:]
            assert len(part) == len(hist) or len(hist) == 10
    longer = sum(len(s) for s in parts["all_non_new"][0].values())
    assert longer > sum(len(s) for s in seqs.values())
