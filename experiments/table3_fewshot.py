"""Table 3 of the paper: few-shot training on ml1m with 10/20/30 % of the target training data.

Two sweeps per fraction and seed:
- `fewshot`: the full recipe with the ingredient S trained on the fraction
  (`tuning.specific.fraction`); its `specific` row is the TALLRec-style S, next to -WA and
  RecCocktail built from that S (the base spirit G is trained once and reused);
- `second_round`: G fine-tuned a second time on the same fraction
  (`tuning.specific.init_from=general`), reported as "Second-round FT".
The report puts the fractions in the column groups.

    python experiments/table3_fewshot.py --dry-run
    python experiments/table3_fewshot.py --fractions 0.1,0.2,0.3 -- trainer=gpu tuning=gpu
"""

from __future__ import annotations

from reccocktail.reporting.launch import Sweep, csv_list, experiment_parser, run_experiment


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, "table3_fewshot")
    p.add_argument("--experiment", default="ml1m_warm", help="the target setting")
    p.add_argument("--fractions", default="0.1,0.2,0.3")
    a = p.parse_args(argv)
    frac = ",".join(csv_list(a.fractions))
    common = [f"+experiment={a.experiment}", f"++tuning.specific.fraction={frac}", f"seed={a.seeds}"]
    sweeps = [
        Sweep("fewshot", common),
        Sweep("second_round", [*common, "++tuning.specific.init_from=general",
                               "stages=[data,general,specific,eval]", "eval.variants=[specific]"]),
    ]
    return run_experiment(a, sweeps, columns="tuning.specific.fraction",
                          domains=csv_list(a.fractions), title="Table 3: few-shot training")


if __name__ == "__main__":
    raise SystemExit(main())
