"""The prompt of one real ML-1M user through SmolLM2's chat template, and the token budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from reccocktail.data.filtering import build_sequences
from reccocktail.data.prompts import PromptTooLongError, build_prompt_builder
from reccocktail.data.readers import read_recbole

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def ml1m_user(shared_data):
    """User 1 of ML-1M: the last 11 items (10 history + target) and 29 items never touched."""
    seqs = build_sequences(read_recbole(shared_data / "ml-1m"), "ml1m")
    u = seqs.users.index("1")
    seq = [seqs.items[i] for i in seqs.seq(u)]
    touched = set(seq)
    negatives = [i for i in seqs.items if i not in touched][:29]
    items = dict(zip(seqs.items, seqs.titles))
    return items, seq[-11:-1], seq[-1], [*negatives[:14], seq[-1], *negatives[14:]]


@pytest.fixture(scope="module")
def ml1m_domain():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("run", overrides=["domain=ml1m"]).domain


def test_real_user_prompt_through_chat_template(tokenizer, smollm2_cfg, ml1m_user, ml1m_domain):
    items, history, target, candidates = ml1m_user
    pb = build_prompt_builder(tokenizer, items, ml1m_domain, smollm2_cfg, 32)
    ids = pb.prompt_ids(history, candidates)
    text = tokenizer.decode(ids)
    titles = " || ".join(items[i] for i in history)
    cands = " || ".join(items[i] for i in candidates)
    assert text.startswith("<|im_start|>")
    assert (f"<|im_start|>user\nI am a movie fan. I watched [{titles}]. Please recommend me only "
            f"one most likely movie from [{cands}].<|im_end|>") in text
    assert text.endswith("<|im_start|>assistant\n")  # generation prompt: the answer follows
    ex = pb.example(history, candidates, target)
    answer = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
    assert ex["labels"][: len(ids)] == [-100] * len(ids)
    assert tokenizer.decode(answer[:-1]) == items[target] and answer[-1] == tokenizer.eos_token_id


def test_budget_cuts_history_from_the_oldest_side(tokenizer, smollm2_cfg, ml1m_user, ml1m_domain):
    items, history, _, candidates = ml1m_user
    full = build_prompt_builder(tokenizer, items, ml1m_domain, smollm2_cfg, 32).prompt_ids(
        history, candidates)
    cfg = smollm2_cfg.copy()
    cfg.max_prompt_tokens = len(full) - 1
    pb = build_prompt_builder(tokenizer, items, ml1m_domain, cfg, 32)
    text = tokenizer.decode(pb.prompt_ids(history, candidates))
    assert len(pb.prompt_ids(history, candidates)) <= cfg.max_prompt_tokens
    shown = text.split("I watched [", 1)[1].split("]. Please", 1)[0]
    assert items[history[0]] not in shown.split(" || ")       # the oldest item went first
    assert shown.endswith(items[history[-1]])                  # the most recent stays
    assert all(items[c] in text for c in candidates)           # candidates are never cut


def test_error_when_even_an_empty_history_does_not_fit(tokenizer, smollm2_cfg, ml1m_user,
                                                        ml1m_domain):
    items, history, _, candidates = ml1m_user
    cfg = smollm2_cfg.copy()
    cfg.max_prompt_tokens = 50
    pb = build_prompt_builder(tokenizer, items, ml1m_domain, cfg, 32)
    with pytest.raises(PromptTooLongError, match="max_prompt_tokens=50"):
        pb.prompt_ids(history, candidates)
