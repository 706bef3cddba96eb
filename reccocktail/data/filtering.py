"""From a canonical table to clean per-user sequences: titles, duplicates, k-core.

Order of operations (each step counted in the stats): clean titles (a `||` inside a title, the
prompt separator, becomes `|`) and drop items without one; merge items of one dataset whose
normalised titles are equal (an LLM cannot tell them apart, and a candidate list must not show
one title twice); sort each user's interactions by time (stable, so ties keep file order; times
are never compared across users); keep a user's first interaction with an item; keep a seeded
subset of users if asked; remove excluded users/items (the overlap of a general source with the
target) and the items titled like the target's new items (cold: counted apart); k-core filtering
iterated until stable.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reccocktail.data.readers import SourceTable
from reccocktail.data.titles import clean_title_flagged, normalise_title
from reccocktail.utils.config import need

log = logging.getLogger(__name__)


@dataclass
class Sequences:
    """Per-user chronological item sequences in CSR form (items as int codes)."""

    name: str
    users: list[str]          # user code -> raw id
    items: list[str]          # item code -> raw id
    titles: list[str]         # item code -> cleaned title
    offsets: np.ndarray       # user u's items: flat[offsets[u]:offsets[u + 1]]
    flat: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def seq(self, u: int) -> np.ndarray:
        return self.flat[self.offsets[u] : self.offsets[u + 1]]


def in_user_subset(users: Collection[str], fraction: float, seed: int, complement: bool = False
                   ) -> np.ndarray:
    """A seeded, order-free choice of users: a user is in when hash(seed, id) < fraction.

    The complement is exactly the other users, so one dataset can be split user-disjointly
    (the ml100k demo: target users vs general-pool users)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"user_subset.fraction must be in (0, 1], got {fraction}")
    thr = fraction * 2**64
    inside = np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest(), "big")
         < thr for u in users),
        dtype=bool, count=len(users),
    )
    return ~inside if complement else inside


def subset_args(user_subset: dict) -> tuple[float, int, bool]:
    """(fraction, seed, complement) of a source's `user_subset` block, each required (the
    domain that splits a dataset sets all three, e.g. conf/domain/ml100k.yaml)."""
    return (float(need(user_subset, "fraction", "user_subset")),
            int(need(user_subset, "seed", "user_subset")),
            bool(need(user_subset, "complement", "user_subset")))


def kcore(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Mask of interactions kept by iterated k-core filtering (users and items with >= k
    interactions), and the number of rounds it took to become stable."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep, 0
    rounds = 0
    while True:
        rounds += 1
        u, i = users[keep], items[keep]
        ok = (np.bincount(u)[u] >= k) & (np.bincount(i)[i] >= k)
        if ok.all():
            return keep, rounds
        keep[np.flatnonzero(keep)[~ok]] = False


def build_sequences(table: SourceTable, name: str, min_core: int = 5,
                    user_subset: dict | None = None,
                    exclude_titles: Collection[str] = (),
                    exclude_users: Collection[str] = (),
                    new_titles: Collection[str] = ()) -> Sequences:
    """Filter a canonical table into sequences (see the module docstring for the order).
    `exclude_titles`/`exclude_users`: the overlap with the target; `new_titles`: normalised
    titles of the target's new items (cold), removed like the overlap but counted apart."""
    df = table.interactions
    stats: dict[str, Any] = {"raw_interactions": len(df), "raw_users": int(df["user"].nunique()),
                             "raw_items": int(df["item"].nunique())}

    # titles: clean, drop untitled items, merge equal normalised titles
    canon: dict[str, str] = {}      # raw item id -> canonical id
    first_of: dict[str, str] = {}   # normalised title -> canonical id
    title_of: dict[str, str] = {}   # canonical id -> cleaned title
    norm_of: dict[str, str] = {}    # canonical id -> normalised title
    with_separator = 0  # titles that held the prompt separator `||` (replaced by `|`)
    for item_id, raw in table.titles.items():
        t, had_separator = clean_title_flagged(raw)
        with_separator += had_separator
        if not t:
            continue
        norm = normalise_title(t)
        c = first_of.setdefault(norm or t, item_id)
        canon[item_id] = c
        if c == item_id:
            title_of[c] = t
            norm_of[c] = norm
    mapped = df["item"].map(canon)
    untitled = mapped.isna().to_numpy()
    stats["items_without_title"] = int(df.loc[untitled, "item"].nunique())
    stats["interactions_without_title"] = int(untitled.sum())
    stats["items_merged_by_title"] = sum(1 for i, c in canon.items() if c != i)
    stats["titles_with_separator"] = with_separator
    if with_separator:
        log.info("%s: %d title(s) held the prompt separator '||', replaced by '|'", name,
                 with_separator)
    if stats["items_without_title"]:
        log.info("%s: dropped %d items without a title (%d interactions)", name,
                 stats["items_without_title"], stats["interactions_without_title"])
    ucode, users = pd.factorize(df["user"].to_numpy()[~untitled], sort=True)
    icode, items = pd.factorize(mapped.to_numpy()[~untitled], sort=True)
    users, items = np.asarray(users, dtype=object), np.asarray(items, dtype=object)

    # chronological per user (lexsort is stable: ties keep file order), first interaction only
    order = np.lexsort((df["time"].to_numpy()[~untitled], ucode))
    ucode, icode = ucode[order].astype(np.int64), icode[order].astype(np.int64)
    keep = np.zeros(len(ucode), dtype=bool)
    keep[np.unique(ucode * max(len(items), 1) + icode, return_index=True)[1]] = True
    stats["duplicates_removed"] = int((~keep).sum())

    if user_subset:
        inside = in_user_subset(users, *subset_args(user_subset))
        keep &= inside[ucode]
        stats["users_in_subset"] = int(inside.sum())
    if exclude_users:
        ex_u = set(exclude_users)
        gone_u = np.fromiter((u in ex_u for u in users), dtype=bool, count=len(users))
        stats["overlap_users_removed"] = int(len(np.unique(ucode[keep & gone_u[ucode]])))
        keep &= ~gone_u[ucode]
    if exclude_titles:
        ex = set(exclude_titles)
        gone_i = np.fromiter((norm_of[i] in ex for i in items), dtype=bool, count=len(items))
        stats["overlap_items_removed"] = int(len(np.unique(icode[keep & gone_i[icode]])))
        keep &= ~gone_i[icode]
    if new_titles:
        ex_new = set(new_titles)
        gone_n = np.fromiter((norm_of[i] in ex_new for i in items), dtype=bool, count=len(items))
        dropped = keep & gone_n[icode]
        stats["new_items_removed"] = int(len(np.unique(icode[dropped])))
        stats["interactions_with_new_items_removed"] = int(dropped.sum())
        keep &= ~gone_n[icode]

    ucode, icode = ucode[keep], icode[keep]
    core, rounds = kcore(ucode, icode, min_core)
    stats["kcore_rounds"] = rounds
    ucode, icode = ucode[core], icode[core]
    # compact codes; users (and so the CSR rows) in sorted id order, items by id
    u_used = np.unique(ucode)
    i_used = np.unique(icode)
    u_new = np.searchsorted(u_used, ucode)
    i_new = np.searchsorted(i_used, icode)
    counts = np.bincount(u_new, minlength=len(u_used))
    offsets = np.zeros(len(u_used) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    item_ids = [str(x) for x in items[i_used]]
    seqs = Sequences(
        name=name,
        users=[str(x) for x in users[u_used]],
        items=item_ids,
        titles=[title_of[i] for i in item_ids],
        offsets=offsets,
        flat=i_new.astype(np.int64),
        stats=stats,
    )
    stats.update(users=seqs.num_users, items=seqs.num_items, interactions=int(len(i_new)))
    return seqs


def check_size(seqs: Sequences, num_candidates: int, where: str) -> None:
    """Fail clearly when filtering left a domain too small for the protocol."""
    if seqs.num_users == 0:
        raise ValueError(
            f"{where}: no user is left after filtering ({seqs.stats}); lower data.min_core or "
            "check the source files"
        )
    need = num_candidates - 1
    spare = seqs.num_items - seqs.lengths.max()
    if spare < need:
        u = int(np.argmax(seqs.lengths))
        raise ValueError(
            f"{where}: user {seqs.users[u]!r} interacted with {int(seqs.lengths[u])} of "
            f"{seqs.num_items} items, leaving {spare} untouched items for {need} negatives; "
            "lower data.num_candidates or use a larger domain"
        )
