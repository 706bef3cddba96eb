"""Which users each later stage uses: λ tuning, scoring, and the grid's validation users.

One setting, the root `selection:` block, decides which test users give the unlabeled λ prompts
and which are scored (docs/design.md §2.5). The mix, eval and baselines stages all call
`select_users` with it, so they hold out and score the very same users: a mix config cannot tune
λ on users that evaluation scores, because neither stage has a default of its own.

`mix=grid` chooses λ by validation NDCG@1. The ingredient S (instruction objective) trains on
the validation samples by default, which would let the grid favour S; so the users the grid
scores are drawn here, once, by both stages: the specific stage leaves their samples out of
S's training and the mix stage scores exactly them. In the cold scenario `valid.jsonl` is the
cold validation split (targets: validation-new items), which S never trains on at all. Every
draw depends only on the set of users and the seed, not on the input order.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reccocktail.data.samples import Sample

log = logging.getLogger(__name__)

BLOCK = "selection"
LAMBDA_SPLIT = "test"  # the split whose unlabeled prompts tune λ (mix/lambda.json: tuning_split)
FIELDS = ("lambda_users", "transductive", "max_scored_users")
# Deprecated keys (one release): old key -> field of the `selection:` block they map onto.
ALIASES = {"mix.num_prompts": "lambda_users", "mix.transductive": "transductive",
           "eval.max_users": "max_scored_users"}
_warned: set[str] = set()


@dataclass(frozen=True)
class Selection:
    """The `selection:` block, parsed once (its defaults live in conf/run.yaml only)."""

    lambda_users: int            # test samples (whole users) whose prompts tune λ; not scored
    transductive: bool           # true: score the λ users too (the authors' released code)
    max_scored_users: int | None  # a seeded choice of at most this many scored users


@dataclass(frozen=True)
class UserSelection:
    """The outcome of `select_users`: λ tuning samples, scored samples, and what was done."""

    tuning: list[Sample]
    scored: list[Sample]
    selection: Selection

    def info(self) -> dict[str, Any]:
        """What results.json records per row about the choice (keys kept from older runs)."""
        return {"num_samples": len(self.scored),
                "num_users": len({s.user for s in self.scored}),
                "transductive": self.selection.transductive,
                "num_tuning_users": len({s.user for s in self.tuning}),
                "max_users": self.selection.max_scored_users}


def selection_config(cfg: Any) -> Selection:
    """The run's `selection:` block; a missing key raises naming it. A deprecated alias
    (`mix.num_prompts`, `mix.transductive`, `eval.max_users`) that is set (not null) wins over
    the block's value, with a warning naming the new key."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    block = OmegaConf.select(cfg, BLOCK, default=None)
    if block is None:
        raise KeyError(f"{BLOCK}: missing config block (conf/run.yaml sets "
                       f"{', '.join(f'{BLOCK}.{f}' for f in FIELDS)})")
    values: dict[str, Any] = {}
    for f in FIELDS:
        if f not in block:
            raise KeyError(f"{BLOCK}.{f}: missing config key (conf/run.yaml sets its default)")
        values[f] = block[f]
    for old, new in ALIASES.items():
        v = OmegaConf.select(cfg, old, default=None)
        if v is None:
            continue
        if old not in _warned:
            _warned.add(old)
            log.warning("%s is deprecated and will be removed: use %s.%s (now %s.%s=%s)",
                        old, BLOCK, new, BLOCK, new, v)
        values[new] = v
    lambda_users = int(values["lambda_users"])
    if lambda_users < 0:
        raise ValueError(f"{BLOCK}.lambda_users must be >= 0, got {lambda_users}")
    cap = values["max_scored_users"]
    if cap is not None and int(cap) < 1:
        raise ValueError(f"{BLOCK}.max_scored_users must be >= 1 or null, got {cap}")
    return Selection(lambda_users=lambda_users, transductive=bool(values["transductive"]),
                     max_scored_users=None if cap is None else int(cap))


def split_unlabeled(samples: Sequence[Sample], lambda_users: int, seed: int,
                    transductive: bool) -> tuple[list[Sample], list[Sample]]:
    """(tuning_samples, scored_samples): whole users drawn (seeded) until `lambda_users` samples.

    Users are taken in a seeded random order and all of a user's samples join the tuning set
    until it holds `lambda_users` (one test sample per user: that many users); the last user's
    extra samples are dropped from tuning but that user still leaves scoring. With
    `transductive=True` every sample is scored (the paper's setting).
    """
    lambda_users = int(lambda_users)
    if lambda_users < 0:
        raise ValueError(f"{BLOCK}.lambda_users must be >= 0, got {lambda_users}")
    by_user: dict[str, list[Sample]] = {}
    for s in samples:
        by_user.setdefault(s.user, []).append(s)
    users = sorted(by_user)
    random.Random(int(seed)).shuffle(users)
    tuning: list[Sample] = []
    chosen: set[str] = set()
    for u in users:
        if len(tuning) >= lambda_users:
            break
        chosen.add(u)
        tuning.extend(by_user[u][: lambda_users - len(tuning)])
    if transductive:
        return tuning, list(samples)
    scored = [s for s in samples if s.user not in chosen]
    if samples and not scored:
        raise ValueError(
            f"{BLOCK}.lambda_users={lambda_users} takes every one of the {len(by_user)} users for "
            f"tuning and leaves none to score; lower {BLOCK}.lambda_users or set "
            f"{BLOCK}.transductive=true")
    return tuning, scored


def select_users(samples: Sequence[Sample], selection: Selection, seed: int) -> UserSelection:
    """The λ tuning samples and the scored samples of one split: the λ users leave scoring
    (unless transductive), then at most `max_scored_users` users are kept (seeded, file order
    kept). The mix stage tunes on `.tuning`; eval and baselines score `.scored`."""
    tuning, scored = split_unlabeled(samples, selection.lambda_users, seed,
                                     selection.transductive)
    cap = selection.max_scored_users
    users = list(dict.fromkeys(s.user for s in scored))
    if cap is not None and cap < len(users):
        keep = set(random.Random(int(seed)).sample(sorted(users), cap))
        scored = [s for s in scored if s.user in keep]
    return UserSelection(tuning=tuning, scored=scored, selection=selection)


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
    if mix_cfg is None or mix_cfg["name"] != "grid":
        return []
    return choose_users(valid, mix_cfg["grid_max_users"], seed)
