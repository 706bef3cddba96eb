"""Choose the unlabeled test-time prompts that the entropy-guided λ is tuned on.

The paper's released code tuned λ on the very users it then scored (transductive). By default we
hold the tuning users out: a seeded choice of *whole* users supplies the prompts, and none of
their samples is scored afterwards, so the tuned λ never saw a scored prompt. Every variant of a
run calls this with the same arguments, so all of them are scored on the very same samples.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from reccocktail.data.samples import Sample


def split_unlabeled(samples: Sequence[Sample], num_prompts: int, seed: int,
                    transductive: bool) -> tuple[list[Sample], list[Sample]]:
    """(tuning_samples, scored_samples): whole users drawn (seeded) until `num_prompts` samples.

    Users are taken in a seeded random order and all of a user's samples join the tuning set
    until it holds `num_prompts`; the last user's extra samples are dropped from tuning but that
    user still leaves scoring. With `transductive=True` every sample is scored (the paper's
    setting). The draw depends only on the set of users and `seed`, not on the input order.
    """
    num_prompts = int(num_prompts)
    if num_prompts < 0:
        raise ValueError(f"mix.num_prompts must be >= 0, got {num_prompts}")
    by_user: dict[str, list[Sample]] = {}
    for s in samples:
        by_user.setdefault(s.user, []).append(s)
    users = sorted(by_user)
    random.Random(int(seed)).shuffle(users)
    tuning: list[Sample] = []
    chosen: set[str] = set()
    for u in users:
        if len(tuning) >= num_prompts:
            break
        chosen.add(u)
        tuning.extend(by_user[u][: num_prompts - len(tuning)])
    if transductive:
        return tuning, list(samples)
    scored = [s for s in samples if s.user not in chosen]
    if samples and not scored:
        raise ValueError(
            f"mix.num_prompts={num_prompts} takes every one of the {len(by_user)} users for "
            "tuning and leaves none to score; lower mix.num_prompts or set mix.transductive=true"
        )
    return tuning, scored
