"""Figure 4 (right) of the paper: NDCG@1 against the number of unlabeled test-time prompts
used to learn λ (10 to 200), with the -G/-S/-WA rows as flat references.

One sweep over `selection.lambda_users` x settings x seeds. Each point is scored on the users not
used for tuning (selection.transductive=false), so larger points score slightly fewer users; G is
reused across the sweep, the other stages follow the pipeline's reuse rules.

    python experiments/figure4_num_prompts.py --dry-run
    python experiments/figure4_num_prompts.py --prompts 10,50,100,200 --experiments ml1m_cold
"""

from __future__ import annotations

from reccocktail.reporting.launch import Sweep, csv_list, experiment_parser, run_experiment


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, "figure4_num_prompts")
    p.add_argument("--experiments", default="ml1m_warm,ml1m_cold,beauty_warm,beauty_cold")
    p.add_argument("--prompts", default="10,20,50,100,200")
    a = p.parse_args(argv)
    sweeps = [Sweep("runs", [f"+experiment={','.join(csv_list(a.experiments))}", "mix=entropy",
                             f"selection.lambda_users={','.join(csv_list(a.prompts))}",
                             f"seed={a.seeds}"])]
    return run_experiment(a, sweeps, group_by=["selection.lambda_users"],
                          title="Figure 4: NDCG@1 against the number of unlabeled prompts")


if __name__ == "__main__":
    raise SystemExit(main())
