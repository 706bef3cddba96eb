"""Warm (leave-one-out) and cold (new-item) splits of per-user sequences.

A sample is a position in a user's sequence: the target is the item there, the history the up to
H items before it (oldest first). Training samples are the prefixes of the training part of a
sequence (every position j >= 1), so one user yields many prompts.

Warm: the last item is the test target, the second-last the validation target, the rest is the
training part.

Cold: a seeded `fraction` of the items is declared new. Every interaction with a new item is
removed from training and validation; a user's test sample is their FIRST interaction with a new
item, its history their earlier (all non-new) items; users whose first interaction is already
with a new item get no test sample. Validation and training are built leave-one-out from the
user's non-new sequence (last non-new item -> validation, the rest -> training). So no new item
is ever a training or validation target or history item; the candidate sampler keeps them out of
training and validation candidate lists too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from reccocktail.data.filtering import Sequences


@dataclass
class Rows:
    """Samples of one split over a CSR base: target = flat[offsets[user] + pos]."""

    split: str
    offsets: np.ndarray
    flat: np.ndarray
    user: np.ndarray
    pos: np.ndarray
    candidates: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user)

    @property
    def targets(self) -> np.ndarray:
        return self.flat[self.offsets[self.user] + self.pos]

    def history(self, r: int, history_len: int) -> np.ndarray:
        start = self.offsets[self.user[r]]
        p = int(self.pos[r])
        return self.flat[start + max(0, p - history_len) : start + p]

    def take(self, idx: np.ndarray) -> Rows:
        idx = np.sort(np.asarray(idx, dtype=np.int64))  # keep (user, pos) order
        cand = None if self.candidates is None else self.candidates[idx]
        return replace(self, user=self.user[idx], pos=self.pos[idx], candidates=cand)


@dataclass
class Split:
    rows: dict[str, Rows]
    train_offsets: np.ndarray  # the training part of each user's sequence (ID baselines,
    train_flat: np.ndarray     # popularity counts): flat[train_offsets[u]:train_offsets[u+1]]
    allowed_train: np.ndarray | None = None  # items allowed in train/valid candidates (None: all)
    stats: dict[str, Any] = field(default_factory=dict)


def _csr(lengths: np.ndarray) -> np.ndarray:
    off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return off


def prefix_rows(split: str, offsets: np.ndarray, flat: np.ndarray, start: np.ndarray,
                stop: np.ndarray) -> Rows:
    """Every position in [start[u], stop[u]) of every user u, ordered by (user, position)."""
    count = np.maximum(stop - start, 0)
    user = np.repeat(np.arange(len(count)), count)
    first = np.repeat(_csr(count)[:-1], count)
    pos = start[user] + (np.arange(len(user)) - first)
    return Rows(split, offsets, flat, user.astype(np.int64), pos.astype(np.int64))


def _train_start(stop: np.ndarray, max_per_user: int | None) -> np.ndarray:
    """Positions from 1 (a prompt needs history); with a cap, only the latest prefixes."""
    start = np.ones_like(stop)
    if max_per_user is not None:
        start = np.maximum(start, stop - int(max_per_user))
    return start


def _head(offsets: np.ndarray, flat: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first keep[u] items of every user's sequence, as a new CSR."""
    lengths = np.diff(offsets)
    keep = np.clip(keep, 0, lengths)
    mask = np.arange(len(flat)) - np.repeat(offsets[:-1], lengths) < np.repeat(keep, lengths)
    return _csr(keep), flat[mask]


def _single(split: str, offsets: np.ndarray, flat: np.ndarray, users: np.ndarray,
            pos: np.ndarray) -> Rows:
    return Rows(split, offsets, flat, users.astype(np.int64), pos.astype(np.int64))


def warm_split(seqs: Sequences, max_train_per_user: int | None = None) -> Split:
    """Leave-one-out: last -> test, second-last -> valid, prefixes of the rest -> train."""
    off, flat, n = seqs.offsets, seqs.flat, seqs.lengths
    has_test, has_valid = n >= 2, n >= 3
    test = _single("test", off, flat, np.flatnonzero(has_test), n[has_test] - 1)
    valid = _single("valid", off, flat, np.flatnonzero(has_valid), n[has_valid] - 2)
    stop = np.maximum(n - 2, 0)
    train = prefix_rows("train", off, flat, _train_start(stop, max_train_per_user), stop)
    t_off, t_flat = _head(off, flat, stop)
    stats = {"scenario": "warm", "train_prefixes_available": int(np.maximum(stop - 1, 0).sum())}
    return Split({"train": train, "valid": valid, "test": test}, t_off, t_flat, None, stats)


def choose_new_items(num_items: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the items declared new: a seeded fraction (at least one item)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"scenario.new_item_fraction must be in (0, 1), got {fraction}")
    n_new = max(1, int(round(fraction * num_items)))
    rng = np.random.default_rng([int(seed), 0xC01D])
    mask = np.zeros(num_items, dtype=bool)
    mask[rng.choice(num_items, size=n_new, replace=False)] = True
    return mask


def cold_split(seqs: Sequences, new_item_fraction: float, seed: int,
               max_train_per_user: int | None = None) -> Split:
    """New-item split (module docstring): test = first interaction with a new item."""
    off, flat, n = seqs.offsets, seqs.flat, seqs.lengths
    is_new = choose_new_items(seqs.num_items, new_item_fraction, seed)
    flat_new = is_new[flat]
    owner = np.repeat(np.arange(seqs.num_users), n)

    # first new item of every user that has one; a sample only if some history precedes it
    idx_new = np.flatnonzero(flat_new)
    users_with_new, first = np.unique(owner[idx_new], return_index=True)
    first_pos = idx_new[first] - off[users_with_new]
    ok = first_pos >= 1
    test = _single("test", off, flat, users_with_new[ok], first_pos[ok])

    # valid/train: leave-one-out over the non-new sequence
    n2 = np.bincount(owner[~flat_new], minlength=seqs.num_users)
    off2, flat2 = _csr(n2), flat[~flat_new]
    has_valid = n2 >= 2
    valid = _single("valid", off2, flat2, np.flatnonzero(has_valid), n2[has_valid] - 1)
    stop = np.maximum(n2 - 1, 0)
    train = prefix_rows("train", off2, flat2, _train_start(stop, max_train_per_user), stop)
    t_off, t_flat = _head(off2, flat2, stop)
    stats = {
        "scenario": "cold",
        "new_item_fraction": float(new_item_fraction),
        "new_items": int(is_new.sum()),
        "interactions_with_new_items_removed": int(flat_new.sum()),
        "users_with_a_new_item": int(len(users_with_new)),
        "users_whose_first_item_is_new": int((~ok).sum()),
        "users_without_new_items": int(seqs.num_users - len(users_with_new)),
        "users_without_valid": int((~has_valid).sum()),
        "train_prefixes_available": int(np.maximum(stop - 1, 0).sum()),
    }
    return Split({"train": train, "valid": valid, "test": test}, t_off, t_flat, ~is_new, stats)


def general_split(seqs: Sequences, max_train_per_user: int | None = None) -> Split:
    """General pool: no test part; the last item -> valid, prefixes of the rest -> train."""
    off, flat, n = seqs.offsets, seqs.flat, seqs.lengths
    has_valid = n >= 2
    valid = _single("valid", off, flat, np.flatnonzero(has_valid), n[has_valid] - 1)
    stop = np.maximum(n - 1, 0)
    train = prefix_rows("train", off, flat, _train_start(stop, max_train_per_user), stop)
    t_off, t_flat = _head(off, flat, stop)
    return Split({"train": train, "valid": valid}, t_off, t_flat, None, {"scenario": "general"})


def cap_users(rows: Rows, max_users: int | None, seed: int, salt: int) -> Rows:
    """Keep the samples of a seeded choice of at most `max_users` users."""
    if max_users is None:
        return rows
    users = np.unique(rows.user)
    if len(users) <= max_users:
        return rows
    rng = np.random.default_rng([int(seed), 0xCA9, int(salt)])
    chosen = rng.choice(users, size=int(max_users), replace=False)
    return rows.take(np.flatnonzero(np.isin(rows.user, chosen)))


def cap_rows(rows: Rows, max_rows: int | None, seed: int, salt: int) -> Rows:
    """Keep a seeded choice of at most `max_rows` samples (order preserved)."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    rng = np.random.default_rng([int(seed), 0xCA8, int(salt)])
    return rows.take(rng.choice(len(rows), size=int(max_rows), replace=False))
