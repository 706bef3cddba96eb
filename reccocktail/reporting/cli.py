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
  run's `mix/lambda.json`), `lambda_ingredients.png` (λ of every ingredient by name) when a run
  mixed more than two ingredients, and `lambda_curve.png` when runs recorded the λ trajectory;
- `ndcg_vs_prompts.png`: NDCG@1 against `selection.lambda_users` when the runs vary it.

A run that reached the same (domain, scenario, variant, seed, group-by values) twice counts
once: the newest results.json wins, and the report says so. A run whose stage restarted and did
not complete (`runs.stale_reason`) is left out with a warning naming it.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reccocktail.reporting.aggregate import (
    DEFAULT_METRICS,
    aggregate,
    ingredient_lambda_table,
    lambda_table,
)
from reccocktail.reporting.plots import (
    plot_ingredient_lambdas,
    plot_lambda,
    plot_lambda_curves,
    plot_num_prompts,
)
from reccocktail.reporting.runs import collect_runs
from reccocktail.reporting.tables import render_markdown, to_json
from reccocktail.utils.io import write_json, write_text


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
    write_json(files["json"], {"runs": [str(r.path) for r in runs], **to_json(agg),
                               "lambda": {f"{d}/{s}": v for (d, s), v in lambda_table(runs).items()},
                               "lambda_by_ingredient": {
                                   f"{d}/{s}": v
                                   for (d, s), v in ingredient_lambda_table(runs).items()}})
    if plots and runs:
        for name, fn in (("lambda", plot_lambda), ("lambda_ingredients", plot_ingredient_lambdas),
                         ("lambda_curve", plot_lambda_curves),
                         ("ndcg_vs_prompts", plot_num_prompts)):
            path = fn(runs, out / f"{name}.png")
            if path is not None:
                files[name] = path
    return {"markdown": md, "files": files, "num_runs": len(runs)}


def main(argv: list[str] | None = None) -> int:
    """The command line of `python -m reccocktail.report` (and `python -m reccocktail.reporting`)."""
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
