"""Score the candidates of each sample with a causal LM (higher = better, candidate order kept).

* `LikelihoodScorer` (default): score = log p(response_ids(candidate) | prompt), the title's
  tokens plus the end-of-turn token (sum, or the per-token mean with `normalize=True`). The
  prompt is run once (its logits give the first response token); the rest of every candidate
  is then scored on the prompt's KV cache in one forward pass per `batch_size` candidates:
  `packed=True` (default) concatenates the candidates into one sequence with a block-diagonal
  causal 4D mask and per-candidate position ids, so the cache is used once and no padding is
  computed; `packed=False` repeats the cache along the batch and right-pads the candidates with
  an attention mask (for attention kernels without custom masks, e.g. flash-attention). Either
  way each candidate sees exactly the prompt and its own earlier tokens, so the scores equal
  scoring every full sequence alone (tests check < 1e-4).
* `NaiveLikelihoodScorer`: the same quantity from full prompt+response sequences (no shared
  cache): the reference for tests and the benchmark's baseline.
* `GenerateMatchScorer`: greedy decoding, the output matched to a candidate title
  (`matching.match_output`); the matched candidate scores 1, all others 0, so a miss leaves
  every candidate tied and the pessimistic tie rule of `metrics` puts the positive last.

All scorers accept a bare `transformers` causal LM or a `peft.PeftModel` around one.
"""

from __future__ import annotations

import functools
import heapq
import inspect
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from rich.progress import track

from reccocktail.data.prompts import PromptBuilder
from reccocktail.data.samples import Sample
from reccocktail.evaluation.config import SEARCHES, ScorerConfig
from reccocktail.evaluation.matching import Match, match_output
from reccocktail.utils.device import model_device, model_length_bucket

if TYPE_CHECKING:
    from reccocktail.evaluation.config import EvalConfig

log = logging.getLogger(__name__)


def num_candidates(samples: Sequence[Sample]) -> int:
    """The common candidate count of `samples` (scores are a rectangular `[n, c]` tensor)."""
    if not samples:
        raise ValueError("no samples to score")
    counts = {len(s.candidates) for s in samples}
    if len(counts) != 1:
        raise ValueError(f"samples have different numbers of candidates {sorted(counts)}; "
                         "every sample must carry the same count (data.num_candidates)")
    return counts.pop()


@functools.lru_cache(maxsize=1)
def _cache_kwarg() -> str:
    """The forward() keyword of the KV cache: `cache` in recent transformers 5 releases,
    `past_key_values` before (an unknown keyword would be silently swallowed by **kwargs)."""
    from transformers import LlamaForCausalLM  # lazy: +2.9 s (transformers' Llama)

    params = inspect.signature(LlamaForCausalLM.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _forward_cached(model: Any, cache: Any, **kwargs: Any):
    return model(**{_cache_kwarg(): cache}, use_cache=True, **kwargs)


def _out_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _is_flash(model: Any) -> bool:
    """Flash-attention kernels take no custom 4D mask: the packed path must not be used."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return "flash" in str(impl)


def _progress(items: Sequence[Any], enabled: bool, description: str):
    if not enabled:
        return items
    return track(items, description=description, total=len(items), transient=True)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad(seqs: Sequence[list[int]], width: int, pad: int, dev: Any,
         left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`[len(seqs), width]` token ids padded with `pad` (on the right, or the left) and the
    matching 0/1 attention mask, built on the host and moved to `dev` in one copy each."""
    fill = [[pad] * (width - len(q)) for q in seqs]
    ids = [f + list(q) if left else list(q) + f for q, f in zip(seqs, fill)]
    mask = [[0] * len(f) + [1] * len(q) if left else [1] * len(q) + [0] * len(f)
            for q, f in zip(seqs, fill)]
    return (torch.tensor(ids, dtype=torch.long, device=dev),
            torch.tensor(mask, dtype=torch.long, device=dev))


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[targets] without materialising the full log-softmax."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


class EvalMode:
    """Run a model in eval mode (no LoRA dropout) and restore its previous mode afterwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


@dataclass
class LikelihoodScorer:
    """Shared-prefix likelihood ranking: one prompt prefill, candidates batched on its cache."""

    model: Any
    prompt_builder: PromptBuilder
    batch_size: int = 32
    normalize: bool = False
    progress: bool = False
    packed: bool = True
    name: str = "likelihood"
    # Sequence lengths are rounded up to this many tokens (pad positions masked, scores
    # unchanged). None: from the model, `model_length_bucket` (64 for a bf16/fp16 backbone on
    # the CPU, where every new shape costs oneDNN time and memory; else 1).
    multiple: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        if self.multiple is None:  # a scorer without a model only describes its settings
            self.multiple = 1 if self.model is None else model_length_bucket(self.model)
        if self.multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {self.multiple}")

    def score(self, samples: Sequence[Sample]) -> torch.Tensor:
        """`[n, c]` float32 scores on the CPU, in each sample's candidate order."""
        c = num_candidates(samples)
        out = torch.empty(len(samples), c, dtype=torch.float32)
        with EvalMode(self.model), torch.inference_mode():
            for i, s in enumerate(_progress(samples, self.progress, f"scoring ({self.name})")):
                out[i] = self.score_sample(s)
        return out

    def score_sample(self, sample: Sample) -> torch.Tensor:
        pb = self.prompt_builder
        prompt = pb.prompt_ids(sample.history, sample.candidates)
        responses = [pb.response_ids(c) for c in sample.candidates]
        return self.score_ids(prompt, responses)

    def score_ids(self, prompt: list[int], responses: list[list[int]]) -> torch.Tensor:
        """Scores `[len(responses)]` of token-id responses after one token-id prompt."""
        model, dev = self.model, model_device(self.model)
        p_len = len(prompt)
        width = _round_up(p_len, self.multiple)
        if width == p_len:
            out = model(input_ids=torch.tensor([prompt], device=dev), use_cache=True,
                        logits_to_keep=1)
        else:  # right-padded: the real positions never see the pad, which later calls mask
            ids, mask = _pad([prompt], width, self.prompt_builder.eos_token_id, dev)
            out = model(input_ids=ids, attention_mask=mask, use_cache=True,
                        logits_to_keep=torch.tensor([p_len - 1], device=dev))
        first_lp = out.logits[0, -1].float().log_softmax(-1)  # next token after the prompt
        prefix = [(layer.keys, layer.values) for layer in _out_cache(out).layers]
        scores = torch.empty(len(responses), dtype=torch.float32)
        for start in range(0, len(responses), self.batch_size):
            chunk = responses[start : start + self.batch_size]
            total = first_lp[torch.tensor([r[0] for r in chunk], device=dev)]
            if max(len(r) for r in chunk) > 1:
                run = self._packed if self.packed and not _is_flash(model) else self._batched
                total = total + run(prefix, p_len, chunk, dev)
            if self.normalize:
                total = total / torch.tensor([len(r) for r in chunk], device=dev)
            scores[start : start + len(chunk)] = total.float().cpu()
        return scores

    def _cache(self, prefix: list[tuple[torch.Tensor, torch.Tensor]], batch: int):
        from transformers import DynamicCache  # lazy: +0.7 s (transformers)

        return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                             for k, v in prefix], config=getattr(self.model, "config", None))

    def _packed(self, prefix, p_len: int, chunk: list[list[int]], dev) -> torch.Tensor:
        """Log-prob of tokens 2.. of each response: all responses of the chunk in ONE sequence
        after the prompt cache, a block-diagonal causal mask keeping them apart. The cache may
        hold pad positions after the `p_len` real ones (masked); pad tokens that round the
        sequence up to `multiple` form one more block whose scores are dropped."""
        n, width = len(chunk), prefix[0][0].shape[-2]
        lens = [len(r) - 1 for r in chunk]
        extra = _round_up(sum(lens), self.multiple) - sum(lens)
        ids = [t for r in chunk for t in r[:-1]] + [self.prompt_builder.eos_token_id] * extra
        tgt = [t for r in chunk for t in r[1:]] + [self.prompt_builder.eos_token_id] * extra
        lens_t = torch.tensor(lens + ([extra] if extra else []), device=dev)
        seg = torch.repeat_interleave(torch.arange(len(lens_t), device=dev), lens_t)  # owner
        t_len = len(ids)
        offset = torch.arange(t_len, device=dev) - torch.repeat_interleave(
            lens_t.cumsum(0) - lens_t, lens_t)
        q = torch.arange(t_len, device=dev)
        allowed = (seg[:, None] == seg[None, :]) & (q[None, :] <= q[:, None])
        allowed = torch.cat([torch.ones(t_len, p_len, dtype=torch.bool, device=dev),
                             torch.zeros(t_len, width - p_len, dtype=torch.bool, device=dev),
                             allowed], 1)
        dtype = prefix[0][0].dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=dev)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        logits = _forward_cached(self.model, self._cache(prefix, 1),
                                 input_ids=torch.tensor([ids], device=dev),
                                 attention_mask=mask[None, None],
                                 position_ids=(p_len + offset)[None]).logits[0]
        lp = _token_logprobs(logits, torch.tensor(tgt, device=dev))
        total = torch.zeros(len(lens_t), dtype=lp.dtype, device=dev).index_add_(0, seg, lp)
        return total[:n]

    def _batched(self, prefix, p_len: int, chunk: list[list[int]], dev) -> torch.Tensor:
        """The same, one row per response: the prompt cache repeated along the batch, responses
        right-padded with an attention mask (works with every attention implementation)."""
        b = len(chunk)
        width, t_len = prefix[0][0].shape[-2], _round_up(max(len(r) for r in chunk) - 1,
                                                          self.multiple)
        pad = self.prompt_builder.eos_token_id
        ids, mask = _pad([r[:-1] for r in chunk], t_len, pad, dev)
        tgt, _ = _pad([r[1:] for r in chunk], t_len, pad, dev)
        attn = torch.cat([torch.ones((b, p_len), dtype=torch.long, device=dev),
                          torch.zeros((b, width - p_len), dtype=torch.long, device=dev), mask], 1)
        pos = torch.arange(p_len, p_len + t_len, device=dev).expand(b, t_len)
        logits = _forward_cached(self.model, self._cache(prefix, b), input_ids=ids,
                                 attention_mask=attn, position_ids=pos).logits
        return (_token_logprobs(logits, tgt) * mask).sum(1)


@dataclass
class NaiveLikelihoodScorer(LikelihoodScorer):
    """The same scores from full sequences, one prompt copy per candidate (no shared cache)."""

    name: str = "naive"

    def score_ids(self, prompt: list[int], responses: list[list[int]]) -> torch.Tensor:
        model, dev = self.model, model_device(self.model)
        p_len = len(prompt)
        pad = self.prompt_builder.eos_token_id
        scores = torch.empty(len(responses), dtype=torch.float32)
        for start in range(0, len(responses), self.batch_size):
            chunk = responses[start : start + self.batch_size]
            b, width = len(chunk), p_len + max(len(r) for r in chunk)
            ids, mask = _pad([prompt + r for r in chunk], width, pad, dev)
            # position t predicts token t+1; response tokens sit at p_len .. p_len+len(r)-1, so
            # only positions p_len-1 .. width-2 need logits (the vocab projection dominates)
            keep = torch.arange(p_len - 1, width - 1, device=dev)
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
            lp = _token_logprobs(logits, ids[:, p_len:])
            total = (lp * mask[:, p_len:]).sum(1)
            if self.normalize:
                total = total / torch.tensor([len(r) for r in chunk], device=dev)
            scores[start : start + b] = total.float().cpu()
        return scores


@dataclass
class GenerateMatchScorer:
    """Greedy decoding + title matching (the paper's protocol). After `score`, `outputs`,
    `matches` and `valid_ratio` describe the last call."""

    model: Any
    prompt_builder: PromptBuilder
    batch_size: int = 8
    max_new_tokens: int | None = None
    multi: str = "first"
    progress: bool = False
    name: str = "generate"
    outputs: list[str] = field(default_factory=list, init=False, repr=False)
    matches: list[Match] = field(default_factory=list, init=False, repr=False)

    @property
    def valid_ratio(self) -> float:
        return sum(m.valid for m in self.matches) / max(len(self.matches), 1)

    def generate(self, samples: Sequence[Sample]) -> list[str]:
        """Greedy answers (decoded text) for each sample's prompt, batched with left padding."""
        from transformers import GenerationConfig  # lazy: +0.5 s (transformers)

        pb, dev = self.prompt_builder, model_device(self.model)
        tok = pb.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else pb.eos_token_id
        gen_cfg = GenerationConfig(
            max_new_tokens=int(self.max_new_tokens or pb.max_title_tokens + 1),
            do_sample=False, num_beams=1, eos_token_id=pb.eos_token_id, pad_token_id=pad,
        )
        batches = [samples[i : i + self.batch_size] for i in range(0, len(samples), self.batch_size)]
        texts: list[str] = []
        with EvalMode(self.model), torch.inference_mode():
            for batch in _progress(batches, self.progress, f"generating ({len(samples)} users)"):
                prompts = [pb.prompt_ids(s.history, s.candidates) for s in batch]
                width = max(len(p) for p in prompts)
                ids, mask = _pad(prompts, width, pad, dev, left=True)
                out = self.model.generate(input_ids=ids, attention_mask=mask,
                                          generation_config=gen_cfg)
                new = out[:, width:].cpu()
                texts += tok.batch_decode(new, skip_special_tokens=True)
        return [pb.clean_output(t) for t in texts]

    def scores_from_outputs(self, samples: Sequence[Sample], outputs: Sequence[str]) -> torch.Tensor:
        """Match each output to its sample's candidates: 1 for the match, 0 elsewhere."""
        if len(outputs) != len(samples):
            raise ValueError(f"{len(outputs)} outputs for {len(samples)} samples")
        c = num_candidates(samples)
        scores = torch.zeros(len(samples), c, dtype=torch.float32)
        self.outputs, self.matches = list(outputs), []
        for i, (s, text) in enumerate(zip(samples, outputs)):
            m = match_output(text, [self.prompt_builder.title(c) for c in s.candidates], self.multi)
            self.matches.append(m)
            if m.index is not None:
                scores[i, m.index] = 1.0
        return scores

    def score(self, samples: Sequence[Sample]) -> torch.Tensor:
        num_candidates(samples)
        return self.scores_from_outputs(samples, self.generate(samples))


class TitleTrie:
    """Token-prefix trie of answers (`response_ids`, each ending in the end token), built once.

    A node keeps its children by token, the answers that end at it and how many answers lie
    below it, so a search can drop a whole branch whose answers are all excluded for one user
    (`dead`) without rebuilding the trie: the full catalogue's trie serves every user."""

    __slots__ = ("children", "ends", "size")

    def __init__(self, responses: Sequence[Sequence[int]] = ()) -> None:
        self.children: dict[int, TitleTrie] = {}
        self.ends: list[int] = []
        self.size = 0
        for i, r in enumerate(responses):
            self.add(i, r)

    def add(self, index: int, tokens: Sequence[int]) -> None:
        node = self
        node.size += 1
        for t in tokens:
            node = node.children.setdefault(int(t), TitleTrie())
            node.size += 1
        node.ends.append(index)

    def dead(self, excluded: dict[int, Sequence[int]]) -> set[int]:
        """`id()` of the nodes all of whose answers are in `excluded` ({index: tokens})."""
        removed: dict[int, int] = {}
        out: set[int] = set()
        for tokens in excluded.values():
            node = self
            for t in tokens:
                node = node.children.get(int(t))
                if node is None:
                    break
                n = removed.get(id(node), 0) + 1
                removed[id(node)] = n
                if n >= node.size:
                    out.add(id(node))
        return out


class _ReferenceSteps:
    """The uncached reference: every step re-feeds each hypothesis's whole token prefix on a
    fresh copy of the prompt cache (work grows with the square of the title length). Kept for
    tests and the benchmark (`BeamScorer(reuse_cache=False)`)."""

    def __init__(self, scorer: BeamScorer, out: Any, p_len: int, dev: Any) -> None:
        self.scorer, self.p_len, self.dev = scorer, p_len, dev
        self.prefix = [(layer.keys, layer.values) for layer in _out_cache(out).layers]

    def __call__(self, parents: list[int], toks: list[list[int]]) -> torch.Tensor:
        ids = torch.tensor(toks, device=self.dev)
        k, t_len = ids.shape
        p_len, dev = self.p_len, self.dev
        pos = torch.arange(p_len, p_len + t_len, device=dev).expand(k, t_len)
        logits = _forward_cached(self.scorer.model, self.scorer._cache(self.prefix, k),
                                 input_ids=ids,
                                 attention_mask=torch.ones(k, p_len + t_len, dtype=torch.long,
                                                           device=dev),
                                 position_ids=pos, logits_to_keep=1).logits
        return logits[:, -1].float().log_softmax(-1)


class _BatchedSteps:
    """One cache row per hypothesis: the prompt's cache (computed once) is gathered by parent
    index (`Cache.reorder_cache`) and each hypothesis feeds only its newest token. Works with
    every attention implementation (no custom mask)."""

    def __init__(self, scorer: BeamScorer, out: Any, p_len: int, dev: Any) -> None:
        self.model, self.cache, self.p_len, self.dev = scorer.model, _out_cache(out), p_len, dev

    def __call__(self, parents: list[int], toks: list[list[int]]) -> torch.Tensor:
        dev, k, depth = self.dev, len(toks), len(toks[0])
        self.cache.reorder_cache(torch.tensor(parents, device=dev))
        ids = torch.tensor([t[-1] for t in toks], device=dev)[:, None]
        pos = torch.full((k, 1), self.p_len + depth - 1, device=dev)
        mask = torch.ones(k, self.p_len + depth, dtype=torch.long, device=dev)
        logits = _forward_cached(self.model, self.cache, input_ids=ids, attention_mask=mask,
                                 position_ids=pos, logits_to_keep=1).logits
        return logits[:, -1].float().log_softmax(-1)


class _TreeSteps:
    """All hypotheses in ONE cache row (the prompt's, never copied): each step appends the
    live hypotheses' newest tokens and a 4D mask lets each see the prompt, its own ancestors'
    cache slots and itself. Slots of pruned hypotheses stay, masked (at most `beam_size` per
    step). Not for flash-attention or sliding-window caches (`_BatchedSteps` then)."""

    def __init__(self, scorer: BeamScorer, out: Any, p_len: int, dev: Any) -> None:
        self.model, self.cache, self.p_len, self.dev = scorer.model, _out_cache(out), p_len, dev
        self.length = p_len                 # cache slots used so far
        self.paths: list[list[int]] = [[]]  # per live hypothesis: slots of its fed tokens
        self.dtype = self.cache.layers[0].keys.dtype

    def __call__(self, parents: list[int], toks: list[list[int]]) -> torch.Tensor:
        lp, self.paths = self.feed([self.paths[p] for p in parents], [t[-1] for t in toks])
        return lp

    def feed(self, ancestors: list[list[int]], toks: list[int]
             ) -> tuple[torch.Tensor, list[list[int]]]:
        """Append one token per prefix (`ancestors`: the cache slots of its earlier tokens, any
        depth) and return the log-probs of the next token and each prefix's slots after it."""
        dev, k, length = self.dev, len(toks), self.length
        paths = [a + [length + j] for j, a in enumerate(ancestors)]
        allowed = torch.zeros(k, length + k, dtype=torch.bool)
        allowed[:, : self.p_len] = True
        allowed[[j for j, path in enumerate(paths) for _ in path],
                [s for path in paths for s in path]] = True
        mask = torch.zeros(allowed.shape, dtype=self.dtype)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        ids = torch.tensor([toks], device=dev)
        pos = torch.tensor([[self.p_len + len(a) for a in ancestors]], device=dev)
        logits = _forward_cached(self.model, self.cache, input_ids=ids,
                                 attention_mask=mask.to(dev)[None, None],
                                 position_ids=pos).logits[0]
        self.length = length + k
        return logits.float().log_softmax(-1), paths


@dataclass
class BeamScorer(LikelihoodScorer):
    """Ranked, always-valid generation: beam search constrained to the candidates' answers.

    The answers (`response_ids`, each ending in the end token) form a token trie; from the
    prompt's KV cache, each step extends every live hypothesis by the tokens its trie node allows,
    scored by the model's full log-softmax (not renormalised over the allowed tokens), and keeps
    the `beam_size` best. A hypothesis that completes an answer is finished with exactly that
    answer's log-likelihood; the search stops when `beam_size` answers are finished and no live
    hypothesis can beat the worst of them (log-probabilities only fall as tokens are added).
    Finished candidates score their log-likelihood, the others -inf (ranked last, tied), so the
    top `beam_size` are a ranked list of distinct valid items; with `beam_size` >= the number of
    candidates it is the exhaustive likelihood ranking. Items sharing one title finish together
    with the same score (a tie).

    The prompt is prefilled once and every hypothesis keeps its cached state, so a step feeds
    one new token per hypothesis: `packed=True` (default) in one cache row with a tree mask
    (`_TreeSteps`), `packed=False` (and flash-attention) one cache row per hypothesis gathered
    by parent (`_BatchedSteps`). `reuse_cache=False` is the old uncached search (re-feeds each
    prefix every step), the reference of tests and the benchmark; the results agree (< 1e-4).

    `search_mode="exact"` (`eval.search=exact`) replaces the beam by a best-first search that
    returns exactly the `beam_size` most likely answers (`exact_search`).
    """

    beam_size: int = 10
    reuse_cache: bool = True
    search_mode: str = "beam"
    expand_batch: int = 16        # exact: open prefixes expanded per forward call
    max_expansions: int = 20_000  # exact: safety cap on expanded prefixes per search
    name: str = "beam"
    approximate: int = field(default=0, init=False)  # exact searches that hit the cap
    last_approximate: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beam_size < 1:
            raise ValueError(f"eval.beam_size must be >= 1, got {self.beam_size}")
        if self.search_mode not in SEARCHES:
            raise ValueError(f"eval.search={self.search_mode!r}: not one of {list(SEARCHES)}")
        if self.expand_batch < 1 or self.max_expansions < 1:
            raise ValueError("expand_batch and max_expansions must be >= 1")

    def score_ids(self, prompt: list[int], responses: list[list[int]]) -> torch.Tensor:
        scores = torch.full((len(responses),), float("-inf"))
        for i, s in self.search(prompt, TitleTrie(responses)).items():
            scores[i] = s
        return scores

    def _steps(self, out: Any, p_len: int, dev: Any) -> Any:
        if not self.reuse_cache:
            return _ReferenceSteps(self, out, p_len, dev)
        sliding = any(getattr(layer, "is_sliding", False) for layer in _out_cache(out).layers)
        if self.packed and not _is_flash(self.model) and not sliding:
            return _TreeSteps(self, out, p_len, dev)
        return _BatchedSteps(self, out, p_len, dev)

    def _expander(self, out: Any, p_len: int, dev: Any) -> Any:
        """`(prefixes' tokens, their cache slots) -> (next-token log-probs, slots after them)`
        for prefixes of any depths: tree layout when available, else each prefix re-fed on the
        prompt cache (grouped by length; no slots kept)."""
        steps = self._steps(out, p_len, dev)
        if isinstance(steps, _TreeSteps):
            return lambda toks, slots: steps.feed(slots, [t[-1] for t in toks])
        ref = steps if isinstance(steps, _ReferenceSteps) else _ReferenceSteps(self, out, p_len, dev)

        def refeed(toks: list[list[int]], slots: list[list[int]]):
            rows: list[Any] = [None] * len(toks)
            by_len: dict[int, list[int]] = {}
            for j, t in enumerate(toks):
                by_len.setdefault(len(t), []).append(j)
            for js in by_len.values():
                lp = ref([0] * len(js), [toks[j] for j in js])
                for r, j in enumerate(js):
                    rows[j] = lp[r]
            return torch.stack(rows), [[] for _ in toks]

        return refeed

    def exact_search(self, prompt: list[int], trie: TitleTrie,
                     excluded: dict[int, Sequence[int]] | None = None) -> dict[int, float]:
        """{answer index: log-likelihood} of exactly the `beam_size` most likely answers not in
        `excluded`, by best-first search over the trie.

        Every token adds a log-prob <= 0, so a prefix's score bounds every answer below it: the
        open prefixes wait in a max-heap by score, and an answer is emitted only when it tops the
        heap (no open prefix can still lead above it). Up to `expand_batch` of the best prefixes
        are expanded per forward call (one token each on the cached state). After
        `max_expansions` the list is filled from the best open entries, a prefix's items taking
        its score (an upper bound), and `last_approximate` is set (counted in `approximate`)."""
        model, dev = self.model, model_device(self.model)
        excluded = excluded or {}
        dead = trie.dead(excluded) if excluded else set()
        out = model(input_ids=torch.tensor([prompt], device=dev), use_cache=True, logits_to_keep=1)
        expand = self._expander(out, len(prompt), dev)
        tick = itertools.count()
        # (-score, tie-break, answer index, None) or (-score, tie-break, -1, (tokens, node, slots))
        heap: list[tuple[float, int, int, Any]] = []

        def push(lp: torch.Tensor, score: float, toks: list[int], node: TitleTrie,
                 slots: list[int]) -> None:
            kids = [(t, c) for t, c in node.children.items() if id(c) not in dead]
            if not kids:
                return
            for (t, c), v in zip(kids, lp[torch.tensor([t for t, _ in kids])].tolist()):
                for i in c.ends:
                    if i not in excluded:
                        heapq.heappush(heap, (-(score + v), next(tick), i, None))
                if any(id(g) not in dead for g in c.children.values()):
                    heapq.heappush(heap, (-(score + v), next(tick), -1, (toks + [t], c, slots)))

        push(out.logits[0, -1].float().log_softmax(-1).cpu(), 0.0, [], trie, [])
        found: dict[int, float] = {}
        k, expansions = self.beam_size, 0
        while heap and len(found) < k:
            batch, held = [], []
            while heap and len(batch) < self.expand_batch and len(found) < k:
                if heap[0][3] is None:  # a complete answer
                    entry = heapq.heappop(heap)
                    if batch:  # a prefix popped before it may still lead above it
                        held.append(entry)
                    else:
                        found[entry[2]] = -entry[0]
                elif expansions + len(batch) < self.max_expansions:
                    batch.append(heapq.heappop(heap))
                else:
                    break
            for entry in held:
                heapq.heappush(heap, entry)
            if not batch:
                break
            lp, slots = expand([e[3][0] for e in batch], [e[3][2] for e in batch])
            expansions += len(batch)
            lp = lp.cpu()
            for row, (neg, _, _, (toks, node, _)) in enumerate(batch):
                push(lp[row], -neg, toks, node, slots[row])
        self.last_approximate = len(found) < k and bool(heap)
        if self.last_approximate:
            self.approximate += 1
            log.warning("exact search: max_expansions=%d reached with %d of %d answers found; "
                        "the rest are ranked by prefix score (approximate)",
                        self.max_expansions, len(found), k)
            self._fill(found, sorted(heap), k, dead, excluded)
        return found

    @staticmethod
    def _fill(found: dict[int, float], entries: list, k: int, dead: set[int],
              excluded: dict[int, Sequence[int]]) -> None:
        """Add the answers of the open heap `entries` (best first) to `found` up to `k`."""
        for neg, _, i, rest in entries:
            stack = [rest[1]] if rest is not None else []
            if rest is None and i not in found:
                found[i] = -neg
            while stack and len(found) < k:
                node = stack.pop()
                found.update({j: -neg for j in node.ends if j not in excluded})
                stack += [c for c in node.children.values() if id(c) not in dead]
            if len(found) >= k:
                return

    def search(self, prompt: list[int], trie: TitleTrie,
               excluded: dict[int, Sequence[int]] | None = None) -> dict[int, float]:
        """{answer index: log-likelihood} of the answers the beam finished (at least the best
        `beam_size` it found), answers in `excluded` ({index: tokens}) never among them;
        `exact_search` instead with `search_mode="exact"`."""
        if self.search_mode == "exact":
            return self.exact_search(prompt, trie, excluded)
        model, dev = self.model, model_device(self.model)
        excluded = excluded or {}
        dead = trie.dead(excluded) if excluded else set()
        out = model(input_ids=torch.tensor([prompt], device=dev), use_cache=True, logits_to_keep=1)
        step = self._steps(out, len(prompt), dev)
        found: dict[int, float] = {}
        top: list[float] = []  # min-heap of the best `beam_size` finished scores
        # (tokens, score, trie node, index of the parent in the previous step's beams)
        beams: list[tuple[list[int], float, TitleTrie, int]] = [([], 0.0, trie, 0)]
        step_lp = out.logits[:, -1].float().log_softmax(-1)
        while beams:
            step_lp = step_lp.cpu()
            cands = []
            for b, (toks, score, node, _) in enumerate(beams):
                kids = [(t, c) for t, c in node.children.items() if id(c) not in dead]
                if not kids:
                    continue
                lps = step_lp[b][torch.tensor([t for t, _ in kids])].tolist()
                cands += [(score + lp, toks + [t], c, b) for (t, c), lp in zip(kids, lps)]
            cands.sort(key=lambda c: -c[0])
            beams = []
            for score, toks, node, parent in cands:
                if len(top) >= self.beam_size and score <= top[0]:
                    break  # can never enter the top beam_size
                for i in node.ends:
                    if i not in excluded:
                        found[i] = score
                        heapq.heappush(top, score)
                        if len(top) > self.beam_size:
                            heapq.heappop(top)
                if node.children and len(beams) < self.beam_size:
                    beams.append((toks, score, node, parent))
            if not beams:
                break
            step_lp = step([b[3] for b in beams], [b[0] for b in beams])
        return found


@dataclass
class CatalogueBeamScorer(BeamScorer):
    """The same beam search over ONE trie of every catalogue item's answer, built (and every
    title tokenised) once per scorer; a user's excluded items are pruned from the shared trie
    per search. `rank` returns each sample's top `beam_size` items, best first."""

    item_ids: Sequence[str] = ()
    name: str = "beam"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.item_ids:
            raise ValueError("CatalogueBeamScorer: empty catalogue")
        self.item_ids = list(self.item_ids)
        self.index = {item: j for j, item in enumerate(self.item_ids)}
        self.responses = [self.prompt_builder.response_ids(i) for i in self.item_ids]
        self.trie = TitleTrie(self.responses)

    def rank(self, samples: Sequence[Sample], excluded: Sequence[set[str]] | None = None
             ) -> list[list[tuple[str, float]]]:
        """Per sample, [(item id, log-likelihood)] of the top `beam_size` items, best first.
        The prompt shows no candidates (the instruction template's list is left empty)."""
        excluded = excluded or [set() for _ in samples]
        pb, out = self.prompt_builder, []
        with EvalMode(self.model), torch.inference_mode():
            for s, ex in zip(_progress(samples, self.progress, "full-catalogue beam"), excluded):
                ex_idx = {self.index[i]: self.responses[self.index[i]]
                          for i in ex if i in self.index}
                found = self.search(pb.prompt_ids(s.history, []), self.trie, ex_idx)
                best = sorted(found.items(), key=lambda kv: -kv[1])[: self.beam_size]
                out.append([(self.item_ids[j], v) for j, v in best])
        return out


SCORERS = {"likelihood": LikelihoodScorer, "naive": NaiveLikelihoodScorer,
           "generate": GenerateMatchScorer, "beam": BeamScorer}


def build_scorer(name: str, model: Any, prompt_builder: PromptBuilder,
                 config: ScorerConfig | EvalConfig):
    """A scorer from its name and its settings (`ScorerConfig`; a parsed `EvalConfig` is cut
    down to them, as the scripts pass it)."""
    if name not in SCORERS:
        raise ValueError(f"eval.scorer: unknown scorer {name!r}; choose one of {sorted(SCORERS)}")
    sc = config if isinstance(config, ScorerConfig) else ScorerConfig.of(config)
    if name in ("likelihood", "naive"):
        return SCORERS[name](model, prompt_builder, batch_size=sc.batch_size,
                             normalize=sc.normalize, progress=sc.progress, packed=sc.packed)
    if name == "beam":
        return BeamScorer(model, prompt_builder, batch_size=sc.batch_size, progress=sc.progress,
                          packed=sc.packed, beam_size=sc.beam_size, search_mode=sc.search)
    return GenerateMatchScorer(model, prompt_builder, batch_size=sc.generate_batch_size,
                               max_new_tokens=sc.max_new_tokens, multi=sc.multi_match,
                               progress=sc.progress)
