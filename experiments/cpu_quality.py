"""Does the method learn on a CPU? ML-1M (or Beauty) warm and cold with SmolLM2-135M, the sequence objective.

For each scenario one pipeline run (`python run.py +experiment=ml1m_<scenario> ...`): G on the
general pool (ml-latest-small without ML-1M's movies), S on ML-1M's training sequences, the
entropy cocktail (λ learned on `--lambda-users` test users that are then NOT scored), WA,
zero-shot, popularity, random and the ID/text baselines, all scored on the same `--users` test
users and 30 candidates. G is trained once and reused by the second scenario (same general
pool). Then one table: NDCG@1 / NDCG@3 with 95 % bootstrap CIs over users, the paired tests of
the cocktail against every other row (raw p, and Holm-adjusted p over the primary comparisons:
G, S, WA, zero-shot, popularity, the best baseline), the training budget in seconds, and the issue's targets
(warm: S and the cocktail at or above popularity; cold: the cocktail above S and above every ID
baseline; the cocktail never below max(G, S) by more than the CI) checked, misses included.

    python experiments/cpu_quality.py                    # ~65 min on 2 quiet cores
    python experiments/cpu_quality.py --dry-run          # the two commands only
    python experiments/cpu_quality.py --report-only      # the table from finished runs
    python experiments/cpu_quality.py --users 20 --general-windows 8 --specific-windows 8 \
        --lambda-users 4 --lambda-steps 1 --baselines pop -- debug-size smoke check
    python experiments/cpu_quality.py --stages data,baselines --baselines pop,p5,omfa \
        --dataset beauty --out outputs/llm_baselines_beauty      # the LLM baselines' rows only
    python experiments/cpu_quality.py --dataset beauty --scenarios warm --baselines pop \
        --ingredients general,specific,sports,games --out outputs/cpu_quality_beauty4

`--dataset beauty` runs `+experiment=beauty_<scenario>` (general pool: Sports + Games). One-Model-
for-All trains on `--general-windows` + `--specific-windows` windows (G's and S's budgets); P5
on S's rows with full fine-tuning (conf/baselines/p5.yaml). `--ingredients` mixes more LoRAs
than G and S (a general source trains like G, on `--general-windows` windows of its own rows);
each one's row, λ and training budget are reported, and "the best ingredient" of the targets is
the best of all of them.

Runs go to `--out` (default outputs/cpu_quality/<scenario>); a run that died is continued by
running the same command again (finished stages are reused). Extra Hydra overrides after `--`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from reccocktail.evaluation.results import ROW_LABELS, add_holm, paired_block, shown_variants
from reccocktail.reporting.launch import run_logged
from reccocktail.utils.io import read_json, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]

ROWS = ("random", "popularity", "bpr", "gru4rec", "sasrec", "fmlp", "unisrec", "alpharec",
        "vqrec", "recformer", "p5", "omfa", "zero_shot", "general", "specific", "wa", "cocktail")
DATASETS = {"ml1m": "ML-1M", "beauty": "Amazon Beauty"}
ID_BASELINES = ("bpr", "gru4rec", "sasrec", "fmlp")
# the results table's row names, with the backbone named where the row is an LLM
LABELS = {**ROW_LABELS, "p5": "P5 (SmolLM2-135M, full fine-tuning)",
          "omfa": "One-Model-for-All-style (SmolLM2-135M, LoRA)",
          "zero_shot": "Zero-shot SmolLM2-135M", "general": "RecCocktail-G",
          "specific": "RecCocktail-S", "wa": "RecCocktail-WA", "cocktail": "RecCocktail (entropy λ)"}


PAIR = ["general", "specific"]
OTHER = "@other"  # `--paired-with`: the other run's row of a name both runs have


def command(args: argparse.Namespace, scenario: str, extra: list[str]) -> list[str]:
    out = Path(args.out) / scenario
    more = args.ingredients != PAIR
    # more ingredients: the stage list and the rows name them through the `ingredients` token,
    # which takes the place of G's and S's stages
    stages = list(dict.fromkeys("ingredients" if more and x in PAIR else x for x in args.stages))
    variants = ("[cocktail,ingredients,wa,zero_shot]" if more
                else "[cocktail,specific,general,wa,zero_shot]")
    return [sys.executable, str(ROOT / "run.py"), f"+experiment={args.dataset}_{scenario}",
            "backbone=smollm2_135m", "trainer=cpu", "tuning=cpu_sequence", "logger=csv",
            f"hydra.run.dir={out}", f"seed={args.seed}",
            f"tuning.general.max_samples={args.general_windows}",
            f"tuning.specific.max_samples={args.specific_windows}",
            f"selection.lambda_users={args.lambda_users}", f"mix.steps={args.lambda_steps}",
            "mix.batch_size=10", "mix.measure_entropy=false",
            f"selection.max_scored_users={args.users}", "eval.progress=false",
            f"baseline=[{','.join(args.baselines)}]",
            # baselines first: their rows are there even if the LLM scoring is cut short
            f"stages=[{','.join(stages)}]",
            *([f"ingredients=[{','.join(args.ingredients)}]"] if more else []),
            # the rows that matter most first, for the same reason
            f"eval.variants={variants}",
            # the baselines' CPU caps (docs/results.md, baselines table): one window per user, 5 epochs
            "baselines.common.max_windows_per_user=1", "baselines.common.max_epochs=5",
            "baselines.common.patience=2", "baselines.common.num_threads=1",
            # One-Model-for-All trains on the windows G and S train on, mixed into one set
            f"baselines.omfa.general_windows={args.general_windows}",
            f"baselines.omfa.target_windows={args.specific_windows}",
            *extra]


def row_label(name: str) -> str:
    """A row's name in the tables; an ingredient beyond G and S by its name."""
    return LABELS.get(name, f"RecCocktail ingredient `{name}`")


def _cell(row: dict | None, metric: str) -> str:
    if row is None:
        return "–"
    v = row["metrics"].get(metric)
    ci = (row.get("ci") or {}).get(metric)
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def ingredient_rows(results: dict) -> list[str]:
    """The ingredient rows of a run, in its list's order (from λ's names; G and S when the
    run mixed the pair or mixed nothing)."""
    v = results["variants"]
    info = next((v[k] for k in ("cocktail", "wa") if k in v), {})
    lam = info.get("lambda") if isinstance(info.get("lambda"), dict) else {}
    named = list((lam or {}).get("lambda_by_name") or {}) or PAIR
    return [n for n in named if n in v]


def _budget(run: Path, rows: dict, names: list[str] | None = None) -> dict:
    """Seconds per stage; for each ingredient what its training cost where it ran (a reused G
    reports the run that trained it), from the adapters' manifests."""
    out = {}
    for stage in (*(names or PAIR), "mix", "eval", "baselines"):
        p = run / "stages" / f"{stage}.json"
        if p.exists():
            out[stage] = {"seconds": read_json(p).get("seconds")}
        m = run / "adapters" / stage / "manifest.json"
        if m.exists():
            met = read_json(m).get("metrics") or {}
            out.setdefault(stage, {}).update(
                train_seconds=met.get("seconds"), windows=met.get("train_samples"),
                targets=met.get("targets"), tokens=met.get("tokens"),
                tokens_per_s=met.get("tokens_per_s"), trained_in=read_json(m).get("trained_in"))
    # each baseline row's own training time (`rows`: the run's results.json variants)
    out["rows_train_seconds"] = {k: v.get("train_seconds") for k, v in rows.items()
                                 if v.get("train_seconds") is not None}
    return out


def _above(a: dict, b: dict, metric: str = "ndcg@1") -> bool:
    return a["metrics"][metric] >= b["metrics"][metric]


def targets(res: dict, scenario: str) -> list[tuple[str, bool]]:
    """The issue's targets for one scenario, each with whether it was met."""
    v = res["variants"]
    out = []
    names = ingredient_rows(res)
    if "cocktail" in v and len(names) >= 2:
        best = max(names, key=lambda k: v[k]["metrics"]["ndcg@1"])
        lo_gap = v[best]["metrics"]["ndcg@1"] - v["cocktail"]["metrics"]["ndcg@1"]
        paired = res.get("paired", {}).get(f"cocktail_vs_{best}", {}).get("ndcg@1", {})
        half = (paired["ci"][1] - paired["ci"][0]) / 2 if paired.get("ci") else 0.0
        what = "max(G, S)" if names == PAIR else "its best ingredient"
        out.append((f"cocktail not below {what} = {best} by more than the CI "
                    f"(gap {lo_gap:+.3f}, CI half-width {half:.3f})", lo_gap <= half))
    if scenario == "warm":
        for k in ("specific", "cocktail"):
            if k in v and "popularity" in v:
                out.append((f"{LABELS[k]} >= popularity (NDCG@1)", _above(v[k], v["popularity"])))
    else:
        if "cocktail" in v and "specific" in v:
            out.append(("cocktail > S (NDCG@1)", v["cocktail"]["metrics"]["ndcg@1"]
                        > v["specific"]["metrics"]["ndcg@1"]))
        for b in ID_BASELINES:
            if b in v and "cocktail" in v:
                out.append((f"cocktail > {LABELS[b]} (NDCG@1)",
                            v["cocktail"]["metrics"]["ndcg@1"] > v[b]["metrics"]["ndcg@1"]))
    return out


def paired_across(run: Path, other: Path, references=("specific", "cocktail")) -> dict:
    """Paired tests of this run's rows against `references` rows of another run folder scored
    on the very same samples (e.g. `--stages data,baselines` rows against S and the cocktail of
    an earlier full run): {"<row>_vs_<reference>": {metric: {diff (row - reference), ci, p}}}."""
    import tempfile

    mine, theirs = read_json(run / "results.json"), read_json(other / "results.json")
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for folder, data, names in ((run, mine, list(mine["variants"])),
                                    (other, theirs, [r for r in references if r in theirs["variants"]])):
            for name in names:
                pred = folder / "predictions" / f"{name}.jsonl"
                # a reference both runs have (the cocktail of two ingredient lists): the other
                # run's row is `<name>@other`
                as_name = f"{name}{OTHER}" if folder == other and name in mine["variants"] else name
                if pred.exists() and as_name not in rows:
                    (Path(tmp) / f"{as_name}.jsonl").symlink_to(pred.resolve())
                    rows[as_name] = data["variants"][name]
        for ref in references:
            if ref not in theirs["variants"]:
                continue
            ref_name = f"{ref}{OTHER}" if ref in mine["variants"] else ref
            block, _ = paired_block({"variants": rows}, tmp, reference=ref_name)
            for key, metrics in block.items():
                name = key.removeprefix(f"{ref_name}_vs_")
                # a reference both runs have is compared with the same row of this run only
                if name in mine["variants"] and name != "pop" and ref_name in (ref, f"{name}{OTHER}"):
                    out[f"{name}_vs_{ref_name}"] = {
                        m: {"diff": 0.0 - r["diff"], "ci": [0.0 - r["ci"][1], 0.0 - r["ci"][0]], "p": r["p"],
                            # how many users the two rows rank differently: with Δ = 0 the
                            # p is 1 whatever this count, so it tells equal from identical
                            "n_nonzero": r["n_nonzero"], "n_users": r["n_users"]}
                        for m, r in metrics.items()}
    return out


def _p(p: float | None) -> str:
    return "–" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _paired_line(label: str, m: dict, holm: bool = False) -> str:
    """One comparison: Δ [CI] and p per metric, and the Holm-adjusted p when `holm`
    ("–" outside the primary family)."""
    c = [f"{m[x]['diff']:+.3f} [{m[x]['ci'][0]:+.3f}, {m[x]['ci'][1]:+.3f}] | {_p(m[x]['p'])}"
         + (f" | {_p(m[x].get('p_holm'))}" if holm else "") for x in ("ndcg@1", "ndcg@3")]
    return f"| {label} | " + " | ".join(c) + " |"


def report(args: argparse.Namespace) -> str:
    runs = {s: Path(args.out) / s for s in args.scenarios}
    results = {s: read_json(r / "results.json") for s, r in runs.items()
               if (r / "results.json").exists()}
    for r in results.values():  # `--stages data,baselines`: the `pop` baseline is the reference
        if "pop" in r["variants"] and "popularity" not in r["variants"]:
            r["variants"]["popularity"] = r["variants"]["pop"]
    if not results:
        raise SystemExit(f"no results.json under {args.out}/<scenario>: run the experiment first")
    budgets = {s: _budget(runs[s], r["variants"], ingredient_rows(r)) for s, r in results.items()}
    extra_rows = [n for r in results.values() for n in ingredient_rows(r) if n not in ROWS]
    order = [x for name in ROWS for x in ([name, *dict.fromkeys(extra_rows)]
                                          if name == "specific" else [name])]
    dtypes = sorted({v["backbone_dtype"] for r in results.values() for v in r["variants"].values()
                     if isinstance(v, dict) and v.get("backbone_dtype")})
    lines = [f"# CPU quality: {DATASETS[args.dataset]}, SmolLM2-135M, sequence objective", "",
             f"Machine: {args.machine}. Backbone dtype: {', '.join(dtypes) or 'none scored'}. "
             f"Date: {time.strftime('%Y-%m-%d')}. NDCG@k with 95 % "
             "bootstrap CIs over the scored users; ties count against the positive.", ""]
    head = "| Method | " + " | ".join(f"{s} NDCG@1 | {s} NDCG@3" for s in results) + " |"
    lines += [head, "|:---|" + "---:|" * (2 * len(results))]
    for name in order:
        if not any(name in r["variants"] for r in results.values()):
            continue
        cells = []
        for r in results.values():
            row = r["variants"].get(name)
            cells += [_cell(row, "ndcg@1"), _cell(row, "ndcg@3")]
        lines.append(f"| {row_label(name)} | " + " | ".join(cells) + " |")
    for s, r in results.items():
        v = r["variants"]
        info = next((v[k] for k in ("cocktail", "specific", "zero_shot") if k in v), {})
        lam_info = info.get("lambda") if isinstance(info.get("lambda"), dict) else {}
        lam = lam_info.get("lambdas")
        by_name = lam_info.get("lambda_by_name")  # runs of more ingredients: λ named
        lam_text = (f"λ (G, S): {lam}" if not isinstance(by_name, dict)
                    or set(by_name) == {"general", "specific"} else f"λ by ingredient: {by_name}")
        if info:
            lines += ["", f"## {s}", "",
                      f"Scored users: {info.get('num_users')} (test users; the "
                      f"{info.get('num_tuning_users')} users whose unlabeled prompts tuned λ are not "
                      f"among them). {lam_text}.", ""]
        else:  # a baselines-only run (`--stages data,baselines`)
            row = next(iter(v.values()))
            lines += ["", f"## {s}", "", f"Scored samples: {row.get('num_samples')} (one per test "
                      f"user; {row.get('scored_on')}).", ""]
        paired = r.get("paired") or {}
        if paired:
            # the primary family and its Holm-adjusted p (recomputed: older results lack it)
            primary = add_holm(paired, v, "cocktail")
            r.setdefault("paired_info", {})["primary"] = primary
            lines += ["| cocktail vs | Δ NDCG@1 [95 % CI] | p | p (Holm) | Δ NDCG@3 [95 % CI] "
                      "| p | p (Holm) |", "|:---|---:|---:|---:|---:|---:|---:|"]
            shown = shown_variants(v)
            for key, m in paired.items():
                other = key.removeprefix("cocktail_vs_")
                if other not in shown:  # e.g. the `pop` baseline repeating popularity
                    continue
                label = row_label(other)
                if other == primary["best_baseline"]:
                    label += " (best baseline)"
                lines.append(_paired_line(label, m, holm=True))
            if primary["family_size"]:
                lines += ["", f"p (Holm): adjusted over the {primary['family_size']} primary "
                          "tests (cocktail vs " + ", ".join(
                              row_label(x) for x in primary["comparisons"])
                          + ", on " + " and ".join(m.upper() for m in primary["metrics"])
                          + "); the other rows are exploratory (raw p only)."]
        other_run = Path(args.paired_with) / s if getattr(args, "paired_with", None) else None
        if other_run is not None and (other_run / "results.json").exists():
            across = paired_across(runs[s], other_run)
            r.setdefault("paired_across", {"run": str(other_run), **across})
            if across:
                lines += ["", f"Paired on the same samples with the rows of {other_run} "
                          "(exploratory: raw p, no correction):", "",
                          "| row − reference | Δ NDCG@1 [95 % CI] | p | Δ NDCG@3 [95 % CI] | p |",
                          "|:---|---:|---:|---:|---:|"]
                for key, m in across.items():
                    name, ref = key.split("_vs_")
                    base = ref.removesuffix(OTHER)
                    ref_label = row_label(base) + (" of that run" if base != ref else "")
                    lines.append(_paired_line(f"{row_label(name)} − {ref_label}", m))
        b = budgets[s]
        lines += ["", "Budget (seconds; training = time inside `trainer.fit`): " + json.dumps(b), ""]
        for text, ok in targets(r, s):
            lines.append(f"- {'met' if ok else '**missed**'}: {text}")
    md = "\n".join(lines) + "\n"
    write_text(Path(args.out) / "cpu_quality.md", md)
    write_json(Path(args.out) / "cpu_quality.json",
               {s: {"results": r, "budget": budgets[s], "targets": targets(r, s)}
                for s, r in results.items()})
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "outputs" / "cpu_quality"))
    p.add_argument("--dataset", default="ml1m", choices=("ml1m", "beauty"),
                   help="+experiment=<dataset>_<scenario> (the general pool is the domain's own)")
    p.add_argument("--stages", default="data,baselines,general,specific,mix,eval",
                   help="the pipeline's stages; data,baselines for the baseline rows alone")
    p.add_argument("--scenarios", default="warm,cold")
    p.add_argument("--users", type=int, default=200, help="scored test users per scenario")
    p.add_argument("--lambda-users", type=int, default=50, help="unlabeled λ users (not scored)")
    p.add_argument("--lambda-steps", type=int, default=8)
    p.add_argument("--general-windows", type=int, default=160, help="G's training windows")
    p.add_argument("--specific-windows", type=int, default=160, help="S's training windows")
    p.add_argument("--baselines", default="gru4rec,sasrec,fmlp,unisrec")
    p.add_argument("--ingredients", default=",".join(PAIR),
                   help="the LoRAs mixed (`ingredients`): general, specific, or a source of the "
                        "domain's general pool (Beauty: sports, games)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--machine", default="2 CPU cores, 24 GiB, torch CPU build")
    p.add_argument("--paired-with", default=None,
                   help="another --out folder scored on the same samples: paired tests of this "
                        "run's rows against its S and cocktail rows (in the report)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--report-only", action="store_true")
    a, extra = p.parse_known_args(argv)
    extra = [x for x in extra if x != "--"]
    a.scenarios = a.scenarios.split(",")
    a.stages = [x for x in a.stages.split(",") if x]
    a.baselines = [b for b in a.baselines.split(",") if b]
    a.ingredients = [x for x in a.ingredients.split(",") if x]
    if not a.report_only:
        # one scenario after the other, each with both cores (two 1-thread processes side by
        # side trained ~2x slower in total here); the second reuses the cached G
        for s in a.scenarios:
            run_logged(command(a, s, extra), s, a.dry_run)
    if a.dry_run:
        return 0
    print(report(a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
