"""Constrained beam search speed and agreement on ML-100k or ML-1M (`--dataset`) with
SmolLM2-135M (CPU by default).

  (a) full catalogue (every ML-100k title in one trie, the user's seen items excluded, as
      `eval.candidates=all`): the old uncached beam, which re-feeds each hypothesis's whole
      prefix every step, next to the cached beam (prompt prefilled once, one new token per
      hypothesis per step) in its layouts `tree` (one cache row, tree mask; the default) and
      `batched` (one cache row per hypothesis, gathered by parent). Interleaved per user (the
      order rotates), the same users; the found items and log-likelihoods are compared.
  (b) 30 sampled candidates: beam (`--beam30`, one or more widths, e.g. `3,5,10`; eval default
      10) vs likelihood, interleaved.
  (c) agreement of each beam's top k with the exhaustive likelihood ranking, on the same users:
      on the 30 candidates (from (b)), and over the whole catalogue for the first
      `--exhaustive-users` users (every title scored; slow).

  `--exact` adds the exact best-first top-k search (`eval.search=exact`, tree layout) to (a),
  interleaved with the beams, and to (b) at each width, and reports its agreement in (c)
  (exact: k/k by construction).

    python experiments/benchmarks/beam_speed.py --users 6 --out outputs/benchmarks/beam_speed.json
    python experiments/benchmarks/beam_speed.py --dataset ml1m --layouts tree --beam30 3,5,10 \
        --users 10 --exhaustive-users 3 --out outputs/benchmarks/beam_speed_ml1m.json
    python experiments/benchmarks/beam_speed.py --dataset ml1m --layouts tree --exact \
        --users 10 --exhaustive-users 3 --device cuda

A user: a random user of the dataset (seeded), their last rating the target, up to 10 ratings before
it the history, 29 titles they never rated the negatives. One extra user is run first, untimed
(warm-up). Numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import (  # the sibling module (script folder on sys.path)
    DATA_ROOT,
    MOVIE_DOMAIN,
    backbone_config,
    draw_candidates,
    recbole_users,
)
from omegaconf import OmegaConf

from reccocktail.data.prompts import build_prompt_builder
from reccocktail.data.readers import read_ml100k
from reccocktail.data.samples import Sample
from reccocktail.evaluation.scorers import (
    BeamScorer,
    CatalogueBeamScorer,
    EvalMode,
    LikelihoodScorer,
)
from reccocktail.models.backbone import load_backbone
from reccocktail.utils.io import write_json

LAYOUTS = {"uncached": {"reuse_cache": False}, "tree": {"packed": True},
           "batched": {"packed": False}}


def ml100k_users(n: int, seed: int, history: int = 10, num_candidates: int = 30
                 ) -> tuple[list[Sample], list[set[str]], dict[str, str]]:
    """`n` leave-one-out samples of random ML-100k users, each user's seen items (everything
    rated before the target: the full-catalogue exclusion), and the titles."""
    table = read_ml100k(DATA_ROOT / "ml-100k" / "raw")
    titles = {i: t for i, t in table.titles.items() if t}
    df = table.interactions[table.interactions["item"].isin(titles)]
    seqs = {u: list(g.sort_values("time", kind="stable")["item"])
            for u, g in df.groupby("user", sort=True)}
    rng = random.Random(seed)
    pool = sorted(titles)
    samples, seen = [], []
    for user in rng.sample(sorted(seqs), n):
        seq = seqs[user]
        target, before = seq[-1], seq[:-1]
        cands = draw_candidates(rng, pool, target, seq, num_candidates)
        samples.append(Sample(f"{user}-bench", user, before[-history:], target, cands))
        seen.append(set(before))
    return samples, seen, titles


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleave(users: int, runs: dict[str, Callable[[int], object]]
               ) -> tuple[dict[str, float], dict[str, list[Any]]]:
    """Seconds per method and outputs per user, every method on every user, the order rotated
    per user so that drift in machine load hits each method alike."""
    names = list(runs)
    secs = dict.fromkeys(names, 0.0)
    outs: dict[str, list[Any]] = {n: [] for n in names}
    for u in range(users):
        for name in names[u % len(names):] + names[: u % len(names)]:
            s, o = timed(lambda name=name, u=u: runs[name](u))
            secs[name] += s
            outs[name].append(o)
    return secs, outs


def top_overlap(a: list[str], b: list[str], k: int) -> float:
    return len(set(a[:k]) & set(b[:k])) / k


def full_agreement(got: list[list[str]], orders: list[list[str]]) -> dict[str, Any]:
    """Top-10 agreement of ranked lists with the exhaustive orders of the same users."""
    m = len(orders)
    rows = [{"top1": g[0] == o[0], "overlap@10": top_overlap(g, o, 10),
             "same_top10_order": g[:10] == o[:10],
             "within": max(o.index(i) + 1 for i in g[:10])} for g, o in zip(got, orders)]
    return {"users": m, "top1": f"{sum(r['top1'] for r in rows)}/{m}",
            "mean_overlap@10": round(statistics.mean(r["overlap@10"] for r in rows), 4),
            "same_top10_order": f"{sum(r['same_top10_order'] for r in rows)}/{m}",
            "worst_exhaustive_rank_of_beam_top10": max(r["within"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=6, help="timed users (plus one warm-up user)")
    ap.add_argument("--layouts", default="uncached,tree,batched",
                    help=f"full-catalogue beams to time, of {list(LAYOUTS)}")
    ap.add_argument("--beam-size", type=int, default=20,
                    help="full-catalogue beam (eval.beam_size; 20 = largest default full_ks)")
    ap.add_argument("--beam30", default="10",
                    help="beam width(s) on the 30 candidates, comma-separated (e.g. 3,5,10)")
    ap.add_argument("--dataset", default="ml100k", choices=["ml100k", "ml1m"],
                    help="ml100k (raw GroupLens files) or ml1m (the RecBole files)")
    ap.add_argument("--exhaustive-users", type=int, default=1,
                    help="users whose whole catalogue is also scored exhaustively (c)")
    ap.add_argument("--exact", action="store_true",
                    help="also time the exact best-first top-k search (eval.search=exact)")
    ap.add_argument("--format", default="instruction", choices=["instruction", "sequence"])
    ap.add_argument("--backbone", default="smollm2_135m", help="a conf/backbone/*.yaml name")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layouts = [m.strip() for m in args.layouts.split(",") if m.strip()]
    unknown = set(layouts) - set(LAYOUTS)
    if unknown:
        ap.error(f"--layouts: unknown {sorted(unknown)}; choose from {list(LAYOUTS)}")

    try:
        widths = sorted({int(w) for w in args.beam30.split(",") if w.strip()})
    except ValueError:
        ap.error(f"--beam30: expected comma-separated integers, got {args.beam30!r}")
    if not widths or min(widths) < 1:
        ap.error(f"--beam30: expected positive widths, got {args.beam30!r}")
    if args.dataset == "ml1m":
        samples, seen, titles = recbole_users(DATA_ROOT, "ml-1m", args.users + 1, args.seed)
    else:
        samples, seen, titles = ml100k_users(args.users + 1, args.seed)
    warm, users, warm_seen, seen = samples[0], samples[1:], seen[0], seen[1:]
    model, tok = load_backbone(backbone_config(args.backbone), device=args.device)
    domain = OmegaConf.create(MOVIE_DOMAIN)
    pb = build_prompt_builder(tok, titles, domain, backbone_config(args.backbone),
                              max_title_tokens=32, fmt=args.format)
    catalogue = sorted(titles, key=int)
    full = CatalogueBeamScorer(model, pb, beam_size=args.beam_size, progress=False,
                               item_ids=catalogue)
    beams = {f"beam{w}": BeamScorer(model, pb, beam_size=w, progress=False) for w in widths}
    if args.exact:
        full_exact = CatalogueBeamScorer(model, pb, beam_size=args.beam_size, progress=False,
                                         search_mode="exact", item_ids=catalogue)
        beams.update({f"exact{w}": BeamScorer(model, pb, beam_size=w, progress=False,
                                              search_mode="exact") for w in widths})
    lik = LikelihoodScorer(model, pb, batch_size=30, progress=False)
    n = len(users)
    res: dict = {"dataset": args.dataset, "backbone": args.backbone, "device": args.device,
                 "format": args.format,
                 "threads": torch.get_num_threads(), "users": n, "seed": args.seed,
                 "catalogue_size": len(catalogue), "beam_size_full": args.beam_size,
                 "beam_sizes_30": widths,
                 "mean_title_tokens": round(statistics.mean(len(r) for r in full.responses), 2)}

    def rank_full(layout: str, s: Sample, ex: set[str]) -> list[tuple[str, float]]:
        for key, value in {"reuse_cache": True, "packed": True, **LAYOUTS[layout]}.items():
            setattr(full, key, value)
        return full.rank([s], [ex])[0]

    # warm-up, untimed: every code path once
    for layout in layouts:
        rank_full(layout, warm, warm_seen)
    for b in beams.values():
        b.score([warm])
    lik.score([warm])
    runs_full: dict[str, Callable[[int], object]] = {
        m: (lambda u, m=m: rank_full(m, users[u], seen[u])) for m in layouts}
    if args.exact:
        full_exact.rank([warm], [warm_seen])
        runs_full["exact"] = lambda u: full_exact.rank([users[u]], [seen[u]])[0]

    # (a) full catalogue: uncached vs cached layouts (and the exact search), interleaved
    secs, outs = interleave(n, runs_full)
    res["full_catalogue"] = {m: {"seconds": round(secs[m], 3),
                                 "users_per_s": round(n / secs[m], 4)} for m in runs_full}
    if args.exact:
        res["full_catalogue"]["exact"]["approximate_searches"] = full_exact.approximate
    print(f"(a) full catalogue ({len(catalogue)} titles, beam {args.beam_size}, {n} users)")
    for m in runs_full:
        print(f"    {m:9s} {n / secs[m]:8.4f} users/s  ({secs[m]:.1f} s)", flush=True)
    ref = "uncached" if "uncached" in layouts else layouts[0]
    for m in layouts:
        if m == ref:
            continue
        same = sum([i for i, _ in a] == [i for i, _ in b] for a, b in zip(outs[m], outs[ref]))
        diff = max((abs(x - y) for a, b in zip(outs[m], outs[ref])
                    for (_, x), (_, y) in zip(a, b)), default=0.0)
        ratio = secs[ref] / secs[m]
        res["full_catalogue"][m].update({f"speedup_vs_{ref}": round(ratio, 2),
                                         f"same_ranked_list_as_{ref}": f"{same}/{n}",
                                         f"max_abs_diff_vs_{ref}": diff})
        print(f"    {m} vs {ref}: {ratio:.2f}x faster; same ranked list for {same}/{n} users, "
              f"max |log-lik diff| {diff:.1e}")

    # (b) 30 candidates: beams vs likelihood, interleaved
    runs30: dict[str, Callable[[int], object]] = {"likelihood": lambda u: lik.score([users[u]])[0]}
    runs30.update({name: (lambda u, b=b: b.score([users[u]])[0]) for name, b in beams.items()})
    secs30, outs30 = interleave(n, runs30)
    res["candidates_30"] = {m: {"seconds": round(secs30[m], 3),
                                "users_per_s": round(n / secs30[m], 4)} for m in secs30}
    print(f"(b) 30 candidates, {n} users: likelihood {n / secs30['likelihood']:.4f} users/s")
    for name in beams:
        ratio = secs30[name] / secs30["likelihood"]
        res["candidates_30"][name]["time_over_likelihood"] = round(ratio, 2)
        print(f"    {name:8s}  {n / secs30[name]:.4f} users/s ({ratio:.2f}x the time of "
              "likelihood)")

    # (c) agreement of each beam's top k (k = its width, at most 10) with exhaustive likelihood
    res["agreement_30"] = {}
    for name, scorer in beams.items():
        k = min(10, scorer.beam_size)
        agree = {"top1": 0, "overlap": [], "same_order": 0, "max_abs_diff": 0.0}
        for s, b, lk in zip(users, outs30[name], outs30["likelihood"]):
            bo = [s.candidates[j] for j in b.argsort(descending=True, stable=True).tolist()
                  if torch.isfinite(b[j])]
            lo = [s.candidates[j] for j in lk.argsort(descending=True, stable=True).tolist()]
            agree["top1"] += bo[0] == lo[0]
            agree["overlap"].append(top_overlap(bo, lo, k))
            agree["same_order"] += bo[:k] == lo[:k]
            found = torch.isfinite(b)
            agree["max_abs_diff"] = max(agree["max_abs_diff"],
                                        float((b[found] - lk[found]).abs().max()))
        res["agreement_30"][name] = {
            "k": k, "top1": f"{agree['top1']}/{n}",
            "mean_overlap@k": round(statistics.mean(agree["overlap"]), 4),
            "same_top_k_order": f"{agree['same_order']}/{n}",
            "max_abs_diff": agree["max_abs_diff"]}
        print(f"(c) 30 candidates, {name} top {k} vs likelihood: top-1 equal "
              f"{agree['top1']}/{n}, mean overlap@{k} "
              f"{res['agreement_30'][name]['mean_overlap@k']:.3f}, same order "
              f"{agree['same_order']}/{n}, max |score diff| {agree['max_abs_diff']:.1e}")
    m_ex = min(args.exhaustive_users, n)
    if m_ex:
        orders, sec_ex = [], 0.0
        for u in range(m_ex):
            allowed = [i for i in catalogue if i not in seen[u]]
            prompt = pb.prompt_ids(users[u].history, [])
            with EvalMode(model), torch.inference_mode():
                s, scores = timed(lambda allowed=allowed, prompt=prompt: lik.score_ids(
                    prompt, [pb.response_ids(i) for i in allowed]))
            sec_ex += s
            orders.append([allowed[j]
                           for j in scores.argsort(descending=True, stable=True).tolist()])
        searches = {"agreement_full": ("beam", "tree" if "tree" in outs else layouts[0])}
        if args.exact:
            searches["agreement_full_exact"] = ("exact", "exact")
        for key, (label, run) in searches.items():
            a = res[key] = {"exhaustive_users_per_s": round(m_ex / sec_ex, 4),
                            **full_agreement([[i for i, _ in lst] for lst in outs[run]], orders)}
            print(f"(c) full catalogue, {label} {args.beam_size} top 10 vs exhaustive ({m_ex} "
                  f"users, {a['exhaustive_users_per_s']:.4f} users/s): top-1 equal {a['top1']}, "
                  f"mean overlap@10 {a['mean_overlap@10']:.3f}, same order "
                  f"{a['same_top10_order']}")
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
