"""What the scripts in `experiments/` are built on: a `Sweep` is one Hydra multirun of
`run.py`; `run_experiment` prints and runs the sweeps, then the report over their folders."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reccocktail.reporting.cli import main as report_main
from reccocktail.utils.paths import REPO_ROOT

# The repository (run.py, conf/): the package is installed in editable mode (`make setup`).
ROOT = REPO_ROOT


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
    """`a, b,,c` -> [a, b, c]: the comma-separated options of the scripts."""
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
    """The `run.py -m` command of one sweep, its folder under `out`."""
    cmd = [args.python, str(ROOT / "run.py"), "-m", *sweep.overrides, *args.overrides,
           f"hydra.sweep.dir={out / sweep.name}"]
    if args.launcher == "slurm":
        cmd.append("hydra/launcher=slurm")
    return cmd


def report_argv(folders: Sequence[Path], out: Path, **kw: Any) -> list[str]:
    """The report's command line over `folders` (kw: its options, `group_by` -> `--group-by`)."""
    argv = [str(f) for f in folders] + ["--out", str(out)]
    for key, value in kw.items():
        if value in (None, "", [], ()):
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, ",".join(value) if isinstance(value, (list, tuple)) else str(value)]
    return argv


def run_logged(cmd: list[str], label: str, dry_run: bool = False) -> None:
    """Print a run.py command, run it from the repository root (unless `dry_run`) and print
    its wall time under `label`: how the single-run experiment scripts launch their runs."""
    print(" ".join(cmd), flush=True)
    if dry_run:
        return
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"{label}: {time.time() - t0:.0f} s", flush=True)


def run_experiment(args: argparse.Namespace, sweeps: Sequence[Sweep], **report_kw: Any) -> int:
    """Print and (unless --dry-run) run the sweeps one after the other, then the report over
    their folders into `<out>/report` (report_kw: metrics, group_by, columns, domains, title)."""
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
    return report_main(report_argv(present, out / "report", **report_kw))
