"""experiments/cpu_quality.py: the pipeline command it builds and the table it writes from
finished runs (here hand-written results.json files, so no training is needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import experiment_script

from reccocktail.evaluation.metrics import metrics_from_ranks
from reccocktail.utils.io import read_jsonl, write_json, write_jsonl


def test_command_runs_the_chosen_dataset_stages_and_omfa_budget():
    mod = experiment_script("cpu_quality")
    cmds = []
    mod.run_logged = lambda cmd, name, dry: cmds.append((cmd, dry))
    assert mod.main(["--dataset", "beauty", "--scenarios", "cold", "--stages", "data,baselines",
                     "--baselines", "pop,p5,omfa", "--general-windows", "30",
                     "--specific-windows", "70", "--dry-run", "--", "tuning.batch_size=4"]) == 0
    ((cmd, dry),) = cmds
    assert dry
    assert "+experiment=beauty_cold" in cmd
    assert "stages=[data,baselines]" in cmd and "baseline=[pop,p5,omfa]" in cmd
    assert "baselines.omfa.general_windows=30" in cmd and "baselines.omfa.target_windows=70" in cmd
    assert "tuning.specific.max_samples=70" in cmd
    assert cmd[-1] == "tuning.batch_size=4"  # the user's overrides come last and win


def test_report_lists_the_llm_baselines_beside_the_pop_reference(tmp_path):
    mod = experiment_script("cpu_quality")
    row = {"metrics": {"ndcg@1": 0.25, "ndcg@3": 0.4}, "ci": {"ndcg@1": [0.2, 0.3]},
           "train_seconds": 321.0}
    variants = {"pop": {"metrics": {"ndcg@1": 0.22, "ndcg@3": 0.36}, "train_seconds": 0.1},
                "p5": row, "omfa": {**row, "metrics": {"ndcg@1": 0.05, "ndcg@3": 0.1}}}
    write_json(tmp_path / "warm" / "results.json", {"variants": variants})
    args = type("A", (), {"out": str(tmp_path), "scenarios": ["warm"], "dataset": "beauty",
                          "machine": "test"})()
    md = mod.report(args)
    assert "Amazon Beauty" in md
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "0.220" in lines["Popularity"]  # `--stages data,baselines` has no eval-stage row
    assert "0.250 [0.200, 0.300]" in lines["P5 (SmolLM2-135M, full fine-tuning)"]
    assert "0.050" in lines["One-Model-for-All-style (SmolLM2-135M, LoRA)"]
    assert '"p5": 321.0' in md  # each row's training seconds, in the budget line


def _run(folder: Path, ranks: dict[str, list[int]]) -> Path:


    variants = {}
    for name, rs in ranks.items():
        write_jsonl(folder / "predictions" / f"{name}.jsonl",
                    [{"id": f"s{i}", "user": f"u{i}", "rank": r} for i, r in enumerate(rs)])
        m = metrics_from_ranks(torch.tensor(rs), [1, 3])
        variants[name] = {"metrics": {k: float(v.mean()) for k, v in m.items()}}
    write_json(folder / "results.json", {"variants": variants})
    return folder


def test_paired_across_runs_compares_rows_on_the_same_samples(tmp_path):
    mod = experiment_script("cpu_quality")
    mine = _run(tmp_path / "mine", {"p5": [1, 1, 2, 1, 1, 3], "pop": [2, 2, 2, 2, 2, 2]})
    other = _run(tmp_path / "other", {"specific": [2, 1, 2, 2, 2, 3], "cocktail": [1, 1, 2, 1, 1, 3]})
    got = mod.paired_across(mine, other)
    assert set(got) == {"p5_vs_specific", "p5_vs_cocktail"}  # pop is the reference, not a method
    assert abs(got["p5_vs_specific"]["ndcg@1"]["diff"] - 3 / 6) < 1e-9  # row minus reference
    assert got["p5_vs_specific"]["ndcg@1"]["ci"][0] > 0
    assert got["p5_vs_cocktail"]["ndcg@1"]["diff"] == 0.0
    assert got["p5_vs_cocktail"]["ndcg@1"]["n_nonzero"] == 0  # the same ranks for every user
    assert got["p5_vs_specific"]["ndcg@1"]["n_nonzero"] == 3
    assert got["p5_vs_specific"]["ndcg@1"]["n_users"] == 6
    _run(tmp_path / "other2", {"specific": [1, 1, 1, 1, 1]})  # one sample fewer
    with pytest.raises(ValueError, match="not the same samples"):
        mod.paired_across(mine, tmp_path / "other2")


def test_paired_across_runs_compares_a_row_both_runs_have_with_its_namesake(tmp_path):
    """Two full runs (e.g. four ingredients and the pair): each run's cocktail is tested against
    the other's cocktail only, and the report names the other run's row."""
    mod = experiment_script("cpu_quality")
    mine = _run(tmp_path / "mine", {"cocktail": [1, 1, 1, 2, 2, 2], "general": [3, 3, 3, 3, 3, 3]})
    other = _run(tmp_path / "other", {"cocktail": [2, 2, 2, 2, 2, 2], "specific": [1] * 6})
    got = mod.paired_across(mine, other)
    assert set(got) == {"cocktail_vs_cocktail@other", "general_vs_specific", "cocktail_vs_specific"}
    assert abs(got["cocktail_vs_cocktail@other"]["ndcg@1"]["diff"] - 3 / 6) < 1e-9
    assert got["cocktail_vs_cocktail@other"]["ndcg@1"]["n_nonzero"] == 3
    assert got["general_vs_specific"]["ndcg@1"]["diff"] == -1.0
    args = type("A", (), {"out": str(tmp_path / "m"), "scenarios": ["warm"], "dataset": "beauty",
                          "machine": "test", "paired_with": str(tmp_path / "o")})()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "warm").symlink_to(mine)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "warm").symlink_to(other)
    md = mod.report(args)
    assert "| RecCocktail (entropy λ) − RecCocktail (entropy λ) of that run | +0.500" in md


def test_paired_across_runs_refuses_rows_with_other_candidates(tmp_path):
    """Two run folders with the same sample ids but other candidate lists (another data
    seed) are not paired: the error names the rows and the other run's predictions file."""
    mod = experiment_script("cpu_quality")
    mine = _run(tmp_path / "mine", {"p5": [1, 1, 2, 1, 1, 3]})
    other = _run(tmp_path / "other", {"specific": [2, 1, 2, 2, 2, 3]})
    for folder, tag in ((mine, "a"), (other, "b")):
        name = "p5" if folder == mine else "specific"
        path = folder / "predictions" / f"{name}.jsonl"
        rows = [{**r, "target": "t", "candidates": ["t", f"{tag}{r['id']}"]}
                for r in read_jsonl(path)]
        write_jsonl(path, rows)
    with pytest.raises(ValueError, match=r"specific vs p5: same sample ids, different questions "
                                         r"\(candidates differs on 6 sample.*other/predictions/"
                                         r"specific.jsonl.*mine/predictions/p5.jsonl"):
        mod.paired_across(mine, other)


def test_report_gives_holm_adjusted_p_for_the_primary_comparisons(tmp_path):
    """A results.json from before the adjustment (no p_holm): the report computes the family
    (G, S and the best baseline present here, on NDCG@1/3) and prints raw and Holm p side by
    side; the weaker baseline is exploratory ("–")."""
    from reccocktail.evaluation.confidence import holm

    mod = experiment_script("cpu_quality")

    def row(n1: float, **meta) -> dict:
        return {"metrics": {"ndcg@1": n1, "ndcg@3": n1 + 0.1}, **meta}

    def test(p1: float, p3: float) -> dict:
        return {"ndcg@1": {"diff": 0.1, "ci": [0.01, 0.2], "p": p1},
                "ndcg@3": {"diff": 0.1, "ci": [0.01, 0.2], "p": p3}}

    variants = {"general": row(0.1), "specific": row(0.2), "cocktail": row(0.3),
                "sasrec": row(0.25, kind="baseline"), "gru4rec": row(0.05, kind="baseline")}
    raw = {"general": (0.004, 0.01), "specific": (0.03, 0.2), "sasrec": (0.02, 0.3),
           "gru4rec": (0.001, 0.001)}
    paired = {f"cocktail_vs_{k}": test(*ps) for k, ps in raw.items()}
    write_json(tmp_path / "warm" / "results.json", {"variants": variants, "paired": paired})
    args = type("A", (), {"out": str(tmp_path), "scenarios": ["warm"], "dataset": "ml1m",
                          "machine": "test"})()
    md = mod.report(args)
    family = [raw["general"][0], raw["general"][1], raw["specific"][0], raw["specific"][1],
              raw["sasrec"][0], raw["sasrec"][1]]
    adj = holm(family)
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert lines["RecCocktail-G"].endswith(f"| 0.004 | {adj[0]:.3f} | +0.100 [+0.010, +0.200] "
                                           f"| 0.010 | {adj[1]:.3f} |")
    assert f"| 0.030 | {adj[2]:.3f} |" in lines["RecCocktail-S"]
    assert lines["SASRec (best baseline)"].endswith(f"| 0.300 | {adj[5]:.3f} |")
    assert lines["GRU4Rec"].endswith("| 0.001 | – |")
    assert "adjusted over the 6 primary tests" in md
    saved = json.loads((tmp_path / "cpu_quality.json").read_text())
    assert saved["warm"]["results"]["paired"]["cocktail_vs_sasrec"]["ndcg@1"]["p_holm"] == \
        pytest.approx(adj[4])


def test_more_ingredients_name_their_stages_rows_and_the_best_ingredient(tmp_path):
    """`--ingredients` puts the list in the command (stages and rows through the `ingredients`
    token); the report gives each ingredient a row and judges the cocktail against the best of
    them, here the third ingredient, not max(G, S)."""
    mod = experiment_script("cpu_quality")
    cmds = []
    mod.run_logged = lambda cmd, name, dry: cmds.append(cmd)
    mod.main(["--dataset", "beauty", "--scenarios", "warm", "--baselines", "pop",
              "--ingredients", "general,specific,games", "--dry-run"])
    (cmd,) = cmds
    assert "stages=[data,baselines,ingredients,mix,eval]" in cmd
    assert "ingredients=[general,specific,games]" in cmd
    assert "eval.variants=[cocktail,ingredients,wa,zero_shot]" in cmd
    cmds.clear()
    mod.main(["--scenarios", "warm", "--dry-run"])  # the pair: today's command, unchanged
    assert "stages=[data,baselines,general,specific,mix,eval]" in cmds[0]
    assert not any(x.startswith("ingredients=") for x in cmds[0])

    def row(v: float) -> dict:
        return {"metrics": {"ndcg@1": v, "ndcg@3": v}}

    lam = {"lambda_by_name": {"general": 0.2, "specific": 0.3, "games": 0.5}}
    variants = {"general": row(0.10), "specific": row(0.12), "games": row(0.30),
                "wa": row(0.15), "cocktail": {**row(0.20), "lambda": lam}, "popularity": row(0.05)}
    write_json(tmp_path / "warm" / "results.json", {"variants": variants})
    args = type("A", (), {"out": str(tmp_path), "scenarios": ["warm"], "dataset": "beauty",
                          "machine": "test"})()
    md = mod.report(args)
    assert "| RecCocktail ingredient `games` | 0.300" in md
    assert md.index("RecCocktail-S |") < md.index("ingredient `games`") < md.index("RecCocktail-WA")
    (gap,) = [t for t, ok in mod.targets({"variants": variants}, "warm") if "best ingredient" in t]
    assert "= games" in gap and "+0.100" in gap
