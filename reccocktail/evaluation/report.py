"""`results.json` (every variant's metrics and how they were obtained) and `results.md`.

Several stages (eval, baselines) add rows to the same run folder, possibly from different
processes, so a row is merged under a file lock and both files are rewritten atomically.
`results.md` is shaped like the paper's Tables 1/2: one row per method (reference rows first,
then baselines, then the LLM variants), one column per metric, the best value in bold.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reccocktail.evaluation.metrics import DEFAULT_KS, metric_names
from reccocktail.utils.io import read_json, to_plain, write_json, write_text

REFERENCE_ROWS = ("random", "popularity")
LLM_ORDER = ("zero_shot", "general", "specific", "wa", "cocktail")
_LABELS = {"zero_shot": "Zero-shot backbone", "general": "RecCocktail-G (general)",
           "specific": "RecCocktail-S (specific)", "wa": "RecCocktail-WA (λ=0.5)",
           "cocktail": "RecCocktail", "random": "Random (expectation)",
           "popularity": "Popularity"}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX); elsewhere, no lock (single-process use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_results(out_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(out_dir) / "results.json"
    if not path.exists():
        return {"variants": {}}
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
        raise ValueError(f"{path}: expected {{\"variants\": {{...}}}}")
    return data


def record_results(out_dir: str | os.PathLike, variant: str, metrics: dict[str, float],
                   **meta: Any) -> dict[str, Any]:
    """Merge one row (replacing an earlier row of the same name) and re-render results.md."""
    if not variant:
        raise ValueError("record_results: empty variant name")
    bad = {k: v for k, v in metrics.items() if not isinstance(v, (int, float))}
    if bad:
        raise ValueError(f"record_results({variant!r}): non-numeric metric values {bad}")
    out_dir = Path(out_dir)
    with _locked(out_dir / ".results.lock"):
        data = load_results(out_dir)
        row = {"metrics": {k: float(v) for k, v in metrics.items()}, **to_plain(meta)}
        row.setdefault("recorded_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
        data["variants"][variant] = row
        write_json(out_dir / "results.json", data)
        write_text(out_dir / "results.md", render_markdown(data))
    return data


def ordered_variants(variants: dict[str, Any]) -> list[str]:
    """Reference rows, then other methods (baselines) as recorded, then the LLM variants."""
    def key(item: tuple[int, str]) -> tuple[int, int]:
        pos, name = item
        base = name.split(".")[0]
        if base in REFERENCE_ROWS:
            return (0, REFERENCE_ROWS.index(base) * 1000 + pos)
        if base in LLM_ORDER:
            return (2, LLM_ORDER.index(base) * 1000 + pos)
        return (1, pos)

    return [name for _, name in sorted(enumerate(variants), key=key)]


def _metric_columns(variants: dict[str, Any]) -> list[str]:
    present = {m for row in variants.values() for m in row.get("metrics", {})}
    ks = sorted({int(m.split("@")[1]) for m in present if "@" in m and m.split("@")[1].isdigit()})
    order = metric_names(ks or DEFAULT_KS)
    return [m for m in order if m in present] + sorted(present - set(order))


def results_table(data: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Column names and rows (plain values) of the results table, for any renderer/logger."""
    variants = data.get("variants", {})
    metrics = _metric_columns(variants)
    has_valid = any("valid_ratio" in row for row in variants.values())
    columns = ["variant", *metrics, "users", "scorer"] + (["valid"] if has_valid else [])
    rows = []
    for name in ordered_variants(variants):
        row = variants[name]
        vals = [row.get("metrics", {}).get(m) for m in metrics]
        users = row.get("num_users", row.get("num_samples"))  # baselines may record samples
        scorer = row.get("scorer", row.get("kind"))
        if row.get("normalize"):  # per-token mean log-probability instead of the sum
            scorer = f"{scorer} (mean)"
        extra = [users, scorer]
        if has_valid:
            extra.append(row.get("valid_ratio"))
        rows.append([name, *vals, *extra])
    return columns, rows


def _label(name: str) -> str:
    base, _, suffix = name.partition(".")
    label = _LABELS.get(base, base)
    return f"{label} [{suffix}]" if suffix else label


def _header(col: str) -> str:
    if "@" in col:
        m, k = col.split("@")
        return f"{m.upper() if m == 'hr' else 'NDCG'}@{k}"
    return {"mrr": "MRR", "users": "Users", "scorer": "Scorer", "valid": "Valid output",
            "variant": "Method"}.get(col, col)


def render_markdown(data: dict[str, Any]) -> str:
    """A Markdown table like the paper's Tables 1/2; the best value per metric column in bold
    (every row competes but the random expectation, popularity included)."""
    columns, rows = results_table(data)
    if not rows:
        return "# Results\n\n(no results yet)\n"
    metric_cols = [i for i, c in enumerate(columns) if c not in ("variant", "users", "scorer", "valid")]
    best: dict[int, float] = {}
    for i in metric_cols:
        vals = [r[i] for r in rows if r[i] is not None and r[0] != "random"]
        if vals:
            best[i] = max(vals)
    lines = ["# Results", "",
             "Ranking of 1 positive among the candidates; ties count against the positive.", "",
             "| " + " | ".join(_header(c) for c in columns) + " |",
             "|" + "|".join(":---" if c in ("variant", "scorer") else "---:" for c in columns) + "|"]
    for r in rows:
        cells = []
        for i, (col, v) in enumerate(zip(columns, r)):
            if col == "variant":
                cells.append(_label(v))
            elif v is None:
                cells.append("–")
            elif i in best:
                cell = f"{v:.4f}"
                cells.append(f"**{cell}**" if v == best[i] and r[0] != "random" else cell)
            elif col == "valid":
                cells.append(f"{v:.1%}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_results(data: dict[str, Any]) -> None:
    """The results table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    columns, rows = results_table(data)
    table = Table(title="Results")
    for c in columns:
        table.add_column("Valid" if c == "valid" else _header(c), no_wrap=True,
                         justify="left" if c in ("variant", "scorer") else "right")
    for r in rows:
        table.add_row(*[
            "–" if v is None else f"{v:.4f}" if isinstance(v, float) and c != "valid"
            else f"{v:.1%}" if c == "valid" else str(v)
            for c, v in zip(columns, r)
        ])
    console = Console()
    console.width = max(console.width, 150)  # logs are not terminals: keep the rows whole
    console.print(table)
