"""What the LM-head loss and the micro-batch cost a CPU training step: speed and peak memory.

The demo's training step (SmolLM2-135M, the sequence objective, LoRA on q/k/v/o + MLP of the
top 8 layers, 4 title windows of ML-1M users per optimizer step) in three variants:

  plain_4x1    logits of the labelled positions, then cross-entropy (`response_loss(fused=False)`)
  chunked_4x1  the chunked head loss (`reccocktail.models.head_loss`, the default)
  chunked_2x2  the same 4 windows as 2 micro-batches of 2, gradients accumulated

Speed: the variants run in one process, interleaved step by step on the same windows, so a
shared machine's load hits them alike; seconds per optimizer step (after one warm-up step) and
the ratio to the first. Memory: each variant again in a process of its own for `--mem-steps`
steps, its peak RSS from the kernel (`os.wait4`, what `/usr/bin/time -v` reports).

    python experiments/benchmarks/head_loss.py --steps 6 --out outputs/benchmarks/head_loss.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch
from common import LINEAR, backbone_config, ml1m_sequence_windows
from omegaconf import OmegaConf

from reccocktail.models.datamodule import collate
from reccocktail.models.tuning import build_peft_model, response_loss
from reccocktail.utils.io import write_json

# name -> (chunked head loss, micro-batch); every variant takes 4 windows per optimizer step
VARIANTS = {"plain_4x1": (False, 4), "chunked_4x1": (True, 4), "chunked_2x2": (True, 2)}
WINDOWS_PER_STEP = 4


def step_windows(n_steps: int, max_titles: int = 40) -> tuple[list[list[dict]], int]:
    """`n_steps` lists of 4 sequence examples (ML-1M users' training titles), and the pad id."""
    _, examples, tok, _ = ml1m_sequence_windows("smollm2_135m", WINDOWS_PER_STEP * n_steps,
                                                max_titles=max_titles)
    return ([examples[i:i + WINDOWS_PER_STEP]
             for i in range(0, WINDOWS_PER_STEP * n_steps, WINDOWS_PER_STEP)], tok.eos_token_id)


def new_model():
    cfg = OmegaConf.merge(backbone_config("smollm2_135m"),
                          {"lora": {"target_modules": LINEAR, "top_layers": 8}})
    model = build_peft_model(cfg, init_seed=0)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    return model, opt


def train_step(model, opt, examples: list[dict], pad: int, chunked: bool, micro: int) -> float:
    """One optimizer step over `examples` in micro-batches of `micro`; the mean loss."""
    losses = []
    parts = [examples[i:i + micro] for i in range(0, len(examples), micro)]
    for part in parts:
        b = collate(part, pad)
        loss = response_loss(model, b["input_ids"], b["attention_mask"], b["labels"],
                             fused=chunked) / len(parts)
        loss.backward()
        losses.append(float(loss.detach()))
    opt.step()
    opt.zero_grad()
    return sum(losses)


def child(name: str, steps: int) -> None:
    batches, pad = step_windows(steps)
    model, opt = new_model()
    for b in batches:
        train_step(model, opt, b, pad, *VARIANTS[name])


def peak_rss_mib(name: str, steps: int, threads: int | None) -> int:
    cmd = [sys.executable, __file__, "--child", name, "--mem-steps", str(steps)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name}: the memory run failed")
    return int(usage.ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps (+1 warm-up)")
    ap.add_argument("--mem-steps", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.variants.split(",") if n]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        ap.error(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
    if args.child:
        child(args.child, args.mem_steps)
        return

    mem = {n: peak_rss_mib(n, args.mem_steps, args.threads) for n in names}
    batches, pad = step_windows(args.steps + 1)
    tokens = sum(len(e["input_ids"]) for b in batches[1:] for e in b)
    models = {n: new_model() for n in names}
    secs = {n: 0.0 for n in names}
    losses = {n: [] for n in names}
    for step, batch in enumerate(batches):
        order = names[step % len(names):] + names[:step % len(names)]
        for n in order:
            t0 = time.perf_counter()
            losses[n].append(train_step(*models[n], batch, pad, *VARIANTS[n]))
            if step:
                secs[n] += time.perf_counter() - t0
    first = names[0]
    rows = {n: {"s_per_step": round(secs[n] / args.steps, 3),
                "tokens_per_s": round(tokens / secs[n], 1),
                f"speed_vs_{first}": round(secs[first] / secs[n], 3),
                "peak_rss_mib": mem[n], "losses": [round(x, 4) for x in losses[n]]}
            for n in names}
    print(f"\n{'variant':<12} {'s/step':>7} {'tok/s':>7} {'x ' + first:>12} {'peak RSS MiB':>13} "
          "losses")
    for n, r in rows.items():
        print(f"{n:<12} {r['s_per_step']:>7} {r['tokens_per_s']:>7} {r['speed_vs_' + first]:>12} "
              f"{r['peak_rss_mib']:>13} {' '.join(f'{x:.3f}' for x in r['losses'])}")
    if args.out:
        write_json(args.out, {"variants": rows, "steps": args.steps, "mem_steps": args.mem_steps,
                              "windows_per_step": WINDOWS_PER_STEP, "tokens_timed": tokens,
                              "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
