"""experiments/lambda_objectives.py end to end on a tiny debug run: λ learned per objective in
its own folder, scored on validation and test users, chosen on validation only."""

from __future__ import annotations

import os

import pytest
from conftest import ROOT, experiment_script
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from reccocktail.data.samples import write_items
from reccocktail.utils.io import read_json, read_jsonl, write_json, write_jsonl


@pytest.fixture(scope="module")
def debug_run(shared_data, tmp_path_factory):
    """A finished `debug=fast` run (tiny Llama, a slice of ML-100k), S trained without the
    validation samples, with the `.hydra/config.yaml` run.py would have written."""
    from reccocktail.pipeline import run

    tmp = tmp_path_factory.mktemp("objectives")
    out, cache = tmp / "run", tmp / "cache"
    backbone_cache = os.environ["RECCOCKTAIL_CACHE"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=[
            "debug=fast", "logger=none", f"paths.data_root={shared_data}",
            f"paths.output_dir={out}", f"paths.cache_dir={cache}",
            f"backbone.cache_dir={backbone_cache}", f"backbone.tokenizer.cache_dir={backbone_cache}",
            "tuning.specific.include_valid=false"])
    run(cfg)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out


@pytest.mark.slow  # the debug run behind both: ~1.5 min of CPU (pipeline, then two λ mixes)
def test_dry_run_changes_nothing_and_bad_input_is_named(debug_run, capsys):
    mod = experiment_script("lambda_objectives")
    assert mod.main(["--run", str(debug_run), "--objectives", "infomax", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "mix.objective=infomax" in text and "test row general: from the run" in text
    assert not (debug_run / "objectives").exists()
    with pytest.raises(SystemExit):
        mod.main(["--run", str(debug_run), "--objectives", "tent", "--dry-run"])
    with pytest.raises(SystemExit, match="--objectives"):
        mod.main(["--run", str(debug_run), "--dry-run", "--", "mix.objective=infomax"])
    with pytest.raises(SystemExit, match="config.yaml"):
        mod.main(["--run", str(debug_run / "data"), "--dry-run"])


@pytest.mark.slow
def test_objectives_learned_scored_and_chosen_on_validation(debug_run, monkeypatch):
    mod = experiment_script("lambda_objectives")
    assert mod.main(["--run", str(debug_run), "--objectives", "entropy,infomax",
                     "--valid-users", "0", "--grid-step", "0.5"]) == 0
    root = debug_run / "objectives"
    summary = read_json(root / "summary.json")
    scores = read_json(root / "scores.json")
    valid, test = scores["valid"]["variants"], scores["test"]["variants"]
    for o in ("entropy", "infomax"):
        lam = read_json(root / o / "mix" / "lambda.json")
        assert lam["lambda_objective"] == o
        assert (root / o / "adapters" / "cocktail" / "adapter_model.safetensors").is_file()
        assert (root / o / "data").is_symlink()
    # chosen by validation NDCG@1 (ties: NDCG@3, then the order given), never by test
    key = {o: (valid[f"cocktail.{o}"]["metrics"]["ndcg@1"],
               valid[f"cocktail.{o}"]["metrics"]["ndcg@3"], -i)
           for i, o in enumerate(("entropy", "infomax"))}
    assert summary["chosen"] == max(key, key=key.get)
    # G, S, WA and zero-shot on test come from the run itself (same samples, same scorer)
    run_rows = read_json(debug_run / "results.json")["variants"]
    for name in ("general", "specific", "wa", "zero_shot"):
        assert test[name]["metrics"] == run_rows[name]["metrics"]
    assert {"general", "specific", "wa", "cocktail.entropy", "cocktail.infomax",
            "cocktail.grid"} == set(valid)
    # the grid row: λ_G over 0, 0.5, 1 chosen on validation by mix=grid's rule, never a
    # candidate of the label-free choice
    grid_best = mod.choose(valid, ["specific", "wa", "general"])
    assert valid["cocktail.grid"]["grid_choice"] == grid_best
    assert test["cocktail.grid"]["metrics"] == test[grid_best]["metrics"]
    assert summary["chosen"] in ("entropy", "infomax")
    n_valid = len({r["user"] for r in read_jsonl(root / "predictions" / "valid" / "general.jsonl")})
    assert n_valid == summary["num_valid_users"] > 0
    assert test["cocktail.infomax"]["num_users"] == run_rows["cocktail"]["num_users"]
    best = max(("general", "specific"), key=lambda n: (test[n]["metrics"]["ndcg@1"],
                                                       test[n]["metrics"]["ndcg@3"]))
    rows = {r["row"]: r for r in summary["rows"]}
    for o in ("entropy", "infomax"):
        r = rows[f"cocktail.{o}"]
        assert r["vs_best_test"]["reference"] == summary["best_test"] == best
        diff = test[f"cocktail.{o}"]["metrics"]["ndcg@1"] - test[best]["metrics"]["ndcg@1"]
        assert r["vs_best_test"]["diff"] == pytest.approx(diff, abs=1e-9)
        assert 0 < r["vs_best_test"]["p"] <= 1
    assert "cocktail, infomax" in (root / "table.md").read_text()
    # a rerun learns and scores nothing again
    monkeypatch.setattr(mod, "load_backbone", lambda *a, **k: pytest.fail("scored again"))
    monkeypatch.setattr(mod, "run_mix_stage", _reused(mod.run_mix_stage))
    assert mod.main(["--run", str(debug_run), "--objectives", "entropy,infomax",
                     "--valid-users", "0", "--grid-step", "0.5"]) == 0
    assert read_json(root / "summary.json")["chosen"] == summary["chosen"]


def _reused(real):
    def wrapped(cfg, out_dir):
        summary = real(cfg, out_dir)
        assert summary["reused"] is True
        return summary
    return wrapped


def test_validation_users_that_trained_s_are_left_out(tmp_path):
    mod = experiment_script("lambda_objectives")
    write_items(tmp_path / "data" / "items.tsv", {str(i): f"Item {i}" for i in range(5)})
    write_jsonl(tmp_path / "data" / "valid.jsonl", [
        {"id": f"v{u}", "user": f"u{u}", "history": ["1"], "target": "2",
         "candidates": ["2", "3", "4"]} for u in range(4)])
    manifest = tmp_path / "adapters" / "specific" / "manifest.json"
    write_json(manifest, {"config": {"valid_users_trained": ["u0", "u2"]}})
    cfg = OmegaConf.create({"seed": 0})
    assert {s.user for s in mod.valid_samples(cfg, tmp_path, None)} == {"u1", "u3"}
    assert len(mod.valid_samples(cfg, tmp_path, 1)) == 1
    write_json(manifest, {"config": {"valid_users_trained": [f"u{u}" for u in range(4)]}})
    with pytest.raises(SystemExit, match="every validation user trained S"):
        mod.valid_samples(cfg, tmp_path, None)


def test_lambda_g_and_choice_rule():
    mod = experiment_script("lambda_objectives")
    assert mod.lambda_g([0.3, 0.7]) == pytest.approx(0.3)
    assert mod.lambda_g({"a": [0.2, 0.8], "b": [0.4, 0.6]}) == pytest.approx(0.3)
    rows = {"x": {"metrics": {"ndcg@1": 0.2, "ndcg@3": 0.3}},
            "y": {"metrics": {"ndcg@1": 0.2, "ndcg@3": 0.4}},
            "z": {"metrics": {"ndcg@1": 0.2, "ndcg@3": 0.4}}}
    assert mod.choose(rows, ["x", "y", "z"]) == "y"  # NDCG@3 breaks the tie, then the order


def test_grid_points_divide_one():
    mod = experiment_script("lambda_objectives")
    assert mod.grid_points(0.25) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert mod.grid_points(0.1)[3] == pytest.approx(0.3) and len(mod.grid_points(0.1)) == 11
    with pytest.raises(SystemExit, match="--grid-step"):
        mod.grid_points(0.3)
