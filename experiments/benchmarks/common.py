"""What the benchmark scripts share: where the data is, the backbone config, ML-1M samples."""

from __future__ import annotations

import os
import random
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from reccocktail.data.samples import Sample

ROOT = Path(__file__).resolve().parents[2]

DATA_ROOT = Path(os.environ.get("RECCOCKTAIL_DATA", ROOT.parent / "shared" / "data"))


def backbone_config(name: str) -> DictConfig:
    """`conf/backbone/<name>.yaml` with its (and its tokenizer's) cache_dir set to
    $RECCOCKTAIL_CACHE, default outputs/cache."""
    cfg = OmegaConf.load(ROOT / "conf" / "backbone" / f"{name}.yaml")
    cache = os.environ.get("RECCOCKTAIL_CACHE", str(ROOT / "outputs" / "cache"))
    cfg.cache_dir = cache
    if "tokenizer" in cfg:
        cfg.tokenizer.cache_dir = cache
    return cfg


def _read_recbole(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header field names (types stripped) and rows of a RecBole tab-separated file."""
    with open(path, encoding="utf-8") as fh:
        header = [h.split(":")[0] for h in next(fh).rstrip("\n").split("\t")]
        return header, [line.rstrip("\n").split("\t") for line in fh]


def draw_candidates(rng: random.Random, pool: list[str], target: str, exclude: set[str] | list[str],
                    num_candidates: int) -> list[str]:
    """The target and `num_candidates - 1` uniform negatives from `pool` outside `exclude`,
    shuffled (the benchmarks' stand-in for the data stage's stored candidates)."""
    negs: list[str] = []
    while len(negs) < num_candidates - 1:
        c = rng.choice(pool)
        if c not in exclude and c not in negs:
            negs.append(c)
    cands = [target, *negs]
    rng.shuffle(cands)
    return cands


def ml1m_samples(data_root: Path, n: int, seed: int = 0, history: int = 10,
                 num_candidates: int = 30) -> tuple[list[Sample], dict[str, str]]:
    """Leave-one-out test-like samples of `n` random ML-1M users (see `recbole_samples`)."""
    return recbole_samples(data_root, "ml-1m", n, seed, history, num_candidates)


def recbole_samples(data_root: Path, dataset: str, n: int, seed: int = 0, history: int = 10,
                    num_candidates: int = 30) -> tuple[list[Sample], dict[str, str]]:
    """Leave-one-out test-like samples of `n` random users of a RecBole dataset folder
    (`ml-1m`, `amazon-beauty`; benchmark input only): the user's last item is the target, up to
    `history` items before it the history, items the user never touched the negatives. Returns
    the samples and the titles."""
    samples, _, items = recbole_users(data_root, dataset, n, seed, history, num_candidates)
    return samples, items


def recbole_users(data_root: Path, dataset: str, n: int, seed: int = 0, history: int = 10,
                  num_candidates: int = 30
                  ) -> tuple[list[Sample], list[set[str]], dict[str, str]]:
    """`recbole_samples`, plus each user's items before the target (what full-catalogue
    ranking excludes, as `eval.exclude_seen`)."""
    header, rows = _read_recbole(data_root / dataset / f"{dataset}.item")
    i_id, i_title = header.index("item_id"), header.index("title")
    items = {r[i_id]: " ".join(r[i_title].split()) for r in rows if r[i_title].strip()}
    header, rows = _read_recbole(data_root / dataset / f"{dataset}.inter")
    u, i, t = header.index("user_id"), header.index("item_id"), header.index("timestamp")
    seqs: dict[str, list[tuple[float, str]]] = {}
    for r in rows:
        if r[i] in items:
            seqs.setdefault(r[u], []).append((float(r[t]), r[i]))
    rng = random.Random(seed)
    pool = sorted(items)
    samples, before = [], []
    for user in rng.sample(sorted(seqs), n):
        seq = [x for _, x in sorted(seqs[user])]
        target, hist = seq[-1], seq[:-1][-history:]
        seen = set(seq)
        samples.append(Sample(f"{user}-bench", user, hist, target,
                              draw_candidates(rng, pool, target, seen, num_candidates)))
        before.append(set(seq[:-1]))
    return samples, before, items
