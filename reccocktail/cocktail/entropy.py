"""Entropy-guided λ (docs/design.md §1.2): learn only the mixing weights on unlabeled prompts.

The target modules of the frozen backbone are wrapped by `MixedLoraLinear`, which computes
`base(x) + s_m · B_m (A_m x)` with `(A_m, B_m, s_m)` built from the adapters' frozen factors and
the current λ by `reccocktail.cocktail.mix.mix_factors`, the very function that writes the
exported adapter. So the gradient reaches λ through the merged adapter itself (no weight copies
through `.data`, and not peft's `add_weighted_adapter`, which is not differentiable), and the
learned λ exported afterwards gives exactly the model that was tuned.

Loss: the mean Shannon entropy of the next-token distributions at the first k response
positions. The k tokens are decoded greedily with the current λ (no grad), then one teacher-forced
forward gives the k distributions with grad. Greedy decoding does not stop at the end-of-turn
token: a short title is followed by whatever the model would say next, as in a fixed-length
decode.
"""

from __future__ import annotations

from collections.abc import Sequence

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


# -- the entropy objective ------------------------------------------------------------------

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


@torch.no_grad()
def greedy_tokens(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  k: int) -> torch.Tensor:
    """The k greedy response tokens [b, k] of left-padded prompts (KV cache, no early stop)."""
    positions = _positions(attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=positions, use_cache=True, logits_to_keep=1)
    # transformers 5 renamed past_key_values to cache (the old name warns until 5.40)
    name = "cache" if getattr(out, "cache", None) is not None else "past_key_values"
    tokens = [out.logits[:, -1].argmax(-1)]
    mask, pos = attention_mask, positions[:, -1:]
    for _ in range(k - 1):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = pos + 1
        out = model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=pos,
                    use_cache=True, logits_to_keep=1, **{name: getattr(out, name)})
        tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1)


def answer_positions(tokens: torch.Tensor, stop_ids: Sequence[int] | None) -> torch.Tensor:
    """[b, k] bool: the response positions that still belong to the answer. Position j (the
    distribution of token j) counts while none of tokens[:j] is a stop token, so the position
    that predicts the end token counts and the ones after it (the next turn) do not."""
    keep = torch.ones_like(tokens, dtype=torch.bool)
    if stop_ids:
        stop = torch.isin(tokens, torch.as_tensor(list(stop_ids), device=tokens.device))
        keep[:, 1:] = stop.cumsum(1)[:, :-1] == 0
    return keep


def response_entropy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     tokens: torch.Tensor, stop_ids: Sequence[int] | None = None) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the next-token distributions at the k response positions,
    teacher-forced on `tokens` [b, k] (one forward; differentiable). With `stop_ids`, positions
    after the answer's end token are left out (`answer_positions`)."""
    k = tokens.shape[1]
    ids = torch.cat([input_ids, tokens[:, :-1]], dim=1)
    mask = torch.cat([attention_mask, attention_mask.new_ones(tokens.shape[0], k - 1)], dim=1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                use_cache=False, logits_to_keep=k)
    logits = out.logits[:, -k:]
    logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
    ent = -(logp.exp() * logp).sum(-1)
    keep = answer_positions(tokens, stop_ids)
    return (ent * keep).sum() / keep.sum()


class EntropyMixModule(L.LightningModule):
    """Learns only the λ logits (softmax, start 0.5/0.5) by minimising response entropy."""

    def __init__(self, model: nn.Module, adapters: Sequence[LoraAdapter], mode: str = "ab",
                 granularity: str = "model", k: int = 3, lr: float = 0.05,
                 init_lambdas: Sequence[float] | None = None,
                 micro_batch_size: int | None = None,
                 stop_ids: Sequence[int] | None = None) -> None:
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

    def entropy_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.mixer.set_weights(self.lambdas())
        tokens = greedy_tokens(self.model, input_ids, attention_mask, self.k)
        return response_entropy(self.model, input_ids, attention_mask, tokens, self.stop_ids)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        opt.zero_grad()
        ids, mask = batch["input_ids"], batch["attention_mask"]
        n = ids.shape[0]
        step = self.micro_batch_size or n
        loss = torch.zeros((), device=ids.device)
        for lo in range(0, n, step):
            part = self.entropy_loss(*trim_left_padding(ids[lo:lo + step], mask[lo:lo + step]))
            part = part * (min(step, n - lo) / n)  # the batch mean, summed over micro-batches
            self.manual_backward(part)
            loss = loss + part.detach()
        opt.step()
        lam = self.lambdas().detach().mean(0)
        self.log("mix/entropy", loss, prog_bar=True, batch_size=n)
        for name, value in zip(self.mixer.names, lam):
            self.log(f"mix/lambda_{name}", value, batch_size=n)
        self.curve.append({"step": int(self.global_step), "entropy": float(loss.detach()),
                           "lambda": [float(x) for x in lam]})
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam([self.lambda_logits], lr=self.lr)

    @torch.no_grad()
    def mean_entropy(self, batches) -> float:
        """The objective over a whole set of prompts at the current λ (batches as the loader
        yields them). The per-step curve is measured on changing batches; this is comparable
        before and after learning."""
        dev = model_device(self.model)
        total, count = 0.0, 0
        for batch in batches:
            ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
            step = self.micro_batch_size or ids.shape[0]
            for lo in range(0, ids.shape[0], step):
                part = self.entropy_loss(*trim_left_padding(ids[lo:lo + step], mask[lo:lo + step]))
                n = ids[lo:lo + step].shape[0]
                total, count = total + float(part) * n, count + n
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
