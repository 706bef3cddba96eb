"""Evaluation throughput: users/s for the three scorers on real ML-1M prompts.

  shared    `LikelihoodScorer`: one prompt prefill, its KV cache shared by the batched candidates
  naive     `NaiveLikelihoodScorer`: every candidate as a full prompt+title sequence
  generate  `GenerateMatchScorer`: greedy decoding up to the title budget + title matching

Checks that shared and naive give equal scores (max |diff|) and reports the speed-up.

    python experiments/benchmarks/eval_throughput.py --users 4 \
        --out outputs/benchmarks/eval_throughput.json

Samples come from a run's `data/` folder (`--data-dir`, its test split), else are built on the
fly from ML-1M (RecBole files under $RECCOCKTAIL_DATA): a random user's last item is the target,
up to 10 items before it the history, 29 items the user never rated the negatives. One extra
user (3 candidates) is scored first as an untimed warm-up. Numbers depend on the machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import DATA_ROOT, MOVIE_DOMAIN, backbone_config, ml1m_samples
from omegaconf import OmegaConf

from reccocktail.data.prompts import build_prompt_builder
from reccocktail.data.samples import Sample, load_items, load_samples
from reccocktail.evaluation.scorers import (
    GenerateMatchScorer,
    LikelihoodScorer,
    NaiveLikelihoodScorer,
)
from reccocktail.models.backbone import load_backbone
from reccocktail.utils.io import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=4, help="timed users (plus one warm-up user)")
    ap.add_argument("--backbone", default="smollm2_135m", help="a conf/backbone/*.yaml name")
    ap.add_argument("--data-dir", type=Path, default=None, help="a run's data/ folder (optional)")
    ap.add_argument("--batch-size", type=int, default=30, help="candidates per forward pass")
    ap.add_argument("--methods", default="shared,naive,generate")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="backbone config overrides, e.g. dtype=bfloat16 config.num_hidden_layers=30")
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    bcfg = OmegaConf.merge(backbone_config(args.backbone), OmegaConf.from_dotlist(args.set))
    n = args.users + 1
    if args.data_dir:
        items = load_items(args.data_dir / "items.tsv")
        samples = load_samples(args.data_dir / "test.jsonl", items)[:n]
        source = str(args.data_dir)
    else:
        samples, items = ml1m_samples(DATA_ROOT, n, args.seed)
        source = str(DATA_ROOT / "ml-1m")
    model, tok = load_backbone(bcfg, device=args.device)
    domain = OmegaConf.create(MOVIE_DOMAIN)
    pb = build_prompt_builder(tok, items, domain, bcfg, max_title_tokens=32)
    # warm-up (first-call overhead) on a cut-down sample: the naive scorer is slow
    w = samples[0]
    warm = [Sample(w.id, w.user, w.history, w.candidates[0], w.candidates[:3])]
    timed = samples[1:]
    prompt_tokens = [len(pb.prompt_ids(s.history, s.candidates)) for s in timed]

    scorers = {"shared": LikelihoodScorer(model, pb, batch_size=args.batch_size),
               "naive": NaiveLikelihoodScorer(model, pb, batch_size=args.batch_size),
               "generate": GenerateMatchScorer(model, pb, batch_size=1)}
    results: dict = {"backbone": args.backbone, "overrides": args.set, "device": args.device, "users": len(timed), "source": source,
                     "num_candidates": len(timed[0].candidates), "threads": torch.get_num_threads(),
                     "mean_prompt_tokens": sum(prompt_tokens) / len(prompt_tokens), "methods": {}}
    scores = {}
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        scorer = scorers[name]
        scorer.score(warm)
        t0 = time.perf_counter()
        scores[name] = scorer.score(timed)
        sec = time.perf_counter() - t0
        row = {"seconds": round(sec, 3), "users_per_s": round(len(timed) / sec, 4)}
        if name == "generate":
            row["valid_ratio"] = scorer.valid_ratio
            row["outputs"] = scorer.outputs
        results["methods"][name] = row
        print(f"{name:9s} {row['users_per_s']:8.3f} users/s  ({sec:.1f} s for {len(timed)} users)",
              flush=True)
    if "shared" in scores and "naive" in scores:
        diff = float((scores["shared"] - scores["naive"]).abs().max())
        speedup = results["methods"]["naive"]["seconds"] / results["methods"]["shared"]["seconds"]
        results["max_abs_diff_shared_vs_naive"] = diff
        results["speedup_shared_vs_naive"] = round(speedup, 2)
        print(f"shared vs naive: {speedup:.1f}x faster, max |score diff| = {diff:.2e}")
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
