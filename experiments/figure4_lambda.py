"""Figure 4 (left) of the paper: the λ learned by entropy-guided merging per scenario (warm
against cold) and domain, with its trajectory over the tuning steps. Reads each run's
`mix/lambda.json`. By default it re-aggregates the runs of Tables 1-2 when they exist
(`--from outputs/experiments/table1_2/runs`), otherwise it runs that sweep itself.

    python experiments/figure4_lambda.py --dry-run
    python experiments/figure4_lambda.py --from outputs/experiments/table1_2/runs
"""

from __future__ import annotations

import shlex
from pathlib import Path

from reccocktail.reporting import cli, launch

DOMAINS = "ml1m,beauty,toys,sports"


def main(argv: list[str] | None = None) -> int:
    p = launch.experiment_parser(__doc__, "figure4_lambda")
    p.add_argument("--from", dest="source", default=None,
                   help="finished runs to read instead of running the sweep")
    p.add_argument("--domains", default=DOMAINS)
    p.add_argument("--scenarios", default="warm,cold")
    a = p.parse_args(argv)
    if a.source:
        rep = launch.report_argv([Path(a.source)], Path(a.out) / "report", title="Figure 4: learned λ")
        print(shlex.join([a.python, "-m", "reccocktail.report", *rep]))
        return 0 if a.dry_run else cli.main(rep)
    experiments = [f"{d}_{s}" for s in launch.csv_list(a.scenarios) for d in launch.csv_list(a.domains)]
    sweeps = [launch.Sweep("runs", [f"+experiment={','.join(experiments)}", "mix=entropy",
                             f"seed={a.seeds}"])]
    return launch.run_experiment(a, sweeps, domains=launch.csv_list(a.domains), title="Figure 4: learned λ")


if __name__ == "__main__":
    raise SystemExit(main())
