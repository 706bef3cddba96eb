"""Why does AlphaRec-style rank ML-1M's new items near zero (cold NDCG@1 0.003), and does
cold-item dropout mend it? Variants trained side by side on the same capped data.

    python experiments/alpharec_cold.py                         # ML-1M cold, ~3 min per variant
    python experiments/alpharec_cold.py --datasets amazon-beauty --variants original,dropout
    python experiments/alpharec_cold.py --dry-run               # what would run

The data is the baselines table's (experiments/baselines_table.py: 1,500 ML-1M users, seeded,
one window of 50 items, <= 5 epochs). With mixed negatives a cold test sample's target is a new
item and most of its 29 negatives are warm ones, so the script splits each ranking in two:
- `win vs warm`: how often the target scores above a warm negative (0.5 = no preference);
- `NDCG@1 among new`: the target's rank among the new candidates alone (random: 1/#new), i.e.
  whether the title signal orders new items at all.
A model whose text signal works but which places every new item below the warm ones shows a
high second number and a win rate near 0. Variants: `original` (the paper's model),
`no_graph` (num_layers 0: the MLP alone, no LightGCN), `dropout` (model.cold_item_dropout 0.1,
our remedy; reccocktail/baselines/alpharec.py; `dropout=<p>` for another rate). The rates are
compared on test samples here: a diagnosis, not a tuned baseline row (the row keeps p = 0).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {"original": {}, "no_graph": {"num_layers": 0}, "dropout": {"cold_item_dropout": 0.1}}


def variant_settings(name: str) -> dict:
    """`original`, `no_graph`, `dropout` or `dropout=<p>` as model overrides."""
    if name.startswith("dropout="):
        return {"cold_item_dropout": float(name.split("=", 1)[1])}
    if name not in VARIANTS:
        raise SystemExit(f"--variants: unknown {name!r}; choose from {sorted(VARIANTS)} or dropout=<p>")
    return VARIANTS[name]


def split_metrics(scores, cands, targets, item_counts) -> dict[str, float]:
    """NDCG@1 overall, the target's win rate against warm / new negatives, NDCG@1 among new."""
    import torch

    wins_warm = wins_new = n_warm = n_new = 0.0
    top1_new = 0.0
    for row, cand, t in zip(scores, cands, targets):
        new = item_counts[cand] == 0
        other = torch.ones_like(new)
        other[t] = False
        beat = (row[t] > row).float()
        wins_warm += float(beat[other & ~new].sum())
        n_warm += float((other & ~new).sum())
        wins_new += float(beat[other & new].sum())
        n_new += float((other & new).sum())
        top1_new += float(bool(new[t]) and bool((row[t] > row[other & new]).all()))
    n = len(targets)
    return {"win_vs_warm": wins_warm / max(n_warm, 1), "win_vs_new": wins_new / max(n_new, 1),
            "ndcg@1_among_new": top1_new / n, "new_negatives_per_sample": n_new / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["ml-1m"])
    p.add_argument("--scenarios", default="cold")
    p.add_argument("--variants", default="original,no_graph,dropout")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / "outputs" / "alpharec_cold"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dry-run", action="store_true", help="print what would be trained, run nothing")
    a = p.parse_args(argv)
    for v in a.variants.split(","):
        variant_settings(v)  # an unknown variant fails here, not after the first one trained
    if a.dry_run:
        for ds, scenario in [(d, s) for d in a.datasets for s in a.scenarios.split(",")]:
            print(f"{ds} {scenario}: AlphaRec-style variants {a.variants} "
                  f"-> {Path(a.out) / f'{ds}_{scenario}'} ({a.threads} threads, seed {a.seed})")
        return 0

    import torch
    from baselines_table import (  # this script's folder is on sys.path
        CAPS,
        build_contract,
        capped_settings,
        cpu_trainer,
    )

    from reccocktail.baselines.sequential import SequenceDataModule
    from reccocktail.baselines.stage import run_one
    from reccocktail.evaluation.confidence import ci_fields
    from reccocktail.evaluation.metrics import ranking_metrics, target_ranks
    from reccocktail.utils.io import write_json

    torch.set_num_threads(a.threads)

    rows = []
    for ds, scenario in [(d, s) for d in a.datasets for s in a.scenarios.split(",")]:
        caps = CAPS[ds]
        data = build_contract(Path(a.data_root) / ds, Path(a.out) / f"{ds}_{scenario}",
                              scenario, max_users=caps["max_users"], seed=a.seed)
        dm = SequenceDataModule(data)
        dm.load()
        samples = dm.test_samples
        for variant in a.variants.split(","):
            settings = capped_settings("alpharec", caps["max_len"])
            settings["model"] = {**settings["model"], **variant_settings(variant)}
            t0 = time.time()
            scores, info = run_one("alpharec", settings, data, samples, cpu_trainer, a.seed,
                                   cache_dir=ROOT / "outputs" / "cache")
            targets = [s.target_index for s in samples]
            m = ranking_metrics(scores, targets)
            ci = ci_fields(target_ranks(scores, targets), [s.user for s in samples], [1, 3])["ci"]
            cands = [torch.tensor([dm.vocab.index[i] for i in s.candidates]) for s in samples]
            split = split_metrics(scores, cands, targets, dm.item_counts)
            row = {"dataset": ds, "scenario": scenario, "variant": variant,
                   "model": settings["model"], "ndcg@1": round(m["ndcg@1"], 4),
                   "ndcg@1_ci": [round(x, 4) for x in ci["ndcg@1"]],
                   "ndcg@3": round(m["ndcg@3"], 4), **{k: round(v, 4) for k, v in split.items()},
                   "test_samples": len(samples), "train_s": info.get("train_seconds"),
                   "best_epoch": info.get("best_epoch"), "total_s": round(time.time() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_json(Path(a.out) / "alpharec_cold.json", {"args": vars(a), "rows": rows})
    print("\n| dataset | variant | NDCG@1 [95% CI] | NDCG@3 | win vs warm | win vs new | "
          "NDCG@1 among new | new negatives | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} {r['scenario']} | {r['variant']} | {r['ndcg@1']:.3f} "
              f"[{r['ndcg@1_ci'][0]:.3f}, {r['ndcg@1_ci'][1]:.3f}] | {r['ndcg@3']:.3f} | "
              f"{r['win_vs_warm']:.3f} | {r['win_vs_new']:.3f} | {r['ndcg@1_among_new']:.3f} | "
              f"{r['new_negatives_per_sample']:.1f} | {r['train_s']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
