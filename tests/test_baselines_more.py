"""AlphaRec-, VQ-Rec- and RecFormer-style baselines: learning a planted pattern, scoring exactly
the stored candidates through the stage, and scoring new items from their text.

Fast by construction: titles are embedded by a deterministic hashed bag of words (no language
model) and RecFormer fine-tunes a tiny random BERT written to a temporary folder; one test loads
the real all-MiniLM-L6-v2 for RecFormer when the package is installed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from test_baselines import (  # noqa: F401  (one_thread: autouse fixture)
    RANDOM_NDCG1,
    ROOT,
    make_planted,
    ndcg1,
    one_thread,
    settings,
    stage_config,
    trainer_factory,
)

from reccocktail.baselines import alpharec, recformer, vqrec
from reccocktail.baselines import stage as bstage
from reccocktail.baselines.models import score_loader
from reccocktail.data.samples import load_items, write_items
from reccocktail.utils.io import iter_jsonl, read_json, write_jsonl

NAMES = ("alpharec", "vqrec", "recformer")
DIM = 32


def hashed_embed(titles: list[str]) -> torch.Tensor:
    """A deterministic stand-in for a sentence encoder: the normalised sum of one seeded random
    vector per lower-cased word."""
    def word(w: str) -> torch.Tensor:
        seed = int(hashlib.sha256(w.encode()).hexdigest()[:8], 16)
        return torch.randn(DIM, generator=torch.Generator().manual_seed(seed))

    return torch.stack([F.normalize(sum(word(w) for w in t.lower().split()), dim=0)
                        for t in titles])


def tiny_bert(folder: Path, words: set[str]) -> Path:
    """A random 2-layer BERT (hidden 32) with a word-level vocabulary, saved as safetensors."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", *sorted(words)]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return make_planted(tmp_path_factory.mktemp("planted_more"))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    words = {"title", "brand", "new", "thing", "jazz", "horror", "garden", "volume", "one", "two",
             "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
             "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
             "twenty"}
    return tiny_bert(tmp_path_factory.mktemp("tiny_bert"), words)


# settings that make each model learn the planted walk in a few seconds
FAST = {
    "alpharec": {"lr": 1e-2, "max_epochs": 10},
    "vqrec": {"max_epochs": 10, "model": {"num_subspaces": 4, "num_codes": 16, "num_heads": 2}},
    "recformer": {"lr": 3e-3, "batch_size": 32, "max_epochs": 4, "limit_val_batches": None,
                  "eval_batch_size": 256,
                  "model": {"steps_per_epoch": None, "max_items": 3, "max_tokens": 64,
                            "temperature": 0.1}},
}


def fast_settings(name: str, bert: Path, **over) -> dict:
    s = settings(name, patience=10, **FAST[name])
    if name == "vqrec":
        s["model"] = {**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "baselines" /
                                                                "vqrec.yaml"))["model"],
                      **FAST[name]["model"]}
    if name == "recformer":
        s["model_dir"] = str(bert)
    s.update(over)
    return s


def build(name: str, s: dict, dm) -> L.LightningModule:
    if name == "recformer":
        return recformer.build(s, dm)
    return {"alpharec": alpharec, "vqrec": vqrec}[name].build(s, dm, embed=hashed_embed)


def train(name: str, data: Path, bert: Path, **over):
    s = fast_settings(name, bert, **over)
    dm = bstage.make_datamodule(data, s, seed=0)
    dm.load()
    L.seed_everything(0, verbose=False)
    module = build(name, s, dm)
    info = bstage.fit_baseline(module, dm, s, trainer_factory)
    return module, dm, s, info


# --------------------------------------------------------------------------- learning
@pytest.mark.parametrize("name", NAMES)
def test_learns_planted_pattern(planted, bert_dir, name):
    """The walk's next item (or, for AlphaRec's order-blind graph, the items next to the user's
    own in other users' walks) far above the random NDCG@1 = 1/30."""
    module, dm, _, info = train(name, planted, bert_dir)
    scores = score_loader(module, dm.samples_dataloader(dm.test_samples))
    assert scores.shape == (len(dm.test_samples), 30)
    assert info["best_epoch"] is not None
    assert ndcg1(scores, dm.test_samples) > 0.3  # random: RANDOM_NDCG1 = 1/30


# --------------------------------------------------------------------------- cold items
def cold_copy(src: Path, dst: Path, new_title: str) -> Path:
    """The planted data plus one item that never occurs in training, placed among every test
    sample's candidates (replacing a negative)."""
    items = load_items(src / "items.tsv")
    dst.mkdir(parents=True, exist_ok=True)
    write_items(dst / "items.tsv", {**items, "new0": new_title})
    for f in ("sequences.jsonl", "valid.jsonl", "train.jsonl"):
        (dst / f).write_bytes((src / f).read_bytes())
    rows = []
    for row in iter_jsonl(src / "test.jsonl"):
        j = next(k for k, c in enumerate(row["candidates"]) if c != row["target"])
        row["candidates"][j] = "new0"
        rows.append(row)
    write_jsonl(dst / "test.jsonl", rows)
    return dst


@pytest.mark.parametrize("name", NAMES)
def test_new_item_is_scored_from_its_text(planted, bert_dir, tmp_path, name):
    """Same trained weights, same samples; only the new item's title differs between two
    items.tsv files: its scores change and no other candidate's does (an ID model would give the
    new item one untrained embedding whatever its title)."""
    a = cold_copy(planted, tmp_path / "a", "jazz volume four")
    b = cold_copy(planted, tmp_path / "b", "horror volume nineteen")
    module, dm, s, _ = train(name, a, bert_dir, max_epochs=2)
    dm_b = bstage.make_datamodule(b, s, seed=0)
    dm_b.load()
    module_b = build(name, s, dm_b)
    module_b.load_state_dict(module.state_dict())
    scores_a = score_loader(module, dm.samples_dataloader(dm.test_samples))
    scores_b = score_loader(module_b, dm_b.samples_dataloader(dm_b.test_samples))
    new = torch.tensor([[c == "new0" for c in smp.candidates] for smp in dm.test_samples])
    assert int(new.sum()) == len(dm.test_samples)
    assert torch.allclose(scores_a[~new], scores_b[~new], atol=1e-5)
    diff = (scores_a[new] - scores_b[new]).abs()
    assert (diff > 1e-6).all() and diff.mean() > 1e-3


def test_vqrec_codes_come_from_text_and_training_items_only():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(41, DIM), dim=-1)
    train_items = torch.arange(1, 31)
    codes = vqrec.item_codes(text, train_items, num_subspaces=4, num_codes=8, quantizer="opq",
                             opq_iters=2)
    assert codes.shape == (41, 4) and int(codes.max()) < 8
    # items 31..40 are not training items: moving them does not move the quantiser ...
    moved = text.clone()
    moved[31:] = F.normalize(torch.randn(10, DIM), dim=-1) * 5
    moved[35] = text[7]  # ... and a new item with a training item's vector gets its codes
    codes2 = vqrec.item_codes(moved, train_items, num_subspaces=4, num_codes=8, quantizer="opq",
                              opq_iters=2)
    assert torch.equal(codes[:31], codes2[:31])
    assert torch.equal(codes2[35], codes[7])
    with pytest.raises(ValueError, match="num_subspaces=5 must divide"):
        vqrec.item_codes(text, train_items, num_subspaces=5, num_codes=8)


def test_alpharec_fold_in_equals_the_graph_user():
    """A training user folded in from nothing but its own training items is its graph node."""
    torch.manual_seed(0)
    text = torch.cat([torch.zeros(1, DIM), torch.randn(12, DIM)])
    interactions = [[], [1, 2, 3], [3, 4, 5, 6], [7, 8, 1]]
    model = alpharec.AlphaRec(text, interactions, dim=8, hidden=16, num_layers=2).eval()
    users, _ = model.propagate()
    seq = torch.tensor([[0, 0, 4, 5], [0, 0, 0, 0]])  # user 2's own items; an unknown empty user
    got = model.fold_in(seq, torch.tensor([2, 0]))
    assert torch.allclose(got[0], users[2], atol=1e-5)
    # an unknown user with user 2's items: same layer-0 mean, same propagated terms
    alone = model.fold_in(torch.tensor([[3, 4, 5, 6]]), torch.tensor([0]))
    assert torch.allclose(alone[0], users[2], atol=1e-5)


# --------------------------------------------------------------------------- stage
def test_stage_scores_exactly_the_stored_candidates(planted, bert_dir, tmp_path, monkeypatch):
    from reccocktail.baselines import text as text_mod

    monkeypatch.setattr(text_mod, "text_table", lambda items, *a, **k: torch.cat(
        [torch.zeros(1, DIM), hashed_embed(list(items.values()))]))
    out = tmp_path / "run"
    (out / "data").mkdir(parents=True)
    for f in planted.iterdir():
        (out / "data" / f.name).write_bytes(f.read_bytes())
    group = OmegaConf.load(ROOT / "conf" / "baselines" / "default.yaml")
    group.pop("defaults")
    for n in NAMES:
        group[n] = OmegaConf.load(ROOT / "conf" / "baselines" / f"{n}.yaml")
    group.common.update(max_epochs=1, max_len=12)
    group.vqrec.model.update(num_subspaces=4, num_codes=16)
    group.recformer.model_dir = str(bert_dir)
    group.recformer.model.steps_per_epoch = 2
    cfg = stage_config(out, tmp_path, list(NAMES), group)
    summary = bstage.run_baselines_stage(cfg, out)
    from reccocktail.evaluation.samples import eval_samples

    scored, _ = eval_samples(cfg, out)
    assert summary["scored_samples"] == len(scored) < 240
    results = read_json(out / "results.json")["variants"]
    for name in NAMES:
        preds = [json.loads(x) for x in
                 (out / "predictions" / f"{name}.jsonl").read_text().splitlines()]
        assert [p["id"] for p in preds] == [smp.id for smp in scored]
        assert all(len(p["scores"]) == 30 and 1 <= p["rank"] <= 30 for p in preds)
        assert results[name]["kind"] == "baseline" and results[name]["train_seconds"] >= 0
        assert set(results[name]["ci"]) == set(results[name]["metrics"])


def test_hydra_group_has_the_three_models():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=["baseline=[alpharec,vqrec,recformer]"])
    assert bstage.baseline_names(cfg.baseline) == list(NAMES)
    for name in NAMES:
        assert bstage.settings_for(cfg, name)["kind"] == name


def test_recformer_rejects_a_bad_model_dir(planted, tmp_path):
    s = settings("recformer", model_dir=str(tmp_path / "nowhere"))
    dm = bstage.make_datamodule(planted, s, seed=0)
    with pytest.raises(ValueError, match="baselines.recformer.model_dir"):
        recformer.build(s, dm)


def test_recformer_loads_and_steps_the_real_encoder(planted):
    """The default path: all-MiniLM-L6-v2 from its PyPI package, two training steps, scores."""
    pytest.importorskip("transformers")
    from reccocktail.baselines.text import locate_encoder

    try:
        locate_encoder()
    except RuntimeError as err:
        pytest.skip(str(err))
    s = settings("recformer", batch_size=8, max_epochs=1, limit_val_batches=1,
                 eval_batch_size=8)
    s["model"] = {**s["model"], "steps_per_epoch": 2, "max_items": 3}
    dm = bstage.make_datamodule(planted, s, seed=0)
    dm.load()
    L.seed_everything(0, verbose=False)
    module = recformer.build(s, dm)
    before = module.encoder.embeddings.word_embeddings.weight.detach().clone()
    bstage.fit_baseline(module, dm, s, trainer_factory)
    assert not torch.equal(before, module.encoder.embeddings.word_embeddings.weight)
    scores = score_loader(module, dm.samples_dataloader(dm.test_samples[:8]))
    assert scores.shape == (8, 30) and torch.isfinite(scores).all()
    assert scores.abs().max() <= 1.0 + 1e-5  # cosines


def test_full_catalogue_scores_agree_with_the_candidates(planted, bert_dir):
    """`score_all_items` (eval.candidates=all) ranks every item through the same `score`."""
    for name in NAMES:
        s = fast_settings(name, bert_dir)
        dm = bstage.make_datamodule(planted, s, seed=0)
        dm.load()
        samples = dm.test_samples[:4]
        module = build(name, s, dm)
        full = bstage.score_all_items(module, dm, samples)
        assert full.shape == (4, len(dm.vocab))
        cols = torch.tensor([dm.vocab.encode(smp.candidates) for smp in samples])
        stored = score_loader(module, dm.samples_dataloader(samples))
        assert torch.allclose(full.gather(1, cols), stored, atol=1e-5)



def test_alpharec_cold_item_dropout_trains_on_edgeless_items_and_scores_as_before(planted, bert_dir):
    """The remedy of experiments/alpharec_cold.py: with p ~ 1 a training step sees every item by
    its MLP output alone (as a new item is seen at scoring); scoring itself is unchanged."""
    s = fast_settings("alpharec", bert_dir)
    dm = bstage.make_datamodule(planted, s, seed=0)
    dm.load()
    torch.manual_seed(0)
    plain = alpharec.build(s, dm, embed=hashed_embed)
    s_drop = {**s, "model": {**s["model"], "cold_item_dropout": 1 - 1e-9}}
    drop = alpharec.build(s_drop, dm, embed=hashed_embed)
    drop.load_state_dict(plain.state_dict())
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(1)
    loss_drop = drop.training_step(batch, 0)
    loss_plain = plain.training_step(batch, 0)
    # the same InfoNCE, by hand, with layer-0 item vectors and the propagated users
    model = plain.model
    layers = model.layers()
    users = torch.stack(layers).mean(0)[:model.num_users]
    mask = batch["target"] > 0
    user = batch["user"][:, None].expand_as(batch["target"])[mask]
    h, table = model.project(users[user], layers[0][model.num_users:])
    expected = F.cross_entropy(h @ table[plain.train_items].T, plain.lookup[batch["target"][mask]])
    assert torch.allclose(loss_drop, expected, atol=1e-5)
    assert not torch.allclose(loss_drop, loss_plain, atol=1e-3)
    sample_batch = next(iter(dm.samples_dataloader(dm.test_samples)))
    assert torch.equal(drop.score(sample_batch), plain.score(sample_batch))

def test_alpharec_rejects_an_unknown_model_key(planted, bert_dir):
    s = fast_settings("alpharec", bert_dir)
    s["model"] = {**s["model"], "cold_dropout": 0.1}
    dm = bstage.make_datamodule(planted, s, seed=0)
    with pytest.raises(ValueError, match=r"baselines.alpharec.model.cold_dropout: unknown key \(did you mean "
                       r"baselines.alpharec.model.cold_item_dropout\?\)"):
        alpharec.build(s, dm, embed=hashed_embed)
    s["model"] = {**s["model"]}
    del s["model"]["cold_dropout"]
    s["model"]["cold_item_dropout"] = 1.0
    with pytest.raises(ValueError, match="cold_item_dropout must be in"):
        alpharec.build(s, dm, embed=hashed_embed)
