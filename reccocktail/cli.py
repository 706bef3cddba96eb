"""`reccocktail`: one command for the pipeline, the reports and recommendations.

`reccocktail run <overrides>` is `python run.py <overrides>` (the same Hydra config tree, the
same run folders); `reccocktail report ...` is `python -m reccocktail.report ...`;
`reccocktail recommend --adapter DIR --history ... --candidates ...` is `python run.py
task=recommend ...` with the titles quoted for Hydra. Installed as a console script by
`pip install -e .` (pyproject.toml `[project.scripts]`); `python -m reccocktail` is the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import DictConfig

import reccocktail  # noqa: F401  (registers the config resolvers)

PROG = "reccocktail"
EXAMPLES = """\
examples:
  reccocktail run                                   # the offline demo (ML-100k, SmolLM2-135M, CPU)
  reccocktail run debug=fast                        # the plumbing on a tiny model, ~40 s
  reccocktail run +experiment=beauty_cold           # a paper setting (one GPU)
  reccocktail run +experiment=ml1m_warm --cfg job   # print the composed config, run nothing
  reccocktail report outputs/multirun/<date>        # mean ± std tables and plots over runs
  reccocktail recommend --adapter outputs/runs/ml100k_warm/<time>/adapters/cocktail \\
      --history "Toy Story (1995)" "Heat (1995)" --candidates "GoldenEye (1995)" "Casino (1995)"

Each subcommand has its own --help. The documentation: README.md and docs/ in the repository.
"""
RUN_HELP = """\
usage: reccocktail run [-m] [--cfg job] [KEY=VALUE ...]

Runs the pipeline (data, general, specific, mix, eval), exactly as `python run.py` does: the
arguments are Hydra overrides of the config tree in conf/.

examples:
  reccocktail run                                        # the offline demo
  reccocktail run +experiment=ml1m_cold stages=[data]    # just the splits of a paper setting
  reccocktail run +experiment=ml1m_warm trainer=ddp trainer.devices=4
  reccocktail run -m +experiment=beauty_warm,beauty_cold seed=1,2,3   # a sweep, one job each
  reccocktail run +experiment=ml1m_warm --cfg job        # print the composed config

Hydra's own options: reccocktail run --hydra-help
"""


def conf_dir() -> Path:
    """The config tree: conf/ of the source checkout this package is installed from (editable
    installs, `make setup`); the configs are not packaged."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    if not (conf / "run.yaml").is_file():
        raise SystemExit(f"{PROG}: no config tree at {conf}; install the package from a checkout "
                         "of the repository (`pip install -e .`) or run `python run.py` there")
    return conf


def run_hydra(overrides: list[str]) -> None:
    """`python run.py <overrides>` in this process (Hydra reads its arguments from sys.argv)."""
    import hydra  # lazy: an entry point, `--help` and `report` stay fast

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="run")
    def task(cfg: DictConfig) -> float | None:
        from reccocktail.pipeline import main_task  # lazy: an entry point (the whole pipeline)

        return main_task(cfg)

    # the job name python run.py gets (log file name, SLURM job name)
    named = any(o.startswith("hydra.job.name=") for o in overrides)
    saved = sys.argv
    sys.argv = [PROG, *overrides, *([] if named else ["hydra.job.name=run"])]
    try:
        task()
    finally:
        sys.argv = saved


def hydra_quote(text: str) -> str:
    """`text` as a single-quoted Hydra override string: quotes escaped, `${` not interpolated,
    a backslash before a quote or at the end kept as itself."""
    out = []
    for i, ch in enumerate(text):
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if ch == "\\" and nxt in ("'", ""):
            out.append("\\\\")
        elif ch == "'":
            out.append("\\'")
        elif ch == "$" and nxt == "{":
            out.append("\\$")
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"


def _hydra_list(items: list[str]) -> str:
    return "[" + ",".join(hydra_quote(x) for x in items) + "]"


def recommend_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} recommend", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rank candidates for a history with a trained adapter (python run.py "
                    "task=recommend); titles or item ids of the run's items.tsv.",
        epilog="""examples:
  reccocktail recommend --adapter outputs/runs/ml100k_warm/<time>/adapters/cocktail \\
      --history "Toy Story (1995)" "Heat (1995)" "Twelve Monkeys (1995)" \\
      --candidates "GoldenEye (1995)" "Casino (1995)" "Copycat (1995)" --explain
  reccocktail recommend --adapter <run>/adapters/cocktail --file requests.jsonl
  reccocktail recommend --history 1 2 3 --candidates 4 5 6 trainer=gpu   # + any override
""")
    p.add_argument("--adapter", help="<run>/adapters/<name>; omitted: the bare backbone")
    p.add_argument("--history", nargs="+", metavar="ITEM", help="titles or item ids, oldest first")
    p.add_argument("--candidates", nargs="+", metavar="ITEM", help="titles or item ids to rank")
    p.add_argument("--file", help="requests.jsonl: {\"history\": [...], \"candidates\": [...]} per line")
    p.add_argument("--items", help="items.tsv (default: the adapter's run's data/items.tsv)")
    p.add_argument("--top-k", type=int, help="rows printed per request")
    p.add_argument("--explain", action="store_true", help="ask the model why the top one fits")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="further Hydra overrides")
    return p


def recommend_overrides(argv: list[str]) -> list[str]:
    """The `python run.py` overrides that `reccocktail recommend <argv>` stands for."""
    a = recommend_parser().parse_args(argv)
    if not a.file and not a.candidates:
        recommend_parser().error("give --candidates (with --history), or --file")
    out = ["task=recommend"]
    for key, value in (("adapter", a.adapter), ("file", a.file), ("items", a.items)):
        if value:
            out.append(f"recommend.{key}={hydra_quote(value)}")
    if a.history:
        out.append(f"recommend.history={_hydra_list(a.history)}")
    if a.candidates:
        out.append(f"recommend.candidates={_hydra_list(a.candidates)}")
    if a.top_k is not None:
        out.append(f"recommend.top_k={a.top_k}")
    if a.explain:
        out.append("recommend.explain=true")
    return out + list(a.overrides)


def main(argv: list[str] | None = None) -> int:
    """`reccocktail <run|report|recommend> ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"run": "the pipeline (python run.py)",
                "report": "tables and plots over finished runs (python -m reccocktail.report)",
                "recommend": "rank candidates with a trained adapter (task=recommend)"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: {PROG} {{{','.join(commands)}}} ...\n\nLLM-based recommendation with "
              "mixed LoRA adapters (RecCocktail).\n\ncommands:")
        for name, what in commands.items():
            print(f"  {name:<10} {what}")
        print("\n" + EXAMPLES)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"{PROG}: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "report":
        from reccocktail.reporting.cli import main as report_main  # lazy: an entry point

        return report_main(rest)
    if cmd == "run" and rest in (["-h"], ["--help"]):
        print(RUN_HELP)
        return 0
    run_hydra(rest if cmd == "run" else recommend_overrides(rest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
