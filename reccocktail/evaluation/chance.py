"""What a uniformly random ranking scores, in closed form. Pure Python (no torch), so that the
report aggregator and the experiment scripts can use it without importing the model stack."""

from __future__ import annotations

import math
from collections.abc import Sequence

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)


def random_expectation(num_candidates: int, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Exact expected metrics of a uniformly random ranking (rank uniform on 1..c).

    For c = 30: NDCG@1 = 1/30, NDCG@3 = (1 + 1/log2 3 + 1/2)/30 = 0.0710.
    """
    c = int(num_candidates)
    if c < 1:
        raise ValueError(f"num_candidates must be >= 1, got {c}")
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 1) for r in range(1, min(k, c) + 1)) / c
    for k in ks:
        out[f"hr@{k}"] = min(k, c) / c
    out["mrr"] = sum(1.0 / r for r in range(1, c + 1)) / c
    return out


def random_full_expectation(sizes: Sequence[int], ks: Sequence[int],
                            cutoff: int) -> dict[str, float]:
    """Full-catalogue ranking (`eval.candidates=all`): the expectation of a uniformly random
    ranking of each user's n_u items (the catalogue minus their excluded items), averaged over
    the users; MRR is cut at `cutoff` like every full-catalogue row (MRR@cutoff)."""
    if not sizes:
        raise ValueError("no samples")
    total: dict[str, float] = {}
    for n in sizes:
        row = random_expectation(int(n), ks)
        row.pop("mrr")
        row[f"mrr@{cutoff}"] = sum(1.0 / r for r in range(1, min(cutoff, int(n)) + 1)) / int(n)
        for k, v in row.items():
            total[k] = total.get(k, 0.0) + v
    return {k: v / len(sizes) for k, v in total.items()}
