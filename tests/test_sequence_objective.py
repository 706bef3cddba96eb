"""The sequence objective: prompts and labels, windows, what training rows may hold, and that a
tiny model learns a planted sequence pattern that the sequence prompt then ranks first."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import tuning_cfg
from omegaconf import OmegaConf

from reccocktail.data.prompts import build_prompt_builder
from reccocktail.data.samples import Sample, load_items, load_samples
from reccocktail.data.sequence_prompts import SequencePromptBuilder
from reccocktail.models.datamodule import collate
from reccocktail.models.sequence_data import (
    SequenceDataModule,
    build_windows,
    load_user_sequences,
    sequence_windows,
)
from reccocktail.utils.io import read_jsonl

CONF = Path(__file__).resolve().parents[1] / "conf"
DOMAIN = {"prompt": {"noun": "movie", "verb": "watched"}}
WORDS = ["red", "blue", "night", "river", "stone", "city", "ghost", "summer", "iron", "paper",
         "wolf", "glass", "storm", "garden", "silver", "winter", "echo", "harbor"]


def items_(n: int = 12) -> dict[str, str]:
    rng = random.Random(3)
    return {str(i): " ".join(rng.sample(WORDS, 2)).title() + f" ({1990 + i})" for i in range(n)}


def backbone(max_prompt_tokens: int) -> dict:
    """The backbone keys a prompt builder reads."""
    return {"max_prompt_tokens": max_prompt_tokens, "chat_template": True}


def builder(tokenizer, items, **kw) -> SequencePromptBuilder:
    return build_prompt_builder(tokenizer, items, DOMAIN, backbone(256), 16, fmt="sequence",
                                **kw)


def test_prompt_is_header_plus_title_chunks_and_candidates_are_not_shown(tokenizer):
    items = items_()
    pb = builder(tokenizer, items)
    ids = pb.prompt_ids(["0", "1", "2"], ["5", "6"])
    chunks = [pb.response_ids(i) for i in ("0", "1", "2")]
    assert ids == pb.header_ids + [t for c in chunks for t in c]
    assert tokenizer.decode(ids) == pb.text(["0", "1", "2"])
    assert pb.text(["0"]).endswith(f"{items['0']} ||")
    assert items["5"] not in tokenizer.decode(ids)
    # a candidate's answer is its title and the separator, which ends generation
    r = pb.response_ids("5")
    assert tokenizer.decode(r) == f" {items['5']} ||" and r[-1] == pb.eos_token_id
    assert pb.clean_output(f"{items['5']} || {items['6']} ||") == items["5"]


def test_history_is_cut_from_the_oldest_side(tokenizer):
    items = items_()
    pb = build_prompt_builder(tokenizer, items, DOMAIN, backbone(80), 16, fmt="sequence")
    hist = [str(i) for i in range(12)]
    ids = pb.prompt_ids(hist)
    assert len(ids) <= 80 - (16 + 2)
    text = tokenizer.decode(ids)
    assert text.endswith(f"{items['11']} ||") and items["0"] not in text


def test_loss_covers_every_title_after_the_context_and_no_padding(tokenizer):
    items = items_()
    pb = builder(tokenizer, items)
    seq = [str(i) for i in range(6)]
    ex = pb.sequence_example(seq, min_context=2)
    n_head = len(pb.header_ids)
    assert ex["labels"][:n_head] == [-100] * n_head
    pos = n_head
    for j, item in enumerate(seq):
        chunk = pb.response_ids(item)
        got = ex["labels"][pos : pos + len(chunk)]
        assert got == ([-100] * len(chunk) if j < 2 else chunk), (j, got)
        assert ex["input_ids"][pos : pos + len(chunk)] == chunk
        pos += len(chunk)
    assert pos == len(ex["input_ids"]) == len(ex["labels"])
    short = pb.sequence_example(seq[:3], min_context=2)
    batch = collate([ex, short], pad_token_id=tokenizer.eos_token_id)
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == -100).all()
    labelled = int((batch["labels"] != -100).sum())
    assert labelled == sum(len(pb.response_ids(i)) for i in seq[2:] + seq[2:3])


def test_windows_target_every_title_after_the_context_once():
    seq = [f"i{k}" for k in range(100)]
    wins = sequence_windows("u", seq, max_titles=40, min_context=3)
    targets = [t for w in wins for t in w.items[w.context:]]
    assert sorted(targets, key=lambda x: int(x[1:])) == seq[3:]
    assert len(set(targets)) == len(targets)
    assert all(len(w.items) <= 40 and w.context == 3 for w in wins)
    assert wins[0].items[-1] == "i99"  # the newest window first
    assert len(sequence_windows("u", seq, 40, 3, max_windows=1)) == 1
    assert sequence_windows("u", seq[:3], 40, 3) == []
    assert sequence_windows("u", seq[:4], 40, 3)[0].num_targets == 1
    with pytest.raises(ValueError, match="max_titles"):
        sequence_windows("u", seq, 3, 3)
    with pytest.raises(ValueError, match="excluded"):
        build_windows({"u": seq}, 40, 3, exclude_items={"i50"})


@pytest.mark.parametrize("scenario", ["warm", "cold"])
def test_training_rows_hold_no_validation_test_or_new_item(shared_data, tmp_path, scenario):
    """On real ML-100k: the sequence rows of S and G never contain a user's validation or test
    target, nor (cold) any new item, and the stage's own loader guards the cold case."""
    from hydra import compose, initialize_config_dir

    from reccocktail.data.stage import run_data_stage
    from reccocktail.models.training import sequence_training_windows

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("run", overrides=[f"paths.data_root={shared_data}", f"scenario={scenario}",
                                         f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"])
    run_data_stage(cfg, tmp_path)
    d = tmp_path / "data"
    items = load_items(d / "items.tsv")
    t = tuning_cfg(seed=0, sequence={"max_titles": 40, "min_context": 3,
                                       "windows_per_user": None})
    test = load_samples(d / "test.jsonl")
    exclude = {s.target for s in test} if scenario == "cold" else set()
    windows = sequence_training_windows(d / "sequences.jsonl", items, t, exclude_items=exclude)
    held = {}
    for split in ("valid", "test"):
        for s in load_samples(d / f"{split}.jsonl"):
            held.setdefault(s.user, set()).add(s.target)
    assert windows and sum(w.num_targets for w in windows) > 1000
    for w in windows:
        assert not set(w.items) & held.get(w.user, set()), w.user
        if scenario == "cold":
            assert not set(w.items) & exclude
    # every training title of a user is a target once (windows_per_user=None)
    seqs = load_user_sequences(d / "sequences.jsonl", items)
    n_targets = sum(max(0, len(s) - 3) for s in seqs.values())
    assert sum(w.num_targets for w in windows) == n_targets
    gen = sequence_training_windows(d / "general" / "sequences.jsonl",
                                    load_items(d / "general" / "items.tsv"), t)
    gen_users = {r["user"] for r in read_jsonl(d / "general" / "sequences.jsonl")}
    assert {w.user for w in gen} <= gen_users and not gen_users & set(seqs)
    if scenario == "cold":  # a sequence that held a new item would be refused, not filtered
        bad = d / "bad_sequences.jsonl"
        first = next(iter(seqs))
        bad.write_text(json.dumps({"user": first, "items": [*seqs[first], next(iter(exclude))]}))
        with pytest.raises(ValueError, match="excluded"):
            sequence_training_windows(bad, items, t, exclude_items=exclude)


def test_tiny_model_learns_a_planted_sequence_and_ranks_the_next_item_first(tiny_llama_cfg,
                                                                          tokenizer, tmp_path):
    """Users walk a fixed cycle of 8 items (i -> i+1); after training on such sequences the
    sequence prompt ranks the planted next item first among 5 candidates (7 of 8 histories)."""
    import lightning as L

    from reccocktail.evaluation.scorers import LikelihoodScorer
    from reccocktail.models.tuning import InstructionTuningModule

    L.seed_everything(0, verbose=False)
    backbone = OmegaConf.to_container(tiny_llama_cfg)
    backbone["config"]["initializer_range"] = 0.3  # see test_tuning: the toy needs wider logits
    items = items_(8)
    pb = builder(tokenizer, items)
    rng = random.Random(0)
    seqs = {}
    for u in range(16):
        start = rng.randrange(8)
        seqs[f"u{u}"] = [str((start + k) % 8) for k in range(7)]
    windows = build_windows(seqs, 40, 2)
    dm = SequenceDataModule(windows, pb, batch_size=8)
    module = InstructionTuningModule(
        backbone, tuning_cfg(lr=2e-2, init_seed=0, schedule="constant", warmup_steps=0,
                               objective="sequence"), stage="specific")
    # 60 epochs: at 30 the toy (lr 2e-2) sits on a ridge where float rounding of the loss path
    # alone decided 7 against 5 of 8; at 60 it converges (8/8 for init seeds 0, 1, 2)
    trainer = L.Trainer(accelerator="cpu", max_epochs=60, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    losses = module.step_losses
    assert sum(losses[-3:]) / 3 < 0.3 * losses[0], (losses[0], losses[-3:])
    model = module.model.eval()
    samples = []
    for k in range(8):
        hist = [str((k + j) % 8) for j in range(3)]
        target = str((k + 3) % 8)
        cands = [target] + [c for c in (str((k + 5) % 8), str((k + 6) % 8), str((k + 1) % 8),
                                        str((k + 7) % 8))]
        samples.append(Sample(f"s{k}", f"t{k}", hist, target, cands))
    scores = LikelihoodScorer(model, pb, batch_size=8).score(samples)
    assert int((scores.argmax(1) == 0).sum()) >= 7, scores  # a toy of 16 users: 7 of 8
    # the bare backbone does not know the pattern (the test is not trivially passed)
    with module.model.disable_adapter():
        bare = LikelihoodScorer(module.model, pb, batch_size=8).score(samples)
    assert int((bare.argmax(1) == 0).sum()) <= 4, bare


def test_sequence_data_module_refuses_an_instruction_builder(tokenizer):
    from reccocktail.data.prompts import PromptBuilder

    with pytest.raises(TypeError, match="SequencePromptBuilder"):
        SequenceDataModule(build_windows({"u": ["0", "1", "2", "3", "4"]}, 40, 3),
                           PromptBuilder(tokenizer, items_()))


def test_unknown_objective_is_refused(tokenizer):
    with pytest.raises(ValueError, match="tuning.objective"):
        build_prompt_builder(tokenizer, items_(), DOMAIN, {}, 16, fmt="sequnce")
