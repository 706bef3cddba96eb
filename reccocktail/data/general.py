"""The domain-general pool that the base spirit G is tuned on.

The pool is the union of the general sources' samples, each source filtered like the target
(titles, duplicates, k-core) after its overlap with the target is removed:

- items: an item is the same across datasets exactly when its normalised title is equal, so every
  general item whose normalised title belongs to ANY titled item of the target dataset (before
  the target's own filtering: the stricter choice) is removed with its interactions;
- users: user ids are compared only between sources that declare the same `user_space` (raw
  Amazon 2014 reviewerIDs are global; remapped ids are private to their dataset), and the
  target's users are removed from such sources.

`domain.general.remove_overlap` chooses which of the two is removed (default both). In the cold
scenario the items titled like one of the target's new items (test- or validation-new) are
removed too, whatever `remove_overlap` says: G must never have seen a new item (counted per
source as `new_items_removed`). The pool has
no test part: its last item per user is the validation target and the prefixes of the rest are
training prompts. Ids are namespaced `"<source>:<id>"` (users and items), so they never collide
with each other or with the target's ids.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reccocktail.data.candidates import attach_candidates
from reccocktail.data.filtering import (
    Sequences,
    build_sequences,
    check_size,
    in_user_subset,
    subset_args,
)
from reccocktail.data.readers import SourceTable
from reccocktail.data.splits import Rows, Split, general_split
from reccocktail.data.titles import clean_title, normalise_title
from reccocktail.utils.config import need

log = logging.getLogger(__name__)

OVERLAP_KINDS = ("items", "users")


@dataclass
class GeneralPool:
    parts: list[tuple[Sequences, Split]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def target_identity(table: SourceTable, user_subset: dict | None = None
                    ) -> tuple[set[str], set[str]]:
    """Normalised titles and user ids of a target dataset, before its own filtering (but after
    its user subset, when it is one part of a dataset split user-disjointly)."""
    titles = {normalise_title(clean_title(x)) for x in table.titles.values()}
    titles.discard("")
    users = table.interactions["user"].unique()
    if user_subset:
        users = users[in_user_subset(users, *subset_args(user_subset))]
    return titles, set(users)


def _cap_union(splits: list[Rows], max_rows: int | None, seed: int, salt: int) -> list[Rows]:
    """A seeded choice of at most `max_rows` samples over the union of several sources."""
    total = sum(len(r) for r in splits)
    if max_rows is None or total <= max_rows:
        return splits
    rng = np.random.default_rng([int(seed), 0x6E7, salt])
    chosen = np.sort(rng.choice(total, size=int(max_rows), replace=False))
    out, start = [], 0
    for r in splits:
        mine = chosen[(chosen >= start) & (chosen < start + len(r))] - start
        out.append(r.take(mine))
        start += len(r)
    return out


def build_general_pool(sources: dict[str, tuple[dict, SourceTable]], target_titles: set[str],
                       target_users: set[str], target_space: str | None, remove_overlap: list[str],
                       min_core: int, num_candidates: int, seed: int,
                       max_train_prompts_per_user: int | None = None,
                       max_train_prompts: int | None = None,
                       max_valid_prompts: int | None = None,
                       new_titles: Collection[str] = ()) -> GeneralPool:
    """Filter, split and sample candidates for every general source (module docstring).
    `new_titles`: normalised titles of the target's new items (cold), never in the pool."""
    unknown = [k for k in remove_overlap if k not in OVERLAP_KINDS]
    if unknown:
        raise ValueError(f"domain.general.remove_overlap: unknown value(s) {unknown}; "
                         f"choose from {list(OVERLAP_KINDS)}")
    pool = GeneralPool()
    for key, (scfg, table) in sources.items():
        where = f"domain.general.sources.{key}"  # every conf/source file sets these keys
        name = str(need(scfg, "name", where) or key)
        same_space = target_space is not None and need(scfg, "user_space", where) == target_space
        seqs = build_sequences(
            table, name, min_core=min_core, user_subset=need(scfg, "user_subset", where),
            exclude_titles=target_titles if "items" in remove_overlap else (),
            exclude_users=target_users if ("users" in remove_overlap and same_space) else (),
            new_titles=new_titles,
        )
        seqs.stats["user_space_shared_with_target"] = bool(same_space)
        pool.stats[name] = seqs.stats
        if seqs.num_users == 0:
            log.warning("general source %s is empty after removing the overlap (%s)", name,
                        seqs.stats)
            continue
        check_size(seqs, num_candidates, f"domain.general.sources.{key} ({name})")
        pool.parts.append((seqs, general_split(seqs, max_train_prompts_per_user)))
    if not pool.parts or not any(len(s.rows["train"]) for _, s in pool.parts):
        raise ValueError(
            "the general pool is empty after removing its overlap with the target domain "
            f"(domain.general.remove_overlap={list(remove_overlap)}; per source: {pool.stats}). "
            "Add general sources (domain.general.sources), remove less overlap, or lower "
            "data.min_core"
        )
    trains = _cap_union([s.rows["train"] for _, s in pool.parts], max_train_prompts, seed, 1)
    valids = _cap_union([s.rows["valid"] for _, s in pool.parts], max_valid_prompts, seed, 2)
    for (seqs, split), tr, va in zip(pool.parts, trains, valids):
        split.rows["train"], split.rows["valid"] = tr, va
        attach_candidates(seqs, [tr, va], num_candidates, seed)
    return pool


def check_no_new_items(pool: GeneralPool, new_titles: Collection[str]) -> None:
    """Fail if any pool item carries a new item's normalised title (cold: G trains on the pool,
    so such an item would be a new item seen in training)."""
    new = set(new_titles)
    for seqs, _split in pool.parts:
        hits = [(i, t) for i, t in zip(seqs.items, seqs.titles) if normalise_title(t) in new]
        if hits:
            raise ValueError(
                f"general source {seqs.name}: {len(hits)} item(s) share a title with a new item "
                f"of the target domain, e.g. {hits[:3]}; the cold scenario must keep every new "
                "item out of the general pool")
