"""Uncertainty of the metrics: bootstrap confidence intervals and a paired test between variants.

Why: a results table of means alone invites reading noise as progress. With a few hundred test
users, NDCG@1 moves by several points from one seeded user sample to the next, so every mean
carries a 95 % interval and every "cocktail beats X" claim a paired test.

* The unit of resampling is the **user**, not the sample: a user's samples share a history and
  a taste, so they are not independent. A user with several samples is drawn (or sign-flipped)
  with all of them; with one sample per user this is the ordinary bootstrap.
* Intervals are **percentile bootstrap** intervals of the mean over samples (`N_BOOT` resamples,
  seeded, so a results file is reproducible). A constant vector gives `[c, c]` exactly.
* The paired test compares two variants on the *same* samples (same order): the difference of
  their per-sample metric values, its bootstrap interval (users resampled, both variants
  together), and a two-sided **sign-flip randomisation test** over users. Under the null
  hypothesis (the two variants are exchangeable for each user) the sign of each user's mean
  difference is a fair coin. The statistic is the mean over users of the per-user mean
  differences. With at most `EXACT_MAX_USERS` users whose difference is non-zero, all
  `2**m` sign patterns are enumerated (exact p, the observed pattern included); otherwise a
  seeded Monte Carlo draws `N_DRAWS` patterns and `p = (1 + #{|T*| >= |T|}) / (1 + N_DRAWS)`,
  which is never 0. Users whose difference is zero contribute 0 whatever their sign.

Pure numpy (torch tensors are accepted as inputs), no model code: the report code can use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
SEED = 0
N_DRAWS = 10_000
EXACT_MAX_USERS = 16
CI_METHOD = "percentile bootstrap over users"
TEST_METHOD = "two-sided paired sign-flip randomisation over users"
_CHUNK = 256  # bootstrap resamples (or sign patterns) per block, to bound memory

__all__ = ["CI_METHOD", "EXACT_MAX_USERS", "LEVEL", "N_BOOT", "N_DRAWS", "TEST_METHOD",
           "PairedResult", "bootstrap_ci", "bootstrap_cis", "ci_fields", "holm", "paired_test",
           "paired_tests", "rank_metric_values"]


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-d vector of per-sample values, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("no samples: cannot compute a confidence interval")
    if not np.isfinite(arr).all():
        raise ValueError("per-sample values must be finite")
    return arr


def _groups(users: Sequence[Any] | None, n: int) -> tuple[np.ndarray, int]:
    """Group index of each sample (users in first-seen order) and the number of groups; without
    `users`, every sample is its own group (the plain bootstrap)."""
    if users is None:
        return np.arange(n), n
    users = list(users)
    if len(users) != n:
        raise ValueError(f"users: {len(users)} entries for {n} samples")
    index: dict[Any, int] = {}
    gid = np.fromiter((index.setdefault(u, len(index)) for u in users), dtype=np.int64, count=n)
    return gid, len(index)


def _stack(values: Mapping[str, Any]) -> tuple[list[str], np.ndarray]:
    names = list(values)
    if not names:
        raise ValueError("no metrics given")
    cols = [_as_array(values[k]) for k in names]
    n = cols[0].size
    if any(c.size != n for c in cols):
        raise ValueError("every metric needs one value per sample (lengths differ)")
    return names, np.stack(cols, axis=1)  # [n, K]


def _percentiles(stats: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha], axis=0)
    return lo, hi


def bootstrap_cis(values: Mapping[str, Any], users: Sequence[Any] | None = None,
                  n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED
                  ) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of the mean of each per-sample vector in `values`.

    All vectors share the same user resamples (one draw serves every metric; a metric gets the
    interval of `bootstrap_ci` of it alone with the same seed, up to float rounding). A resample draws `m` users with
    replacement and averages over all their samples."""
    names, x = _stack(values)
    n_boot = int(n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    gid, m = _groups(users, x.shape[0])
    sums = np.zeros((m, x.shape[1]))
    np.add.at(sums, gid, x)
    counts = np.bincount(gid, minlength=m).astype(np.float64)
    rng = np.random.default_rng(seed)
    stats = np.empty((n_boot, x.shape[1]))
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        draw = rng.integers(0, m, size=(b, m)) + (np.arange(b) * m)[:, None]
        weight = np.bincount(draw.ravel(), minlength=b * m).reshape(b, m).astype(np.float64)
        stats[start:start + b] = (weight @ sums) / (weight @ counts)[:, None]
    lo, hi = _percentiles(stats, level)
    out = {}
    for j, name in enumerate(names):
        vmin, vmax = x[:, j].min(), x[:, j].max()
        if vmin == vmax:  # constant: exactly [c, c], no rounding of sum/count
            out[name] = (float(vmin), float(vmax))
        else:  # a mean of resampled values cannot leave [min, max]; clip rounding only
            out[name] = (float(np.clip(lo[j], vmin, vmax)), float(np.clip(hi[j], vmin, vmax)))
    return out


def bootstrap_ci(values: Any, users: Sequence[Any] | None = None, n_boot: int = N_BOOT,
                 level: float = LEVEL, seed: int = SEED) -> tuple[float, float]:
    """(lo, hi): percentile bootstrap interval of the mean of `values`, resampling users (all
    of a drawn user's samples come along); without `users`, the plain per-sample bootstrap.
    Deterministic for a seed; a constant vector gives exactly (c, c)."""
    return bootstrap_cis({"v": values}, users, n_boot, level, seed)["v"]


@dataclass(frozen=True)
class PairedResult:
    """One paired comparison (a - b): `diff` is the mean over samples, `ci` its bootstrap
    interval, `p` the two-sided sign-flip p-value; `test` says "exact" or "monte_carlo"."""

    diff: float
    ci: tuple[float, float]
    p: float
    test: str
    n_users: int
    n_nonzero: int
    n_draws: int

    def __getitem__(self, key: str) -> Any:  # res["p"] as well as res.p
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = [float(self.ci[0]), float(self.ci[1])]
        return d


def _exact_p(u: np.ndarray, m: int) -> tuple[float, int]:
    """Two-sided p of T = sum(u) / m over all 2**k sign patterns of the non-zero `u`."""
    nz = u[u != 0.0]
    k = nz.size
    if k == 0:
        return 1.0, 1
    codes = np.arange(2 ** k, dtype=np.int64)
    signs = 1.0 - 2.0 * ((codes[:, None] >> np.arange(k)) & 1)  # every pattern once
    t = np.abs(signs @ nz) / m
    return float(np.count_nonzero(t >= _threshold(nz, m))) / 2 ** k, 2 ** k


def _threshold(u: np.ndarray, m: int) -> float:
    """|T_obs|, less a rounding allowance (the same sum in another order must count)."""
    scale = max(1.0, float(np.abs(u).sum()) / m)
    return abs(float(u.sum())) / m - 1e-12 * scale


def _monte_carlo_p(per_user: np.ndarray, n_draws: int, seed: int) -> np.ndarray:
    """Two-sided p of every column of `per_user` [m, K] from `n_draws` seeded random sign
    patterns over all m users (a zero contributes 0 whatever its sign); never 0."""
    m, k = per_user.shape
    rng = np.random.default_rng(seed)
    total = per_user.sum(axis=0)
    thresholds = np.array([_threshold(per_user[:, j], m) for j in range(k)])
    hits = np.zeros(k, dtype=np.int64)
    for start in range(0, n_draws, _CHUNK * 4):
        b = min(_CHUNK * 4, n_draws - start)
        # a flipped user turns +u into -u: T* = (sum(u) - 2 * sum of the flipped) / m
        flips = np.unpackbits(rng.integers(0, 256, size=(b, (m + 7) // 8), dtype=np.uint8),
                              axis=1, count=m)
        t = np.abs(total - 2.0 * (flips.astype(np.float64) @ per_user)) / m
        hits += np.count_nonzero(t >= thresholds, axis=0)
    return (1.0 + hits) / (1.0 + n_draws)


def paired_tests(a: Mapping[str, Any], b: Mapping[str, Any], users: Sequence[Any] | None = None,
                 n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED,
                 n_draws: int = N_DRAWS, exact_max: int = EXACT_MAX_USERS
                 ) -> dict[str, PairedResult]:
    """`paired_test` for every metric present in both `a` and `b` (dicts of per-sample vectors
    of two variants on the same samples, same order). Bootstrap resamples and Monte Carlo sign
    patterns are shared by the metrics, so a metric gets the same answer alone."""
    names = [k for k in a if k in b]
    if not names:
        raise ValueError("paired_tests: no metric in common")
    if not 0 <= int(exact_max) <= 20:
        raise ValueError(f"exact_max={exact_max}: exact enumeration is limited to 2**20 sign "
                         "patterns; larger cases use the Monte Carlo test")
    if int(n_draws) < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    d = {}
    for k in names:
        va, vb = _as_array(a[k]), _as_array(b[k])
        if va.shape != vb.shape:
            raise ValueError(f"paired test on {k}: {va.size} vs {vb.size} samples; the two "
                             "variants must be scored on the same samples")
        d[k] = va - vb
    cis = bootstrap_cis(d, users, n_boot, level, seed)
    n = next(iter(d.values())).size
    gid, m = _groups(users, n)
    counts = np.bincount(gid, minlength=m).astype(np.float64)
    per_user = np.stack([np.bincount(gid, weights=d[k], minlength=m) / counts for k in names],
                        axis=1)  # [m, K]: each user's mean difference
    for j, k in enumerate(names):  # a user whose samples all tie is no evidence either way
        per_user[np.bincount(gid, weights=np.abs(d[k]), minlength=m) == 0.0, j] = 0.0
    nonzero = np.count_nonzero(per_user, axis=0)
    mc = [j for j in range(len(names)) if nonzero[j] > exact_max]
    mc_p = dict(zip(mc, _monte_carlo_p(per_user[:, mc], int(n_draws), seed))) if mc else {}
    out = {}
    for j, k in enumerate(names):
        if j in mc_p:
            p, test, draws = float(mc_p[j]), "monte_carlo", int(n_draws)
        else:
            p, draws = _exact_p(per_user[:, j], m)
            test = "exact"
        out[k] = PairedResult(diff=float(d[k].mean()), ci=cis[k], p=min(1.0, p), test=test,
                              n_users=m, n_nonzero=int(nonzero[j]), n_draws=draws)
    return out


def paired_test(a: Any, b: Any, users: Sequence[Any] | None = None, n_boot: int = N_BOOT,
                level: float = LEVEL, seed: int = SEED, n_draws: int = N_DRAWS,
                exact_max: int = EXACT_MAX_USERS) -> PairedResult:
    """Variant a against variant b on the same samples (same order): mean difference a - b,
    its bootstrap CI (users resampled, pairs kept together) and a two-sided sign-flip
    randomisation p over users (exact for <= `exact_max` users with a non-zero difference,
    else seeded Monte Carlo). Identical variants: diff 0, CI [0, 0], p 1."""
    return paired_tests({"v": a}, {"v": b}, users, n_boot, level, seed, n_draws, exact_max)["v"]


def rank_metric_values(ranks: Any, ks: Sequence[int]) -> dict[str, Any]:
    """Per-sample metric vectors from the positive's ranks (`metrics_from_ranks`, reused)."""
    import torch  # lazy: +3.3 s (torch, torchmetrics) to a numpy-only module

    from reccocktail.evaluation.metrics import metrics_from_ranks  # lazy: the same cost

    return metrics_from_ranks(torch.as_tensor(ranks), ks)


def ci_fields(ranks: Any, users: Sequence[Any] | None, ks: Sequence[int],
              n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED) -> dict[str, Any]:
    """What a results row records about its uncertainty, from per-sample ranks: the interval of
    every metric plus how it was obtained (pass as `record_results(..., **ci_fields(...))`)."""
    cis = bootstrap_cis(rank_metric_values(ranks, ks), users, n_boot, level, seed)
    return {"ci": {k: [lo, hi] for k, (lo, hi) in cis.items()}, "ci_method": CI_METHOD,
            "ci_level": level, "n_boot": int(n_boot)}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (Holm, 1979), in the input order.

    Why: the cocktail is compared with many rows on several metrics; at 5 % each, some
    "significant" difference is likely by chance alone. Holm controls the family-wise error
    rate under any dependence between the tests and is uniformly more powerful than Bonferroni.
    With the p-values sorted, p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m-j+1) p_(j));
    a test is rejected at level α when its adjusted p is <= α. Ties keep their input order."""
    p = [float(x) for x in pvalues]
    bad = [x for x in p if not (0.0 <= x <= 1.0)]  # also catches NaN
    if bad:
        raise ValueError(f"holm: p-values must lie in [0, 1], got {bad[:3]}")
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out

