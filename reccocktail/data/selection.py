"""Which validation users a later stage selects on, so that no adapter trains on them.

`mix=grid` chooses λ by validation NDCG@1. The ingredient S (instruction objective) trains on
the validation samples by default, which would let the grid favour S; so the users the grid
scores are drawn here, once, by both stages: the specific stage leaves their samples out of
S's training and the mix stage scores exactly them. The draw depends only on the set of users
and the seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from reccocktail.data.samples import Sample


def choose_users(samples: Sequence[Sample], max_users: int | None, seed: int) -> list[Sample]:
    """All samples of a seeded choice of at most `max_users` users (None: every sample)."""
    if max_users is None:
        return list(samples)
    users = sorted({s.user for s in samples})
    random.Random(int(seed)).shuffle(users)
    keep = set(users[: int(max_users)])
    return [s for s in samples if s.user in keep]


def selection_samples(valid: Sequence[Sample], mix_cfg: Any, seed: int) -> list[Sample]:
    """The validation samples a later stage selects on: the grid's users for `mix=grid`,
    none otherwise (entropy and fixed λ select on nothing labelled)."""
    if mix_cfg is None or mix_cfg.get("name") != "grid":
        return []
    return choose_users(valid, mix_cfg.get("grid_max_users"), seed)
