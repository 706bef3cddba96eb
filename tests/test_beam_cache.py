"""The cached beam search (prompt prefilled once, one new token per hypothesis per step) finds
the same answers with the same log-likelihoods as the old uncached search that re-feeds every
prefix, for both cache layouts, both prompt formats, titles of different lengths (hypotheses
finishing at different steps), excluded items and a LoRA-wrapped model."""

from __future__ import annotations

import pytest
import torch

from reccocktail.evaluation.scorers import BeamScorer, CatalogueBeamScorer, TitleTrie

# titles from one to eight words, several sharing prefixes, so answers end at many depths
_WORDS = ["Star", "Wars", "Trek", "Heat", "Night", "of", "the", "Living", "Dead", "Return",
          "Empire", "Strikes", "Back", "Silent", "River", "Golden", "Road"]


def _items(n: int = 40) -> dict[str, str]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for i in range(n):
        k = 1 + int(torch.randint(0, 8, (1,), generator=g))
        words = [_WORDS[int(j)] for j in torch.randint(0, len(_WORDS), (k,), generator=g)]
        out[str(100 + i)] = " ".join(words) + (f" ({1950 + i})" if i % 3 else "")
    return out


def _builder(tok, items, fmt: str):
    from reccocktail.data.prompts import build_prompt_builder

    return build_prompt_builder(tok, items, {"prompt": {"noun": "movie", "verb": "watched"}},
                                {"max_prompt_tokens": 1024, "chat_template": True}, 32, fmt=fmt)


def _search(model, pb, items, beam: int, history: list[str], cands: list[str],
            excluded: set[str], **kw) -> dict[int, float]:
    scorer = BeamScorer(model, pb, beam_size=beam, **kw)
    responses = [pb.response_ids(c) for c in cands]
    ex = {j: responses[j] for j, c in enumerate(cands) if c in excluded}
    with torch.inference_mode():
        return scorer.search(pb.prompt_ids(history, cands), TitleTrie(responses), ex)


def _assert_same(got: dict[int, float], ref: dict[int, float]) -> None:
    assert set(got) == set(ref)
    order = sorted(ref, key=lambda i: -ref[i])
    assert sorted(got, key=lambda i: -got[i]) == order
    torch.testing.assert_close(torch.tensor([got[i] for i in order]),
                               torch.tensor([ref[i] for i in order]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["instruction", "sequence"])
@pytest.mark.parametrize("packed", [True, False])
def test_cached_beam_equals_uncached_reference(sharp_llama, fmt, packed):
    model, tok = sharp_llama
    items = _items()
    pb = _builder(tok, items, fmt)
    ids = list(items)
    lengths = {len(pb.response_ids(i)) for i in ids}
    assert max(lengths) - min(lengths) >= 5  # answers really end at different steps
    for beam, history, excluded in [(3, ids[:4], set()), (8, ids[4:9], set(ids[10:16])),
                                    (len(ids), ids[:2], {ids[5]})]:
        cands = ids
        ref = _search(model, pb, items, beam, history, cands, excluded, reuse_cache=False)
        got = _search(model, pb, items, beam, history, cands, excluded, packed=packed)
        _assert_same(got, ref)
        assert not {cands[j] for j in got} & excluded
        depths = {len(pb.response_ids(cands[j])) for j in got}
        if beam == len(ids):  # every answer found: they finished at many different steps
            assert len(got) == len(ids) - 1 and len(depths) >= 5


def test_cached_beam_feeds_one_token_per_hypothesis_per_step(sharp_llama):
    """After the prompt, every forward call of the cached search feeds at most `beam_size`
    tokens (one per live hypothesis); the uncached one re-feeds whole prefixes."""
    model, tok = sharp_llama
    items = _items()
    pb = _builder(tok, items, "instruction")
    fed: dict[str, list[int]] = {}
    for mode, kw in [("tree", {"packed": True}), ("batched", {"packed": False}),
                     ("reference", {"reuse_cache": False})]:
        calls: list[int] = []
        hook = model.get_input_embeddings().register_forward_hook(
            lambda m, i, o, c=calls: c.append(int(i[0].numel())))
        try:
            _search(model, pb, items, 4, list(items)[:3], list(items), set(), **kw)
        finally:
            hook.remove()
        fed[mode] = calls
    p_len = len(pb.prompt_ids(list(items)[:3], list(items)))
    for mode in ("tree", "batched"):
        assert fed[mode][0] == p_len and max(fed[mode][1:]) <= 4
        assert len(fed[mode]) == len(fed["reference"])  # as many steps as before
        assert sum(fed[mode]) < sum(fed["reference"])
    assert max(fed["reference"][1:]) > 4


def test_catalogue_beam_cached_equals_reference_with_lora(sharp_llama):
    from peft import LoraConfig, get_peft_model

    model, tok = sharp_llama
    items = _items(30)
    pb = _builder(tok, items, "sequence")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                  target_modules=["q_proj", "v_proj"]))
    try:
        from reccocktail.data.samples import Sample

        ids = list(items)
        samples = [Sample("a", "u", ids[:3], ids[7], ids[:10]),
                   Sample("b", "v", ids[10:14], ids[2], ids[:10])]
        excluded = [set(ids[:3]), set(ids[10:14]) | {ids[20]}]
        kw = {"beam_size": 6, "item_ids": ids}
        ref = CatalogueBeamScorer(peft_model, pb, reuse_cache=False, **kw).rank(samples, excluded)
        for packed in (True, False):
            got = CatalogueBeamScorer(peft_model, pb, packed=packed, **kw).rank(samples, excluded)
            for g, r in zip(got, ref):
                assert [i for i, _ in g] == [i for i, _ in r]
                torch.testing.assert_close(torch.tensor([v for _, v in g]),
                                           torch.tensor([v for _, v in r]), atol=1e-4, rtol=0)
    finally:
        peft_model.unload()
