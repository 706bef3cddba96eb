"""Scoring every variant of a run with and without the shared lower layers (`eval.share_trunk`).

Loads a finished run's backbone, adapters and test samples (default: the demo, SmolLM2-135M
with LoRA on the top 8 of 30 layers) and scores the same users with all its variants (zero-shot,
G, S, WA, cocktail) two ways, interleaved `--repeats` times: each variant on its own, and with
the layers below every adapter computed once per user (reccocktail/evaluation/trunk.py). Prints
seconds per user and variant for both, their ratio, and the largest score difference (0 when the
reuse is exact).

    python experiments/benchmarks/eval_trunk.py --run outputs/demo_quiet --users 20
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from reccocktail.data.prompts import build_prompt_builder, prompt_format
from reccocktail.data.samples import load_items, load_samples
from reccocktail.evaluation.scorers import LikelihoodScorer
from reccocktail.evaluation.stage import AdapterSwitcher
from reccocktail.evaluation.trunk import plan
from reccocktail.models.backbone import load_backbone
from reccocktail.utils.io import write_json


def score_all(model, variants, pb, samples, share: bool) -> tuple[list[torch.Tensor], float, int]:
    trunk = plan([p for _, p in variants], model, share, ["likelihood"])
    switcher = AdapterSwitcher(model)
    out, t0 = [], time.perf_counter()
    for _, path in variants:
        m = switcher.use(path)
        ctx = contextlib.nullcontext() if trunk is None else (
            trunk.replay(m) if trunk.recorded else trunk.record(m))
        with ctx:
            out.append(LikelihoodScorer(m, pb, batch_size=32).score(samples))
    seconds = time.perf_counter() - t0
    switcher.drop()
    return out, seconds, 0 if trunk is None else trunk.boundary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("outputs/demo_quiet"),
                    help="a finished run folder (adapters/, data/, .hydra/config.yaml)")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmarks/eval_trunk.json"))
    args = ap.parse_args()

    cfg = OmegaConf.load(args.run / ".hydra" / "config.yaml")
    model, tok = load_backbone(cfg.backbone)
    items = load_items(args.run / "data" / "items.tsv")
    pb = build_prompt_builder(tok, items, cfg.domain, cfg.backbone, int(cfg.data.max_title_tokens),
                              fmt=prompt_format(cfg))
    samples = load_samples(args.run / "data" / "test.jsonl", items)[: args.users]
    variants = [("zero_shot", None)] + [
        (n, args.run / "adapters" / n) for n in ("general", "specific", "wa", "cocktail")
        if (args.run / "adapters" / n / "adapter_config.json").is_file()]
    score_all(model, variants[:2], pb, samples[:1], False)  # warm-up, untimed
    times: dict[str, list[float]] = {"separate": [], "shared": []}
    scores: dict[str, list[torch.Tensor]] = {}
    boundary = 0
    for _ in range(args.repeats):
        for mode in ("separate", "shared"):
            s, sec, b = score_all(model, variants, pb, samples, mode == "shared")
            times[mode].append(sec / (len(samples) * len(variants)))
            scores[mode] = s
            boundary = max(boundary, b)
    diff = max(float((a - b).abs().max()) for a, b in zip(scores["separate"], scores["shared"],
                                                          strict=True))
    sep, sh = statistics.median(times["separate"]), statistics.median(times["shared"])
    res = {"run": str(args.run), "users": len(samples), "variants": [n for n, _ in variants],
           "shared_lower_layers": boundary, "s_per_user_variant": {"separate": sep, "shared": sh},
           "speedup": sep / sh, "max_abs_score_diff": diff, "threads": torch.get_num_threads()}
    print(f"{len(samples)} users x {len(variants)} variants, lower {boundary} layers shared: "
          f"separate {sep:.3f} s, shared {sh:.3f} s per user and variant -> {sep / sh:.2f}x; "
          f"max |score diff| {diff:.2e}")
    write_json(args.out, res)


if __name__ == "__main__":
    main()
