"""What the benchmark scripts share: where the data is, the backbone config, ML-1M samples."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reccocktail.data.samples import Sample
from reccocktail.models.tuning_config import TuningConfig, parse_tuning, stage_tuning_cfg

ROOT = Path(__file__).resolve().parents[2]

DATA_ROOT = Path(os.environ.get("RECCOCKTAIL_DATA", ROOT.parent / "shared" / "data"))

MOVIE_DOMAIN = {"prompt": {"noun": "movie", "verb": "watched"}}  # the MovieLens wording
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]  # LoRA placements
LINEAR = QKVO + ["gate_proj", "up_proj", "down_proj"]


def backbone_config(name: str) -> DictConfig:
    """`conf/backbone/<name>.yaml` with its (and its tokenizer's) cache_dir set to
    $RECCOCKTAIL_CACHE, default outputs/cache."""
    cfg = OmegaConf.load(ROOT / "conf" / "backbone" / f"{name}.yaml")
    cache = os.environ.get("RECCOCKTAIL_CACHE", str(ROOT / "outputs" / "cache"))
    cfg.cache_dir = cache
    if "tokenizer" in cfg:
        cfg.tokenizer.cache_dir = cache
    return cfg


def tuning_defaults(stage: str = "specific", **over: Any) -> TuningConfig:
    """conf/tuning/default.yaml's `stage` view (seed 0, fp32 trainer) with `over` laid on it:
    the tuning config of a benchmark that builds the training module by hand."""
    node = OmegaConf.create({"seed": 0, "tuning": OmegaConf.load(ROOT / "conf" / "tuning" /
                                                                 "default.yaml")})
    return parse_tuning({**stage_tuning_cfg(node.tuning, stage), "precision": "32-true", **over})


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


def ml1m_sequence_windows(backbone: str, n: int, seed: int = 0, max_titles: int = 40
                          ) -> tuple[list, list[dict], Any, dict[str, str]]:
    """The sequence objective's training rows for `n` random ML-1M users (their last 2 items
    dropped, as the training part of a leave-one-out split), shuffled: the windows, their
    examples in the `backbone`'s tokens, the tokenizer and the titles."""
    from reccocktail.data.prompts import build_prompt_builder
    from reccocktail.models.backbone import load_tokenizer
    from reccocktail.models.sequence_data import build_windows

    base = backbone_config(backbone)
    tok = load_tokenizer(base)
    samples, items = ml1m_samples(DATA_ROOT, n, seed=seed, history=10_000)
    seqs = {s.user: s.history[:-1] for s in samples}
    pb = build_prompt_builder(tok, items, MOVIE_DOMAIN, base, 32, fmt="sequence")
    windows = build_windows(seqs, max_titles, 3, 1)
    random.Random(0).shuffle(windows)
    return windows, [pb.sequence_example(w.items, w.context) for w in windows], tok, items
