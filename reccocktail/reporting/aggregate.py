"""Numbers over runs: mean ± sample std per (table, variant, column) over seeds, the analytic
random-ranking row, and λ read from each run's `mix/lambda.json`: λ_G, and the weight of every
ingredient by name (`ingredients`, `lambda_by_name`; older files: the pair [general, specific])."""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from reccocktail.evaluation import chance
from reccocktail.reporting.runs import Run, key_str

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("ndcg@1", "ndcg@3")
RANDOM_ROW = "random (expected)"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def random_expectation(metric: str, num_candidates: int) -> float | None:
    """Expected value of one ranking metric under a uniformly random ranking of one positive
    among `num_candidates` (NDCG@1 = 1/30, NDCG@3 = 0.0710 for 30); None if unknown."""
    name, _, k = metric.partition("@")
    # recall@k = HR@k with one positive; MRR has no cut-off
    key = f"hr@{k}" if name == "recall" else "mrr" if name == "mrr" else metric
    ks = [int(k)] if k.isdigit() else []
    return chance.random_expectation(int(num_candidates), ks).get(key)


def general_weight(lambdas: Any, index: int = 0) -> float | list[float] | None:
    """λ_G (the base spirit's weight) from the shapes a `lambda.json` may hold: a number, a pair
    `[λ_G, λ_S]` (λ_G at `index`), a dict naming `general`/`g`/`lambda_g`, a dict of pairs keyed
    by LoRA module (layer granularity), or a list of pairs: those return one λ_G per layer."""
    if lambdas is None or isinstance(lambdas, bool):
        return None
    if isinstance(lambdas, (int, float)):
        return float(lambdas)
    if isinstance(lambdas, dict):
        for key in ("general", "g", "lambda_g", "lambda_general", "lambda1", "G"):
            if key in lambdas:
                return general_weight(lambdas[key], index)
        for key in ("model", "global", "values", "weights", "lambdas", "layers", "per_layer"):
            if key in lambdas:
                return general_weight(lambdas[key], index)
        values = list(lambdas.values())
        per = [general_weight(v, index) for v in values] if values else []
        if per and all(isinstance(p, float) for p in per) and all(
                isinstance(v, (list, tuple, dict)) for v in values):
            return per  # {module: [λ_G, λ_S]}
        return None
    if isinstance(lambdas, (list, tuple)):
        if not lambdas:
            return None
        if len(lambdas) == 2 and all(isinstance(x, (int, float)) for x in lambdas):
            return float(lambdas[index])
        if all(isinstance(x, (int, float)) for x in lambdas):
            return [float(x) for x in lambdas]  # one λ_G per layer
        per = [general_weight(x, index) for x in lambdas]
        flat = [p for p in per if isinstance(p, float)]
        return flat if len(flat) == len(per) else None
    return None


def general_index(lam: dict[str, Any] | None) -> int:
    """Position of the base spirit in λ pairs: `adapters` in lambda.json names the order."""
    adapters = lam.get("adapters") if isinstance(lam, dict) else None
    if isinstance(adapters, list) and "general" in adapters:
        return adapters.index("general")
    return 0


def ingredient_order(lam: dict[str, Any] | None) -> list[str]:
    """The ingredients λ's entries belong to, in order: `ingredients` (or `adapters`) of the
    lambda.json, else the pair of the files written before either existed."""
    if isinstance(lam, dict):
        for key in ("ingredients", "adapters"):
            names = lam.get(key)
            if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
                return list(names)
    return ["general", "specific"]


def _is_vector(x: Any, n: int) -> bool:
    return (isinstance(x, (list, tuple)) and len(x) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x))


def _vector(point: Any, n: int) -> list[float] | None:
    """One λ vector of `n` weights from a λ entry: the vector itself, or per LoRA module
    (`{module: vector}`, layer granularity) the mean over the modules."""
    if _is_vector(point, n):
        return [float(v) for v in point]
    if isinstance(point, dict) and point and all(_is_vector(v, n) for v in point.values()):
        rows = list(point.values())
        return [statistics.fmean(float(r[i]) for r in rows) for i in range(n)]
    return None


def ingredient_weights(lam: dict[str, Any] | None) -> dict[str, float] | None:
    """λ of every ingredient by name (mean over LoRA modules): `lambda_by_name` when the file
    has it, else `lambdas` read in `ingredient_order`; None when neither says it."""
    if not isinstance(lam, dict):
        return None
    named = lam.get("lambda_by_name")
    if isinstance(named, dict) and named and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in named.values()):
        return {str(k): float(v) for k, v in named.items()}
    names = ingredient_order(lam)
    vec = _vector(lam.get("lambdas"), len(names))
    return dict(zip(names, vec)) if vec is not None else None


def _general_at(point: Any, names: list[str]) -> float | None:
    """λ_G of one λ entry; entries of three or more weights are read by the ingredient order."""
    if len(names) > 2:
        vec = _vector(point, len(names))
        return vec[names.index("general")] if vec is not None and "general" in names else None
    return mean_weight(general_weight(point, names.index("general") if "general" in names else 0))


def mean_weight(w: float | list[float] | None) -> float | None:
    """One λ_G per run: per-layer weights are averaged."""
    if w is None:
        return None
    return float(w) if isinstance(w, float) else statistics.fmean(w)


def lambda_curve(lam: dict[str, Any] | None) -> list[float] | None:
    """λ_G per tuning step from `lambda.json`'s `curve` (entries: numbers, pairs, or dicts
    holding `lambdas`/`lambda`), averaged over layers; None when absent."""
    if not isinstance(lam, dict):
        return None
    curve = lam.get("curve") or lam.get("trajectory") or lam.get("history")
    if not isinstance(curve, list) or not curve:
        return None
    out = []
    names = ingredient_order(lam)
    for point in curve:
        if isinstance(point, dict):
            point = point.get("lambdas", point.get("lambda", point.get("lambda_g", point)))
        w = _general_at(point, names)
        if w is None:
            return None
        out.append(w)
    return out


def aggregate(runs: Sequence[Run], metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, Any]:
    """Cells keyed by table (scenario + the runs' group-by values), variant and column (the
    domain by default), with mean, std and n over seeds per metric; duplicates of one seed keep
    the newest run."""
    latest: dict[tuple, tuple[Run, dict]] = {}
    duplicates: list[str] = []
    for run in runs:
        setting = tuple((k, key_str(v)) for k, v in run.setting.items())
        for variant, row in run.variants.items():
            key = (run.scenario, setting, variant, run.column, key_str(run.seed))
            if key in latest:
                duplicates.append(f"{variant} seed={run.seed} in {latest[key][0].path} and {run.path}")
                if latest[key][0].mtime > run.mtime:
                    continue
            latest[key] = (run, row)
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[tuple, list[Any]] = defaultdict(list)
    num_cands: dict[tuple, set[int]] = defaultdict(set)
    for (scenario, setting, variant, domain, _), (run, row) in latest.items():
        cell = (scenario, setting, variant, domain)
        seeds[cell].append(run.seed)
        num_cands[(scenario, setting, domain)].add(run.num_candidates)
        for m in metrics:
            v = row["metrics"].get(m)
            if isinstance(v, (int, float)) and not math.isnan(float(v)):
                values[cell][m].append(float(v))
    tables: dict[tuple, dict[str, Any]] = {}
    for cell in seeds:
        per_metric = values.get(cell, {})
        scenario, setting, variant, domain = cell
        t = tables.setdefault((scenario, setting), {"scenario": scenario,
                                                     "setting": dict(setting),
                                                     "domains": set(), "cells": {}})
        t["domains"].add(domain)
        stats = {}
        for m in metrics:
            vals = per_metric.get(m, [])
            if vals:
                mu, sd = mean_std(vals)
                stats[m] = {"mean": mu, "std": sd, "n": len(vals)}
        t["cells"][(variant, domain)] = {"metrics": stats, "seeds": sorted(map(str, seeds[cell]))}
    for (scenario, setting), t in tables.items():
        for domain in t["domains"]:
            n = num_cands.get((scenario, setting, domain), {30})
            if len(n) != 1:
                log.warning("%s/%s: runs with different num_candidates %s; no random row",
                            scenario, domain, sorted(n))
                continue
            exp = {m: random_expectation(m, next(iter(n))) for m in metrics}
            has_random = ("random", domain) in t["cells"]
            if not has_random:
                t["cells"][(RANDOM_ROW, domain)] = {
                    "metrics": {m: {"mean": v, "std": 0.0, "n": 0} for m, v in exp.items()
                                if v is not None},
                    "seeds": [],
                }
    return {"tables": tables, "duplicates": duplicates}


def lambda_table(runs: Sequence[Run]) -> dict[tuple[str, str], list[float]]:
    """Mean λ_G per run, grouped by (domain, scenario) (runs without G are left out)."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:
        if run.lambdas is None:
            continue
        names = ingredient_order(run.lambdas)
        if "general" not in names:
            continue
        w = _general_at(run.lambdas.get("lambdas", run.lambdas), names)
        if w is None:
            log.warning("%s/mix/lambda.json: no λ found in %s", run.path, sorted(run.lambdas))
            continue
        out[(run.domain, run.scenario)].append(w)
    return dict(out)


def ingredient_lambda_table(runs: Sequence[Run]
                            ) -> dict[tuple[str, str], dict[str, list[float]]]:
    """λ of each ingredient (by name) per run, grouped by (domain, scenario)."""
    out: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        weights = ingredient_weights(run.lambdas)
        for name, w in (weights or {}).items():
            out[(run.domain, run.scenario)][name].append(w)
    return {k: dict(v) for k, v in out.items()}


def prompts_table(runs: Sequence[Run], metric: str = "ndcg@1"
                  ) -> dict[tuple[str, str], dict[str, dict[int, list[float]]]]:
    """(domain, scenario) -> variant -> num_prompts -> metric values over seeds."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        if run.num_prompts is None:
            continue
        for v, row in run.variants.items():
            val = row["metrics"].get(metric)
            if isinstance(val, (int, float)):
                out[(run.domain, run.scenario)][v][run.num_prompts].append(float(val))
    return out
