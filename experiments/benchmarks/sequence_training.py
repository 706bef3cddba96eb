"""What a CPU training step of the sequence objective costs, per LoRA placement.

Several LoRA placements train on the same windows of ML-1M title sequences (the sequence
objective's rows: `reccocktail.models.sequence_data`), interleaved step by step so a shared
machine's changing load hits them alike. For each it prints tokens/s and targets/s (a target =
one title the loss is taken on) and the ratio to the first placement, beside what the
instruction format yields per token (one target per prompt).

    python experiments/benchmarks/sequence_training.py --steps 4 --batch-size 4 \
        --out outputs/benchmarks/sequence_training.json

Placements: `all_qkvo` (the paper's q/k/v/o on every layer), `top8_qkvo` (the top 8 of 30
layers: backward stops there), `all_linear` and `top8_linear` (q/k/v/o + MLP projections).
"""

from __future__ import annotations

import argparse
import time

import torch
from common import (
    DATA_ROOT,
    LINEAR,
    MOVIE_DOMAIN,
    QKVO,
    backbone_config,
    ml1m_samples,
    ml1m_sequence_windows,
)
from omegaconf import OmegaConf

from reccocktail.data.prompts import build_prompt_builder
from reccocktail.models.datamodule import collate
from reccocktail.models.tuning import build_peft_model, response_loss
from reccocktail.utils.io import write_json

PLACEMENTS = {"all_qkvo": (QKVO, None), "top8_qkvo": (QKVO, 8),
              "all_linear": (LINEAR, None), "top8_linear": (LINEAR, 8)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="smollm2_135m")
    ap.add_argument("--placements", default=",".join(PLACEMENTS))
    ap.add_argument("--steps", type=int, default=4, help="timed steps per placement (+1 warm-up)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-titles", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = backbone_config(args.backbone)
    windows, examples, tok, items = ml1m_sequence_windows(
        args.backbone, args.batch_size * (args.steps + 1), max_titles=args.max_titles)
    batches = [collate(examples[i : i + args.batch_size], tok.eos_token_id)
               for i in range(0, args.batch_size * (args.steps + 1), args.batch_size)]
    # the instruction format on the same users: one target (a title) per ~500-token prompt
    ins_pb = build_prompt_builder(tok, items, MOVIE_DOMAIN, base, 32)
    samples, _ = ml1m_samples(DATA_ROOT, 20, seed=1)
    ins_tokens = sum(len(ins_pb.example(s.history, s.candidates, s.target)["input_ids"])
                     for s in samples) / len(samples)

    names = args.placements.split(",")
    models, opts, times = {}, {}, {n: [] for n in names}
    tokens = {n: 0 for n in names}
    targets = {n: 0 for n in names}
    for n in names:
        cfg = OmegaConf.merge(base, {"lora": {"target_modules": PLACEMENTS[n][0],
                                              "top_layers": PLACEMENTS[n][1]}})
        models[n] = build_peft_model(cfg, init_seed=0)
        models[n].train()
        opts[n] = torch.optim.AdamW([p for p in models[n].parameters() if p.requires_grad], lr=5e-4)
    for step, batch in enumerate(batches):
        for n in names:  # interleaved: the same load for every placement
            t0 = time.perf_counter()
            loss = response_loss(models[n], batch["input_ids"], batch["attention_mask"],
                                 batch["labels"])
            loss.backward()
            opts[n].step()
            opts[n].zero_grad()
            dt = time.perf_counter() - t0
            if step:  # the first step warms up
                times[n].append(dt)
                tokens[n] += int(batch["attention_mask"].sum())
                targets[n] += sum(len(w.items) - w.context for w in
                                  windows[step * args.batch_size : (step + 1) * args.batch_size])
            print(f"step {step} {n}: loss {float(loss):.3f} {dt:.1f}s", flush=True)
    first = names[0]
    rows = {}
    for n in names:
        s = sum(times[n])
        trainable = sum(p.numel() for p in models[n].parameters() if p.requires_grad)
        rows[n] = {"tokens_per_s": round(tokens[n] / s, 1), "targets_per_s": round(targets[n] / s, 2),
                   "speed_vs_" + first: round(sum(times[first]) / s, 3), "trainable": trainable}
    tok_per_target = tokens[first] / max(1, targets[first])
    print(f"\n{'placement':<12} {'tok/s':>8} {'targets/s':>10} {'x ' + first:>12} {'trainable':>10}")
    for n, r in rows.items():
        print(f"{n:<12} {r['tokens_per_s']:>8} {r['targets_per_s']:>10} "
              f"{r['speed_vs_' + first]:>12} {r['trainable']:>10}")
    print(f"\nsequence objective: {tok_per_target:.1f} tokens per target; instruction format: "
          f"{ins_tokens:.0f} tokens per target ({ins_tokens / tok_per_target:.0f}x more)")
    if args.out:
        write_json(args.out, {"placements": rows, "tokens_per_target_sequence": tok_per_target,
                              "tokens_per_target_instruction": ins_tokens,
                              "batch_size": args.batch_size, "max_titles": args.max_titles,
                              "steps": args.steps, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
