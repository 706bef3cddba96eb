"""Markdown tables in the paper's layout (rows: methods, column groups: domains) and the
machine-readable form of the same cells."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from reccocktail.reporting.aggregate import DEFAULT_METRICS, RANDOM_ROW

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


def scenario_rank(s: str) -> tuple:
    """Sort key: warm, then cold, then other scenarios by name."""
    return (SCENARIO_ORDER.index(s) if s in SCENARIO_ORDER else len(SCENARIO_ORDER), s)


def _natural(v: str) -> tuple:
    """Numbers in numeric order before other strings (10 < 50 < 200)."""
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def variant_rank(v: str) -> tuple:
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
    """The paper's name of a variant; `<variant>.<scorer>` rows add the scorer in brackets."""
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
    for key in sorted(tables, key=lambda k: (scenario_rank(k[0]), tuple(_natural(v) for _, v in k[1]))):
        t = tables[key]
        doms = [d for d in (domains or []) if d in t["domains"]]
        doms += sorted((d for d in t["domains"] if d not in doms), key=_natural)
        setting = ", ".join(f"{k}={v}" for k, v in t["setting"].items())
        lines.append(f"## Scenario: {t['scenario']}" + (f" ({setting})" if setting else ""))
        lines.append("")
        head = ["Method"] + [f"{prefix}{d} {METRIC_LABELS.get(m, m)}" for d in doms for m in metrics]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" + "---:|" * (len(head) - 1))
        variants = sorted({v for v, _ in t["cells"]}, key=variant_rank)
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


def to_json(agg: dict[str, Any]) -> dict[str, Any]:
    """The cells of `aggregate` with tuple keys spelled out, for report.json."""
    out = []
    for t in agg["tables"].values():
        out.append({
            "scenario": t["scenario"],
            "setting": t["setting"],
            "domains": sorted(t["domains"]),
            "cells": [{"variant": v, "domain": d, **c} for (v, d), c in sorted(t["cells"].items())],
        })
    return {"tables": out, "duplicates": agg["duplicates"]}
