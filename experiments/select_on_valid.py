"""Choose a training setting on validation users, never on test users.

For each point of a grid of Hydra overrides, one run trains the ingredient S (and G where asked)
and scores it on `data/valid.jsonl`: each user's validation item, which the sequence objective
never trains on (`sequences.jsonl` holds the training part only) and which no λ or test metric
uses. The table gives NDCG@1 / NDCG@3 with 95 % bootstrap CIs over the validation users, beside
popularity and random on the same users, and the training seconds; the chosen point is the best
NDCG@1 (ties: NDCG@3). Test users are not read.

    python experiments/select_on_valid.py --grid tuning.lr=5e-4,1.5e-3,3e-3
    python experiments/select_on_valid.py --experiment ml1m_warm --valid-users 150 \\
        --grid tuning.lr=5e-4,2e-3 -- tuning.specific.max_samples=320

Each point runs in `--out/<point>`; rerunning reuses finished stages (adapters are cached by
their settings). Extra Hydra overrides after `--` apply to every point.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from reccocktail.reporting.launch import run_logged
from reccocktail.utils.io import read_json, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]


def grid_points(specs: list[str]) -> list[list[str]]:
    """`key=v1,v2` specs -> every combination as a list of `key=v` overrides."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid {spec!r}: expected key=v1,v2,...")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(p) for p in itertools.product(*axes)] if axes else [[]]


def point_name(point: list[str]) -> str:
    parts = []
    for o in point:
        key, _, value = o.partition("=")
        parts.append(f"{key.split('.')[-1]}-{value}")
    name = "_".join(parts) or "default"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def command(args: argparse.Namespace, point: list[str], out: Path, extra: list[str]) -> list[str]:
    variants = ["specific"] + (["general"] if args.with_general else [])
    stages = ["data"] + (["general"] if args.with_general else []) + ["specific", "eval"]
    return [sys.executable, str(ROOT / "run.py"), f"+experiment={args.experiment}",
            "logger=csv", f"hydra.run.dir={out}", f"seed={args.seed}",
            f"data.max_valid_users={args.valid_users}",
            # every validation user is scored: none is set aside for λ on this split
            "selection.lambda_users=0", "eval.split=valid", "selection.max_scored_users=null",
            f"eval.variants=[{','.join(variants)}]", "eval.progress=false",
            f"stages=[{','.join(stages)}]", *extra, *point]


def _cell(row: dict, metric: str) -> str:
    v = row["metrics"][metric]
    ci = (row.get("ci") or {}).get(metric)
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def summarise(args: argparse.Namespace, runs: dict[str, tuple[list[str], Path]]) -> str:
    rows, best = [], None
    ref = None
    for name, (point, out) in runs.items():
        res = read_json(out / "results.json")
        v = res["variants"]
        ref = ref or v
        man = out / "adapters" / "specific" / "manifest.json"
        met = (read_json(man).get("metrics") or {}) if man.exists() else {}
        s = v["specific"]
        key = (s["metrics"]["ndcg@1"], s["metrics"]["ndcg@3"])
        if best is None or key > best[0]:
            best = (key, name)
        rows.append((name, " ".join(point), s, v.get("general"), met))
    users = ref["specific"].get("num_users")
    lines = [f"# Validation selection: {args.experiment}", "",
             f"{users} validation users (their validation item; no test user read). Date: "
             f"{time.strftime('%Y-%m-%d')}. Machine: {args.machine}.", "",
             "| Point | S NDCG@1 | S NDCG@3 | G NDCG@1 | S train s | S targets | S loss |",
             "|:---|---:|---:|---:|---:|---:|---:|"]
    for _name, point, s, g, met in rows:
        loss = (f"{met['loss_first']:.2f} → {met['loss_last']:.2f}"
                if met.get("loss_last") is not None else None)
        lines.append(f"| {point or 'default'} | {_cell(s, 'ndcg@1')} | {_cell(s, 'ndcg@3')} | "
                     f"{_cell(g, 'ndcg@1') if g else '–'} | {met.get('seconds', '–')} | "
                     f"{met.get('targets', '–')} | {loss if loss is not None else '–'} |")
    for k, label in (("popularity", "Popularity"), ("random", "Random (expectation)")):
        if k in ref:
            lines.append(f"| {label} | {_cell(ref[k], 'ndcg@1')} | {_cell(ref[k], 'ndcg@3')} | | | | |")
    lines += ["", f"Chosen (best S NDCG@1, ties NDCG@3): **{best[1]}**", ""]
    md = "\n".join(lines)
    write_text(Path(args.out) / "select_on_valid.md", md + "\n")
    write_json(Path(args.out) / "select_on_valid.json",
               {"experiment": args.experiment, "chosen": best[1],
                "points": {n: {"overrides": p, "results": str(o / "results.json")}
                           for n, (p, o) in runs.items()}})
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="ml100k_demo")
    p.add_argument("--grid", action="append", default=[], help="key=v1,v2 (repeatable)")
    p.add_argument("--valid-users", type=int, default=100)
    p.add_argument("--with-general", action="store_true", help="also train and score G")
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--machine", default="2 CPU cores, 24 GiB, torch CPU build, fp32")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--report-only", action="store_true")
    a, extra = p.parse_known_args(argv)
    extra = [x for x in extra if x != "--"]
    a.out = a.out or str(ROOT / "outputs" / "select_on_valid" / a.experiment)
    runs = {}
    for point in grid_points(a.grid):
        out = Path(a.out) / point_name(point)
        runs[point_name(point)] = (point, out)
        if a.report_only:
            continue
        run_logged(command(a, point, out, extra), point_name(point), a.dry_run)
    if a.dry_run:
        return 0
    print(summarise(a, runs))
    print(json.dumps({"chosen": read_json(Path(a.out) / "select_on_valid.json")["chosen"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
