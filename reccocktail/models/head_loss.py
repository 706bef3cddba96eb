"""Cross-entropy through the LM head, a chunk of positions at a time, never holding all logits.

The plain path (`logits = head(h)`, then `cross_entropy`) keeps a [positions, vocabulary] fp32
block for the forward, another for the log-softmax and a third for its gradient: with ~1,300
labelled positions per batch and SmolLM2's 49k tokens that is ~0.65 GB of a CPU training step's
~4 GB, and for a 152k-token vocabulary it grows threefold (docs/design.md §8). Here the
forward visits the positions in chunks and computes each chunk's gradient with respect to the
hidden states right away (`softmax - onehot` times the head), so the backward is one multiply
and the largest temporary is one chunk's logits. Same FLOPs as the plain path; the loss and
gradients agree with it to float rounding (tests/test_head_loss.py). Fused kernels that do this
(e.g. Liger's) are Triton, GPU-only; this one runs wherever torch does.
"""

from __future__ import annotations

import torch

# Elements of one chunk's fp32 logits (2**25 = 128 MiB): ~680 positions at 49k tokens,
# ~220 at 152k.
CHUNK_ELEMENTS = 1 << 25


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int, mean: bool) -> torch.Tensor:
        n = hidden.shape[0]
        div = n if mean else 1
        acc = torch.promote_types(hidden.dtype, torch.float32)  # bf16/fp16 logits in fp32
        grad_hidden = torch.empty_like(hidden)
        grad_weight = (torch.zeros(weight.shape, dtype=acc, device=weight.device)
                       if weight.requires_grad else None)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, n, chunk):
            h = hidden[start:start + chunk]
            t = targets[start:start + chunk]
            logits = (h @ weight.T).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            # d(loss)/d(logits) = (softmax - onehot) / div, built in place in `logits`
            logits.sub_(lse[:, None]).exp_()
            logits[torch.arange(t.numel(), device=t.device), t] -= 1.0
            if div != 1:
                logits.div_(div)
            probs = logits.to(weight.dtype)
            grad_hidden[start:start + chunk] = probs @ weight
            if grad_weight is not None:
                grad_weight += (probs.T @ h).to(acc)
        # gradients computed here, not inputs or outputs: plain attributes, not saved tensors
        ctx.grad_hidden, ctx.grad_weight, ctx.weight_dtype = grad_hidden, grad_weight, weight.dtype
        return total / div

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        # the upstream scale (accumulation, AMP, a token-count normalisation) multiplies the
        # gradients computed in the forward, so any scaling of the returned loss reaches them
        gh = ctx.grad_hidden * grad_out.to(ctx.grad_hidden.dtype)
        gw = None if ctx.grad_weight is None else (ctx.grad_weight * grad_out).to(ctx.weight_dtype)
        return gh, gw, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int | None = None, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` ([N, d] @ [d, V]) against `targets` ([N]): the mean
    over the N positions, or their sum with `reduction="sum"` (for a caller that divides by a
    count spanning several batches, e.g. the targets of every accumulated micro-batch).

    `chunk`: positions per chunk (default: `CHUNK_ELEMENTS` fp32 logits). Gradients flow to
    `hidden`, and to `weight` when it requires them (full fine-tuning of a tied head).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden [N, d] and targets [N], got {tuple(hidden.shape)} "
                         f"and {tuple(targets.shape)}")
    if hidden.shape[0] == 0:
        raise ValueError("no positions to take the loss on")
    rows = chunk or max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets, int(rows), reduction == "mean")
