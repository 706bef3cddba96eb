"""Ranking metrics for one positive among `c` candidates: NDCG@k, HR@k and MRR.

Rank of the positive (1 = best) is `1 + #{others scoring higher} + #{others scoring equal}`:
ties are broken *pessimistically*, i.e. every candidate that ties with the positive is placed
above it. This is deterministic, independent of candidate order, and never favours the
positive, so a model that gives every candidate the same score (or a generate-and-match miss)
lands at rank `c`, not at rank 1. With one relevant item the ideal DCG is 1, so
`NDCG@k = 1/log2(rank + 1)` when `rank <= k`, else 0; `HR@k = [rank <= k]`; `MRR = 1/rank`.

`RankingMetrics` is the torchmetrics form. Two modes:

* `num_samples=N` (de-duplicating): one integer state per sample index holding the positive's
  rank (0 = unseen), reduced across DDP ranks with `max`. A sample seen on two ranks (e.g. the
  padding `DistributedSampler` adds so every rank gets as many samples) carries the same rank
  twice and so is counted once. Memory is fixed at N ints, not growing with updates.
* `num_samples=None` (streaming): a histogram of ranks (`c + 1` ints, a sum state), constant
  memory for any number of samples; it counts every row it is given, duplicates included.

Either way every metric is a function of the rank alone, so the states are exact, not
approximations of means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from reccocktail.evaluation.chance import DEFAULT_KS, random_expectation

__all__ = ["DEFAULT_KS", "RankingMetrics", "metric_names", "metrics_from_ranks",
           "random_expectation", "ranking_metrics", "target_ranks"]


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """Column order used in every table: NDCG@k, HR@k, then MRR."""
    return [f"ndcg@{k}" for k in ks] + [f"hr@{k}" for k in ks] + ["mrr"]


def target_ranks(scores: torch.Tensor, target_index: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """1-based rank of each sample's positive, ties counted against it (pessimistic).

    `scores`: `[n, c]`, higher is better; `target_index`: `[n]` column of the positive.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n, num_candidates], got shape {tuple(scores.shape)}")
    target_index = torch.as_tensor(target_index, dtype=torch.long, device=scores.device)
    if target_index.shape != (scores.shape[0],):
        raise ValueError(
            f"target_index must have shape [{scores.shape[0]}], got {tuple(target_index.shape)}"
        )
    if scores.shape[0] and (target_index.min() < 0 or target_index.max() >= scores.shape[1]):
        raise ValueError(f"target_index out of range for {scores.shape[1]} candidates")
    if torch.isnan(scores).any():
        bad = torch.isnan(scores).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"NaN scores in rows {bad}: the model produced invalid log-probabilities")
    pos = scores.gather(1, target_index[:, None])
    # `>=` counts the positive itself once, so this is 1 + #higher + #tied-others.
    return (scores >= pos).sum(dim=1)


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, torch.Tensor]:
    """Per-sample metric values `[n]` for each name in `metric_names(ks)`."""
    ranks = ranks.to(torch.float64)
    gain = 1.0 / torch.log2(ranks + 1.0)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        out[f"ndcg@{k}"] = torch.where(ranks <= k, gain, torch.zeros_like(gain))
    for k in ks:
        out[f"hr@{k}"] = (ranks <= k).to(torch.float64)
    out["mrr"] = 1.0 / ranks
    return out


def ranking_metrics(scores: torch.Tensor, target_index: torch.Tensor | Sequence[int],
                    ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean NDCG@k / HR@k / MRR over the samples (vectorised, pessimistic ties)."""
    ranks = target_ranks(scores, target_index)
    if ranks.numel() == 0:
        raise ValueError("no samples to score")
    return {name: float(v.mean()) for name, v in metrics_from_ranks(ranks, ks).items()}


class RankingMetrics(Metric):
    """NDCG@k / HR@k / MRR as a torchmetrics Metric, exact under DDP (see the module doc)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_candidates: int, ks: Sequence[int] = DEFAULT_KS,
                 num_samples: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_candidates = int(num_candidates)
        self.ks = tuple(int(k) for k in ks)
        self.num_samples = None if num_samples is None else int(num_samples)
        if self.num_samples is None:
            self.add_state("rank_hist", torch.zeros(self.num_candidates + 1, dtype=torch.long),
                           dist_reduce_fx="sum")
        else:
            # rank per sample index; 0 = not seen. Same sample on two ranks -> same value -> max.
            self.add_state("rank_of", torch.zeros(self.num_samples, dtype=torch.long),
                           dist_reduce_fx="max")

    def update(self, scores: torch.Tensor, target_index: torch.Tensor | Sequence[int],
               sample_index: torch.Tensor | Sequence[int] | None = None) -> None:
        """Add a batch; `sample_index` (global, 0..N-1) is required in de-duplicating mode."""
        if scores.shape[-1] != self.num_candidates:
            raise ValueError(
                f"expected {self.num_candidates} candidates per sample, got {scores.shape[-1]}"
            )
        ranks = target_ranks(scores.detach(), target_index)
        if self.num_samples is None:
            self.rank_hist += torch.bincount(ranks, minlength=self.num_candidates + 1).to(
                self.rank_hist.device
            )
            return
        if sample_index is None:
            raise ValueError("RankingMetrics(num_samples=...) needs `sample_index` in update()")
        idx = torch.as_tensor(sample_index, dtype=torch.long, device=self.rank_of.device)
        if idx.shape != ranks.shape:
            raise ValueError(f"sample_index must have shape {tuple(ranks.shape)}")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise ValueError(f"sample_index out of range for num_samples={self.num_samples}")
        self.rank_of[idx] = torch.maximum(self.rank_of[idx], ranks.to(self.rank_of.device))

    def _hist(self) -> torch.Tensor:
        if self.num_samples is None:
            return self.rank_hist
        seen = self.rank_of[self.rank_of > 0]
        return torch.bincount(seen, minlength=self.num_candidates + 1)

    def compute(self) -> dict[str, torch.Tensor]:
        hist = self._hist().to(torch.float64)
        n = hist.sum()
        if n == 0:
            raise ValueError("RankingMetrics.compute() called before any update")
        ranks = torch.arange(self.num_candidates + 1, dtype=torch.float64, device=hist.device)
        ranks[0] = 1.0  # bucket 0 is always empty; avoid log2(1) = 0 division
        per_rank = metrics_from_ranks(ranks, self.ks)
        out = {name: (v * hist).sum() / n for name, v in per_rank.items()}
        out["count"] = n
        return out
