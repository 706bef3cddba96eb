"""`eval.search=exact`: the best-first search over the title trie returns exactly the
likelihood top k (same items, same order, same scores) over 30 candidates and over a catalogue
with excluded items, for both cache layouts, where a narrow beam does not; the expansion cap
still returns k items and says the result is approximate."""

from __future__ import annotations

import pytest
import torch

from reccocktail.data.samples import Sample
from reccocktail.evaluation.scorers import (
    BeamScorer,
    CatalogueBeamScorer,
    LikelihoodScorer,
    TitleTrie,
)

_WORDS = ["Star", "Wars", "Trek", "Heat", "Night", "of", "the", "Living", "Dead", "Return",
          "Empire", "Strikes", "Back", "Silent", "River", "Golden", "Road", "Crown", "Island"]


def _items(n: int, seed: int = 0) -> dict[str, str]:
    """`n` distinct titles of one to six words sharing many prefixes (answers of many depths)."""
    g = torch.Generator().manual_seed(seed)
    titles: set[str] = set()
    out = {}
    while len(out) < n:
        k = 1 + int(torch.randint(0, 6, (1,), generator=g))
        words = [_WORDS[int(j)] for j in torch.randint(0, len(_WORDS), (k,), generator=g)]
        title = " ".join(words) + (f" ({1950 + len(out) % 60})" if len(out) % 3 else "")
        if title not in titles:
            titles.add(title)
            out[str(100 + len(out))] = title
    return out


def _builder(tok, items):
    from reccocktail.data.prompts import build_prompt_builder

    return build_prompt_builder(tok, items, {"prompt": {"noun": "movie", "verb": "watched"}},
                                {"max_prompt_tokens": 1024, "chat_template": True}, 32,
                                fmt="instruction")


def _exhaustive(model, pb, prompt: list[int], ids: list[str], excluded: set[str], k: int
                ) -> list[tuple[str, float]]:
    """The likelihood top k of the allowed `ids`: every answer scored."""
    allowed = [i for i in ids if i not in excluded]
    with torch.inference_mode():
        scores = LikelihoodScorer(model, pb, batch_size=64).score_ids(
            prompt, [pb.response_ids(i) for i in allowed])
    top = scores.topk(k)
    return [(allowed[j], float(v)) for v, j in zip(top.values.tolist(), top.indices.tolist())]


def _assert_equal_lists(got: list[tuple[str, float]], ref: list[tuple[str, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in ref]
    torch.testing.assert_close(torch.tensor([v for _, v in got]),
                               torch.tensor([v for _, v in ref]), atol=1e-4, rtol=0)


def _ranked(found: dict[int, float], ids: list[str], k: int) -> list[tuple[str, float]]:
    return [(ids[j], v) for j, v in sorted(found.items(), key=lambda kv: -kv[1])[:k]]


@pytest.mark.parametrize("packed", [True, False])
def test_exact_search_equals_exhaustive_on_30_candidates(sharp_llama, packed):
    model, tok = sharp_llama
    items = _items(60)
    pb = _builder(tok, items)
    ids = list(items)
    beam_differs = False
    for u, (history, cands) in enumerate([(ids[:5], ids[10:40]), (ids[40:45], ids[20:50]),
                                          (ids[50:55], ids[:30])]):
        prompt = pb.prompt_ids(history, cands)
        responses = [pb.response_ids(c) for c in cands]
        excluded = {cands[3]} if u == 1 else set()
        ex_idx = {j: responses[j] for j, c in enumerate(cands) if c in excluded}
        for k in (1, 5, 20):
            ref = _exhaustive(model, pb, prompt, cands, excluded, k)
            with torch.inference_mode():
                exact = BeamScorer(model, pb, beam_size=k, search_mode="exact", packed=packed,
                                   expand_batch=4).search(prompt, TitleTrie(responses), ex_idx)
                beam = BeamScorer(model, pb, beam_size=k, packed=packed).search(
                    prompt, TitleTrie(responses), ex_idx)
            _assert_equal_lists(_ranked(exact, cands, k), ref)
            assert len(exact) == k and not {cands[j] for j in exact} & excluded
            beam_differs |= [i for i, _ in _ranked(beam, cands, k)] != [i for i, _ in ref]
        # through `score`: the top-k candidates carry their likelihood, the others -inf
        sample = Sample("s", "u", history, cands[0], cands)
        scores = BeamScorer(model, pb, beam_size=5, search_mode="exact", packed=packed
                            ).score([sample])[0]
        top = _exhaustive(model, pb, prompt, cands, set(), 5)
        assert int(torch.isfinite(scores).sum()) == 5
        _assert_equal_lists([(cands[j], float(scores[j])) for j in
                             scores.argsort(descending=True)[:5].tolist()], top)
    assert beam_differs  # the search matters: a beam of width k misses the true top k


@pytest.mark.parametrize("packed", [True, False])
def test_exact_search_equals_exhaustive_on_a_catalogue_with_exclusions(sharp_llama, packed):
    model, tok = sharp_llama
    items = _items(300, seed=1)
    pb = _builder(tok, items)
    ids = list(items)
    samples = [Sample("a", "u", ids[:4], ids[50], []), Sample("b", "v", ids[100:106], ids[7], [])]
    excluded = [set(ids[:4]) | set(ids[200:260]), set(ids[100:106]) | {ids[11], ids[12]}]
    beam_differs = False
    for k in (1, 5, 20):
        got = CatalogueBeamScorer(model, pb, beam_size=k, search_mode="exact", packed=packed,
                                  item_ids=ids).rank(samples, excluded)
        beam = CatalogueBeamScorer(model, pb, beam_size=k, packed=packed,
                                   item_ids=ids).rank(samples, excluded)
        for s, ex, g, b in zip(samples, excluded, got, beam):
            ref = _exhaustive(model, pb, pb.prompt_ids(s.history, []), ids, ex, k)
            _assert_equal_lists(g, ref)
            assert not {i for i, _ in g} & ex
            beam_differs |= [i for i, _ in b] != [i for i, _ in ref]
    assert beam_differs


def test_max_expansions_returns_k_items_and_flags_approximate(sharp_llama):
    model, tok = sharp_llama
    items = _items(300, seed=1)
    pb = _builder(tok, items)
    ids = list(items)
    sample, ex = Sample("a", "u", ids[:4], ids[50], []), set(ids[:4]) | set(ids[200:260])
    capped = CatalogueBeamScorer(model, pb, beam_size=10, search_mode="exact", expand_batch=2,
                                 max_expansions=3, item_ids=ids)
    got = capped.rank([sample], [ex])[0]
    assert len(got) == 10 and len({i for i, _ in got}) == 10 and not {i for i, _ in got} & ex
    assert capped.last_approximate and capped.approximate == 1
    full = CatalogueBeamScorer(model, pb, beam_size=10, search_mode="exact", item_ids=ids)
    full.rank([sample], [ex])
    assert not full.last_approximate and full.approximate == 0


def test_search_mode_is_checked(sharp_llama):
    model, tok = sharp_llama
    with pytest.raises(ValueError, match="eval.search"):
        BeamScorer(model, _builder(tok, _items(5)), search_mode="best")
