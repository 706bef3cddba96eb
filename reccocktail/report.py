"""Aggregate finished runs into the paper's tables and figures.

`python -m reccocktail.report outputs/multirun/... [more folders] [--out DIR]` finds every
`results.json` below the folders (one per run folder, written by the eval and baselines stages),
reads the run's composed config from `.hydra/config.yaml` beside it (domain, scenario, seed,
mix.*), and writes into `--out` (default: the first folder):

- `report.md`: one markdown table per scenario (and per value of every `--group-by` key), in
  the paper's layout: rows are methods, column groups are domains (or the values of the
  `--columns` key, e.g. few-shot fractions), each with NDCG@1 and NDCG@3,
  cells `mean ± std` over seeds (sample std; `(n=k)` where a cell has fewer seeds than others),
  the best mean per column in bold, plus the random expectation row;
- `report.json`: the same numbers, machine-readable;
- `lambda.png`: the learned weight of the base spirit λ_G per domain and scenario (from each
  run's `mix/lambda.json`), and `lambda_curve.png` when runs recorded the λ trajectory;
- `ndcg_vs_prompts.png`: NDCG@1 against `mix.num_prompts` when the runs vary it.

A run that reached the same (domain, scenario, variant, seed, group-by values) twice counts
once: the newest results.json wins, and the report says so. The helpers at the end
(`Sweep`, `run_experiment`) are what the scripts in `experiments/` are built on.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reccocktail.evaluation import chance
from reccocktail.utils.io import read_json, write_json, write_text

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("ndcg@1", "ndcg@3")
METRIC_LABELS = {"ndcg@1": "NDCG@1", "ndcg@3": "NDCG@3", "mrr": "MRR"}
# Display names and row order of the variants the pipeline writes; others keep their names and
# go first (baselines), in alphabetical order.
VARIANT_LABELS = {
    "random": "Random",
    "popularity": "Popularity",
    "zero_shot": "Zero-shot backbone",
    "general": "RecCocktail-G",
    "specific": "RecCocktail-S",
    "second_round": "Second-round FT",
    "wa": "RecCocktail-WA",
    "grid": "RecCocktail (grid λ)",
    "cocktail": "RecCocktail",
}
SCENARIO_ORDER = ("warm", "cold")
RANDOM_ROW = "random (expected)"


@dataclass
class Run:
    """One run folder: where it came from, its setting, and its variants' metrics."""

    path: Path
    domain: str
    scenario: str
    seed: Any
    setting: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    num_candidates: int = 30
    num_prompts: int | None = None
    lambdas: dict[str, Any] | None = None
    mtime: float = 0.0
    column: str = ""  # the column group: the domain, or the value of `column_by`

    def __post_init__(self) -> None:
        self.column = self.column or self.domain


# -- maths ----------------------------------------------------------------------------------
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


def mean_weight(w: float | list[float] | None) -> float | None:
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
    index = general_index(lam)
    for point in curve:
        if isinstance(point, dict):
            point = point.get("lambdas", point.get("lambda", point.get("lambda_g", point)))
        w = mean_weight(general_weight(point, index))
        if w is None:
            return None
        out.append(w)
    return out


# -- reading runs ---------------------------------------------------------------------------
def _load_config(run_dir: Path) -> DictConfig | None:
    for cand in (run_dir / ".hydra" / "config.yaml", run_dir / "config.yaml"):
        if cand.exists():
            try:
                return OmegaConf.load(cand)
            except Exception as err:  # noqa: BLE001 (a broken config must not hide the others)
                log.warning("%s: unreadable config (%s)", cand, err)
    return None


def _select(cfg: DictConfig | None, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    value = OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)
    if isinstance(value, (DictConfig,)) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=False)
    return value


def load_run(results_path: Path, group_by: Sequence[str] = (), column_by: str | None = None) -> Run:
    """One run from its `results.json` and the `.hydra/config.yaml` beside it. In a run whose
    ingredient started from the base spirit (`tuning.specific.init_from: general`), the
    `specific` variant is the second-round fine-tuned model and is reported as `second_round`."""
    results = read_json(results_path)
    if not isinstance(results, dict) or not isinstance(results.get("variants"), dict):
        raise ValueError(f"{results_path}: expected {{'variants': {{name: {{'metrics': ...}}}}}}")
    run_dir = results_path.parent
    cfg = _load_config(run_dir)
    if cfg is None:
        log.warning("%s: no .hydra/config.yaml; domain/scenario/seed taken from results.json", run_dir)
    meta = results.get("meta", {}) if isinstance(results.get("meta"), dict) else {}

    def pick(key: str, meta_key: str, default: Any) -> Any:
        v = _select(cfg, key)
        return meta.get(meta_key, default) if v is None else v

    variants = {}
    for name, row in results["variants"].items():
        if not isinstance(row, dict) or not isinstance(row.get("metrics"), dict):
            raise ValueError(f"{results_path}: variant {name!r} has no 'metrics' object")
        variants[str(name)] = row
    if _select(cfg, "tuning.specific.init_from") == "general" and "specific" in variants:
        variants["second_round"] = variants.pop("specific")
    lam = None
    lam_path = run_dir / "mix" / "lambda.json"
    if lam_path.exists():
        try:
            lam = read_json(lam_path)
        except ValueError as err:
            log.warning("%s", err)
    num_prompts = pick("mix.num_prompts", "num_prompts", None)
    domain = str(pick("domain.name", "domain", "?"))
    setting = {k: _select(cfg, k) for k in group_by}
    column = ""
    if column_by:
        setting = {"domain": domain, **setting}  # the domain moves from the columns to the tables
        column = _key_str(_select(cfg, column_by))
    return Run(
        path=run_dir,
        domain=domain,
        scenario=str(pick("scenario.name", "scenario", "?")),
        seed=pick("seed", "seed", None),
        setting=setting,
        column=column,
        variants=variants,
        num_candidates=int(pick("data.num_candidates", "num_candidates", 30)),
        num_prompts=None if num_prompts is None else int(num_prompts),
        lambdas=lam if isinstance(lam, dict) else ({"lambdas": lam} if lam is not None else None),
        mtime=results_path.stat().st_mtime,
    )


def find_results(folders: Iterable[str | Path]) -> list[Path]:
    """Every results.json below the folders (a folder may also be a results.json itself)."""
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_file() and folder.name == "results.json":
            found.append(folder)
        elif folder.is_dir():
            found.extend(sorted(p for p in folder.rglob("results.json") if ".hydra" not in p.parts))
        else:
            raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(set(found))


def stale_reason(results_path: Path) -> str | None:
    """Why a run's results cannot be trusted (a stage restarted after its rows were written and
    did not complete them, or the eval stage's summary is missing), else None."""
    results = read_json(results_path)
    stale = results.get("stale") if isinstance(results, dict) else None
    if stale:
        return "stage(s) " + ", ".join(f"{s} (started {t})" for s, t in stale.items()) + \
            " restarted after its rows were written and did not complete them"
    if (results_path.parent / "stages").is_dir() and \
            not (results_path.parent / "stages" / "eval.json").exists():
        return "stages/eval.json is missing: the evaluation did not complete"
    return None


def collect_runs(folders: Iterable[str | Path], group_by: Sequence[str] = (),
                 column_by: str | None = None) -> list[Run]:
    """Every complete run below `folders`; runs whose files disagree are left out, loudly."""
    runs = []
    for p in find_results(folders):
        reason = stale_reason(p)
        if reason:
            log.warning("%s: not aggregated: %s; rerun its eval stage", p.parent, reason)
            continue
        runs.append(load_run(p, group_by, column_by))
    return runs


# -- aggregation ----------------------------------------------------------------------------
def _key_str(v: Any) -> str:
    return "null" if v is None else str(v)


def aggregate(runs: Sequence[Run], metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, Any]:
    """Cells keyed by table (scenario + the runs' group-by values), variant and column (the
    domain by default), with mean, std and n over seeds per metric; duplicates of one seed keep
    the newest run."""
    latest: dict[tuple, tuple[Run, dict]] = {}
    duplicates: list[str] = []
    for run in runs:
        setting = tuple((k, _key_str(v)) for k, v in run.setting.items())
        for variant, row in run.variants.items():
            key = (run.scenario, setting, variant, run.column, _key_str(run.seed))
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


def _scenario_rank(s: str) -> tuple:
    return (SCENARIO_ORDER.index(s) if s in SCENARIO_ORDER else len(SCENARIO_ORDER), s)


def _natural(v: str) -> tuple:
    """Numbers in numeric order before other strings (10 < 50 < 200)."""
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def _variant_rank(v: str) -> tuple:
    """Random expectation, then baselines, then the RecCocktail variants in the paper's order;
    `<variant>.<scorer>` rows (other scorers) follow their variant."""
    order = list(VARIANT_LABELS)
    base, _, scorer = v.partition(".")
    if v == RANDOM_ROW:
        return (0, 0, v, "")
    if base in ("random", "popularity"):
        return (1, order.index(base), base, scorer)
    if base in order:
        return (3, order.index(base), base, scorer)
    return (2, 0, base, scorer)


def variant_label(v: str) -> str:
    base, _, scorer = v.partition(".")
    label = VARIANT_LABELS.get(base, base)
    return f"{label} ({scorer})" if scorer else label


def _fmt(stat: dict[str, float] | None, n_max: int, digits: int = 4, analytic: bool = False) -> str:
    if not stat:
        return "–"
    if stat["n"] == 0 or analytic:  # an expectation, not a measurement
        return f"{stat['mean']:.{digits}f}"
    s = f"{stat['mean']:.{digits}f}"
    if stat["n"] > 1:
        s += f" ± {stat['std']:.{digits}f}"
    if stat["n"] < n_max:
        s += f" (n={stat['n']})"
    return s


def render_markdown(agg: dict[str, Any], metrics: Sequence[str] = DEFAULT_METRICS,
                    domains: Sequence[str] | None = None, title: str | None = None,
                    column_by: str | None = None) -> str:
    """Markdown tables in the paper's layout (rows: methods; per domain, or per value of
    `column_by`, one column per metric)."""
    prefix = f"{column_by.split('.')[-1]}=" if column_by else ""
    lines = [f"# {title}", ""] if title else []
    tables = agg["tables"]
    if not tables:
        return "\n".join([*lines, "No results.json found.", ""])
    for key in sorted(tables, key=lambda k: (_scenario_rank(k[0]), tuple(_natural(v) for _, v in k[1]))):
        t = tables[key]
        doms = [d for d in (domains or []) if d in t["domains"]]
        doms += sorted((d for d in t["domains"] if d not in doms), key=_natural)
        setting = ", ".join(f"{k}={v}" for k, v in t["setting"].items())
        lines.append(f"## Scenario: {t['scenario']}" + (f" ({setting})" if setting else ""))
        lines.append("")
        head = ["Method"] + [f"{prefix}{d} {METRIC_LABELS.get(m, m)}" for d in doms for m in metrics]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" + "---:|" * (len(head) - 1))
        variants = sorted({v for v, _ in t["cells"]}, key=_variant_rank)
        n_max = max((s["n"] for c in t["cells"].values() for s in c["metrics"].values()), default=0)
        best: dict[tuple[str, str], float] = {}
        for (v, d), c in t["cells"].items():
            if v in ("random", RANDOM_ROW):
                continue
            for m, s in c["metrics"].items():
                best[(d, m)] = max(best.get((d, m), -math.inf), s["mean"])
        for v in variants:
            row = [variant_label(v)]
            for d in doms:
                c = t["cells"].get((v, d), {"metrics": {}})
                for m in metrics:
                    s = c["metrics"].get(m)
                    txt = _fmt(s, n_max, analytic=v in ("random", RANDOM_ROW))
                    if s and v not in ("random", RANDOM_ROW) and s["mean"] == best.get((d, m)):
                        txt = f"**{txt}**"
                    row.append(txt)
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines.append("Cells: mean ± sample std over seeds; **bold**: best mean per column; "
                 "Random: the expected value of a uniformly random ranking.")
    if agg.get("duplicates"):
        lines.append("")
        lines.append(f"{len(agg['duplicates'])} duplicate run(s) of the same seed were ignored "
                     "(the newest counts):")
        lines.extend(f"- {d}" for d in agg["duplicates"][:20])
    lines.append("")
    return "\n".join(lines)


def _jsonable(agg: dict[str, Any]) -> dict[str, Any]:
    out = []
    for t in agg["tables"].values():
        out.append({
            "scenario": t["scenario"],
            "setting": t["setting"],
            "domains": sorted(t["domains"]),
            "cells": [{"variant": v, "domain": d, **c} for (v, d), c in sorted(t["cells"].items())],
        })
    return {"tables": out, "duplicates": agg["duplicates"]}


# -- plots ----------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def lambda_table(runs: Sequence[Run]) -> dict[tuple[str, str], list[float]]:
    """Mean λ_G per run, grouped by (domain, scenario)."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:
        if run.lambdas is None:
            continue
        w = mean_weight(general_weight(run.lambdas.get("lambdas", run.lambdas),
                                       general_index(run.lambdas)))
        if w is None:
            log.warning("%s/mix/lambda.json: no λ found in %s", run.path, sorted(run.lambdas))
            continue
        out[(run.domain, run.scenario)].append(w)
    return dict(out)


def plot_lambda(runs: Sequence[Run], out: Path) -> Path | None:
    """Bars of the learned λ_G (mean ± std over seeds) per domain, one bar per scenario."""
    table = lambda_table(runs)
    if not table:
        return None
    plt = _pyplot()
    domains = sorted({d for d, _ in table})
    scenarios = sorted({s for _, s in table}, key=_scenario_rank)
    width = 0.8 / len(scenarios)
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(domains) + 2), 3.5))
    for i, s in enumerate(scenarios):
        xs, ms, sds = [], [], []
        for j, d in enumerate(domains):
            if (d, s) in table:
                mu, sd = mean_std(table[(d, s)])
                xs.append(j + (i - (len(scenarios) - 1) / 2) * width)
                ms.append(mu)
                sds.append(sd)
        ax.bar(xs, ms, width=width, yerr=sds, capsize=3, label=s)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(domains)), domains)
    ax.set_ylim(0, 1)
    ax.set_ylabel("λ_G (weight of the base spirit)")
    ax.set_title("Learned λ per scenario")
    ax.legend(title="scenario")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_lambda_curves(runs: Sequence[Run], out: Path) -> Path | None:
    """λ_G along the entropy tuning steps, one line per run, coloured by scenario."""
    curves = [(r, lambda_curve(r.lambdas)) for r in runs]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        return None
    plt = _pyplot()
    scenarios = sorted({r.scenario for r, _ in curves}, key=_scenario_rank)
    colors = {s: f"C{i}" for i, s in enumerate(scenarios)}
    styles = ("-", "--", ":", "-.")
    domains = sorted({r.domain for r, _ in curves})
    fig, ax = plt.subplots(figsize=(5, 3.5))
    seen = set()
    for r, c in curves:
        key = (r.domain, r.scenario)
        label = f"{r.domain} / {r.scenario}" if key not in seen else None
        seen.add(key)
        ax.plot(range(len(c)), c, color=colors[r.scenario],
                ls=styles[domains.index(r.domain) % len(styles)], alpha=0.7, label=label)
    ax.set_xlabel("tuning step")
    ax.set_ylabel("λ_G")
    ax.set_ylim(0, 1)
    ax.set_title("λ trajectory (entropy-guided)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


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


def plot_num_prompts(runs: Sequence[Run], out: Path, metric: str = "ndcg@1") -> Path | None:
    """NDCG@1 against the number of unlabeled prompts, one panel per (domain, scenario)."""
    table = prompts_table(runs, metric)
    panels = {k: v for k, v in table.items()
              if len({n for per in v.values() for n in per}) > 1}
    if not panels:
        return None
    plt = _pyplot()
    keys = sorted(panels, key=lambda k: (k[0], _scenario_rank(k[1])))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for v in sorted(panels[key], key=_variant_rank):
            pts = sorted(panels[key][v].items())
            xs = [n for n, _ in pts]
            stats = [mean_std(vals) for _, vals in pts]
            ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                        capsize=3, label=variant_label(v))
        ax.set_xlabel("unlabeled prompts (mix.num_prompts)")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(f"{key[0]} / {key[1]}")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# -- entry point ----------------------------------------------------------------------------
def build_report(folders: Sequence[str | Path], out: str | Path | None = None, *,
                 metrics: Sequence[str] = DEFAULT_METRICS, group_by: Sequence[str] = (),
                 column_by: str | None = None, domains: Sequence[str] | None = None,
                 title: str | None = None, plots: bool = True) -> dict[str, Any]:
    """Read the runs below `folders`, write report.md/.json and the plots into `out`; returns
    the markdown and the written paths."""
    if not folders:
        raise ValueError("give at least one folder holding runs")
    out = Path(out if out is not None else folders[0])
    runs = collect_runs(folders, group_by, column_by)
    agg = aggregate(runs, metrics)
    md = render_markdown(agg, metrics, domains, title, column_by)
    files = {"markdown": out / "report.md", "json": out / "report.json"}
    write_text(files["markdown"], md)
    write_json(files["json"], {"runs": [str(r.path) for r in runs], **_jsonable(agg),
                               "lambda": {f"{d}/{s}": v for (d, s), v in lambda_table(runs).items()}})
    if plots and runs:
        for name, fn in (("lambda", plot_lambda), ("lambda_curve", plot_lambda_curves),
                         ("ndcg_vs_prompts", plot_num_prompts)):
            path = fn(runs, out / f"{name}.png")
            if path is not None:
                files[name] = path
    return {"markdown": md, "files": files, "num_runs": len(runs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reccocktail.report", description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", help="folders searched for results.json (recursively)")
    p.add_argument("--out", default=None, help="where report.md/.json and plots go (default: first folder)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated, e.g. ndcg@1,ndcg@3")
    p.add_argument("--group-by", default="", help="extra config keys splitting tables, e.g. backbone.name")
    p.add_argument("--columns", default=None,
                   help="config key whose values form the column groups instead of the domain "
                        "(e.g. tuning.specific.fraction); the domain then splits the tables")
    p.add_argument("--domains", default="", help="column order, comma-separated")
    p.add_argument("--title", default=None)
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    res = build_report(a.folders, a.out, metrics=split(a.metrics), group_by=split(a.group_by),
                       column_by=a.columns, domains=split(a.domains), title=a.title,
                       plots=not a.no_plots)
    print(res["markdown"])
    for name, path in res["files"].items():
        print(f"{name}: {path}")
    return 0


# -- experiment scripts (experiments/*.py) --------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sweep:
    """One Hydra multirun of an experiment script: `python run.py -m <overrides>
    hydra.sweep.dir=<out>/<name>`; comma-separated values are swept (cartesian product)."""

    name: str
    overrides: list[str]


def experiment_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """The options every experiment script shares; Hydra overrides for every job go after `--`."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=f"outputs/experiments/{name}", help="sweep folders go here")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (mean ± std over them)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="slurm: one SLURM job per sweep point (conf/hydra/launcher/slurm.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--report-only", action="store_true", help="only aggregate finished runs")
    p.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="Hydra overrides added to every job (after --)")
    return p


def csv_list(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


def missing_experiments(overrides: Sequence[str], conf_dir: Path = ROOT / "conf") -> list[str]:
    """Names in `+experiment=a,b` overrides without a `conf/experiment/<name>.yaml`."""
    missing = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") == "experiment":
            missing += [n for n in csv_list(value) if not (conf_dir / "experiment" / f"{n}.yaml").exists()]
    return missing


def sweep_command(sweep: Sweep, out: Path, args: argparse.Namespace) -> list[str]:
    cmd = [args.python, str(ROOT / "run.py"), "-m", *sweep.overrides, *args.overrides,
           f"hydra.sweep.dir={out / sweep.name}"]
    if args.launcher == "slurm":
        cmd.append("hydra/launcher=slurm")
    return cmd


def report_argv(folders: Sequence[Path], out: Path, **kw: Any) -> list[str]:
    argv = [str(f) for f in folders] + ["--out", str(out)]
    for key, value in kw.items():
        if value in (None, "", [], ()):
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, ",".join(value) if isinstance(value, (list, tuple)) else str(value)]
    return argv


def run_experiment(args: argparse.Namespace, sweeps: Sequence[Sweep], **report_kw: Any) -> int:
    """Print and (unless --dry-run) run the sweeps one after the other, then the report over
    their folders into `<out>/report` (report_kw: metrics, group_by, columns, domains, title)."""
    import shlex
    import subprocess

    out = Path(args.out).resolve()  # run.py runs from the repository root
    cmds = [sweep_command(s, out, args) for s in sweeps]
    folders = [out / s.name for s in sweeps]
    rep = report_argv(folders, out / "report", **report_kw)
    missing = sorted({m for s in sweeps for m in missing_experiments(s.overrides)})
    if missing:
        msg = f"no conf/experiment/<name>.yaml for: {', '.join(missing)}"
        if not (args.dry_run or args.report_only):
            raise SystemExit(f"error: {msg}")
        print(f"# warning: {msg}")
    def show(cmd: list[str]) -> str:
        return shlex.join(["python" if c == sys.executable else c for c in cmd])

    if not args.report_only:
        for cmd in cmds:
            print(show(cmd), flush=True)
    print(show([args.python, "-m", "reccocktail.report", *rep]), flush=True)
    if args.dry_run:
        return 0
    if not args.report_only:
        for cmd in cmds:
            subprocess.run(cmd, cwd=ROOT, check=True)
    present = [f for f in folders if f.exists()]
    for f in folders:
        if not f.exists():
            print(f"# warning: {f} does not exist; reporting without it")
    if not present:
        raise SystemExit(f"error: none of the sweep folders exist under {out}")
    return main(report_argv(present, out / "report", **report_kw))


if __name__ == "__main__":
    raise SystemExit(main())
