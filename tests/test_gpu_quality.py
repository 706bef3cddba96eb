"""experiments/gpu_quality.py at a tiny size on the CPU: prepare (the data stage with caps)
and run (both objectives, every remaining stage), so the script a GPU session carries works."""

from __future__ import annotations

from conftest import experiment_script


def test_prepare_and_run_both_objectives_at_a_tiny_size(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RECCOCKTAIL_DATA", str(shared_data))
    gq = experiment_script("gpu_quality")
    carry, runs = tmp_path / "carry", tmp_path / "runs"
    small = ["--settings", "ml1m_warm", "--users", "4", "--lambda-users", "2", "--valid-users",
             "4", "--train-prompts", "6", "--general-prompts", "6"]
    assert gq.main(["prepare", "--out", str(carry), *small,
                    f"paths.cache_dir={tmp_path / 'cache'}"]) == 0
    data = carry / "ml1m_warm" / "data"
    assert (data / "sequences.jsonl").exists() and (data / "general" / "sequences.jsonl").exists()
    assert sum(1 for _ in open(data / "train.jsonl")) == 6
    assert gq.main(["run", "--carry", str(carry), "--runs", str(runs), *small, "--device", "cpu",
                    "--backbone", "tiny_llama", "--windows", "4", "--seq-batch", "2",
                    "--budget-s", "600", "tuning.num_workers=0", "tuning.batch_size=2",
                    "tuning.accumulate_grad_batches=1", "tuning.gradient_checkpointing=false",
                    "mix.steps=1", "mix.batch_size=2", "tuning.val_max_samples=2"]) == 0
    md = (runs / "gpu_quality.md").read_text()
    for objective in ("sequence", "instruction"):
        res = runs / f"ml1m_warm_{objective}" / "results.json"
        assert res.exists(), md
        from reccocktail.utils.io import read_json

        v = read_json(res)["variants"]
        assert {"cocktail", "specific", "general", "zero_shot"} <= set(v)
        assert v["cocktail"]["objective"] == objective and v["cocktail"]["num_users"] == 4
        assert f"ml1m_warm_{objective}" in md
