"""Figures of a report (matplotlib, imported on first use): λ_G per domain and scenario, λ of
every ingredient by name (runs of more than two ingredients), λ_G's trajectory over the tuning
steps, NDCG@1 against the number of unlabeled prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reccocktail.reporting.aggregate import (
    ingredient_lambda_table,
    lambda_curve,
    lambda_table,
    mean_std,
    prompts_table,
)
from reccocktail.reporting.runs import Run
from reccocktail.reporting.tables import METRIC_LABELS, scenario_rank, variant_label, variant_rank


def _pyplot():
    import matplotlib  # lazy: an optional extra (plots), absent from a core install

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: optional extra, after matplotlib.use

    return plt


def plot_lambda(runs: Sequence[Run], out: Path) -> Path | None:
    """Bars of the learned λ_G (mean ± std over seeds) per domain, one bar per scenario."""
    table = lambda_table(runs)
    if not table:
        return None
    plt = _pyplot()
    domains = sorted({d for d, _ in table})
    scenarios = sorted({s for _, s in table}, key=scenario_rank)
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


def plot_ingredient_lambdas(runs: Sequence[Run], out: Path) -> Path | None:
    """Bars of the learned λ of every ingredient, by name (mean ± std over seeds), one group
    per domain and scenario; drawn when a run mixed more than two ingredients."""
    table = ingredient_lambda_table(runs)
    if not any(len(w) > 2 for w in table.values()):
        return None
    plt = _pyplot()
    keys = sorted(table, key=lambda k: (k[0], scenario_rank(k[1])))
    names = list(dict.fromkeys(n for k in keys for n in table[k]))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(keys) * len(names) / 2 + 2), 3.5))
    for i, name in enumerate(names):
        xs, ms, sds = [], [], []
        for j, k in enumerate(keys):
            if name in table[k]:
                mu, sd = mean_std(table[k][name])
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ms.append(mu)
                sds.append(sd)
        ax.bar(xs, ms, width=width, yerr=sds, capsize=3, label=name)
    ax.set_xticks(range(len(keys)), [f"{d}\n{s}" for d, s in keys])
    ax.set_ylim(0, 1)
    ax.set_ylabel("λ (weight of the ingredient)")
    ax.set_title("Learned λ per ingredient")
    ax.legend(title="ingredient", fontsize=8)
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
    scenarios = sorted({r.scenario for r, _ in curves}, key=scenario_rank)
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


def plot_num_prompts(runs: Sequence[Run], out: Path, metric: str = "ndcg@1") -> Path | None:
    """NDCG@1 against the number of unlabeled prompts, one panel per (domain, scenario)."""
    table = prompts_table(runs, metric)
    panels = {k: v for k, v in table.items()
              if len({n for per in v.values() for n in per}) > 1}
    if not panels:
        return None
    plt = _pyplot()
    keys = sorted(panels, key=lambda k: (k[0], scenario_rank(k[1])))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for v in sorted(panels[key], key=variant_rank):
            pts = sorted(panels[key][v].items())
            xs = [n for n, _ in pts]
            stats = [mean_std(vals) for _, vals in pts]
            ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                        capsize=3, label=variant_label(v))
        ax.set_xlabel("unlabeled prompts (selection.lambda_users)")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(f"{key[0]} / {key[1]}")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
