"""Scorers: shared-prefix likelihood equals naive full-sequence scoring (tiny models, a LoRA-
wrapped model, SmolLM2), a model biased towards one title ranks it first, and
generate-and-match on crafted outputs."""

from __future__ import annotations

import random

import pytest
import torch

from reccocktail.data.prompts import PromptBuilder
from reccocktail.data.samples import Sample
from reccocktail.evaluation.matching import match_output, normalize_title
from reccocktail.evaluation.metrics import ranking_metrics, target_ranks
from reccocktail.evaluation.scorers import (
    GenerateMatchScorer,
    LikelihoodScorer,
    NaiveLikelihoodScorer,
    build_scorer,
)

_ADJ = ["Silent", "Broken", "Golden", "Last", "Hidden", "Wild", "Dark", "Little", "Lost", "Red"]
_NOUN = ["River", "Empire", "Garden", "Summer", "Station", "Heart", "Island", "Road", "Crown"]


def make_items(n: int = 60) -> dict[str, str]:
    rng = random.Random(0)
    titles = [f"{a} {b}" for a in _ADJ for b in _NOUN]
    rng.shuffle(titles)
    return {str(100 + i): f"{titles[i]} ({1950 + rng.randrange(60)})" for i in range(n)}


def make_samples(items: dict[str, str], n_users: int, n_cand: int, hist: int = 5,
                 seed: int = 1) -> list[Sample]:
    rng = random.Random(seed)
    ids = list(items)
    out = []
    for u in range(n_users):
        chosen = rng.sample(ids, hist + n_cand)
        history, cands = chosen[:hist], chosen[hist:]
        out.append(Sample(f"s{u}", f"u{u}", history, cands[rng.randrange(n_cand)], cands))
    return out


@pytest.fixture(scope="module")
def items():
    return make_items()


@pytest.fixture(scope="module")
def tiny_models(tiny_llama_cfg, tiny_qwen2_cfg):
    from reccocktail.models.backbone import load_backbone

    return {"llama": load_backbone(tiny_llama_cfg), "qwen2": load_backbone(tiny_qwen2_cfg)}


def builder(tok, items, **kw) -> PromptBuilder:
    return PromptBuilder(tok, items, noun="movie", verb="watched", **kw)


def assert_fast_equals_naive(model, pb, samples, fast_bs: int, naive_bs: int, batched_bs: int,
                             **kw) -> torch.Tensor:
    """Shared-prefix (packed and batched) scores equal naive full-sequence scores; returns the
    packed scores."""
    fast = LikelihoodScorer(model, pb, batch_size=fast_bs, **kw).score(samples)
    slow = NaiveLikelihoodScorer(model, pb, batch_size=naive_bs, **kw).score(samples)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=0)
    batched = LikelihoodScorer(model, pb, batch_size=batched_bs, packed=False, **kw).score(samples)
    torch.testing.assert_close(batched, slow, atol=1e-4, rtol=0)
    return fast


@pytest.mark.parametrize(("arch", "normalize"), [("llama", False), ("qwen2", False),
                                                 ("llama", True)])
def test_shared_prefix_equals_naive_tiny(tiny_models, items, arch, normalize):
    model, tok = tiny_models[arch]
    pb = builder(tok, items)
    samples = make_samples(items, n_users=2, n_cand=30)
    # batch 7 over 30 candidates: several cache copies and a ragged last batch
    fast = assert_fast_equals_naive(model, pb, samples, 7, 30, 12, normalize=normalize)
    assert fast.shape == (2, 30)
    assert torch.isfinite(fast).all()
    # one-sample-at-a-time equals batched (padding never leaks into real tokens)
    one = LikelihoodScorer(model, pb, batch_size=1, normalize=normalize).score(samples[:1])
    torch.testing.assert_close(one, fast[:1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lengths_rounded_up_give_the_same_scores(tiny_models, items, arch):
    # multiple=64 pads the prompt and the packed candidates (and 7 the batched rows): the pads
    # are masked, so every score equals the unpadded one
    model, tok = tiny_models[arch]
    pb = builder(tok, items)
    samples = make_samples(items, n_users=2, n_cand=30, seed=7)
    plain = LikelihoodScorer(model, pb, batch_size=7, multiple=1).score(samples)
    for packed in (True, False):
        padded = LikelihoodScorer(model, pb, batch_size=7, multiple=64, packed=packed)
        torch.testing.assert_close(padded.score(samples), plain, atol=1e-4, rtol=0)
        assert len(pb.prompt_ids(samples[0].history, samples[0].candidates)) % 64 != 0


def test_the_bucket_follows_the_backbone_dtype(tiny_llama_cfg, items):
    from reccocktail.models.backbone import load_backbone
    from reccocktail.utils.device import CPU_LOW_PRECISION_BUCKET

    model, tok = load_backbone({**dict(tiny_llama_cfg), "dtype": "bfloat16"})
    pb = builder(tok, items)
    assert LikelihoodScorer(model, pb).multiple == CPU_LOW_PRECISION_BUCKET
    assert LikelihoodScorer(model.float(), pb).multiple == 1
    samples = make_samples(items, n_users=1, n_cand=30, seed=2)
    bf16 = LikelihoodScorer(model.bfloat16(), pb, batch_size=30).score(samples)
    same = LikelihoodScorer(model, pb, batch_size=30, multiple=1).score(samples)
    torch.testing.assert_close(bf16, same, atol=0.15, rtol=0)  # bf16 rounding of the pads' neighbours only
    assert int(bf16.argmax()) == int(same.argmax())


def test_shared_prefix_equals_naive_with_lora(tiny_models, items):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_models["llama"]
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    try:
        pb = builder(tok, items)
        samples = make_samples(items, n_users=2, n_cand=30, seed=3)
        fast = assert_fast_equals_naive(peft_model, pb, samples, 16, 30, 30)
        with peft_model.disable_adapter():
            bare = LikelihoodScorer(peft_model, pb, batch_size=16).score(samples)
        assert (bare - fast).abs().max() > 1e-3  # the adapter really changed the scores
    finally:
        peft_model.unload()


def test_shared_prefix_equals_naive_smollm2(smollm2_cfg, items):
    from reccocktail.models.backbone import load_backbone

    model, tok = load_backbone(smollm2_cfg)
    pb = builder(tok, items)
    samples = make_samples(items, n_users=2, n_cand=6, hist=3)
    fast = assert_fast_equals_naive(model, pb, samples, 4, 6, 6)
    # the real model prefers some titles over others (scores are not flat)
    assert (fast.max(1).values - fast.min(1).values).min() > 0.1


def test_model_biased_towards_a_title_ranks_it_first(tiny_models, items):
    model, tok = tiny_models["llama"]
    pb = builder(tok, items)
    samples = make_samples(items, n_users=3, n_cand=30, seed=5)
    for s in samples:
        # prefer a candidate that is NOT the positive: the scorer must follow the model
        fav = next(c for c in s.candidates if c != s.target)
        bias = torch.zeros(len(tok))
        bias[pb.response_ids(fav)[:-1]] = 30.0  # every title token of `fav` (not the eos)
        hook = model.lm_head.register_forward_hook(lambda m, i, o, b=bias: o + b)
        try:
            scores = LikelihoodScorer(model, pb, batch_size=30).score([s])
        finally:
            hook.remove()
        fav_col = s.candidates.index(fav)
        assert int(scores[0].argmax()) == fav_col
        assert target_ranks(scores, [fav_col]).item() == 1
        assert target_ranks(scores, [s.target_index]).item() > 1


def test_scorer_rejects_ragged_candidate_counts(tiny_models, items):
    model, tok = tiny_models["llama"]
    samples = make_samples(items, 1, 5) + make_samples(items, 1, 6)
    with pytest.raises(ValueError, match="different numbers of candidates"):
        LikelihoodScorer(model, builder(tok, items)).score(samples)
    with pytest.raises(ValueError, match="eval.scorer"):
        build_scorer("beem", model, builder(tok, items), {})


# -- generate-and-match -----------------------------------------------------------------

TITLES = ["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)", "Jumanji (1995)",
          "Babe (1995)"]


def test_match_exact_and_normalised():
    assert match_output("Heat (1995)", TITLES).index == 2
    assert match_output("Heat (1995)", TITLES).rule == "exact"
    for variant in ["heat (1995)", "  HEAT   (1995) ", "Heat 1995", "Heat (1995)."]:
        m = match_output(variant, TITLES)
        assert (m.index, m.rule) == (2, "normalized"), variant
    assert normalize_title("  Toy   STORY: (1995)!") == "toy story 1995"


def test_match_prefers_longest_title_and_sentences():
    assert match_output("Toy Story 2 (1999)", TITLES).index == 1
    m = match_output("I would recommend toy story 2 (1999) to you.", TITLES)
    assert (m.index, m.rule) == (1, "contained")  # "Toy Story" is nested, not a second title
    assert match_output("Sure! Jumanji (1995)", TITLES).index == 3


def test_match_misses():
    assert match_output("The Godfather (1972)", TITLES).index is None  # invented title
    assert match_output("", TITLES).rule == "none"
    assert match_output("Heatwave (1995)", TITLES).index is None  # no word-boundary match
    with pytest.raises(ValueError, match="multi_match"):
        match_output("Heat (1995)", TITLES, multi="last")


def test_match_two_titles_in_one_output():
    out = "Babe (1995) || Heat (1995)"
    first = match_output(out, TITLES, multi="first")
    assert (first.index, first.rule, first.num_titles) == (4, "multiple", 2)
    swapped = match_output("Heat (1995) || Babe (1995)", TITLES, multi="first")
    assert swapped.index == 2  # the first-mentioned wins, wherever the positive is
    miss = match_output(out, TITLES, multi="miss")
    assert miss.index is None and not miss.valid


def test_generate_scores_from_crafted_outputs(items, tokenizer):
    pb = builder(tokenizer, items)
    samples = make_samples(items, n_users=4, n_cand=30, seed=7)
    other = next(c for c in samples[1].candidates if c != samples[1].target)
    outputs = [
        pb.title(samples[0].target),                 # exact hit
        "  " + pb.title(other).upper() + " ",       # case/whitespace variant of a wrong title
        "Casablanca (1942)",                         # invented: a miss
        f"{pb.title(samples[3].target)} || {pb.title(other)}",  # two titles, positive first
    ]
    g = GenerateMatchScorer(None, pb, multi="first")
    scores = g.scores_from_outputs(samples, outputs)
    assert scores.shape == (4, 30)
    assert g.valid_ratio == pytest.approx(3 / 4)
    assert [m.rule for m in g.matches] == ["exact", "normalized", "none", "multiple"]
    ranks = target_ranks(scores, [s.target_index for s in samples]).tolist()
    assert ranks == [1, 30, 30, 1]  # a miss ties everything and so ranks the positive last
    m = ranking_metrics(scores, [s.target_index for s in samples], ks=(1, 3))
    assert m["ndcg@1"] == pytest.approx(0.5) and m["hr@3"] == pytest.approx(0.5)
    g_miss = GenerateMatchScorer(None, pb, multi="miss")
    assert target_ranks(g_miss.scores_from_outputs(samples, outputs), [s.target_index for s in samples])[3] == 30


def test_generate_runs_batched_on_tiny_model(tiny_models, items):
    model, tok = tiny_models["qwen2"]
    pb = builder(tok, items)
    samples = make_samples(items, n_users=3, n_cand=10, seed=9)
    g = GenerateMatchScorer(model, pb, batch_size=2, max_new_tokens=4)
    scores = g.score(samples)
    assert scores.shape == (3, 10)
    assert len(g.outputs) == 3 and all(isinstance(o, str) for o in g.outputs)
    assert 0.0 <= g.valid_ratio <= 1.0
    assert set(scores.unique().tolist()) <= {0.0, 1.0}
    assert (scores.sum(1) <= 1).all()
    # batched (left-padded) greedy decoding gives the same text as one prompt at a time
    single = GenerateMatchScorer(model, pb, batch_size=1, max_new_tokens=4).generate(samples)
    assert single == g.outputs


@pytest.mark.parametrize("fmt", ["instruction", "sequence"])
def test_beam_returns_k_distinct_valid_candidates_and_matches_exhaustive_ranking(
        tiny_models, items, fmt):
    from reccocktail.data.prompts import build_prompt_builder
    from reccocktail.evaluation.scorers import BeamScorer

    model, tok = tiny_models["llama"]
    with torch.no_grad():  # sharper logits: the toy's ranking is then far from uniform
        model.get_input_embeddings().weight.mul_(8.0)
    try:
        pb = build_prompt_builder(tok, items, {"prompt": {"noun": "movie", "verb": "watched"}},
                                  {"max_prompt_tokens": 1024, "chat_template": True}, 32, fmt=fmt)
        samples = make_samples(items, n_users=3, n_cand=30, seed=5)
        exact = LikelihoodScorer(model, pb, batch_size=32).score(samples)
        for k in (3, 5):
            beam = BeamScorer(model, pb, beam_size=k).score(samples)
            for i in range(len(samples)):
                found = torch.isfinite(beam[i])
                assert int(found.sum()) == k  # k distinct candidates, each a valid item
                # every found candidate carries its exact log-likelihood
                torch.testing.assert_close(beam[i][found], exact[i][found], atol=1e-4, rtol=0)
        # a beam as wide as the candidate set is the exhaustive ranking itself
        wide = BeamScorer(model, pb, beam_size=30).score(samples)
        torch.testing.assert_close(wide, exact, atol=1e-4, rtol=0)
    finally:
        with torch.no_grad():
            model.get_input_embeddings().weight.div_(8.0)


def test_beam_never_leaves_the_trie(tiny_models, items):
    """A candidate set whose titles share long prefixes: only whole candidate answers finish."""
    from reccocktail.evaluation.scorers import BeamScorer

    model, tok = tiny_models["llama"]
    shared = {"1": "Star Wars (1977)", "2": "Star Wars: Episode I (1999)", "3": "Star Trek (1979)",
              "4": "Star (1990)", "5": "Heat (1995)", "6": "Toy Story (1995)"}
    pb = builder(tok, shared)
    s = Sample("s", "u", ["6"], "1", ["1", "2", "3", "4", "5"])
    scorer = BeamScorer(model, pb, beam_size=5)
    scores = scorer.score([s])[0]
    assert torch.isfinite(scores).all()  # all 5 finished: each is a complete answer's score
    exact = LikelihoodScorer(model, pb).score([s])[0]
    torch.testing.assert_close(scores, exact, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="beam_size"):
        BeamScorer(model, pb, beam_size=0)
