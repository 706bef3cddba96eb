"""Which λ objective holds? Learn λ with each `mix.objective` on a finished run, choose on
validation users, report every objective on the test users.

Given a run folder (adapters/general, adapters/specific, data/, .hydra/config.yaml), for each
objective (docs/design.md §1.2) the mix stage itself learns λ on the run's own λ users and
prompts (`selection:` of the run) into `<run>/objectives/<objective>/` (`adapters/cocktail`,
`mix/lambda.json`; `data` and the two adapters are links to the run's). Then, with the eval
stage's scorer (`eval.scorer`'s first entry, the run's `eval` block), every cocktail, G, S and
WA are scored on validation samples (`data/valid.jsonl`, minus the users S trained on, at most
`--valid-users` users, seeded) and every cocktail on the run's scored test users; the run's own
test rows of G, S, WA and zero-shot are reused when their predictions cover exactly these
samples with the same scorer (else G, S and WA are scored again).

The objective is chosen by validation NDCG@1 only (ties: NDCG@3, then the order given). The
table has per row λ, validation NDCG@1 and test NDCG@1 / NDCG@3 with 95 % bootstrap CIs over
users, and the paired test (Δ NDCG@1, its CI and p) of each cocktail against max(G, S), both the
better of G and S on the test users (the reference of "never below its best ingredient") and the
better on validation (the one a method could have picked without test labels).

    python experiments/lambda_objectives.py --run outputs/cpu_quality/cold
    python experiments/lambda_objectives.py --run RUN --objectives entropy,infomax --dry-run
    python experiments/lambda_objectives.py --run RUN -- mix.anchor_beta=0.3 mix.steps=40

It works on a finished run (e.g. one of `experiments/cpu_quality.py`) rather than sweeping
`mix.objective` through whole pipeline runs: G, S, WA and zero-shot are trained and scored once,
every objective sees the very same adapters, λ users and scored users, and only λ learning and
the cocktails' scoring are repeated.

Outputs: `<run>/objectives/summary.json` and `table.md`; scores and per-sample predictions under
`<run>/objectives/scores.json` and `predictions/{valid,test}/`. Rerunning reuses the learned λ
(the mix stage's key) and every row whose adapter, samples and scorer are unchanged. Extra
`mix.*` overrides after `--` apply to every objective (`mix.objective` is `--objectives`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from reccocktail.cocktail.entropy import OBJECTIVES
from reccocktail.cocktail.stage import run_mix_stage, simplex_grid
from reccocktail.data.prompts import prompt_builder_from_config, prompt_format
from reccocktail.data.samples import Sample, load_items, load_samples
from reccocktail.data.selection import choose_users
from reccocktail.evaluation.confidence import ci_fields
from reccocktail.evaluation.config import eval_config
from reccocktail.evaluation.full_catalogue import candidates_mode
from reccocktail.evaluation.metrics import ranking_metrics, target_ranks
from reccocktail.evaluation.results import ROW_LABELS, paired_block
from reccocktail.evaluation.samples import eval_samples, prediction_rows
from reccocktail.evaluation.scorers import build_scorer
from reccocktail.evaluation.stage import AdapterSwitcher
from reccocktail.models.backbone import load_backbone
from reccocktail.utils.device import place_backbone, resolve_device
from reccocktail.utils.io import (
    file_sha256,
    read_json,
    read_jsonl,
    stable_hash,
    write_json,
    write_jsonl,
    write_text,
)

ROOT = Path(__file__).resolve().parents[1]
INGREDIENTS = ("general", "specific")
COPIED = ("general", "specific", "wa", "zero_shot")  # test rows taken from the run when they fit
LABELS = {**ROW_LABELS, "general": "G", "specific": "S", "wa": "WA (λ=0.5)",
          "zero_shot": "zero-shot"}


# -- configuration --------------------------------------------------------------------------

def run_config(run: Path, overrides: list[str]) -> DictConfig:
    """The run's composed config (`.hydra/config.yaml`), rooted at the run folder, without
    loggers, with `mix.*` `overrides` applied."""
    path = run / ".hydra" / "config.yaml"
    if not path.exists():
        raise SystemExit(f"{path}: no such file (--run must be a run folder written by run.py)")
    for need in ("adapters/general/adapter_config.json", "adapters/specific/adapter_config.json",
                 "data/test.jsonl", "data/valid.jsonl", "data/items.tsv"):
        if not (run / need).exists():
            raise SystemExit(f"{run / need}: missing (run the data, general and specific stages)")
    cfg = OmegaConf.load(path)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = str(run)
    cfg.logger = {}
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+")
        if not key.startswith("mix.") or "=" not in o:
            raise SystemExit(f"override {o!r}: only mix.KEY=VALUE overrides are taken")
        if key in ("mix.objective", "mix.name"):
            raise SystemExit(f"override {o!r}: choose objectives with --objectives")
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    return cfg


def objective_config(cfg: DictConfig, objective: str, ws: Path) -> DictConfig:
    """`cfg` with mix=entropy and `mix.objective=objective`, rooted at the workspace `ws`. Keys
    the run's mix block lacks (a run with mix=grid) come from conf/mix/entropy.yaml."""
    defaults = OmegaConf.load(ROOT / "conf" / "mix" / "entropy.yaml")
    mix = OmegaConf.merge(defaults, {k: v for k, v in cfg.mix.items() if k not in ("name",)})
    mix.name, mix.objective = "entropy", objective
    out = OmegaConf.merge(cfg, {"paths": {"output_dir": str(ws)}})
    out.mix = mix
    return out


def fixed_config(cfg: DictConfig, lam_g: float, ws: Path) -> DictConfig:
    """`cfg` with mix=fixed at λ = (λ_G, 1 − λ_G), rooted at the workspace `ws` (one point of
    the validation grid)."""
    mix = OmegaConf.load(ROOT / "conf" / "mix" / "fixed.yaml")
    mix.mode = cfg.mix.get("mode", mix.mode)
    mix.lambdas = [lam_g, round(1.0 - lam_g, 10)]
    out = OmegaConf.merge(cfg, {"paths": {"output_dir": str(ws)}})
    out.mix = mix
    return out


def grid_points(step: float) -> list[float]:
    """λ_G = 0, step, 2·step, …, 1: the two-ingredient simplex of mix=grid."""
    try:
        return [round(lam[0], 10) for lam in simplex_grid(2, step)]
    except ValueError as err:
        raise SystemExit(f"--grid-step {step}: {err}") from None


# λ_G points that are rows of their own (G, S and WA are scored on validation anyway)
GRID_ROWS = {1.0: "general", 0.0: "specific", 0.5: "wa"}


def workspace(run: Path, objective: str) -> Path:
    """`<run>/objectives/<objective>/` with relative links to the run's data and adapters."""
    ws = run / "objectives" / objective
    (ws / "adapters").mkdir(parents=True, exist_ok=True)
    for rel in ("data", "adapters/general", "adapters/specific"):
        link, target = ws / rel, run / rel
        if link.is_symlink() or link.exists():
            if link.resolve() != target.resolve():
                raise SystemExit(f"{link}: exists and is not a link to {target}")
            continue
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
    return ws


# -- samples --------------------------------------------------------------------------------

def valid_samples(cfg: DictConfig, run: Path, max_users: int | None) -> list[Sample]:
    """Validation samples of users no adapter trained on: S's manifest lists the validation
    users it trained on (instruction objective); they are left out."""
    items = load_items(run / "data" / "items.tsv")
    samples = load_samples(run / "data" / "valid.jsonl", items)
    manifest = run / "adapters" / "specific" / "manifest.json"
    trained = set((read_json(manifest).get("config") or {}).get("valid_users_trained", [])) \
        if manifest.exists() else set()
    kept = [s for s in samples if s.user not in trained]
    if not kept:
        raise SystemExit(f"{run / 'data' / 'valid.jsonl'}: every validation user trained S "
                         f"({len(trained)} users); rerun S with held-out validation users")
    return choose_users(kept, max_users, int(cfg.seed))


# -- scoring --------------------------------------------------------------------------------

def _adapter_id(path: Path | None) -> str:
    return "zero_shot" if path is None else file_sha256(path / "adapter_model.safetensors")


class Scores:
    """`scores.json` ({split: {"variants": rows}}) and `predictions/<split>/<row>.jsonl`: rows in
    the results format (metrics, ci, scorer, ...), kept across reruns by a key of the adapter's
    weights, the samples and the scorer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "scores.json"
        self.data: dict[str, Any] = read_json(self.path) if self.path.exists() else {}

    def pred(self, split: str, name: str) -> Path:
        return self.root / "predictions" / split / f"{name}.jsonl"

    def rows(self, split: str) -> dict[str, Any]:
        return self.data.setdefault(split, {"variants": {}})["variants"]

    def fresh(self, split: str, name: str, key: str) -> bool:
        row = self.rows(split).get(name)
        return bool(row) and row.get("score_key") == key and self.pred(split, name).exists()

    def put(self, split: str, name: str, row: dict[str, Any], preds: list[dict] | Path) -> None:
        if isinstance(preds, Path):
            self.pred(split, name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(preds, self.pred(split, name))
        else:
            write_jsonl(self.pred(split, name), preds)
        self.rows(split)[name] = row
        write_json(self.path, self.data)


def reusable_run_row(run: Path, name: str, samples: list[Sample], scorer: str,
                     normalize: bool) -> dict | None:
    """The run's own test row `name` when its predictions cover exactly `samples` and it was
    scored the same way, else None."""
    results = run / "results.json"
    pred = run / "predictions" / f"{name}.jsonl"
    if not results.exists() or not pred.exists():
        return None
    row = read_json(results).get("variants", {}).get(name)
    if not row or row.get("scorer") != scorer or bool(row.get("normalize")) != bool(normalize) \
            or row.get("candidates") not in (None, "sampled"):
        return None
    ids = [str(r["id"]) for r in read_jsonl(pred)]
    return row if sorted(ids) == sorted(s.id for s in samples) else None


def score_all(cfg: DictConfig, jobs: list[tuple[str, str, Path | None, list[Sample]]],
              scores: Scores, info: dict[str, dict]) -> None:
    """Score every (split, row, adapter folder or None, samples) job not already fresh, with
    the eval stage's scorer on one backbone (adapters switched as the eval stage does)."""
    ec = eval_config(cfg)
    sname = ec.scorer[0]
    todo = []
    for split, name, path, samples in jobs:
        key = stable_hash(_adapter_id(path), [s.id for s in samples], sname, ec.normalize,
                          str(cfg.backbone.name))
        if not scores.fresh(split, name, key):
            todo.append((split, name, path, samples, key))
    if not todo:
        return
    device = resolve_device(cfg, "eval.device")
    model, tokenizer = load_backbone(cfg.backbone, device=device)
    place_backbone(model, device, cfg, "objectives")
    items = load_items(Path(cfg.paths.output_dir) / "data" / "items.tsv")
    pb = prompt_builder_from_config(cfg, tokenizer, items, fmt=prompt_format(cfg))
    switcher = AdapterSwitcher(model)
    ks = tuple(ec.ks)
    for split, name, path, samples, key in todo:
        scorer = build_scorer(sname, switcher.use(path), pb, ec)
        t0 = time.time()
        scores_t = scorer.score(samples)
        targets = [s.target_index for s in samples]
        users = [s.user for s in samples]
        row = {"metrics": {k: float(v) for k, v in ranking_metrics(scores_t, targets, ks).items()},
               **ci_fields(target_ranks(scores_t, targets), users, ks), "scorer": sname,
               "normalize": ec.normalize, "adapter": None if path is None else str(path),
               "score_key": key, "seconds": round(time.time() - t0, 2), **info[split]}
        scores.put(split, name, row, prediction_rows(samples, scores_t, scorer))
        print(f"  {split} {name}: ndcg@1 {row['metrics']['ndcg@1']:.4f}", flush=True)
    switcher.drop()


# -- the table ------------------------------------------------------------------------------

def lambda_g(lam: Any) -> float | None:
    """λ of the first adapter (G), averaged over modules with one λ per layer."""
    if isinstance(lam, dict):
        return sum(v[0] for v in lam.values()) / len(lam) if lam else None
    return float(lam[0]) if lam else None


def choose(rows: dict[str, Any], names: list[str]) -> str:
    """The best of `names` by NDCG@1 (ties: NDCG@3, then the first)."""
    return max(names, key=lambda n: (rows[n]["metrics"]["ndcg@1"],
                                     rows[n]["metrics"].get("ndcg@3", 0.0), -names.index(n)))


def summarise(scores: Scores, objectives: list[str], lambdas: dict[str, Any],
              grid: bool = False) -> dict[str, Any]:
    """Chosen objective, the references max(G, S) on test and on validation, and per row the
    metrics with CIs and the paired tests against both references. The validation grid's row
    (label-based λ) is reported beside the objectives but is not a candidate of the choice,
    which stays among λ learned without labels."""
    valid, test = scores.rows("valid"), scores.rows("test")
    cocktails = [f"cocktail.{o}" for o in objectives]
    chosen = choose(valid, cocktails)
    if grid:
        cocktails.append("cocktail.grid")
    best_test, best_valid = choose(test, list(INGREDIENTS)), choose(valid, list(INGREDIENTS))
    out_rows = []
    for name in [*COPIED, *cocktails]:
        if name not in test:
            continue
        entry: dict[str, Any] = {"row": name, "lambda": lambdas.get(name),
                                 "lambda_g": lambda_g(lambdas.get(name)),
                                 "test": {m: test[name]["metrics"][m] for m in ("ndcg@1", "ndcg@3")},
                                 "test_ci": {m: test[name].get("ci", {}).get(m)
                                             for m in ("ndcg@1", "ndcg@3")}}
        if name in valid:
            entry["valid"] = {"ndcg@1": valid[name]["metrics"]["ndcg@1"]}
            entry["valid_ci"] = {"ndcg@1": valid[name].get("ci", {}).get("ndcg@1")}
        if name.startswith("cocktail."):
            block, _ = paired_block({"variants": test}, scores.root / "predictions" / "test",
                                    reference=name)
            for tag, ref in (("vs_best_test", best_test), ("vs_best_valid", best_valid)):
                entry[tag] = {"reference": ref, **block[f"{name}_vs_{ref}"]["ndcg@1"]}
            entry["chosen"] = name == chosen
        out_rows.append(entry)
    return {"chosen": chosen.split(".", 1)[1], "best_test": best_test, "best_valid": best_valid,
            "rows": out_rows}


def _cell(v: float | None, ci: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-3 else f"{p:.1e}"


def render(summary: dict[str, Any]) -> str:
    """The markdown table of `summarise`'s result."""
    bt, bv = LABELS[summary["best_test"]], LABELS[summary["best_valid"]]
    lines = [f"# λ objectives on {summary['run']}", "",
             f"{summary['num_valid_users']} validation users (none trained S), "
             f"{summary['num_test_users']} test users (none tuned λ); {summary['scorer']} "
             f"scorer; 95 % bootstrap CIs over users. Δ: paired NDCG@1 difference "
             f"(cocktail − reference) with its CI and sign-flip p, against max(G, S) on test "
             f"({bt}) and on validation ({bv}). Chosen on validation NDCG@1: "
             f"**{summary['chosen']}**.", "",
             "| Row | λ_G | Valid NDCG@1 | Test NDCG@1 | Test NDCG@3 | "
             f"Δ vs {bt} (test best) | Δ vs {bv} (valid best) | chosen |",
             "|:---|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in summary["rows"]:
        name = r["row"]
        label = f"cocktail, {name.split('.', 1)[1]}" if name.startswith("cocktail.") \
            else LABELS.get(name, name)
        if name == "cocktail.grid":
            label = "cocktail, λ_G by validation grid (labels)"
        lam = "–" if r["lambda_g"] is None else f"{r['lambda_g']:.2f}"
        cells = [label, lam, _cell(r.get("valid", {}).get("ndcg@1"), r.get("valid_ci", {}).get("ndcg@1")),
                 _cell(r["test"]["ndcg@1"], r["test_ci"]["ndcg@1"]),
                 _cell(r["test"]["ndcg@3"], r["test_ci"]["ndcg@3"])]
        for tag in ("vs_best_test", "vs_best_valid"):
            t = r.get(tag)
            cells.append("–" if t is None else
                         f"{t['diff']:+.3f} [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}], p {_p(t['p'])}")
        cells.append("✓" if r.get("chosen") else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished run folder")
    ap.add_argument("--objectives", default=",".join(OBJECTIVES),
                    help=f"comma-separated, of {', '.join(OBJECTIVES)}")
    ap.add_argument("--valid-users", type=int, default=200,
                    help="at most this many validation users (seeded); 0 = all")
    ap.add_argument("--grid-step", type=float, default=0.25,
                    help="also a cocktail whose λ_G is chosen on the validation users over "
                         "0, step, …, 1 (mix=grid's rule; 0 = no grid row)")
    ap.add_argument("--dry-run", action="store_true", help="print what would be done")
    args = ap.parse_args(argv)
    args.grid = grid_points(args.grid_step) if args.grid_step else []
    args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    bad = [o for o in args.objectives if o not in OBJECTIVES]
    if bad or not args.objectives:
        ap.error(f"--objectives: {bad or 'none'}; choose from {', '.join(OBJECTIVES)}")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    run = args.run.resolve()
    cfg = run_config(run, extra)
    seed = int(cfg.seed)
    if candidates_mode(cfg) == "all":
        raise SystemExit("eval.candidates=all: this script scores the stored candidates only")
    ec = eval_config(cfg)
    test, test_info = eval_samples(cfg, run)
    valid = valid_samples(cfg, run, args.valid_users or None)
    root = run / "objectives"
    scores = Scores(root)
    reuse = {n: reusable_run_row(run, n, test, ec.scorer[0], ec.normalize) for n in COPIED}
    print(f"run {run}: {len({s.user for s in test})} test users, {len({s.user for s in valid})} "
          f"validation users; scorer {ec.scorer[0]}")
    for o in args.objectives:
        print(f"  λ by mix.objective={o} -> {root / o}/mix/lambda.json")
    if args.grid:
        print(f"  λ_G by validation NDCG@1 over {args.grid} -> {root}/fixed_<λ_G>/")
    for n in COPIED:
        what = "from the run" if reuse[n] else ("scored" if n != "zero_shot" else "left out")
        print(f"  test row {n}: {what}")
    if args.dry_run:
        return 0

    t0 = time.time()
    lambdas: dict[str, Any] = {"general": [1.0, 0.0], "specific": [0.0, 1.0], "wa": [0.5, 0.5]}
    folders: dict[str, Path] = {}
    scored_users = {s.user for s in test}
    for o in args.objectives:
        ws = workspace(run, o)
        L.seed_everything(seed, workers=True, verbose=False)  # as the pipeline does
        summary = run_mix_stage(objective_config(cfg, o, ws), ws)
        info = read_json(ws / "mix" / "lambda.json")
        leak = scored_users & set(info.get("tuning_users") or [])
        if leak and not info.get("transductive"):
            raise SystemExit(f"{ws}/mix/lambda.json: λ tuned on scored users {sorted(leak)[:5]}")
        lambdas[f"cocktail.{o}"] = info["lambdas"]
        folders[f"cocktail.{o}"] = ws / "adapters" / "cocktail"
        print(f"  {o}: λ {summary['lambdas']} ({'reused' if summary['reused'] else 'learned'})")

    vinfo = {"split": "valid", "num_samples": len(valid),
             "num_users": len({s.user for s in valid})}
    info = {"valid": vinfo, "test": test_info}
    jobs: list[tuple[str, str, Path | None, list[Sample]]] = []
    adapters = {n: run / "adapters" / n for n in INGREDIENTS}
    # WA: the run's, else the same 0.5/0.5 mix that every workspace's mix stage writes
    adapters["wa"] = run / "adapters" / "wa" if (run / "adapters" / "wa").exists() else \
        next(iter(folders.values())).parent / "wa"
    for name in ("general", "specific", "wa"):
        jobs.append(("valid", name, adapters[name], valid))
    for name, folder in folders.items():
        jobs += [("valid", name, folder, valid), ("test", name, folder, test)]
    for name in COPIED:
        if reuse[name]:
            scores.put("test", name, {**reuse[name], "copied_from": str(run)},
                       run / "predictions" / f"{name}.jsonl")
        elif name != "zero_shot":
            jobs.append(("test", name, adapters[name], test))
    grid_names: list[str] = []
    for g in args.grid:
        name = GRID_ROWS.get(g)
        if name is None:
            ws = workspace(run, f"fixed_{g:.2f}")
            run_mix_stage(fixed_config(cfg, g, ws), ws)
            name = f"grid.{g:.2f}"
            jobs.append(("valid", name, ws / "adapters" / "cocktail", valid))
            lambdas[name] = [g, round(1.0 - g, 10)]
        grid_names.append(name)
    score_all(cfg, jobs, scores, info)
    if grid_names:
        # mix=grid's rule on the validation users: NDCG@1, ties NDCG@3, then the first λ_G
        best = choose(scores.rows("valid"), grid_names)
        folder = adapters.get(best) or root / f"fixed_{lambdas[best][0]:.2f}" / "adapters" / "cocktail"
        if best not in scores.rows("test"):
            score_all(cfg, [("test", best, folder, test)], scores, info)
        for split in ("valid", "test"):
            scores.put(split, "cocktail.grid", {**scores.rows(split)[best], "grid_choice": best},
                       scores.pred(split, best))
        lambdas["cocktail.grid"] = lambdas[best]
        print(f"  grid: λ_G {lambdas[best][0]:.2f} ({best}) chosen on validation")

    summary = summarise(scores, args.objectives, lambdas, grid=bool(grid_names))
    summary.update(run=str(run), objectives=args.objectives, scorer=ec.scorer[0],
                   num_valid_users=vinfo["num_users"], num_test_users=test_info["num_users"],
                   overrides=extra, seconds=round(time.time() - t0, 1), grid=args.grid,
                   lambda_files={o: str(root / o / "mix" / "lambda.json") for o in args.objectives})
    write_json(root / "summary.json", summary)
    table = render(summary)
    write_text(root / "table.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
