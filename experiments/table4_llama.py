"""Table 4 of the paper: RecCocktail on another backbone, Llama-3.1-8B-Instruct (gated on the
hub: accept its licence, or point backbone.pretrained at a local copy). Same settings as
Tables 1-2; one table per backbone (`--backbones qwen2_7b,llama31_8b` puts the paper's Qwen2
runs beside it). Needs GPUs: the jobs get `trainer=gpu tuning=gpu` unless `--device cpu`.

    python experiments/table4_llama.py --dry-run
    python experiments/table4_llama.py --launcher slurm -- backbone.quantization=nf4
"""

from __future__ import annotations

from reccocktail.reporting.launch import Sweep, csv_list, experiment_parser, run_experiment

DOMAINS = "ml1m,beauty,toys,sports"


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, "table4_llama")
    p.add_argument("--backbones", default="llama31_8b")
    p.add_argument("--domains", default=DOMAINS)
    p.add_argument("--scenarios", default="warm,cold")
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    a = p.parse_args(argv)
    experiments = [f"{d}_{s}" for s in csv_list(a.scenarios) for d in csv_list(a.domains)]
    overrides = [f"+experiment={','.join(experiments)}", f"backbone={a.backbones}",
                 f"seed={a.seeds}"]
    if a.device == "gpu":
        overrides += ["trainer=gpu", "tuning=gpu"]
    return run_experiment(a, [Sweep("runs", overrides)], group_by=["backbone.name"],
                          domains=csv_list(a.domains), title="Table 4: backbones")


if __name__ == "__main__":
    raise SystemExit(main())
