"""Reference rows every results table carries: item popularity and the random expectation.

With uniformly sampled negatives, popularity alone is a strong ranker (docs/design.md §4): a model
that does not beat this row has not learned a preference.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from reccocktail.data.samples import Sample
from reccocktail.evaluation.metrics import random_expectation
from reccocktail.evaluation.scorers import num_candidates
from reccocktail.utils.io import iter_jsonl

__all__ = ["load_popularity", "popularity_scores", "random_expectation"]


def load_popularity(path: str | os.PathLike) -> Counter[str]:
    """Number of training interactions per item, from `data/sequences.jsonl`."""
    path = Path(path)
    counts: Counter[str] = Counter()
    for lineno, row in enumerate(iter_jsonl(path), 1):
        items = row.get("items")
        if "user" not in row or not isinstance(items, list):
            raise ValueError(f"{path}:{lineno}: expected {{\"user\": ..., \"items\": [...]}}")
        counts.update(str(i) for i in items)
    return counts


def popularity_scores(samples: Sequence[Sample], counts: Counter[str] | dict[str, int]) -> torch.Tensor:
    """`[n, c]` scores = training interaction counts of each candidate (unseen items: 0).

    Equal counts tie, and the metrics' pessimistic tie rule keeps ties from helping the positive.
    """
    num_candidates(samples)  # rectangular, or a clear error
    return torch.tensor([[float(counts.get(cand, 0)) for cand in s.candidates] for s in samples],
                        dtype=torch.float32)
