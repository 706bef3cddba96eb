"""Measure every baseline on ML-1M and Amazon Beauty, warm and cold: NDCG@1/3 on the
stored 30 candidates and training time on this machine.

    python experiments/baselines_table.py                       # the capped default (<= ~20 min)
    python experiments/baselines_table.py --datasets ml-1m --scenarios warm --baselines sasrec
    python experiments/baselines_table.py --dry-run             # the cells it would fill

Data: by default this script builds the data stage's contract files itself (`build_contract`,
below: 5-core, chronological leave-one-out, 10 % new items for cold, 29 uniform negatives per
sample; cold uses the pipeline's own split, `--cold-train-part` as `scenario.cold_train_part`), so it runs without the data stage; `--data-root-runs DIR` instead reads
`DIR/<dataset>_<scenario>/data/` written by `run.py stages=[data]`.
Caps (to fit a shared 2-core CPU in ~20 min): `--max-users` users per dataset (seeded; ML-1M
1500, Beauty 3000), one training window of `max_len` items per user (ML-1M 50, Beauty 20),
<= `--max-epochs` 5 epochs with early stopping (patience 2), full softmax, one torch thread.
Titles are encoded once per items.tsv and cached under outputs/cache (the cold run reuses them).
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import logging
import random
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np

from reccocktail.data.filtering import Sequences
from reccocktail.data.samples import write_items
from reccocktail.data.splits import Split, candidate_pools, cold_split
from reccocktail.utils.io import read_json, stable_hash, write_json, write_jsonl

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("baselines_table")

# Per-dataset caps of the default run (ML-1M: long sequences, few items per user-window;
# Beauty: short sequences, so a shorter window and more users cost the same).
CAPS = {"ml-1m": {"max_users": 1500, "max_len": 50},
        "amazon-beauty": {"max_users": 3000, "max_len": 20}}


# ------------------------------------------------------------------ contract files (stand-in)
def _read_recbole(folder: Path) -> tuple[dict[str, list[tuple[float, int, str]]], dict[str, str]]:
    name = folder.name
    titles: dict[str, str] = {}
    with open(folder / f"{name}.item", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:2] != ["item_id:token", "title:token_seq"]:
            raise ValueError(f"{folder / (name + '.item')}:1: unexpected header {header}")
        for row in reader:
            title = re.sub(r"\s+", " ", html.unescape(row[1] if len(row) > 1 else "")).strip()
            if title:
                titles[row[0]] = title
    by_user: dict[str, list[tuple[float, int, str]]] = {}
    with open(folder / f"{name}.inter", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:3] != ["user_id:token", "item_id:token", "timestamp:float"]:
            raise ValueError(f"{folder / (name + '.inter')}:1: unexpected header {header}")
        for lineno, row in enumerate(reader, 2):
            if row[1] in titles:
                by_user.setdefault(row[0], []).append((float(row[2]), lineno, row[1]))
    return by_user, titles


def _five_core(seqs: dict[str, list[str]], k: int) -> dict[str, list[str]]:
    while True:
        counts = Counter(i for s in seqs.values() for i in s)
        new = {u: [i for i in s if counts[i] >= k] for u, s in seqs.items()}
        new = {u: s for u, s in new.items() if len(s) >= k}
        if new == seqs:
            return seqs
        seqs = new


def capped_settings(name: str, max_len: int, max_epochs: int = 5, patience: int = 2,
                    max_windows: int = 1, num_negatives: int | None = None) -> dict:
    """`baselines.common` + `conf/baselines/<name>.yaml` with this table's CPU caps."""
    from omegaconf import OmegaConf

    conf = ROOT / "conf" / "baselines"
    common = OmegaConf.to_container(OmegaConf.load(conf / "default.yaml").common)
    common.update(max_epochs=max_epochs, patience=patience, max_windows_per_user=max_windows,
                  num_negatives=num_negatives)
    return {**common, "max_len": max_len,
            **OmegaConf.to_container(OmegaConf.load(conf / f"{name}.yaml"))}


def cpu_trainer(callbacks=None, **overrides):
    """The Lightning trainer of these CPU measurements: no logger, no progress bar."""
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks or [], **overrides)


def build_contract(folder: Path, out: Path, scenario: str, max_users: int | None = None,
                   seed: int = 42, history_len: int = 10, cold_fraction: float = 0.1,
                   num_candidates: int = 30, min_core: int = 5,
                   cold_train_part: str = "before_test",
                   valid_new_item_fraction: float = 0.05) -> Path:
    """Write items.tsv, sequences.jsonl, valid.jsonl, test.jsonl (the data stage's contract) for a
    RecBole dataset under `out/data`; cached by the arguments' hash. Returns the data folder.

    Cold uses the pipeline's own new-item split (`reccocktail.data.splits.cold_split`, the same
    `cold_train_part` rule and validation-new items) with mixed negatives, so a baseline here
    sees exactly what it would see in a cold run of the pipeline."""
    args = [str(folder), scenario, max_users, seed, history_len, cold_fraction, num_candidates,
            min_core]
    if scenario == "cold":  # the key of a warm contract is unchanged
        args += [cold_train_part, valid_new_item_fraction, "pipeline-split"]
    data = out / "data"
    stamp = data / "contract.json"
    key = stable_hash(args)
    if stamp.exists() and read_json(stamp).get("key") == key:
        return data
    by_user, titles = _read_recbole(folder)
    seqs: dict[str, list[str]] = {}
    for u, rows in by_user.items():
        seen: set[str] = set()
        seqs[u] = [i for _, _, i in sorted(rows) if not (i in seen or seen.add(i))]
    seqs = _five_core(seqs, min_core)
    users = sorted(seqs)
    if max_users is not None and len(users) > max_users:
        users = sorted(random.Random(seed).sample(users, max_users))
    items = sorted({i for s in seqs.values() for i in s}, key=lambda x: (len(x), x))
    if scenario not in ("warm", "cold"):
        raise ValueError(f"scenario: unknown value {scenario!r}; choose warm or cold")

    def sample(u: str, split: str, history: list[str], target: str, touched: set[str],
               allowed: set[str] | None = None) -> dict:
        rng = random.Random(stable_hash(seed, u, split))
        pool = [i for i in items if i not in touched and (allowed is None or i in allowed)]
        cands = rng.sample(pool, num_candidates - 1) + [target]
        rng.shuffle(cands)
        return {"id": f"{u}:{split}", "user": u, "history": history[-history_len:],
                "target": target, "candidates": cands}

    sequences, valid, test = [], [], []
    new_items: set[str] = set()
    if scenario == "warm":
        for u in users:
            seq, touched = seqs[u], set(seqs[u])
            train = seq[:-2]
            valid.append(sample(u, "valid", train, seq[-2], touched))
            test.append(sample(u, "test", seq[:-1], seq[-1], touched))
            sequences.append({"user": u, "items": train})
    else:
        split = _cold_split(seqs, users, items, cold_fraction, seed, cold_train_part,
                                   valid_new_item_fraction)
        new_items = {items[c] for c in np.flatnonzero(split.new_test)}
        pools = {k: None if v is None else {items[c] for c in np.flatnonzero(v)}
                 for k, v in candidate_pools(split, "mixed").items()}
        for name, out_rows in (("valid", valid), ("test", test)):
            rows = split.rows[name]
            for r in range(len(rows)):
                u = users[int(rows.user[r])]
                hist = [items[c] for c in rows.history(r, history_len)]
                out_rows.append(sample(u, name, hist, items[int(rows.targets[r])], set(seqs[u]),
                                       pools[name]))
        off, flat = split.train_offsets, split.train_flat
        for k, u in enumerate(users):
            train = [items[c] for c in flat[off[k]:off[k + 1]]]
            if len(train) >= 2:
                sequences.append({"user": u, "items": train})
    write_items(data / "items.tsv", {i: titles[i] for i in items})
    write_jsonl(data / "sequences.jsonl", sequences)
    write_jsonl(data / "valid.jsonl", valid)
    write_jsonl(data / "test.jsonl", test)
    write_jsonl(data / "train.jsonl", [])
    write_json(stamp, {"key": key, "args": args, "users": len(sequences), "items": len(items),
                       "new_items": len(new_items), "valid": len(valid), "test": len(test)})
    return data


def _cold_split(seqs: dict[str, list[str]], users: list[str], items: list[str], fraction: float,
                seed: int, train_part: str, valid_fraction: float) -> Split:
    """The pipeline's cold split over these sequences (item codes = positions in `items`)."""
    code = {i: c for c, i in enumerate(items)}
    lengths = np.array([len(seqs[u]) for u in users], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.array([code[i] for u in users for i in seqs[u]], dtype=np.int64)
    base = Sequences("baselines_table", list(users), list(items), list(items), offsets, flat)
    return cold_split(base, fraction, seed, valid_new_item_fraction=valid_fraction,
                      train_part=train_part)


# ------------------------------------------------------------------ the table
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--data-root-runs", default=None)
    p.add_argument("--out", default=str(ROOT / "outputs" / "baselines_table"))
    p.add_argument("--datasets", nargs="+", default=["ml-1m", "amazon-beauty"])
    p.add_argument("--scenarios", nargs="+", default=["warm", "cold"])
    p.add_argument("--baselines", nargs="+",
                   default=["pop", "bpr", "gru4rec", "sasrec", "fmlp", "unisrec"])
    p.add_argument("--max-users", type=int, default=None,
                   help="users per dataset (default: %s)" % {k: v["max_users"] for k, v in CAPS.items()})
    p.add_argument("--max-len", type=int, default=None,
                   help="positions per sequence (default: %s)" % {k: v["max_len"] for k, v in CAPS.items()})
    p.add_argument("--num-negatives", type=int, default=0,
                   help="sampled-softmax negatives per step (0: full softmax, the default)")
    p.add_argument("--max-epochs", type=int, default=5)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--max-windows", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cold-train-part", default="before_test", choices=["before_test", "all_non_new"],
                   help="where a cold user's training part ends (scenario.cold_train_part)")
    p.add_argument("--dry-run", action="store_true", help="print the cells of the table, run nothing")
    args = p.parse_args(argv)
    if args.dry_run:
        for ds in args.datasets:
            caps = {**CAPS.get(ds, {"max_users": 3000, "max_len": 50})}
            users = args.max_users or caps["max_users"]
            for sc in args.scenarios:
                print(f"{ds} {sc}: {' '.join(args.baselines)} on {users} users, max_len "
                      f"{args.max_len or caps['max_len']}, <= {args.max_epochs} epochs -> "
                      f"{Path(args.out) / f'{ds}_{sc}'}")
        return

    import torch

    from reccocktail.baselines.stage import run_one
    from reccocktail.evaluation.metrics import ranking_metrics

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    out = Path(args.out)

    rows = []
    t_all = time.time()
    for ds in args.datasets:
        caps = {**CAPS.get(ds, {"max_users": 3000, "max_len": 50})}
        if args.max_users is not None:
            caps["max_users"] = args.max_users
        if args.max_len is not None:
            caps["max_len"] = args.max_len
        for sc in args.scenarios:
            if args.data_root_runs:
                data = Path(args.data_root_runs) / f"{ds}_{sc}" / "data"
            else:
                data = build_contract(Path(args.data_root) / ds, out / f"{ds}_{sc}", sc,
                                      max_users=caps["max_users"], seed=args.seed,
                                      cold_train_part=args.cold_train_part)
            for name in args.baselines:
                settings = capped_settings(name, caps["max_len"], args.max_epochs, args.patience,
                                           args.max_windows, args.num_negatives or None)
                from reccocktail.baselines.sequential import SequenceDataModule

                dm = SequenceDataModule(data)
                dm.load()
                samples = dm.test_samples
                t0 = time.time()
                scores, info = run_one(name, settings, data, samples, cpu_trainer, args.seed,
                                       cache_dir=ROOT / "outputs" / "cache")
                m = ranking_metrics(scores, [s.target_index for s in samples])
                row = {"dataset": ds, "scenario": sc, "baseline": name,
                       "ndcg@1": round(m["ndcg@1"], 4), "ndcg@3": round(m["ndcg@3"], 4),
                       "train_s": info.get("train_seconds"), "total_s": round(time.time() - t0, 1),
                       "epochs": info.get("epochs"), "best_epoch": info.get("best_epoch"),
                       "test_samples": len(samples), "users": caps["max_users"],
                       "max_len": caps["max_len"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
                write_json(out / "table.json", {"args": vars(args), "rows": rows})
    users = CAPS if args.max_users is None else args.max_users
    print(f"\ntotal {time.time() - t_all:.0f}s; caps: users/max_len {users}, "
          f"{args.max_windows} window(s) per user, <= {args.max_epochs} epochs "
          f"(patience {args.patience}), {args.num_negatives or 'full'} softmax negatives, "
          f"{args.threads} thread(s)\n")
    print("| dataset | scenario | baseline | NDCG@1 | NDCG@3 | train s | epochs (best) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['scenario']} | {r['baseline']} | {r['ndcg@1']:.4f} | "
              f"{r['ndcg@3']:.4f} | {r['train_s']} | {r['epochs']} ({r['best_epoch']}) |")


if __name__ == "__main__":
    main()
