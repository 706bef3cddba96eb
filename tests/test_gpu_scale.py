"""experiments/benchmarks/gpu_scale.py end to end at the tiny shape on the CPU: every section
runs and every field the GPU table of docs/benchmarks.md reads is in the printed summary and the JSON."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "benchmarks" / "gpu_scale.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory, shared_data) -> Path:
    """The prompt file a GPU machine gets, written from the real ML-1M and Beauty."""
    path = tmp_path_factory.mktemp("gpu_scale") / "samples.json.gz"
    _run("--write-samples", str(path), "--num-samples", "6", "--data-root", str(shared_data))
    with gzip.open(path, "rt") as fh:
        data = json.load(fh)
    for dom in ("ml1m", "beauty"):
        rows = data["domains"][dom]
        assert len(rows) == 6
        assert all(len(r["responses"]) == 30 and 0 <= r["target"] < 30 for r in rows)
        assert all(r["responses"][0][-1] == data["eos_token_id"] for r in rows)
    mean = sum(len(r["prompt"]) for r in data["domains"]["ml1m"]) / 6
    assert 400 < mean < 650  # the paper's ~500-token ML-1M prompts
    assert path.stat().st_size < 100_000
    return path


def test_tiny_shape_reports_every_field(samples, tmp_path):
    out_json = tmp_path / "gpu_scale.json"
    out = _run("--shape", "tiny", "--samples", str(samples), "--out", str(out_json),
               "--train-steps", "1", "--lambda-prompts", "4", "--users", "1", "--gen-users", "2",
               "--gen-batch", "2", "--anomaly-s", "90")
    text = out.stdout
    for needle in ("peak matmul", "tokens/s", "MFU", "lambda (4 prompts, k=3)",
                   "eval ml1m users/s: shared", "naive", "generate", "hours per paper setting",
                   "targets: train_mfu", "bf16 anomaly", "profile float32"):
        assert needle in text, needle
    res = json.loads(out_json.read_text())
    assert {"environment", "peak", "prompt_stats", "shapes", "bf16", "recipe", "settings"} <= set(res)
    assert res["environment"]["torch"] and res["peak"]["tflops"] > 0
    shape = res["shapes"][0]
    assert shape["shape"] == "tiny" and "error" not in shape
    train = shape["train"]["rows"]
    assert [r["micro_batch"] for r in train] == [1, 2]
    for r in train:
        assert {"tokens_per_s", "mfu", "hfu", "peak_gib", "pad_frac", "step_s"} <= set(r)
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] <= r["hfu"]
    lam = shape["lambda"]["best"]
    assert shape["lambda"]["prompts"] == 4 and shape["lambda"]["k"] == 3
    assert lam["step_s"] > 0 and lam["measure_s"] > 0 and "peak_gib" in lam
    for dom in ("ml1m", "beauty"):
        ev = shape["eval"][dom]
        for scorer in ("shared", "naive", "generate", "beam"):
            assert ev[scorer]["users_per_s"] > 0, (dom, scorer)
        assert ev["naive"]["max_abs_diff_vs_shared"] < 1e-3  # the same scores, the slow way
        assert ev["ideal_users_per_s"] > 0 and ev["shared_vs_ideal"] > 0
    assert "skipped" in shape["nf4"]  # no CUDA here
    for setting in ("ml1m_warm", "ml1m_cold", "beauty_warm", "beauty_cold", "sports_warm",
                    "sports_cold"):
        h = shape["hours"][setting]
        assert all(h[k] is not None and h[k] >= 0 for k in ("G_h", "S_h", "lambda_h", "eval_h",
                                                             "total_h"))
    assert set(shape["targets"]) == {"train_mfu", "shared_vs_one_prefill", "lambda_over_S"}
    rows = [r for r in res["bf16"]["rows"] if "dtype" in r]
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    assert {r["path"] for r in rows} == {"packed", "batched"}
    assert {r["attention"] for r in rows} == {"sdpa", "eager"}
    assert {r["shapes"] for r in rows} == {"varying", "fixed"}
    assert set(res["bf16"]["profiles"]) == {"float32", "bfloat16"}


def test_runs_without_data_or_samples(tmp_path):
    """On a machine without the datasets or a sample file: synthetic prompts, flagged."""
    out_json = tmp_path / "g.json"
    _run("--shape", "tiny", "--data-root", str(tmp_path / "none"), "--num-samples", "4",
         "--out", str(out_json), "--train-steps", "1", "--batch-sizes", "1", "--lambda-prompts",
         "2", "--users", "1", "--naive-users", "0", "--gen-users", "1", "--gen-batch", "1",
         "--anomaly-shape", "none")
    res = json.loads(out_json.read_text())
    assert res["samples_source"].startswith("synthetic")
    assert res["shapes"][0]["hours"]["ml1m_warm"]["total_h"] is not None
