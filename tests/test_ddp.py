"""Two-process CPU DDP (gloo) trains the same ingredient as one process (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    from safetensors.torch import save_file

    import reccocktail.models.stage as st
    from test_tuning import make_cfg
    from conftest import backbone_cfg

    run_dir = Path(sys.argv[1])
    real = st.train_adapter

    def train_and_dump(*args, **kwargs):
        model, metrics, trainer = real(*args, **kwargs)
        weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(weights, str(run_dir / f"rank{trainer.global_rank}.safetensors"))
        return model, metrics, trainer

    st.train_adapter = train_and_dump
    cfg = make_cfg(run_dir, backbone_cfg("tiny_llama"))
    cfg.trainer.devices = 2
    cfg.trainer.strategy = "ddp"
    print("summary", st.run_specific_stage(cfg, run_dir))
""")


@pytest.mark.slow
def test_two_process_cpu_ddp_matches_one_process(tiny_llama_cfg, tmp_path):
    from safetensors.torch import load_file
    from test_tuning import make_cfg, write_domain

    from reccocktail.models.adapters import load_adapter_weights, read_manifest
    from reccocktail.models.stage import run_specific_stage

    ddp_dir = tmp_path / "ddp"
    write_domain(ddp_dir / "data", general=False)
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
               WANDB_MODE="disabled")
    proc = subprocess.run([sys.executable, str(script), str(ddp_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = load_file(str(ddp_dir / "rank0.safetensors"))
    r1 = load_file(str(ddp_dir / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and r0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # DDP keeps the replicas bit-identical
    m = read_manifest(ddp_dir / "adapters" / "specific")
    assert m["metrics"]["steps"] == 2  # 8 samples, batch 2 per rank, 2 ranks

    # one process, the same global batches through gradient accumulation
    one_dir = tmp_path / "one"
    write_domain(one_dir / "data", general=False)
    out = run_specific_stage(make_cfg(one_dir, tiny_llama_cfg, accumulate_grad_batches=2), one_dir)
    assert out["metrics"]["steps"] == 2
    got = load_adapter_weights(ddp_dir / "adapters" / "specific")
    want = load_adapter_weights(one_dir / "adapters" / "specific")
    moved = 0
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)
        moved += int("lora_B" in k and bool(want[k].abs().sum() > 0))
    assert moved  # training changed the adapter (B starts at zero)
