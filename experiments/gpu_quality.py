"""The learning-signal table on one GPU: ML-1M and Beauty, warm and cold, both objectives.

The real data and site-packages do not travel to a lent GPU machine, only the checkout (at most
64 MiB a call). So the work is split in two:

    # here, on the CPU: the data stage of every setting, capped to what the GPU run scores
    python experiments/gpu_quality.py prepare --out outputs/gpu_carry
    # on the GPU machine (SmolLM2's GGUF carried separately, see --gguf), one call, <= 8 min:
    python experiments/gpu_quality.py run --carry outputs/gpu_carry --gguf /path/smollm2.gguf \\
        --budget-s 450
    python experiments/gpu_quality.py run --dry-run   # the commands `run` would start

`prepare` writes `<out>/<setting>/data/` (items, capped splits, sequences.jsonl, the general
pool) with `--users` + `--lambda-users` test users per setting and at most `--train-prompts`
target training prompts, and prints the folder's size. `run` copies each prepared data folder
into `<runs>/<setting>_<objective>/` and runs the remaining stages there (`stages=[general,
specific,mix,eval]`) with `trainer=gpu`, setting by setting in the order given, skipping what
no longer fits `--budget-s`; then it prints one table (NDCG@1 / NDCG@3 with 95 % CIs per
variant, popularity and random) and writes `<runs>/gpu_quality.md`. A setting that did not fit
is listed as not run. `--device cpu --backbone tiny_llama` runs the same path at a tiny size
on a CPU (the test does).

Objectives: `instruction` trains with the paper's prompts (`tuning=gpu`: lr 1e-4, effective
batch 128; S on `--train-prompts` target prompts + the validation samples, G on at most
`--general-prompts` general prompts); `sequence` with title sequences (`tuning=cpu_sequence`,
S and G on `--windows` windows). Both score the same `--users` users.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from reccocktail.utils.io import read_json, write_text

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = ("ml1m_warm", "ml1m_cold", "beauty_warm", "beauty_cold")
OBJECTIVES = ("sequence", "instruction")
ROWS = ("random", "popularity", "zero_shot", "general", "specific", "wa", "cocktail")


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prepare(a: argparse.Namespace) -> int:
    out = Path(a.out)
    for setting in a.settings:
        cmd = [sys.executable, str(ROOT / "run.py"), f"+experiment={setting}", "stages=[data]",
               "logger=none", f"hydra.run.dir={out / setting}",
               f"data.max_test_users={a.users + a.lambda_users}",
               f"data.max_valid_users={a.valid_users}",
               f"data.max_train_prompts={a.train_prompts}",
               f"domain.general.max_train_prompts={a.general_prompts}",
               f"domain.general.max_valid_prompts={a.valid_users}", *a.overrides]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    size = _dir_size(out)
    print(f"{out}: {size / 2**20:.1f} MiB to carry", flush=True)
    return 0


def _run_cmd(a: argparse.Namespace, setting: str, objective: str, run_dir: Path) -> list[str]:
    trainer = "gpu" if a.device == "gpu" else "cpu"
    cmd = [sys.executable, str(ROOT / "run.py"), f"+experiment={setting}",
           "stages=[general,specific,mix,eval]", f"hydra.run.dir={run_dir}",
           f"backbone={a.backbone}", f"trainer={trainer}", "logger=csv",
           f"selection.max_scored_users={a.users}", f"selection.lambda_users={a.lambda_users}",
           "eval.progress=false", f"paths.cache_dir={Path(a.runs) / 'cache'}"]
    if a.gguf:
        cmd.append(f"backbone.gguf_path={a.gguf}")
    if objective == "instruction":
        cmd += ["tuning=gpu", f"tuning.specific.num_train_prompts={a.train_prompts}",
                f"tuning.general.max_samples={a.general_prompts}", f"tuning.epochs={a.epochs}"]
    else:
        cmd += ["tuning=cpu_sequence", f"tuning.general.max_samples={a.windows}",
                f"tuning.specific.max_samples={a.windows}", f"tuning.batch_size={a.seq_batch}"]
    return cmd + list(a.overrides)


def _cell(row: dict | None, m: str) -> str:
    if row is None:
        return "–"
    ci = (row.get("ci") or {}).get(m)
    return f"{row['metrics'][m]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def run(a: argparse.Namespace) -> int:
    runs = Path(a.runs)
    t_start = time.time()
    done: dict[str, float | str] = {}
    for setting in a.settings:
        for objective in a.objectives:
            name = f"{setting}_{objective}"
            left = a.budget_s - (time.time() - t_start)
            if left < a.min_left_s:
                done[name] = "not run (budget)"
                continue
            run_dir = runs / name
            if not (run_dir / "data" / "manifest.json").exists():
                src = Path(a.carry) / setting / "data"
                if not src.is_dir():
                    raise FileNotFoundError(f"{src}: missing (run `prepare` and carry its output)")
                shutil.copytree(src, run_dir / "data", dirs_exist_ok=True)
            cmd = _run_cmd(a, setting, objective, run_dir)
            print(" ".join(cmd), flush=True)
            t0 = time.time()
            try:
                subprocess.run(cmd, check=True, cwd=ROOT, timeout=max(1.0, left))
                done[name] = round(time.time() - t0, 1)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
                done[name] = f"failed or cut ({type(err).__name__})"
            print(f"{name}: {done[name]}", flush=True)
    lines = ["# GPU learning signal (SmolLM2-135M)", "",
             f"users {a.users} scored per setting (+{a.lambda_users} for λ, not scored); "
             f"NDCG@k [95 % bootstrap CI over users]", "",
             "| run | seconds | " + " | ".join(f"{r} NDCG@1" for r in ROWS) + " |",
             "|:---|---:|" + "---:|" * len(ROWS)]
    for name, secs in done.items():
        res = runs / name / "results.json"
        v = read_json(res)["variants"] if res.exists() else {}
        lines.append(f"| {name} | {secs} | " + " | ".join(_cell(v.get(r), "ndcg@1") for r in ROWS)
                     + " |")
    md = "\n".join(lines) + "\n"
    write_text(runs / "gpu_quality.md", md)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["prepare", "run"])
    p.add_argument("--out", default=str(ROOT / "outputs" / "gpu_carry"), help="prepare: where")
    p.add_argument("--carry", default=str(ROOT / "outputs" / "gpu_carry"), help="run: prepared data")
    p.add_argument("--runs", default=str(ROOT / "outputs" / "gpu_quality"), help="run: run folders")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--lambda-users", type=int, default=50)
    p.add_argument("--valid-users", type=int, default=500)
    p.add_argument("--train-prompts", type=int, default=10000, help="S's target prompts (paper: 10k)")
    p.add_argument("--general-prompts", type=int, default=20000)
    p.add_argument("--windows", type=int, default=3000, help="sequence objective: windows per adapter")
    p.add_argument("--seq-batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--backbone", default="smollm2_135m")
    p.add_argument("--gguf", default=None, help="SmolLM2's GGUF file where the package is absent")
    p.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--budget-s", type=float, default=450.0)
    p.add_argument("--min-left-s", type=float, default=45.0)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a, extra = p.parse_known_args(argv)
    a.overrides = [x for x in extra if x != "--"]
    a.settings = a.settings.split(",")
    a.objectives = a.objectives.split(",")
    if a.dry_run:
        for setting in a.settings:
            if a.mode == "prepare":
                print(f"prepare {setting}: data stage -> {Path(a.out) / setting}")
                continue
            for objective in a.objectives:
                run_dir = Path(a.runs) / f"{setting}_{objective}"
                print(" ".join(_run_cmd(a, setting, objective, run_dir)))
        return 0
    return prepare(a) if a.mode == "prepare" else run(a)


if __name__ == "__main__":
    raise SystemExit(main())
