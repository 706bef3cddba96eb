"""Candidate lists: the target plus negatives the user never touched, seeded and shuffled.

Negatives are drawn from the items the user never interacted with (anywhere in their filtered
sequence, the held-out items included), uniformly or weighted by training popularity (add-one,
so items without training interactions can still be drawn). In the cold scenario each split
draws from its own pool (`splits.candidate_pools`): training candidates from the non-new items
only (new items must not appear in training at all); test candidates from every item but the
validation-new ones, or the test-new items only (`scenario.cold_negatives=new`); validation
candidates likewise with the two kinds of new item swapped.

Randomness is counter-based: every sample's draws are a hash (splitmix64) of (seed, split, user
id, position in the sequence, draw number). A sample's candidates therefore depend on nothing
else: not on how many users or prompts are kept, nor on the order they are processed in, and
the whole split is drawn with vectorised numpy (a million prompts in seconds). Draws that hit a
touched item or repeat an earlier draw are skipped; the rare sample left short of negatives
(users who touched most of the catalog) is completed by a seeded choice without replacement.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from reccocktail.data.filtering import Sequences
from reccocktail.data.splits import Rows

SPLIT_CODES = {"train": 1, "valid": 2, "test": 3}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_CELLS = 1 << 20  # draws per batch (memory ~ 40 bytes each)
_DENSE = 1 << 25  # cells of a batch's dense user x item touched-matrix


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, split: str, user_ids: Sequence[str], users: np.ndarray,
                pos: np.ndarray) -> np.ndarray:
    """One 64-bit key per sample from (seed, split, user id, position)."""
    crc = np.fromiter((zlib.crc32(u.encode()) for u in user_ids), dtype=np.uint64,
                      count=len(user_ids))
    base = splitmix64(np.array([int(seed) * 8 + SPLIT_CODES[split]], dtype=np.uint64))
    k = splitmix64(base ^ crc[users])
    return splitmix64(k ^ pos.astype(np.uint64))


def _uniform01(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def attach_candidates(seqs: Sequences, rows_by_split: Sequence[Rows], num_candidates: int,
                      seed: int, allowed: dict[str, np.ndarray | None] | None = None,
                      weights: np.ndarray | None = None) -> None:
    """Fill `rows.candidates` ([n, num_candidates] item codes) for every split, in place.

    `allowed[split]`: boolean mask of the items negatives may come from (None: all);
    `weights`: per-item sampling weights (None: uniform)."""
    allowed = allowed or {}
    k = num_candidates - 1
    n_items = seqs.num_items
    owner = np.repeat(np.arange(seqs.num_users, dtype=np.int64), seqs.lengths)
    w = np.ones(n_items) if weights is None else np.asarray(weights, dtype=np.float64)
    for rows in rows_by_split:
        mask = allowed.get(rows.split)
        pool = np.arange(n_items) if mask is None else np.flatnonzero(mask)
        wp = w if mask is None else np.where(mask, w, 0.0)  # weights of the allowed items
        cdf = None
        if weights is not None:
            cdf = np.cumsum(w[pool], dtype=np.float64)
            cdf /= cdf[-1]
        # the share of a draw that lands on an allowed untouched item, per user: sets how many
        # draws a sample needs (heavy users need more)
        accept = 1.0 - np.bincount(owner, weights=wp[seqs.flat], minlength=seqs.num_users) / wp.sum()
        need = (k + 3.0 * np.sqrt(k) + 2.0) / np.maximum(accept[rows.user], 1e-3)
        m_row = np.clip(np.ceil(need / 16.0) * 16, k + 4, 8 * k + 64).astype(np.int64)
        keys = sample_keys(seed, rows.split, seqs.users, rows.user, rows.pos)
        targets = rows.targets
        out = np.empty((len(rows), num_candidates), dtype=np.int64)
        for m in np.unique(m_row):
            idx = np.flatnonzero(m_row == m)
            step = max(1, min(_CELLS // int(m), _DENSE // n_items))
            for a in range(0, len(idx), step):
                sel = idx[a : a + step]
                out[sel] = _draw(seqs, rows.user[sel], keys[sel], targets[sel], int(m), pool, cdf,
                                 num_candidates, weights, mask, rows.split)
        rows.candidates = out


def _draw(seqs: Sequences, users: np.ndarray, keys: np.ndarray, targets: np.ndarray, m: int,
          pool: np.ndarray, cdf: np.ndarray | None, num_candidates: int, weights: np.ndarray | None, mask: np.ndarray | None,
          split: str) -> np.ndarray:
    """Candidates of a batch of samples (users sorted), `m` hashed draws each."""
    k = num_candidates - 1
    n_items = seqs.num_items
    with np.errstate(over="ignore"):
        h = splitmix64(keys[:, None] + np.arange(1, m + 1, dtype=np.uint64)[None, :] * _GOLDEN)
    if cdf is None:
        idx = (h % np.uint64(len(pool))).astype(np.int64)
    else:
        idx = np.minimum(np.searchsorted(cdf, _uniform01(h), side="right"), len(pool) - 1)
    draw = pool[idx]                                            # [n, m] item codes
    # a dense touched-matrix of the batch's users: one gather decides every draw
    uniq, local = np.unique(users, return_inverse=True)
    lens = seqs.lengths[uniq]
    start = np.repeat(seqs.offsets[uniq] - np.cumsum(lens) + lens, lens)
    touched = np.zeros((len(uniq), n_items), dtype=bool)
    touched[np.repeat(np.arange(len(uniq)), lens), seqs.flat[start + np.arange(lens.sum())]] = True
    ok = ~touched[local[:, None], draw]                         # never touched by the user
    # drop repeats, keeping the first draw: sort (item, column) codes, flag equal neighbours
    sk = np.sort(draw * m + np.arange(m)[None, :], axis=1)
    sv, sc = sk // m, sk % m
    rep = np.zeros_like(ok)
    np.put_along_axis(rep, sc[:, 1:], sv[:, 1:] == sv[:, :-1], axis=1)
    ok &= ~rep
    take = ok & (np.cumsum(ok, axis=1, dtype=np.int16) <= k)
    n_ok = take.sum(axis=1)
    neg = np.empty((len(users), k), dtype=np.int64)
    full = n_ok == k
    neg[full] = draw[full][take[full]].reshape(-1, k)
    for r in np.flatnonzero(~full):                             # rare: unlucky or heavy users
        neg[r] = _fallback(seqs, int(users[r]), int(keys[r]), k, weights, mask, split)
    # the negatives are in random (draw) order already: put the target at a hashed position
    at = (splitmix64(keys ^ _M2) % np.uint64(num_candidates)).astype(np.int64)
    is_t = np.arange(num_candidates)[None, :] == at[:, None]
    cand = np.empty((len(users), num_candidates), dtype=np.int64)
    cand[is_t] = targets
    cand[~is_t] = neg.ravel()
    return cand


def _fallback(seqs: Sequences, u: int, key: int, k: int, weights: np.ndarray | None,
              mask: np.ndarray | None, split: str) -> np.ndarray:
    untouched = np.ones(seqs.num_items, dtype=bool)
    untouched[seqs.seq(u)] = False
    if mask is not None:
        untouched &= mask
    pool = np.flatnonzero(untouched)
    if len(pool) < k:
        raise ValueError(
            f"{seqs.name}: user {seqs.users[u]!r} has only {len(pool)} items to draw {k} "
            f"negatives from ({split}); lower data.num_candidates or use a larger domain"
        )
    p = None if weights is None else weights[pool] / weights[pool].sum()
    rng = np.random.default_rng(key)
    return rng.choice(pool, size=k, replace=False, p=p)


def popularity_weights(train_flat: np.ndarray, num_items: int) -> np.ndarray:
    """Add-one training counts: the `popularity` negative sampler's weights."""
    return np.bincount(train_flat, minlength=num_items).astype(np.float64) + 1.0


def drawable(seqs: Sequences, rows: Rows, mask: np.ndarray, k: int) -> np.ndarray:
    """Per sample: whether its user left at least `k` untouched items of `mask` to draw its
    negatives from (the cold validation split drops the samples that did not, and counts them)."""
    owner = np.repeat(np.arange(seqs.num_users, dtype=np.int64), seqs.lengths)
    touched = np.bincount(owner, weights=mask[seqs.flat], minlength=seqs.num_users)
    return (int(mask.sum()) - touched)[rows.user] >= k
