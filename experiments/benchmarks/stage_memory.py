"""Peak memory per pipeline stage: each stage in a process of its own, its peak RSS
read from the kernel (`os.wait4`, the figure `/usr/bin/time -v` prints), then all stages in one
process as `make demo` runs them.

    python experiments/benchmarks/stage_memory.py --preset demo-short   # the demo's shapes
    python experiments/benchmarks/stage_memory.py --preset fast         # debug=fast
    python experiments/benchmarks/stage_memory.py -- +experiment=ml100k_demo selection.max_scored_users=5

`demo-short` keeps every size that sets the memory of a step (SmolLM2-135M, training batch 4,
λ micro-batch 2, 30 candidates) and cuts how many steps run (8 training samples per adapter,
4 λ prompts, 2 scored users), so it measures the demo's peaks in a few minutes. Adapters are
retrained (not taken from the cache); `--convert` also measures the one-off GGUF → HF
conversion of SmolLM2 in an empty cache. Peak RSS is the process's high-water mark: what a
machine must have free for that stage.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reccocktail.utils.io import write_json

ROOT = Path(__file__).resolve().parents[2]

STAGES = ["data", "general", "specific", "mix", "eval"]
PRESETS = {
    "fast": ["debug=fast"],
    "demo-short": ["tuning.general.max_samples=8", "tuning.specific.max_samples=8",
                   "tuning.val_max_samples=4", "selection.lambda_users=4", "mix.steps=1",
                   "mix.batch_size=2", "selection.max_scored_users=2", "eval.progress=false"],
}
ALWAYS = ["logger=none", "tuning.general.reuse=false", "tuning.specific.reuse=false"]


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Wall seconds and peak RSS (MiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    row = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024),
           "rc": rc}
    if rc != 0:
        row["tail"] = out[-2000:]
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="demo-short")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--no-together", action="store_true", help="skip the one-process run")
    ap.add_argument("--convert", action="store_true", help="also the GGUF conversion, empty cache")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "stage_memory.json")
    ap.add_argument("overrides", nargs="*", help="after --: more run.py overrides")
    args = ap.parse_args(argv)
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    env.setdefault("RECCOCKTAIL_CACHE", str(ROOT / "outputs" / "cache"))
    overrides = [*PRESETS[args.preset], *ALWAYS, *args.overrides]
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    result: dict = {"preset": args.preset, "overrides": overrides, "stages": {}}
    run = [sys.executable, "run.py", *overrides]
    with tempfile.TemporaryDirectory(prefix="stage_memory_") as tmp:
        if args.convert:
            cenv = {**env, "RECCOCKTAIL_CACHE": str(Path(tmp) / "empty_cache")}
            code = ("import os; from reccocktail.models.backbone import resolve_pretrained as r;"
                    "from omegaconf import OmegaConf as O;"
                    "c = O.load('conf/backbone/smollm2_135m.yaml');"
                    "c.cache_dir = os.environ['RECCOCKTAIL_CACHE']; r(c)")
            result["gguf_conversion"] = measure([sys.executable, "-c", code], cenv)
            print(f"gguf conversion  {result['gguf_conversion']}", flush=True)
        base = measure([sys.executable, "-c", "import reccocktail.pipeline, torch, transformers, "
                        "peft, lightning"], env)
        result["imports_only"] = base
        print(f"{'imports only':16s} {base['peak_rss_mib']:6d} MiB", flush=True)
        run_dir = Path(tmp) / "run"
        for stage in stages:
            row = measure([*run, f"stages=[{stage}]", f"hydra.run.dir={run_dir}"], env)
            result["stages"][stage] = row
            print(f"{stage:16s} {row['peak_rss_mib']:6d} MiB  {row['seconds']:7.1f} s"
                  + ("" if row["rc"] == 0 else f"  FAILED\n{row['tail']}"), flush=True)
        if not args.no_together:
            row = measure([*run, f"stages=[{','.join(stages)}]", f"hydra.run.dir={Path(tmp) / 'all'}"], env)
            result["one_process"] = row
            print(f"{'all, one process':16s} {row['peak_rss_mib']:6d} MiB  {row['seconds']:7.1f} s"
                  + ("" if row["rc"] == 0 else f"  FAILED\n{row['tail']}"), flush=True)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
