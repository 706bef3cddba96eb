"""Entropy-guided λ (docs/design.md §1.2): learn only the mixing weights on unlabeled prompts.

The target modules of the frozen backbone are wrapped by `MixedLoraLinear`, which computes
`base(x) + s_m · B_m (A_m x)` with `(A_m, B_m, s_m)` built from the adapters' frozen factors and
the current λ by `reccocktail.cocktail.mix.mix_factors`, the very function that writes the
exported adapter. So the gradient reaches λ through the merged adapter itself (no weight copies
through `.data`, and not peft's `add_weighted_adapter`, which is not differentiable), and the
learned λ exported afterwards gives exactly the model that was tuned.

Loss (`mix.objective`, the registry `OBJECTIVES`): by default the paper's, the mean Shannon
entropy of the next-token distributions at the first k response positions; `infomax`,
`anchored` and `normalized` are the alternatives of docs/design.md §1.2. The k tokens are
decoded greedily with the current λ (no grad), then one teacher-forced forward gives the k
distributions with grad. Greedy decoding does not stop at the end-of-turn token: a short title
is followed by whatever the model would say next, as in a fixed-length decode; with stop ids the
positions after the answer's end are masked.

Every objective is a mean over the batch's kept positions, so a batch is decoded first (all its
micro-batches), the kept positions are counted and, for `infomax`, the batch's mean distribution
per position is taken from the decoding pass; then each micro-batch backpropagates its share of
the one batch mean. The loss and the λ gradient do not depend on `mix.micro_batch_size`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from reccocktail.cocktail.mix import (
    GRANULARITIES,
    LoraAdapter,
    check_compatible,
    common_scaling,
    mix_factors,
    model_module_name,
)
from reccocktail.utils.config import one_of
from reccocktail.utils.device import model_device


class MixedLoraLinear(nn.Module):
    """A frozen base layer plus the λ-merged LoRA path of several adapters (differentiable in λ).

    The λ vector is set from outside (`LoraMixer.set_weights`) before each forward, so that one
    parameter tensor owned by the LightningModule drives every wrapped layer.
    """

    def __init__(self, base: nn.Module, As: Sequence[torch.Tensor], Bs: Sequence[torch.Tensor],
                 scalings: Sequence[float], mode: str, keep_scaling: float | None) -> None:
        super().__init__()
        self.base = base
        weight = getattr(base, "weight", None)
        device = weight.device if weight is not None else None
        self.n = len(As)
        # The factors stay in float32 whatever the backbone's dtype: λ and the mix are computed
        # in fp32 and only the mixed A and B are cast to the activations' dtype, so a bf16
        # model is tuned at the exact λ that the (fp32) export writes, not at λ rounded to bf16.
        for i, (a, b) in enumerate(zip(As, Bs)):
            self.register_buffer(f"lora_A{i}", a.detach().to(device=device, dtype=torch.float32)
                                 .clone(), persistent=False)
            self.register_buffer(f"lora_B{i}", b.detach().to(device=device, dtype=torch.float32)
                                 .clone(), persistent=False)
        self.scalings = [float(s) for s in scalings]
        self.mode = mode
        self.keep_scaling = keep_scaling
        self.weights: torch.Tensor | None = None

    def factors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([getattr(self, f"lora_A{i}") for i in range(self.n)],
                [getattr(self, f"lora_B{i}") for i in range(self.n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            raise RuntimeError("MixedLoraLinear: λ not set (call LoraMixer.set_weights first)")
        As, Bs = self.factors()
        A, B, s = mix_factors(As, Bs, self.scalings, self.weights.float(), self.mode,
                              self.keep_scaling)
        return self.base(x) + s * F.linear(F.linear(x, A.to(x.dtype)), B.to(x.dtype))


class LoraMixer:
    """Wraps a bare backbone's LoRA target modules in place with `MixedLoraLinear`."""

    def __init__(self, model: nn.Module, adapters: Sequence[LoraAdapter], mode: str = "ab") -> None:
        check_compatible(adapters, mode)
        self.model = model
        self.mode = mode
        self.names = [a.name for a in adapters]
        self.keys = adapters[0].modules  # PEFT module keys, sorted
        keep = common_scaling(adapters, mode)
        scalings = [a.scaling for a in adapters]
        self.layers: list[MixedLoraLinear] = []
        for key in self.keys:
            path = model_module_name(key)
            try:
                base = model.get_submodule(path)
            except AttributeError as err:
                raise ValueError(f"adapter module {path!r} does not exist in the backbone") from err
            if isinstance(base, MixedLoraLinear):
                raise ValueError(f"module {path!r} is already wrapped by a LoraMixer")
            layer = MixedLoraLinear(base, [a.A[key] for a in adapters], [a.B[key] for a in adapters],
                                    scalings, mode, keep)
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            self.layers.append(layer)

    @property
    def num_adapters(self) -> int:
        return len(self.names)

    def set_weights(self, weights: torch.Tensor | Sequence[float]) -> None:
        """λ of shape [n] (one for the model) or [num_modules, n] (one per module, sorted keys)."""
        w = torch.as_tensor(weights, dtype=torch.float32) if not torch.is_tensor(weights) else weights
        if w.dim() == 1:
            w = w.unsqueeze(0)
        if w.shape[-1] != self.num_adapters or w.shape[0] not in (1, len(self.layers)):
            raise ValueError(f"λ of shape {tuple(w.shape)} for {len(self.layers)} modules and "
                             f"{self.num_adapters} adapters")
        for j, layer in enumerate(self.layers):
            layer.weights = w[0 if w.shape[0] == 1 else j]

    def lambdas(self, weights: torch.Tensor) -> list[float] | dict[str, list[float]]:
        """λ in the form `mix.mix_adapters` takes: a vector, or a mapping module key -> vector."""
        w = weights.detach().double().cpu()
        if w.dim() == 1 or w.shape[0] == 1:
            return [float(x) for x in w.flatten()]
        return {k: [float(x) for x in w[j]] for j, k in enumerate(self.keys)}

    def unwrap(self) -> None:
        """Put the original layers back."""
        for key, layer in zip(self.keys, self.layers):
            path = model_module_name(key)
            parent, _, child = path.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, child, layer.base)
        self.layers = []


# -- the objectives ------------------------------------------------------------------------

def position_entropy(logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each distribution in `logp` [..., V] (log-probabilities)."""
    return -(logp.exp() * logp).sum(-1)


def position_entropy_of_probs(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of probability vectors [..., V] (0 log 0 = 0)."""
    return -torch.special.xlogy(p, p).sum(-1)


def mean_distribution(logp: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p̄ [k, V], n [k]): per answer position j, the mean over the prompts that keep j of their
    distributions, and how many prompts do (a position no prompt keeps gets p̄ = 0, n = 0)."""
    w = keep.to(logp.dtype)
    n = w.sum(0)
    total = (logp.exp() * w[..., None]).sum(0)
    return total / n.clamp(min=1)[:, None], n


class Objective:
    """One way to score λ on unlabeled prompts: a mean over the batch's kept answer positions
    (i, j) of a per-position term, plus an optional penalty on the λ logits.

    `terms` is what each micro-batch backpropagates (summed over its kept positions, divided
    by the batch's count). For objectives that are not a plain mean over positions (`infomax`)
    `terms` has the right gradient and `value` corrects the reported value from batch-level
    statistics. Subclasses set the flags that say which extra inputs they need."""

    name = "entropy"
    needs_mean = False        # the batch's mean distribution per position (infomax)
    needs_references = False  # each ingredient's own entropy at the same positions (normalized)

    def terms(self, logp: torch.Tensor, lam: torch.Tensor, mean_p: torch.Tensor | None = None,
              references: torch.Tensor | None = None) -> torch.Tensor:
        """[b, k] per-position terms of one micro-batch (differentiable in λ through `logp`
        and `lam`, the mean λ over groups [n])."""
        return position_entropy(logp)

    def value(self, terms_mean: float, entropy_mean: float, mean_p: torch.Tensor | None,
              counts: torch.Tensor | None) -> float:
        """The objective's value from the batch mean of `terms` (and the batch statistics)."""
        return terms_mean

    def penalty(self, logits: torch.Tensor, init: torch.Tensor) -> torch.Tensor | None:
        """A term on the λ logits added once per batch (None: none)."""
        return None


class EntropyObjective(Objective):
    """The paper's: mean entropy H(p_ij) over the kept positions (docs/design.md §1.2)."""


class InfomaxObjective(Objective):
    """Information maximisation (SHOT): mean_ij [H(p_ij) − H(p̄_j)], p̄_j the batch's mean
    distribution at position j. Confident per prompt, diverse across prompts.

    d/dθ H(p̄_j) = −Σ_v log p̄_jv · dp̄_jv/dθ (Σ_v dp̄_jv = 0), and p̄_j is linear in the p_ij,
    so `terms` = H(p_ij) + Σ_v p_ijv log p̄_jv with p̄ held fixed has exactly the gradient of the
    objective; p̄ comes from the decoding pass over the whole batch (no gradient)."""

    name = "infomax"
    needs_mean = True

    def terms(self, logp, lam, mean_p=None, references=None):
        if mean_p is None:
            raise ValueError("infomax: the batch's mean distribution is required")
        log_mean = mean_p.clamp(min=torch.finfo(mean_p.dtype).tiny).log()
        return position_entropy(logp) + (logp.exp() * log_mean.to(logp.dtype)).sum(-1)

    def value(self, terms_mean, entropy_mean, mean_p, counts):
        share = counts / counts.sum().clamp(min=1)
        return entropy_mean - float((share * position_entropy_of_probs(mean_p)).sum())


class AnchoredObjective(Objective):
    """Entropy + β · mean_g ‖z_g − z₀‖²: the λ logits z held near their start z₀ (the average,
    or `mix.init_lambdas`), so λ leaves it only for a clear entropy gain (EATA's anchor)."""

    name = "anchored"

    def __init__(self, beta: float) -> None:
        if not float(beta) >= 0:
            raise ValueError(f"mix.anchor_beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def penalty(self, logits, init):
        return self.beta * (logits - init).pow(2).sum(-1).mean()


class NormalizedObjective(Objective):
    """Baseline-normalised entropy: H(p_λ) − Σ_k λ_k H(p_k), p_k ingredient k's own
    distribution at the same prompt and position (teacher-forced on the mix's answer), so an
    ingredient does not win just by being sharper. With one λ per layer, λ_k is the mean."""

    name = "normalized"
    needs_references = True

    def terms(self, logp, lam, mean_p=None, references=None):
        if references is None:
            raise ValueError("normalized: the ingredients' own entropies are required")
        return position_entropy(logp) - (lam.to(references.dtype)[:, None, None]
                                         * references).sum(0)


OBJECTIVES = ("entropy", "infomax", "anchored", "normalized")


def make_objective(name: str, anchor_beta: float = 0.0) -> Objective:
    """The objective `mix.objective` names (`anchor_beta`: β of `anchored`)."""
    one_of(name, OBJECTIVES, "mix.objective")
    if name == "anchored":
        return AnchoredObjective(anchor_beta)
    return {"entropy": EntropyObjective, "infomax": InfomaxObjective,
            "normalized": NormalizedObjective}[name]()


def objective_value(name: str, logp: torch.Tensor, keep: torch.Tensor,
                    lam: torch.Tensor | None = None, references: torch.Tensor | None = None,
                    logits: torch.Tensor | None = None, init: torch.Tensor | None = None,
                    anchor_beta: float = 0.0) -> torch.Tensor:
    """The objective of one whole batch, differentiable end to end (p̄ included): the
    reference the micro-batched training step is checked against. `logp` [b, k, V], `keep`
    [b, k]; `lam` [n] and `references` [n, b, k] for `normalized`; `logits`/`init` for
    `anchored`."""
    obj = make_objective(name, anchor_beta)
    w = keep.to(logp.dtype)
    count = w.sum().clamp(min=1)
    ent = position_entropy(logp)
    if name == "infomax":
        mean_p, n = mean_distribution(logp, keep)
        return (ent * w).sum() / count - (n / count * position_entropy_of_probs(mean_p)).sum()
    out = (obj.terms(logp, lam, references=references) * w).sum() / count
    pen = obj.penalty(logits, init) if logits is not None else None
    return out if pen is None else out + pen


# -- decoding and the answer distributions -------------------------------------------------

def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), left-padded so that every prompt ends in the last column."""
    if not prompts:
        raise ValueError("no prompts to pad")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids, mask


def trim_left_padding(input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding in every row (a micro-batch of short prompts)."""
    used = attention_mask.any(0).nonzero()
    start = int(used[0]) if len(used) else 0
    return input_ids[:, start:], attention_mask[:, start:]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)


@torch.no_grad()
def greedy_decode(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [b, k], log-probabilities [b, k, V]): the k greedy response tokens of
    left-padded prompts and the distributions they were taken from (KV cache, no early stop).
    The distributions are those a teacher-forced forward on the tokens gives."""
    positions = _positions(attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=positions, use_cache=True, logits_to_keep=1)
    # transformers 5 renamed past_key_values to cache (the old name warns until 5.40)
    name = "cache" if getattr(out, "cache", None) is not None else "past_key_values"
    logps = [_log_softmax(out.logits[:, -1])]
    tokens = [logps[-1].argmax(-1)]
    mask, pos = attention_mask, positions[:, -1:]
    for _ in range(k - 1):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = pos + 1
        out = model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=pos,
                    use_cache=True, logits_to_keep=1, **{name: getattr(out, name)})
        logps.append(_log_softmax(out.logits[:, -1]))
        tokens.append(logps[-1].argmax(-1))
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)


def greedy_tokens(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  k: int) -> torch.Tensor:
    """The k greedy response tokens [b, k] of left-padded prompts (KV cache, no early stop)."""
    return greedy_decode(model, input_ids, attention_mask, k)[0]


def answer_positions(tokens: torch.Tensor, stop_ids: Sequence[int] | None) -> torch.Tensor:
    """[b, k] bool: the response positions that still belong to the answer. Position j (the
    distribution of token j) counts while none of tokens[:j] is a stop token, so the position
    that predicts the end token counts and the ones after it (the next turn) do not."""
    keep = torch.ones_like(tokens, dtype=torch.bool)
    if stop_ids:
        stop = torch.isin(tokens, torch.as_tensor(list(stop_ids), device=tokens.device))
        keep[:, 1:] = stop.cumsum(1)[:, :-1] == 0
    return keep


def answer_log_probs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     tokens: torch.Tensor) -> torch.Tensor:
    """[b, k, V] log-probabilities of the next token at the k response positions, teacher-forced
    on `tokens` [b, k] (one forward; differentiable)."""
    k = tokens.shape[1]
    ids = torch.cat([input_ids, tokens[:, :-1]], dim=1)
    mask = torch.cat([attention_mask, attention_mask.new_ones(tokens.shape[0], k - 1)], dim=1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                use_cache=False, logits_to_keep=k)
    return _log_softmax(out.logits[:, -k:])


def response_entropy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     tokens: torch.Tensor, stop_ids: Sequence[int] | None = None) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the next-token distributions at the k response positions,
    teacher-forced on `tokens` [b, k] (one forward; differentiable). With `stop_ids`, positions
    after the answer's end token are left out (`answer_positions`)."""
    ent = position_entropy(answer_log_probs(model, input_ids, attention_mask, tokens))
    keep = answer_positions(tokens, stop_ids)
    return (ent * keep).sum() / keep.sum()


class EntropyMixModule(L.LightningModule):
    """Learns only the λ logits (softmax, start 0.5/0.5) by minimising `objective` (default:
    the paper's response entropy) on unlabeled prompts."""

    def __init__(self, model: nn.Module, adapters: Sequence[LoraAdapter], mode: str = "ab",
                 granularity: str = "model", k: int = 3, lr: float = 0.05,
                 init_lambdas: Sequence[float] | None = None,
                 micro_batch_size: int | None = None,
                 stop_ids: Sequence[int] | None = None,
                 objective: str = "entropy", anchor_beta: float = 0.0) -> None:
        super().__init__()
        # Manual optimisation: a batch is backpropagated in micro-batches whose gradients add
        # up before one Adam step, so memory (the attention maps kept for backward, ~1.5 GB per
        # 550-token prompt on SmolLM2) is bounded by the micro-batch, not by mix.batch_size.
        self.automatic_optimization = False
        if micro_batch_size is not None and int(micro_batch_size) < 1:
            raise ValueError(f"mix.micro_batch_size must be >= 1, got {micro_batch_size}")
        self.micro_batch_size = int(micro_batch_size) if micro_batch_size else None
        one_of(granularity, GRANULARITIES, "mix.granularity")
        if int(k) < 1:
            raise ValueError(f"mix.k must be >= 1, got {k}")
        self.objective = make_objective(objective, anchor_beta)
        self.model = model
        self.model.requires_grad_(False)
        self.mixer = LoraMixer(model, adapters, mode)
        self.granularity, self.k, self.lr = granularity, int(k), float(lr)
        self.stop_ids = sorted({int(i) for i in stop_ids}) if stop_ids else None
        groups = 1 if granularity == "model" else len(self.mixer.layers)
        init = torch.zeros(self.mixer.num_adapters)
        if init_lambdas is not None:
            lam = torch.as_tensor(list(init_lambdas), dtype=torch.float64)
            if lam.numel() != self.mixer.num_adapters or (lam <= 0).any():
                raise ValueError(f"mix.init_lambdas: {list(init_lambdas)} must hold "
                                 f"{self.mixer.num_adapters} positive values")
            init = (lam / lam.sum()).log().float()
        self.lambda_logits = nn.Parameter(init.repeat(groups, 1))
        self.register_buffer("init_logits", init.repeat(groups, 1).clone(), persistent=False)
        self.curve: list[dict] = []

    def lambdas(self) -> torch.Tensor:
        """λ = softmax(logits), shape [groups, n]."""
        return self.lambda_logits.softmax(-1)

    def train(self, mode: bool = True):
        """Only λ trains: the backbone stays in eval mode (no dropout) whatever Lightning asks."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
        self.mixer.set_weights(self.lambdas())
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _micro_batches(self, ids: torch.Tensor, mask: torch.Tensor):
        step = self.micro_batch_size or ids.shape[0]
        for lo in range(0, ids.shape[0], step):
            yield trim_left_padding(ids[lo:lo + step], mask[lo:lo + step])

    @torch.no_grad()
    def reference_entropies(self, ids: torch.Tensor, mask: torch.Tensor,
                            tokens: torch.Tensor) -> torch.Tensor:
        """[n, b, k]: each ingredient's own entropy (λ = e_k) at the mix's answer positions."""
        out = []
        for i in range(self.mixer.num_adapters):
            self.mixer.set_weights(F.one_hot(torch.tensor(i), self.mixer.num_adapters).float()
                                   .to(self.lambda_logits.device))
            out.append(position_entropy(answer_log_probs(self.model, ids, mask, tokens)))
        return torch.stack(out)

    def objective_backward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           backward: Callable[[torch.Tensor], Any] | None = None
                           ) -> dict[str, float]:
        """The objective of one batch at the current λ, its gradient added to the λ logits'
        `.grad` (`backward`: how to backpropagate a tensor, default `.backward()`).

        Pass 1 decodes every micro-batch (no grad): answer tokens, kept positions, their count
        N and, for `infomax`, the batch's mean distribution per position. Pass 2 backpropagates
        each micro-batch's Σ terms / N. Returns {"loss", "entropy"} (the mean entropy over the
        batch's kept positions)."""
        backward = backward or (lambda t: t.backward())
        obj = self.objective
        self.mixer.set_weights(self.lambdas().detach())
        parts, logp_sum, counts = [], None, None
        for ids, mask in self._micro_batches(input_ids, attention_mask):
            tokens, logp = greedy_decode(self.model, ids, mask, self.k)
            keep = answer_positions(tokens, self.stop_ids)
            parts.append((ids, mask, tokens, keep))
            if obj.needs_mean:
                w = keep.to(logp.dtype)
                part_sum = (logp.exp() * w[..., None]).sum(0)
                logp_sum = part_sum if logp_sum is None else logp_sum + part_sum
                counts = w.sum(0) if counts is None else counts + w.sum(0)
        total = sum(int(keep.sum()) for *_, keep in parts)
        mean_p = None if logp_sum is None else logp_sum / counts.clamp(min=1)[:, None]
        terms_sum = entropy_sum = 0.0
        for ids, mask, tokens, keep in parts:
            refs = self.reference_entropies(ids, mask, tokens) if obj.needs_references else None
            lam = self.lambdas()
            self.mixer.set_weights(lam)
            logp = answer_log_probs(self.model, ids, mask, tokens)
            w = keep.to(logp.dtype)
            part = (obj.terms(logp, lam.mean(0), mean_p, refs) * w).sum() / total
            backward(part)
            terms_sum += float(part.detach())
            entropy_sum += float((position_entropy(logp.detach()) * w).sum())
        entropy = entropy_sum / total
        value = obj.value(terms_sum, entropy, mean_p, counts)
        pen = obj.penalty(self.lambda_logits, self.init_logits)
        if pen is not None:
            backward(pen)
            value += float(pen.detach())
        return {"loss": value, "entropy": entropy}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        opt.zero_grad()
        ids, mask = batch["input_ids"], batch["attention_mask"]
        n = ids.shape[0]
        out = self.objective_backward(ids, mask, self.manual_backward)
        opt.step()
        lam = self.lambdas().detach().mean(0)
        self.log("mix/loss", out["loss"], prog_bar=True, batch_size=n)
        self.log("mix/entropy", out["entropy"], batch_size=n)
        for name, value in zip(self.mixer.names, lam):
            self.log(f"mix/lambda_{name}", value, batch_size=n)
        self.curve.append({"step": int(self.global_step), "loss": out["loss"],
                           "entropy": out["entropy"], "lambda": [float(x) for x in lam]})
        return torch.tensor(out["loss"])

    def configure_optimizers(self):
        return torch.optim.Adam([self.lambda_logits], lr=self.lr)

    @torch.no_grad()
    def mean_entropy(self, batches) -> float:
        """The mean entropy over every kept answer position of a whole set of prompts at the
        current λ (batches as the loader yields them), from the decoding pass. The per-step
        curve is measured on changing batches; this is comparable before and after learning."""
        dev = model_device(self.model)
        self.mixer.set_weights(self.lambdas().detach())
        total, count = 0.0, 0
        for batch in batches:
            ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
            for part in self._micro_batches(ids, mask):
                tokens, logp = greedy_decode(self.model, *part, self.k)
                keep = answer_positions(tokens, self.stop_ids)
                total += float((position_entropy(logp) * keep).sum())
                count += int(keep.sum())
        return total / max(count, 1)

    def learned_lambdas(self) -> list[float] | dict[str, list[float]]:
        """The learned λ in the form `mix.mix_adapters` takes."""
        return self.mixer.lambdas(self.lambdas())


class PromptDataset(torch.utils.data.Dataset):
    """Prompt token ids; batches are left-padded by `collate`."""

    def __init__(self, prompts: Sequence[Sequence[int]], pad_id: int) -> None:
        self.prompts = [list(p) for p in prompts]
        self.pad_id = int(pad_id)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> list[int]:
        return self.prompts[i]

    def collate(self, batch: list[list[int]]) -> dict[str, torch.Tensor]:
        ids, mask = left_pad(batch, self.pad_id)
        return {"input_ids": ids, "attention_mask": mask}
