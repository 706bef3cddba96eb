"""`results.json` (every variant's metrics and how they were obtained) and `results.md`.

Several stages (eval, baselines) add rows to the same run folder, possibly from different
processes, so a row is merged under a file lock and both files are rewritten atomically.
`results.md` is shaped like the paper's Tables 1/2: one row per method (reference rows first,
then baselines, then the LLM variants), one column per metric, the best value in bold.

Uncertainty (see `evaluation/confidence.py`): a scored row may carry `"ci": {metric: [lo, hi]}`
(95 % percentile bootstrap over users) with `ci_method`, `ci_level`, `n_boot`; the random row is
a closed-form expectation and has none. `update_paired` adds a top-level `"paired"` block,
`{"cocktail_vs_<other>": {metric: {"diff", "ci", "p", ...}}}`, recomputed from the per-sample
ranks in `predictions/<variant>.jsonl` (matched by sample id; refused when the two files hold
other targets or candidates for an id, or the rows another `data_hash`), and `"paired_info"`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from reccocktail.evaluation import confidence
from reccocktail.evaluation.metrics import DEFAULT_KS, metric_names, metrics_from_ranks
from reccocktail.utils.io import read_json, read_jsonl, to_plain, write_json, write_text

log = logging.getLogger(__name__)

REFERENCE_ROWS = ("random", "popularity")
# The LLM rows: the bare backbone, the ingredients (G, S and any general source's, recorded in
# the order of `ingredients`), WA, the cocktail.
LLM_ORDER = ("zero_shot", "general", "specific", "wa", "cocktail")
INGREDIENT_KIND = "source"  # `adapter_kind` of a general source's ingredient row
ROW_LABELS = {"zero_shot": "Zero-shot backbone", "general": "RecCocktail-G (general)",
           "specific": "RecCocktail-S (specific)", "wa": "RecCocktail-WA (λ=0.5)",
           "cocktail": "RecCocktail", "random": "Random (expectation)",
           "popularity": "Popularity", "alpharec": "AlphaRec-style (MiniLM)",
           "vqrec": "VQ-Rec-style (MiniLM codes)", "recformer": "RecFormer-style (MiniLM fine-tuned)",
           "pop": "Popularity (baseline)", "bpr": "BPR-MF", "gru4rec": "GRU4Rec", "sasrec": "SASRec",
           "fmlp": "FMLP-Rec", "unisrec": "UniSRec-style (text)", "p5": "P5 (full fine-tuning)",
           "omfa": "One-Model-for-All-style (LoRA)"}
PAIRED_REFERENCE = "cocktail"
PAIRED_SHOWN = ("ndcg@1", "ndcg@3", "mrr")  # in results.md; results.json holds every metric
# The primary comparisons, fixed before any result: the reference against its ingredients and
# their plain average, the bare backbone, popularity and the best baseline row, on these
# metrics. Their p-values are Holm-adjusted as one family (`p_holm`); every other comparison
# (other scorers, other baselines, other metrics) is exploratory and keeps its raw p only.
PRIMARY_ROWS = ("general", "specific", "wa", "zero_shot", "popularity")
PRIMARY_METRICS = ("ndcg@1", "ndcg@3")
CORRECTION = "Holm step-down over the primary comparisons x primary metrics"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX); elsewhere, no lock (single-process use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # lazy: a try/except ImportError fallback (no fcntl off POSIX)
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


def _check_ci(variant: str, metrics: dict[str, float], ci: Any) -> dict[str, list[float]]:
    if not isinstance(ci, dict):
        raise ValueError(f"record_results({variant!r}): ci must be {{metric: [lo, hi]}}")
    out = {}
    for k, pair in ci.items():
        if k not in metrics:
            raise ValueError(f"record_results({variant!r}): ci for {k!r}, which is not a metric")
        try:
            lo, hi = (float(x) for x in pair)
        except (TypeError, ValueError):
            raise ValueError(f"record_results({variant!r}): ci[{k!r}] must be [lo, hi], "
                             f"got {pair!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"record_results({variant!r}): ci[{k!r}] = {pair!r} is not an interval")
        out[k] = [lo, hi]
    missing = sorted(set(metrics) - set(out))
    if missing:
        raise ValueError(f"record_results({variant!r}): no ci for {missing}")
    return out


def _drop_stale_paired(data: dict[str, Any], variant: str) -> None:
    """A re-recorded row makes the comparisons it takes part in stale: remove them (the stage
    that recorded it recomputes the block with `update_paired`)."""
    paired = data.get("paired")
    if not isinstance(paired, dict):
        return
    ref = (data.get("paired_info") or {}).get("reference", PAIRED_REFERENCE)
    if variant == ref:
        paired.clear()
    else:
        paired.pop(f"{ref}_vs_{variant}", None)
    # the family changed (a member or the best baseline may be another): no adjusted p until
    # `update_paired` recomputes the block
    for tests in paired.values():
        for t in tests.values():
            if isinstance(t, dict):
                t.pop("p_holm", None)
    (data.get("paired_info") or {}).pop("primary", None)
    if not paired:
        data.pop("paired", None)
        data.pop("paired_info", None)


def _write(out_dir: Path, data: dict[str, Any]) -> None:
    write_json(out_dir / "results.json", data)
    write_text(out_dir / "results.md", render_markdown(data))


def mark_stale(out_dir: str | os.PathLike, stage: str) -> None:
    """A stage that the results derive from has started: until the eval stage completes again,
    results.json says so (`stale`), results.md warns, and the report refuses the run."""
    out_dir = Path(out_dir)
    if not (out_dir / "results.json").exists():
        return
    with _locked(out_dir / ".results.lock"):
        data = load_results(out_dir)
        data.setdefault("stale", {})[stage] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _write(out_dir, data)


def start_rows(out_dir: str | os.PathLike, names: Sequence[str], stage: str) -> None:
    """A stage that writes the rows `names` starts: drop them (and the paired block built on
    them) so that a killed run never shows new rows beside old ones, and mark the file stale."""
    out_dir = Path(out_dir)
    with _locked(out_dir / ".results.lock"):
        data = load_results(out_dir)
        for n in list(data["variants"]):
            if n in names or n.split(".")[0] in names:
                del data["variants"][n]
        data.pop("paired", None)
        data.pop("paired_info", None)
        data.setdefault("stale", {})[stage] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _write(out_dir, data)


def clear_stale(out_dir: str | os.PathLike, stages: Sequence[str]) -> None:
    """A stage that writes rows completed: the marks of `stages` (itself and the stages its rows
    derive from) are lifted; marks of others stay."""
    out_dir = Path(out_dir)
    with _locked(out_dir / ".results.lock"):
        data = load_results(out_dir)
        stale = data.get("stale") or {}
        for s in stages:
            stale.pop(s, None)
        if not stale:
            data.pop("stale", None)
        _write(out_dir, data)


def record_results(out_dir: str | os.PathLike, variant: str, metrics: dict[str, float],
                   ci: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    """Merge one row (replacing an earlier row of the same name) and re-render results.md.

    `ci` (optional): `{metric: [lo, hi]}` for every metric, e.g. from
    `confidence.ci_fields(ranks, users, ks)`, whose other keys (ci_method, ci_level, n_boot)
    arrive as `meta`."""
    if not variant:
        raise ValueError("record_results: empty variant name")
    bad = {k: v for k, v in metrics.items() if not isinstance(v, (int, float))}
    if bad:
        raise ValueError(f"record_results({variant!r}): non-numeric metric values {bad}")
    ci = None if ci is None else _check_ci(variant, metrics, ci)
    out_dir = Path(out_dir)
    with _locked(out_dir / ".results.lock"):
        data = load_results(out_dir)
        row = {"metrics": {k: float(v) for k, v in metrics.items()}}
        if ci is not None:
            row["ci"] = ci
        row.update(to_plain(meta))
        # the dtype the backbone scored in; null for a row the backbone did not score
        row.setdefault("backbone_dtype", None)
        row.setdefault("recorded_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
        data["variants"][variant] = row
        _drop_stale_paired(data, variant)
        _write(out_dir, data)
    return data


# What makes two predictions rows the same question: the positive, the candidates shown (in
# order: an instruction prompt lists them) and, on the full catalogue, how many items remained.
QUESTION_FIELDS = ("target", "candidates", "num_ranked")


def _read_ranks(path: Path) -> tuple[list[str], list[Any], list[int], list[dict[str, Any]]]:
    """(ids, users, ranks, questions) of a predictions file; a row without `user` is its own
    user; `questions[i]` holds the row's `QUESTION_FIELDS` that it records."""
    ids, users, ranks, questions = [], [], [], []
    for r in read_jsonl(path):
        if "id" not in r or "rank" not in r:
            raise ValueError(f"{path}: every row needs 'id' and 'rank'")
        ids.append(str(r["id"]))
        users.append(r.get("user", f"sample:{r['id']}"))
        ranks.append(int(r["rank"]))
        questions.append({k: r[k] for k in QUESTION_FIELDS if k in r})
    dup = len(ids) - len(set(ids))
    if dup:
        raise ValueError(f"{path}: {dup} duplicate sample id(s)")
    if not ids:
        raise ValueError(f"{path}: no predictions")
    return ids, users, ranks, questions


def _answers(path: Path) -> dict[str, Any]:
    """Per sample id, what the row answered: its scores (and, on the full catalogue, its ranked
    list); empty when the file records no scores."""
    out = {}
    for r in read_jsonl(path):
        if "scores" in r:
            out[str(r["id"])] = (r["scores"], r.get("ranked"))
    return out


def check_same_questions(reference: str, other: str, ref_path: Path, path: Path,
                         ref_rows: dict[str, Any], rows: dict[str, Any],
                         ref_q: dict[str, dict[str, Any]], q: dict[str, dict[str, Any]]) -> None:
    """Refuse to pair two rows that answered different questions under the same sample ids:
    another data hash on their results rows, or a sample whose target, candidate list or
    number of ranked items differs between the two predictions files. Pairing by id alone
    would compare rankings of different candidates (e.g. predictions left from a run with
    another `data.seed` or `data.num_candidates`)."""
    h_ref, h = ref_rows.get("data_hash"), rows.get("data_hash")
    if h_ref and h and h_ref != h:
        raise ValueError(
            f"paired test {reference} vs {other}: rows built from different data (data_hash "
            f"{h_ref} in {ref_path.resolve()} vs {h} in {path.resolve()}): rerun {other} on "
            f"this run's data, or remove its row and predictions")
    bad: dict[str, list[str]] = {}
    for i, mine in q.items():
        theirs = ref_q[i]
        for k in QUESTION_FIELDS:
            if k in mine and k in theirs and mine[k] != theirs[k]:
                bad.setdefault(k, []).append(i)
    if bad:
        what = "; ".join(f"{k} differs on {len(v)} sample(s) {sorted(v)[:3]}"
                         for k, v in bad.items())
        raise ValueError(
            f"paired test {reference} vs {other}: same sample ids, different questions "
            f"({what}) between {ref_path.resolve()} and {path.resolve()}. The two rows were "
            f"scored on other candidates (another data build, data.seed or "
            f"data.num_candidates): rerun {other} with the current data, or remove its row and "
            f"predictions/{other}.jsonl")


def _ks_of(names: Any) -> list[int]:
    return sorted({int(m.split("@")[1]) for m in names
                   if "@" in m and m.split("@")[1].isdigit()}) or list(DEFAULT_KS)


def best_baseline(paired: dict[str, Any], variants: dict[str, Any],
                  reference: str = PAIRED_REFERENCE) -> str | None:
    """The baseline row (recorded with `kind: baseline`, the `pop` repeat of popularity aside)
    with the highest mean of the first primary metric among those compared with `reference`;
    ties go to the row listed first in the table. The strongest competitor is the conservative
    choice for a primary comparison."""
    prefix, metric = f"{reference}_vs_", PRIMARY_METRICS[0]
    compared = {k[len(prefix):] for k in paired if k.startswith(prefix)}
    order = ordered_variants(variants)
    rows = [n for n in order if n in compared and n != "pop"
            and variants[n].get("kind") == "baseline" and metric in variants[n].get("metrics", {})]
    if not rows:
        return None
    return max(rows, key=lambda n: (variants[n]["metrics"][metric], -order.index(n)))


def add_holm(paired: dict[str, Any], variants: dict[str, Any],
             reference: str = PAIRED_REFERENCE) -> dict[str, Any]:
    """Set `p_holm` on the primary tests of a `paired` block (in place) and return what the
    family is: `{"comparisons", "best_baseline", "metrics", "family_size", "correction"}`.
    The family is `reference` against each present row of `PRIMARY_ROWS` and the best baseline,
    on each present `PRIMARY_METRICS`; any earlier `p_holm` is replaced."""
    for tests in paired.values():
        for t in tests.values():
            if isinstance(t, dict):
                t.pop("p_holm", None)
    best = best_baseline(paired, variants, reference)
    # every ingredient is a primary comparison: a general source's row beside G and S
    sources = [n for n in ordered_variants(variants) if _is_source_row(variants.get(n))]
    primary = (*PRIMARY_ROWS[:2], *sources, *PRIMARY_ROWS[2:])
    rows = [r for r in (*primary, best) if r and f"{reference}_vs_{r}" in paired]
    family = [(f"{reference}_vs_{r}", m) for r in rows for m in PRIMARY_METRICS
              if m in paired[f"{reference}_vs_{r}"]]
    for (key, m), adj in zip(family, confidence.holm([paired[key][m]["p"] for key, m in family])):
        paired[key][m]["p_holm"] = adj
    return {"comparisons": rows, "best_baseline": best,
            "metrics": [m for m in PRIMARY_METRICS if any(fm == m for _, fm in family)],
            "family_size": len(family), "correction": CORRECTION}


def paired_block(data: dict[str, Any], pred_dir: str | os.PathLike,
                 reference: str = PAIRED_REFERENCE, **test_kw: Any
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`paired`, `paired_info`): `reference` against every other row that has a predictions
    file, per metric both rows report, from the per-sample ranks matched by sample id.
    Empty when `reference` has no row or no predictions. Raises ValueError when two variants
    were not scored on the same samples, or the same ids hold other targets, candidates or data
    (`check_same_questions`): a paired test would be meaningless."""
    pred_dir = Path(pred_dir)
    variants = data.get("variants", {})
    ref_path = pred_dir / f"{reference}.jsonl"
    if reference not in variants or not ref_path.exists():
        return {}, {}
    ids, users, ref_ranks, ref_questions = _read_ranks(ref_path)
    ref_q = dict(zip(ids, ref_questions))
    pos = {i: n for n, i in enumerate(ids)}
    names = metric_names(_ks_of(variants[reference].get("metrics", {})))
    ref_vals = metrics_from_ranks(torch.tensor(ref_ranks), _ks_of(names))
    block: dict[str, Any] = {}
    identical: list[str] = []
    ref_answers: dict[str, Any] | None = None
    for other in ordered_variants(variants):
        path = pred_dir / f"{other}.jsonl"
        if other == reference or not path.exists():
            continue  # the random expectation (closed form) has no per-sample ranks
        if variants[other].get("candidates") != variants[reference].get("candidates"):
            continue  # sampled candidates against the full catalogue: not the same question
        o_ids, _, o_ranks, o_questions = _read_ranks(path)
        if set(o_ids) != set(ids):
            only_o = sorted(set(o_ids) - set(pos))
            only_r = sorted(set(pos) - set(o_ids))
            raise ValueError(
                f"paired test {reference} vs {other}: not the same samples ({path.name}: "
                f"{len(o_ids)}, {ref_path.name}: {len(ids)}; {len(only_o)} only in {other} "
                f"{only_o[:3]}, {len(only_r)} only in {reference} {only_r[:3]}). Every variant "
                f"must be scored on the same samples: rerun {other} with the current eval "
                f"settings, or remove its row and predictions/{other}.jsonl")
        check_same_questions(reference, other, ref_path, path, variants[reference],
                             variants[other], ref_q, dict(zip(o_ids, o_questions)))
        if ref_answers is None:
            ref_answers = _answers(ref_path)
        if ref_answers and _answers(path) == ref_answers:  # same scores for every sample
            identical.append(other)
            log.warning("paired test %s vs %s: identical per-sample scores in %s and %s (the "
                        "same model, or a shared or stale predictions file?)", reference, other,
                        ref_path.resolve(), path.resolve())
        ranks = [0] * len(ids)
        for i, r in zip(o_ids, o_ranks):
            ranks[pos[i]] = r
        o_vals = metrics_from_ranks(torch.tensor(ranks), _ks_of(names))
        shared = [m for m in names if m in variants[other].get("metrics", {})]
        for m in shared:
            recorded = variants[other]["metrics"][m]
            if abs(float(o_vals[m].mean()) - recorded) > 1e-6:
                log.warning("%s: mean %s %.6f != %.6f in results.json (stale predictions?)",
                            path, m, float(o_vals[m].mean()), recorded)
        if not shared:
            continue
        res = confidence.paired_tests({m: ref_vals[m] for m in shared},
                                      {m: o_vals[m] for m in shared}, users, **test_kw)
        block[f"{reference}_vs_{other}"] = {m: r.to_dict() for m, r in res.items()}
    info = {"reference": reference, "num_samples": len(ids), "num_users": len(set(users)),
            "ci_method": f"paired {confidence.CI_METHOD}", "test": confidence.TEST_METHOD,
            "ci_level": test_kw.get("level", confidence.LEVEL),
            "n_boot": test_kw.get("n_boot", confidence.N_BOOT),
            "n_draws": test_kw.get("n_draws", confidence.N_DRAWS),
            "exact_max_users": test_kw.get("exact_max", confidence.EXACT_MAX_USERS),
            "seed": test_kw.get("seed", confidence.SEED)}
    if block:
        info["primary"] = add_holm(block, variants, reference)
    if identical:
        info["identical_scores"] = identical
    return block, info


def update_paired(out_dir: str | os.PathLike, reference: str = PAIRED_REFERENCE,
                  **test_kw: Any) -> dict[str, Any]:
    """Recompute the `paired` block of results.json from `predictions/` (see `paired_block`)
    and rewrite results.json/results.md atomically under the results lock. Called by every
    stage after it has recorded its rows; a no-op block (removed) without `reference`."""
    out_dir = Path(out_dir)
    with _locked(out_dir / ".results.lock"):
        data = load_results(out_dir)
        block, info = paired_block(data, out_dir / "predictions", reference, **test_kw)
        data.pop("paired", None)
        data.pop("paired_info", None)
        if block:
            data["paired"], data["paired_info"] = block, info
        if data["variants"] or block:
            _write(out_dir, data)
    return data


def _is_source_row(row: Any) -> bool:
    return isinstance(row, dict) and row.get("adapter_kind") == INGREDIENT_KIND


def ordered_variants(variants: dict[str, Any]) -> list[str]:
    """Reference rows, then other methods (baselines) as recorded, then the LLM variants:
    zero-shot, the ingredients (G, S, then the general sources' rows as recorded, i.e. in
    `ingredients` order), WA, the cocktail."""
    def key(item: tuple[int, str]) -> tuple[int, int]:
        pos, name = item
        base = name.split(".")[0]
        if base in REFERENCE_ROWS:
            return (0, REFERENCE_ROWS.index(base) * 1000 + pos)
        if base in LLM_ORDER:
            return (2, LLM_ORDER.index(base) * 1000 + pos)
        if _is_source_row(variants[name]):  # after S, before WA
            return (2, LLM_ORDER.index("specific") * 1000 + 500 + pos)
        return (1, pos)

    return [name for _, name in sorted(enumerate(variants), key=key)]


def shown_variants(variants: dict[str, Any]) -> dict[str, Any]:
    """The rows a table shows: the `pop` baseline is the eval stage's `popularity` row again
    (same counts, same exclusion), so when both scored the same samples with the same metrics
    it is shown once; results.json keeps both."""
    pop, ref = variants.get("pop"), variants.get("popularity")
    if pop is None or ref is None:
        return variants
    same_samples = pop.get("num_samples", pop.get("num_users")) == ref.get(
        "num_samples", ref.get("num_users"))
    pm, rm = pop.get("metrics", {}), ref.get("metrics", {})
    same = same_samples and pm.keys() == rm.keys() and all(abs(pm[k] - rm[k]) < 1e-9 for k in pm)
    return {k: v for k, v in variants.items() if not (same and k == "pop")}


def _metric_columns(variants: dict[str, Any]) -> list[str]:
    present = {m for row in variants.values() for m in row.get("metrics", {})}
    ks = sorted({int(m.split("@")[1]) for m in present if "@" in m and m.split("@")[1].isdigit()})
    order = metric_names(ks or DEFAULT_KS)
    return [m for m in order if m in present] + sorted(present - set(order))


def results_table(data: dict[str, Any], ci: bool = False) -> tuple[list[str], list[list[Any]]]:
    """Column names and rows (plain values) of the results table, for any renderer/logger.

    Metric columns hold the plain means; with `ci=True`, `<metric>_ci_lo`/`<metric>_ci_hi`
    columns follow at the end (None where a row has no interval, e.g. the random expectation).
    """
    variants = shown_variants(data.get("variants", {}))
    metrics = _metric_columns(variants)
    has_valid = any("valid_ratio" in row for row in variants.values())
    columns = ["variant", *metrics, "users", "scorer"] + (["valid"] if has_valid else [])
    if ci:
        columns += [f"{m}_ci_{end}" for m in metrics for end in ("lo", "hi")]
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
        if ci:
            cis = row.get("ci") or {}
            extra += [(cis.get(m) or (None, None))[j] for m in metrics for j in (0, 1)]
        rows.append([name, *vals, *extra])
    return columns, rows


def _label(name: str, variants: dict[str, Any] | None = None) -> str:
    base, _, suffix = name.partition(".")
    label = ROW_LABELS.get(base, base)
    if base not in ROW_LABELS and _is_source_row((variants or {}).get(name)):
        label = f"RecCocktail-{base} (ingredient)"
    elif base == "wa" and any(_is_source_row(r) for r in (variants or {}).values()):
        label = "RecCocktail-WA (uniform λ)"  # more than two ingredients
    return f"{label} [{suffix}]" if suffix else label


def _header(col: str) -> str:
    if "@" in col:
        m, k = col.split("@")
        return f"{m.upper() if m in ('hr', 'mrr') else 'NDCG'}@{k}"
    return {"mrr": "MRR", "users": "Users", "scorer": "Scorer", "valid": "Valid output",
            "variant": "Method"}.get(col, col)


def _metric_cell(v: float, interval: Any, bold: bool, sep: str = " ") -> str:
    """`0.2600 [0.201, 0.322]`: the mean (bold when best) and its interval when there is one."""
    cell = f"**{v:.4f}**" if bold else f"{v:.4f}"
    if interval:
        cell += f"{sep}[{interval[0]:.3f}, {interval[1]:.3f}]"
    return cell


def _best(columns: list[str], rows: list[list[Any]]) -> dict[int, float]:
    """Best mean per metric column; every row competes but the random expectation."""
    best: dict[int, float] = {}
    for i, c in enumerate(columns):
        if c in ("variant", "users", "scorer", "valid"):
            continue
        vals = [r[i] for r in rows if r[i] is not None and r[0] != "random"]
        if vals:
            best[i] = max(vals)
    return best


def _cells(data: dict[str, Any], markdown: bool) -> tuple[list[str], list[list[str]]]:
    """The results table as text cells (shared by results.md and the terminal table)."""
    columns, rows = results_table(data)
    best = _best(columns, rows)
    variants = data.get("variants", {})
    out = []
    for r in rows:
        cis = variants[r[0]].get("ci") or {}
        cells = []
        for i, (col, v) in enumerate(zip(columns, r)):
            if col == "variant":
                cells.append(_label(v, variants) if markdown else v)
            elif v is None:
                cells.append("–")
            elif i in best:
                bold = markdown and v == best[i] and r[0] != "random"
                # the terminal puts the interval under the mean, to keep the table narrow
                cells.append(_metric_cell(v, cis.get(col), bold, " " if markdown else "\n"))
            elif col == "valid":
                cells.append(f"{v:.1%}")
            else:
                cells.append(str(v))
        out.append(cells)
    return columns, out


def _fmt_p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-3 else f"{p:.1e}"


def paired_rows(data: dict[str, Any], metrics: tuple[str, ...] = PAIRED_SHOWN
                ) -> list[tuple[str, str, float, list[float], float, float | None]]:
    """(other variant, metric, diff, [lo, hi], p, Holm-adjusted p or None outside the primary
    family) of the `paired` block, in table order."""
    paired = data.get("paired") or {}
    ref = (data.get("paired_info") or {}).get("reference", PAIRED_REFERENCE)
    prefix = f"{ref}_vs_"
    by_other = {k[len(prefix):]: v for k, v in paired.items() if k.startswith(prefix)}
    order = [n for n in ordered_variants(data.get("variants", {})) if n in by_other]
    order += [n for n in by_other if n not in order]
    rows = []
    for other in order:
        for m in metrics:
            if m in by_other[other]:
                t = by_other[other][m]
                holm_p = t.get("p_holm")
                rows.append((other, m, float(t["diff"]), list(t["ci"]), float(t["p"]),
                             None if holm_p is None else float(holm_p)))
    return rows


def _paired_note(data: dict[str, Any]) -> str:
    info = data.get("paired_info") or {}
    level = float(info.get("ci_level", 0.95))
    return (f"Mean per-sample difference ({info.get('reference', PAIRED_REFERENCE)} − other) on "
            f"the same {info.get('num_samples', '?')} samples ({info.get('num_users', '?')} "
            f"users), its {level:.0%} bootstrap CI over users ({info.get('n_boot', '?')} "
            f"resamples), and the two-sided p of a sign-flip randomisation test over users (exact "
            f"when at most {info.get('exact_max_users', 16)} users differ, else "
            f"{info.get('n_draws', '?')} Monte Carlo draws)."
            + _primary_note(info, data.get("variants"))
            + (f" **Identical per-sample scores:** {', '.join(info['identical_scores'])} (the "
               "same model, or a shared or stale predictions file)."
               if info.get("identical_scores") else ""))


def _primary_note(info: dict[str, Any], variants: dict[str, Any] | None = None) -> str:
    """Which tests form the Holm family, or nothing when the block has none."""
    primary = info.get("primary") or {}
    if not primary.get("family_size"):
        return ""
    rows = ", ".join(_label(r, variants) + (" (best baseline)" if r == primary.get("best_baseline") else "")
                     for r in primary["comparisons"])
    metrics = ", ".join(_header(m) for m in primary["metrics"])
    return (f" Primary comparisons: {rows}, on {metrics}; p (Holm) is adjusted over these "
            f"{primary['family_size']} tests (Holm step-down, family-wise error). The other rows "
            "are exploratory: raw p only.")


_SCORER_TEXT = {"likelihood": "likelihood ranking", "naive": "likelihood ranking (naive)",
                "generate": "generate-and-match", "beam": "constrained beam search"}


def table_suffix(rows: Mapping[str, Any]) -> str:
    """`full catalogue (N items, seen items excluded)` when the rows were ranked that way."""
    full = [r for r in rows.values() if r.get("candidates") == "all"]
    if not full:
        return ""
    sizes = sorted({r.get("catalogue_size") for r in full if r.get("catalogue_size")})
    seen = any(r.get("exclude_seen") for r in full)
    n = "/".join(str(s) for s in sizes) or "?"
    return f"full catalogue ({n} items{', seen items excluded' if seen else ''})"


def table_title(data: dict[str, Any]) -> str:
    """`Results (<how the LLM rows were scored>; <prompt format>)`: the scorer and its
    normalisation belong in the title, since the same adapters rank differently under each."""
    parts = []
    for row in data.get("variants", {}).values():
        s = row.get("scorer")
        if s not in _SCORER_TEXT:
            continue
        text = _SCORER_TEXT[s]
        if s in ("likelihood", "naive"):
            text += ", mean log-prob per token" if row.get("normalize") else ", sum of log-probs"
        if row.get("objective"):
            text += f"; {row['objective']} prompts"
        if text not in parts:
            parts.append(text)
    suffix = table_suffix(data.get("variants", {}))
    if suffix:
        parts.append(suffix)
    return "Results" + (f" ({' | '.join(parts)})" if parts else "")


def render_markdown(data: dict[str, Any]) -> str:
    """A Markdown table like the paper's Tables 1/2; the best mean per metric column in bold
    (every row competes but the random expectation, popularity included), each mean followed by
    its 95 % CI when the row has one; then the paired tests of cocktail against the others."""
    columns, rows = _cells(data, markdown=True)
    if not rows:
        return "# Results\n\n(no results yet)\n"
    lines = [f"# {table_title(data)}", ""]
    if data.get("stale"):
        started = ", ".join(f"`{s}` ({t})" for s, t in data["stale"].items())
        lines += [f"**Incomplete:** stage(s) {started} started after some of these rows were "
                  "written and have not completed the rows since; rerun the `eval` (and "
                  "`baselines`) stage.", ""]
    rows_all = [r for r in data.get("variants", {}).values() if r.get("candidates") == "all"]
    if rows_all:
        r0 = rows_all[0]
        lines += [f"Ranking of 1 positive among the full catalogue ({r0.get('catalogue_rule')}; "
                  f"{r0.get('exclusion')}); ties count against the positive. Every row is cut "
                  f"at the top {r0.get('cutoff')} (the beam size): a positive beyond it is a "
                  f"miss, MRR is MRR@{r0.get('cutoff')}."]
        if len(rows_all) != len(data.get("variants", {})):
            lines += ["**Mixed protocols:** some rows were scored on the sampled candidates, "
                      "others on the full catalogue; rerun them under one `eval.candidates`."]
    else:
        lines += ["Ranking of 1 positive among the candidates; ties count against the positive."]
    with_ci = [r for r in data.get("variants", {}).values() if r.get("ci")]
    if with_ci:
        n_boot = with_ci[0].get("n_boot", "?")
        level = float(with_ci[0].get("ci_level", 0.95))
        lines.append(f"Each metric: the mean over the samples [its {level:.0%} percentile bootstrap "
                     f"CI over users, {n_boot} resamples]; differences inside these intervals "
                     "are not results. The random row is a closed-form expectation (no CI).")
    lines += ["",
              "| " + " | ".join(_header(c) for c in columns) + " |",
              "|" + "|".join(":---" if c in ("variant", "scorer") else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    paired = paired_rows(data)
    if paired:
        ref = _label((data.get("paired_info") or {}).get("reference", PAIRED_REFERENCE))
        lines += ["", f"## Paired tests ({ref} vs …)", "", _paired_note(data), "",
                  "| vs | Metric | Δ | 95 % CI | p | p (Holm) |",
                  "|:---|:---|---:|---:|---:|---:|"]
        for other, m, diff, (lo, hi), p, holm_p in paired:
            lines.append(f"| {_label(other, data.get('variants'))} | {_header(m)} | {diff:+.4f} | "
                         f"[{lo:+.3f}, {hi:+.3f}] | {_fmt_p(p)} | "
                         f"{'–' if holm_p is None else _fmt_p(holm_p)} |")
    return "\n".join(lines) + "\n"


def print_results(data: dict[str, Any]) -> None:
    """The results table on the terminal (rich), then the paired tests."""
    columns, rows = _cells(data, markdown=False)
    table = Table(title=table_title(data))
    for c in columns:
        table.add_column("Valid" if c == "valid" else _header(c), no_wrap=True,
                         justify="left" if c in ("variant", "scorer") else "right")
    for cells in rows:
        table.add_row(*cells)
    console = Console()
    # logs are not terminals: keep the rows whole
    need = Measurement.get(console, console.options.update_width(1000), table).maximum
    console.width = max(console.width, 150, need)
    console.print(table)
    paired = paired_rows(data)
    if paired:
        ref = (data.get("paired_info") or {}).get("reference", PAIRED_REFERENCE)
        pt = Table(title=f"Paired tests ({ref} vs …)")
        for c in ("vs", "metric", "Δ", "95 % CI", "p", "p (Holm)"):
            pt.add_column(c, no_wrap=True, justify="left" if c in ("vs", "metric") else "right")
        for other, m, diff, (lo, hi), p, holm_p in paired:
            pt.add_row(other, _header(m), f"{diff:+.4f}", f"[{lo:+.3f}, {hi:+.3f}]", _fmt_p(p),
                       "–" if holm_p is None else _fmt_p(holm_p))
        console.print(pt)
        console.print(_paired_note(data), soft_wrap=True)
