"""The report aggregates fabricated run folders (results.json + .hydra/config.yaml) correctly."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
from pathlib import Path

import pytest
from conftest import experiment_script

from reccocktail import report
from reccocktail.reporting.aggregate import (
    aggregate,
    general_weight,
    lambda_curve,
    lambda_table,
    prompts_table,
    random_expectation,
)
from reccocktail.reporting.cli import build_report
from reccocktail.reporting.runs import collect_runs
from reccocktail.reporting.tables import render_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VARIANTS = ("popularity", "general", "specific", "wa", "cocktail")


def make_run(root: Path, name: str, domain: str, scenario: str, seed: int,
             metrics: dict[str, dict[str, float]], num_prompts: int = 50,
             lambdas=None, curve=None, extra_cfg: str = "") -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"domain:\n  name: {domain}\nscenario:\n  name: {scenario}\nseed: {seed}\n"
        f"mix:\n  num_prompts: {num_prompts}\n  lr: 0.01\ndata:\n  num_candidates: 30\n"
        "paths:\n  output_dir: ${hydra:runtime.output_dir}\n" + extra_cfg
    )
    variants = {v: {"metrics": m, "num_users": 100, "scorer": "likelihood"} for v, m in metrics.items()}
    (run / "results.json").write_text(json.dumps({"variants": variants}))
    if lambdas is not None:
        (run / "mix").mkdir()
        body = {"lambdas": lambdas, "granularity": "model"}
        if curve is not None:
            body["curve"] = curve
        (run / "mix" / "lambda.json").write_text(json.dumps(body))
    return run


@pytest.fixture()
def sweep(tmp_path: Path):
    """2 domains x 2 scenarios x 3 seeds, random metrics; returns (root, truth)."""
    rng = random.Random(0)
    truth: dict[tuple, list[float]] = {}
    for domain in ("ml1m", "beauty"):
        for scenario in ("warm", "cold"):
            for seed in (1, 2, 3):
                metrics = {}
                for v in VARIANTS:
                    m = {"ndcg@1": rng.random(), "ndcg@3": rng.random(), "mrr": rng.random()}
                    metrics[v] = m
                    for k, x in m.items():
                        truth.setdefault((domain, scenario, v, k), []).append(x)
                lam = rng.random()
                make_run(tmp_path / "multirun", f"{domain}_{scenario}_{seed}", domain, scenario,
                         seed, metrics, lambdas=[lam, 1 - lam],
                         curve=[[0.5, 0.5], [lam, 1 - lam]])
                truth.setdefault((domain, scenario, "lambda"), []).append(lam)
    return tmp_path / "multirun", truth


def test_aggregate_mean_std_over_seeds(sweep):
    root, truth = sweep
    runs = collect_runs([root])
    assert len(runs) == 12
    agg = aggregate(runs)
    cell = agg["tables"][("cold", ())]["cells"][("wa", "beauty")]["metrics"]["ndcg@3"]
    vals = truth[("beauty", "cold", "wa", "ndcg@3")]
    assert cell["n"] == 3
    assert cell["mean"] == pytest.approx(statistics.fmean(vals))
    assert cell["std"] == pytest.approx(statistics.stdev(vals))


def test_markdown_layout(sweep):
    root, truth = sweep
    md = render_markdown(aggregate(collect_runs([root])),
                                domains=["ml1m", "beauty"])
    warm = md.index("## Scenario: warm")
    cold = md.index("## Scenario: cold")
    assert warm < cold
    header = md[warm:].splitlines()[2]
    assert header == "| Method | ml1m NDCG@1 | ml1m NDCG@3 | beauty NDCG@1 | beauty NDCG@3 |"
    table = md[warm:cold]
    rows = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == ["random (expected)", "Popularity", "RecCocktail-G", "RecCocktail-S",
                    "RecCocktail-WA", "RecCocktail"]
    vals = truth[("ml1m", "warm", "cocktail", "ndcg@1")]
    assert f"{statistics.fmean(vals):.4f} ± {statistics.stdev(vals):.4f}" in table
    # The best mean of each column is bold (exactly one bold cell per column).
    for col in range(1, 5):
        cells = [line.split(" | ")[col] for line in table.splitlines()[4:] if line.startswith("| ")]
        assert sum(c.startswith("**") for c in cells) == 1


def test_random_expectation_matches_closed_form():
    n = 30
    assert random_expectation("ndcg@1", n) == pytest.approx(1 / n)
    assert random_expectation("ndcg@3", n) == pytest.approx(
        sum(1 / math.log2(r + 1) for r in (1, 2, 3)) / n)
    assert random_expectation("hr@5", n) == pytest.approx(5 / n)
    # by simulation: the mean NDCG@3 of random ranks approaches the expectation
    rng = random.Random(1)
    sims = [1 / math.log2(r + 1) if r <= 3 else 0.0 for r in (rng.randint(1, n) for _ in range(20000))]
    assert statistics.fmean(sims) == pytest.approx(random_expectation("ndcg@3", n), abs=0.01)


def test_duplicate_seed_keeps_newest_and_missing_cells(tmp_path: Path):
    old = make_run(tmp_path, "a", "ml1m", "warm", 1, {"cocktail": {"ndcg@1": 0.1, "ndcg@3": 0.2}})
    new = make_run(tmp_path, "b", "ml1m", "warm", 1, {"cocktail": {"ndcg@1": 0.3, "ndcg@3": 0.4}})
    os.utime(old / "results.json", (1_000, 1_000))
    make_run(tmp_path, "c", "ml1m", "warm", 2, {"cocktail": {"ndcg@1": 0.5, "ndcg@3": 0.6},
                                                "general": {"ndcg@1": 0.2, "ndcg@3": 0.3}})
    agg = aggregate(collect_runs([tmp_path]))
    cells = agg["tables"][("warm", ())]["cells"]
    assert cells[("cocktail", "ml1m")]["metrics"]["ndcg@1"]["mean"] == pytest.approx(0.4)
    assert len(agg["duplicates"]) == 1 and str(new) in agg["duplicates"][0]
    md = render_markdown(agg)
    assert "(n=1)" in md  # general has one seed where cocktail has two
    assert "duplicate" in md


def test_group_by_splits_tables(tmp_path: Path):
    for i, frac in enumerate((0.1, 0.2)):
        make_run(tmp_path, f"r{i}", "ml1m", "warm", 1, {"specific": {"ndcg@1": frac, "ndcg@3": frac}},
                 extra_cfg=f"fewshot: {frac}\n")
    agg = aggregate(collect_runs([tmp_path], ["fewshot"]))
    assert set(agg["tables"]) == {("warm", (("fewshot", "0.1"),)), ("warm", (("fewshot", "0.2"),))}
    assert "(fewshot=0.1)" in render_markdown(agg)


def test_columns_by_config_key_and_second_round(tmp_path: Path):
    """Table 3's layout: fractions as column groups; a run whose S started from G reports its
    `specific` row as second-round fine-tuning."""
    for frac in (0.1, 0.3):
        make_run(tmp_path, f"s{frac}", "ml1m", "warm", 1, {"specific": {"ndcg@1": frac}},
                 extra_cfg=f"tuning:\n  specific:\n    fraction: {frac}\n    init_from: null\n")
        make_run(tmp_path, f"g{frac}", "ml1m", "warm", 1, {"specific": {"ndcg@1": frac / 2}},
                 extra_cfg=f"tuning:\n  specific:\n    fraction: {frac}\n    init_from: general\n")
    key = "tuning.specific.fraction"
    agg = aggregate(collect_runs([tmp_path], column_by=key))
    table = agg["tables"][("warm", (("domain", "ml1m"),))]
    assert table["cells"][("second_round", "0.3")]["metrics"]["ndcg@1"]["mean"] == pytest.approx(0.15)
    assert table["cells"][("specific", "0.1")]["metrics"]["ndcg@1"]["mean"] == pytest.approx(0.1)
    md = render_markdown(agg, metrics=["ndcg@1"], column_by=key)
    assert "| Method | fraction=0.1 NDCG@1 | fraction=0.3 NDCG@1 |" in md
    assert "| Second-round FT |" in md and "(domain=ml1m)" in md


@pytest.mark.parametrize("lam,expected", [
    (0.3, 0.3), ([0.3, 0.7], 0.3), ({"general": 0.3, "specific": 0.7}, 0.3),
    ([[0.2, 0.8], [0.4, 0.6]], [0.2, 0.4]), ([0.2, 0.3, 0.4], [0.2, 0.3, 0.4]),
    ({"layers": [{"general": 0.1}, {"general": 0.5}]}, [0.1, 0.5]), ("x", None), (None, None),
    ({"model.layers.0.q_proj": [0.2, 0.8], "model.layers.1.q_proj": [0.6, 0.4]}, [0.2, 0.6]),
])
def test_general_weight_shapes(lam, expected):
    assert general_weight(lam) == (pytest.approx(expected) if expected is not None else None)


def test_lambda_json_of_the_mix_stage(tmp_path: Path):
    """The mix stage's shape: `adapters` order, per-module pairs, a curve of dicts."""
    run = make_run(tmp_path, "r", "ml1m", "cold", 1, {"cocktail": {"ndcg@1": 0.1}})
    (run / "mix").mkdir()
    (run / "mix" / "lambda.json").write_text(json.dumps({
        "adapters": ["specific", "general"], "granularity": "layer",
        "lambdas": {"a.q_proj": [0.7, 0.3], "b.q_proj": [0.5, 0.5]},
        "curve": [{"step": 0, "entropy": 2.0, "lambda": [0.5, 0.5]},
                  {"step": 1, "entropy": 1.5, "lambda": [0.6, 0.4]}]}))
    runs = collect_runs([tmp_path])
    assert lambda_table(runs)[("ml1m", "cold")] == [pytest.approx(0.4)]
    assert lambda_curve(runs[0].lambdas) == pytest.approx([0.5, 0.4])


def test_recorded_random_row_and_scorer_rows(tmp_path: Path):
    m = {"ndcg@1": 1 / 30, "ndcg@3": 0.071}
    for seed in (1, 2):
        make_run(tmp_path, f"r{seed}", "ml1m", "warm", seed, {
            "random": m, "cocktail": {"ndcg@1": 0.2 + seed / 100, "ndcg@3": 0.3},
            "cocktail.generate": {"ndcg@1": 0.1, "ndcg@3": 0.1}})
    md = render_markdown(aggregate(collect_runs([tmp_path])))
    rows = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["Random", "RecCocktail", "RecCocktail (generate)"]
    assert "random (expected)" not in rows
    assert f"| Random | {1 / 30:.4f} |" in md  # an expectation: no ± over seeds


def test_build_report_writes_tables_and_plots(sweep, tmp_path: Path):
    root, truth = sweep
    out = tmp_path / "rep"
    rc = report.main([str(root), "--out", str(out), "--domains", "ml1m,beauty"])
    assert rc == 0
    assert (out / "report.md").read_text().startswith("## Scenario: warm")
    data = json.loads((out / "report.json").read_text())
    assert len(data["runs"]) == 12
    assert data["lambda"]["ml1m/cold"] == pytest.approx(truth[("ml1m", "cold", "lambda")])
    for name in ("lambda.png", "lambda_curve.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not (out / "ndcg_vs_prompts.png").exists()  # every run used 50 prompts


def test_num_prompts_plot(tmp_path: Path):
    rng = random.Random(2)
    for n in (10, 50, 200):
        for seed in (1, 2):
            make_run(tmp_path, f"p{n}_{seed}", "ml1m", "cold", seed,
                     {"cocktail": {"ndcg@1": rng.random()}, "wa": {"ndcg@1": 0.2}}, num_prompts=n)
    table = prompts_table(collect_runs([tmp_path]))
    assert sorted(table[("ml1m", "cold")]["cocktail"]) == [10, 50, 200]
    assert all(len(v) == 2 for v in table[("ml1m", "cold")]["cocktail"].values())
    res = build_report([tmp_path], tmp_path / "out")
    assert res["files"]["ndcg_vs_prompts"].read_bytes()[:8] == PNG_MAGIC
    assert "lambda" not in res["files"]  # no lambda.json written


def test_bad_results_file_names_the_file(tmp_path: Path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text('{"variants": {"g": {"ndcg@1": 1}}}')
    with pytest.raises(ValueError, match=r"results.json.*'g'"):
        collect_runs([tmp_path])
    with pytest.raises(FileNotFoundError):
        collect_runs([tmp_path / "missing"])


# -- experiment scripts ---------------------------------------------------------------------


SCRIPTS = {
    "table1_2": ["+experiment=ml1m_warm,beauty_warm,toys_warm,sports_warm,ml1m_cold,beauty_cold,"
                 "toys_cold,sports_cold", "seed=1,2,3"],
    "table3_fewshot": ["++tuning.specific.fraction=0.1,0.2,0.3", "++tuning.specific.init_from=general"],
    "table4_llama": ["backbone=llama31_8b", "trainer=gpu"],
    "figure4_lambda": ["mix=entropy"],
    "figure4_num_prompts": ["selection.lambda_users=10,20,50,100,200"],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_experiment_dry_run_prints_valid_commands(name, tmp_path: Path, capsys):
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert experiment_script(name).main(["--dry-run", "--out", str(tmp_path), "--", "logger=csv"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if not x.startswith("#")]
    runs = [shlex.split(x) for x in lines if "run.py" in x]
    assert runs and "-m reccocktail.report" in lines[-1]
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
    printed = [a for cmd in runs for a in cmd]
    for expected in SCRIPTS[name]:
        assert expected in printed
    for cmd in runs:
        overrides = cmd[cmd.index("-m") + 1:]
        assert "logger=csv" in overrides and any(o.startswith("hydra.sweep.dir=") for o in overrides)
        OverridesParser.create().parse_overrides(overrides)  # valid Hydra syntax


def test_experiment_slurm_and_report_only(tmp_path: Path, capsys):
    mod = experiment_script("table3_fewshot")
    mod.main(["--dry-run", "--launcher", "slurm", "--out", str(tmp_path)])
    assert "hydra/launcher=slurm" in capsys.readouterr().out
    for frac in (0.1, 0.2):
        extra = f"tuning:\n  specific:\n    fraction: {frac}\n    init_from: null\n"
        make_run(tmp_path / "fewshot", f"f{frac}", "ml1m", "warm", 1,
                 {"specific": {"ndcg@1": frac, "ndcg@3": frac}}, extra_cfg=extra)
    assert mod.main(["--report-only", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "fraction=0.1 NDCG@1" in md and "RecCocktail-S" in md


def test_report_module_keeps_the_command_and_the_stale_check():
    """`python -m reccocktail.report` and `reccocktail.report.stale_reason` outlive the split."""
    from reccocktail.reporting import cli, runs

    assert report.main is cli.main and report.stale_reason is runs.stale_reason
