"""Warm (leave-one-out) and cold (new-item) splits of per-user sequences.

A sample is a position in a user's sequence: the target is the item there, the history the up to
H items before it (oldest first). Training samples are the prefixes of the training part of a
sequence (every position j >= 1), so one user yields many prompts.

Warm: the last item is the test target, the second-last the validation target, the rest is the
training part.

Cold (new items): a seeded `new_item_fraction` of the items is new for the test, and a further,
disjoint seeded `valid_new_item_fraction` is new for validation. Every interaction with a new item
of either kind leaves training. A user's test sample is their FIRST interaction with a test-new
item, its history their earlier non-new items (users with none get no test sample). Where the
training part of a user's sequence ends (`train_part`):

- `before_test` (default): at the user's test event: the non-new items before it, the
  leave-one-out training part of the warm split, so no model trains on what the user did after
  it. A user without a test sample keeps every non-new item.
- `all_non_new`: every non-new item, also those after the test event (the earlier rule, kept
  for comparison).

A user's validation sample is their first interaction with a validation-new item AFTER their
training part (with `before_test`: after their test event; users without a test sample have
none), its history their earlier non-new items, so no training row follows it either and it
mirrors the test; with `all_non_new` it is the first such interaction anywhere. No new item is
ever a training target or in a training sequence; validation-new items are no test target,
history or candidate, and test-new items no validation one (`candidate_pools`).
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
    allowed_train: np.ndarray | None = None  # items allowed in training candidates (None: all)
    stats: dict[str, Any] = field(default_factory=dict)
    new_test: np.ndarray | None = None   # cold: the test-new items (bool mask; None: warm)
    new_valid: np.ndarray | None = None  # cold: the validation-new items


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
    """One sample per listed user: the item at `pos` of their row, its history before it."""
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
    """Boolean mask of the test-new items: a seeded fraction (at least one item)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"scenario.new_item_fraction must be in (0, 1), got {fraction}")
    n_new = max(1, int(round(fraction * num_items)))
    rng = np.random.default_rng([int(seed), 0xC01D])
    mask = np.zeros(num_items, dtype=bool)
    mask[rng.choice(num_items, size=n_new, replace=False)] = True
    return mask


def choose_valid_new_items(new_test: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation-new items: a seeded `fraction` of all items (at least
    one), drawn from the items that are not test-new, so the two sets are disjoint."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"scenario.valid_new_item_fraction must be in (0, 1), got {fraction}")
    pool = np.flatnonzero(~new_test)
    n_new = max(1, int(round(fraction * len(new_test))))
    if n_new >= len(pool):
        raise ValueError(
            f"scenario.valid_new_item_fraction={fraction} asks for {n_new} validation-new items "
            f"but only {len(pool)} items are not test-new; lower it or "
            "scenario.new_item_fraction")
    rng = np.random.default_rng([int(seed), 0x7A11D])
    mask = np.zeros(len(new_test), dtype=bool)
    mask[rng.choice(pool, size=n_new, replace=False)] = True
    return mask


COLD_TRAIN_PARTS = ("before_test", "all_non_new")


def _first_after(off: np.ndarray, flat: np.ndarray, event: np.ndarray, after: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(users, flat index): each user's first interaction with an `event` item that comes after
    flat index `after[user]` (-1: anywhere); users without one are left out."""
    owner = np.repeat(np.arange(len(off) - 1), np.diff(off))
    idx = np.flatnonzero(event[flat] & (np.arange(len(flat)) > after[owner]))
    users, first = np.unique(owner[idx], return_index=True)
    return users, idx[first]


def _event_rows(split: str, flat: np.ndarray, off2: np.ndarray, flat2: np.ndarray,
                users: np.ndarray, idx: np.ndarray, pos: np.ndarray) -> Rows:
    """Rows whose target is the new item at flat index `idx` and whose history is the user's
    `pos` earlier non-new items (`flat2`, the non-new sequences): a CSR holding, per user, those
    items followed by the target."""
    n_users = len(off2) - 1
    lengths = np.zeros(n_users, dtype=np.int64)
    lengths[users] = pos + 1
    off3 = _csr(lengths)
    _, head = _head(off2, flat2, np.maximum(lengths - 1, 0))
    is_target = np.zeros(int(off3[-1]), dtype=bool)
    is_target[off3[users] + pos] = True
    flat3 = np.empty(int(off3[-1]), dtype=np.int64)
    flat3[~is_target] = head
    flat3[is_target] = flat[idx]
    return _single(split, off3, flat3, users, pos)


def cold_split(seqs: Sequences, new_item_fraction: float, seed: int,
               max_train_per_user: int | None = None, valid_new_item_fraction: float = 0.05,
               train_part: str = "before_test") -> Split:
    """New-item split (module docstring): the test sample is a user's first interaction with a
    test-new item; `train_part` decides where the training part ends and so which interaction
    with a validation-new item can be a validation sample."""
    if train_part not in COLD_TRAIN_PARTS:
        raise ValueError(f"scenario.cold_train_part: unknown value {train_part!r}; choose from "
                         f"{list(COLD_TRAIN_PARTS)}")
    off, flat, n = seqs.offsets, seqs.flat, seqs.lengths
    new_test = choose_new_items(seqs.num_items, new_item_fraction, seed)
    new_valid = choose_valid_new_items(new_test, valid_new_item_fraction, seed)
    is_new = new_test | new_valid
    flat_new = is_new[flat]
    owner = np.repeat(np.arange(seqs.num_users), n)
    n2 = np.bincount(owner[~flat_new], minlength=seqs.num_users)
    off2, flat2 = _csr(n2), flat[~flat_new]          # the non-new sequences
    # per interaction: how many non-new items of its user precede it (a sample's history)
    nonnew = (~flat_new).astype(np.int64)
    before = np.concatenate([[0], np.cumsum(nonnew)])
    nonnew_before = before[:-1] - np.repeat(before[off[:-1]], n)

    # test: the first interaction with a test-new item, if some non-new item precedes it
    anywhere = np.full(seqs.num_users, -1, dtype=np.int64)
    t_users, t_idx = _first_after(off, flat, new_test, anywhere)
    t_pos = nonnew_before[t_idx]
    ok = t_pos >= 1
    test = _event_rows("test", flat, off2, flat2, t_users[ok], t_idx[ok], t_pos[ok])

    # the training part, and where a validation sample may come from (after the training part,
    # so no row a model trains on follows the sample)
    stop = n2.copy()
    v_after = anywhere
    if train_part == "before_test":
        stop[test.user] = test.pos
        v_after = np.full(seqs.num_users, len(flat), dtype=np.int64)  # none: all of it trains
        v_after[test.user] = t_idx[ok]
    v_users, v_idx = _first_after(off, flat, new_valid, v_after)
    v_pos = nonnew_before[v_idx]
    v_ok = v_pos >= 1
    valid = _event_rows("valid", flat, off2, flat2, v_users[v_ok], v_idx[v_ok], v_pos[v_ok])
    train = prefix_rows("train", off2, flat2, _train_start(stop, max_train_per_user), stop)
    tr_off, tr_flat = _head(off2, flat2, stop)
    stats = {
        "scenario": "cold",
        "cold_train_part": train_part,
        "new_item_fraction": float(new_item_fraction),
        "new_items": int(new_test.sum()),
        "valid_new_item_fraction": float(valid_new_item_fraction),
        "valid_new_items": int(new_valid.sum()),
        "interactions_with_new_items_removed": int(flat_new.sum()),
        "interactions_after_the_test_left_out": int((n2 - stop).sum()),
        "users_with_a_new_item": int(len(t_users)),
        "users_whose_first_item_is_new": int((~ok).sum()),
        "users_without_new_items": int(seqs.num_users - len(t_users)),
        "users_without_valid": int(seqs.num_users - len(valid)),
        "train_prefixes_available": int(np.maximum(stop - 1, 0).sum()),
    }
    return Split({"train": train, "valid": valid, "test": test}, tr_off, tr_flat, ~is_new, stats,
                 new_test=new_test, new_valid=new_valid)


def candidate_pools(split: Split, cold_negatives: str | None) -> dict[str, np.ndarray | None]:
    """Per split, the items negatives may come from (None: every item the user never touched).

    Cold: training negatives are non-new items; a test sample's are any item but the
    validation-new ones (`mixed`) or the test-new items only (`new`); a validation sample's
    likewise with the roles of the two kinds of new item swapped, so validation and test share
    no new item and validation mirrors the test's candidate protocol."""
    if split.new_test is None or split.new_valid is None:
        return {"train": split.allowed_train, "valid": split.allowed_train, "test": None}
    if cold_negatives == "new":
        return {"train": split.allowed_train, "valid": split.new_valid, "test": split.new_test}
    return {"train": split.allowed_train, "valid": ~split.new_test, "test": ~split.new_valid}


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
