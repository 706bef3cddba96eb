"""Tables 1 and 2 of the paper: warm (Table 1) and cold (Table 2) scenarios on ml1m, beauty,
toys and sports; RecCocktail next to its ablations (-G, -S, -WA), the zero-shot backbone and the
reference rows, NDCG@1/3 as mean ± std over seeds.

One Hydra multirun over `+experiment=<domain>_<scenario>` x seeds, then the report:

    python experiments/table1_2.py --dry-run                  # print the commands only
    python experiments/table1_2.py -- trainer=gpu tuning=gpu backbone=qwen2_7b
    python experiments/table1_2.py --launcher slurm -- trainer=gpu tuning=gpu
    python experiments/table1_2.py --report-only              # re-aggregate finished runs

Jobs run one after another (or as SLURM jobs); a job that failed is continued by running the
same command again (finished stages are reused).
"""

from __future__ import annotations

from reccocktail.reporting.launch import Sweep, csv_list, experiment_parser, run_experiment

DOMAINS = "ml1m,beauty,toys,sports"


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, "table1_2")
    p.add_argument("--domains", default=DOMAINS)
    p.add_argument("--scenarios", default="warm,cold")
    a = p.parse_args(argv)
    experiments = [f"{d}_{s}" for s in csv_list(a.scenarios) for d in csv_list(a.domains)]
    sweeps = [Sweep("runs", [f"+experiment={','.join(experiments)}", f"seed={a.seeds}"])]
    return run_experiment(a, sweeps, domains=csv_list(a.domains),
                          title="Tables 1-2: warm and cold scenarios")


if __name__ == "__main__":
    raise SystemExit(main())
