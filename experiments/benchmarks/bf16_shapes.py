"""Why a bf16 backbone's training peak grows on the CPU: memory kept per distinct input shape.

The demo in bf16 (docs/benchmarks.md, "bf16 on the CPU") peaks at twice the fp32 RSS, and the
peak grows with the number of training steps (G's 80 windows less than S's 300), while fp32
stays flat. This isolates the suspected cause without the model: a stack of SmolLM2-sized
projections (576 -> 1536, frozen, four deep) runs forward and backward on `--steps` batches of
2 sequences in each of four modes, measured one mode per subprocess (so each starts from the
same RSS):

* `fp32-vary`   - float32, a new sequence length every step (100, 101, ...), like
                  length-grouped training batches;
* `bf16-fixed`  - bfloat16, one length (256) every step;
* `bf16-vary`   - bfloat16, a new length every step;
* `bf16-bucket` - bfloat16, the same lengths padded up to a multiple of `--bucket`.

Printed per mode: seconds, RSS at the start and the peak after the steps, and the growth. If
only `bf16-vary` grows, the memory is kept per shape by the bf16 matmul path (oneDNN), and
padding lengths to a few buckets bounds it.

    python experiments/benchmarks/bf16_shapes.py                # ~4 minutes on 2 cores
    python experiments/benchmarks/bf16_shapes.py --steps 50 --modes bf16-vary,bf16-bucket
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = ("fp32-vary", "bf16-fixed", "bf16-vary", "bf16-bucket")


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, steps: int, bucket: int, threads: int) -> dict:
    """One mode in this process: the projections, `steps` forward/backward passes."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.float32 if mode.startswith("fp32") else torch.bfloat16
    layers = [torch.nn.Linear(576, 1536, bias=False).to(dtype) for _ in range(4)]
    for layer in layers:
        layer.weight.requires_grad_(False)
    start = rss_peak_mib()
    t0 = time.time()
    for i in range(steps):
        n = 256 if mode == "bf16-fixed" else 100 + i
        if mode == "bf16-bucket":
            n = -(-n // bucket) * bucket
        x = torch.randn(2, n, 576, dtype=dtype, requires_grad=True)
        y = x
        for layer in layers:
            y = layer(y)[..., :576]
        y.float().sum().backward()
    return {"mode": mode, "seconds": round(time.time() - t0, 1), "rss_start_mib": round(start),
            "rss_peak_mib": round(rss_peak_mib()), "growth_mib": round(rss_peak_mib() - start)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="batches per mode (distinct lengths)")
    ap.add_argument("--bucket", type=int, default=64, help="bf16-bucket pads to this multiple")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.bucket, args.threads)))
        return
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"--modes: unknown {bad}; choose from {list(MODES)}")
    print(f"{args.steps} steps of 2 sequences, 4 frozen 576x1536 projections, "
          f"{args.threads} thread(s), bucket {args.bucket}")
    for m in modes:
        out = subprocess.run([sys.executable, __file__, "--child", m, "--steps", str(args.steps),
                              "--bucket", str(args.bucket), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{m:12s} {r['seconds']:7.1f} s  RSS {r['rss_start_mib']} -> {r['rss_peak_mib']} MiB "
              f"(+{r['growth_mib']})")


if __name__ == "__main__":
    main()
