"""Which samples every method of a run is scored on, and the rows written per sample.

Shared by the eval and baselines stages (neither imports the other): the samples are
`data/<eval.split>.jsonl` minus the users whose unlabeled prompts tuned λ (unless
`mix.transductive`), then at most `eval.max_users` users (a seeded choice, file order kept).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from reccocktail.data.samples import Sample, load_items, load_samples
from reccocktail.evaluation.metrics import target_ranks


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def eval_samples(cfg: DictConfig, out_dir: Path) -> tuple[list[Sample], dict[str, Any]]:
    """The samples every method is scored on, and how they were chosen (for the results)."""
    data_dir = Path(out_dir) / "data"
    split = str(_get(cfg, "eval.split", "test"))
    items = load_items(data_dir / "items.tsv")
    path = data_dir / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (run the `data` stage first, or check "
                                f"eval.split={split!r})")
    samples = load_samples(path, items)
    if not samples:
        raise ValueError(f"{path}: no samples")
    from reccocktail.cocktail.unlabeled import split_unlabeled

    num_prompts = int(_get(cfg, "mix.num_prompts", 0) or 0)
    transductive = bool(_get(cfg, "mix.transductive", False))
    tuning, scored = split_unlabeled(samples, num_prompts, int(cfg.seed), transductive)
    max_users = _get(cfg, "eval.max_users")
    users = list(dict.fromkeys(s.user for s in scored))
    if max_users is not None and int(max_users) < len(users):
        keep = set(random.Random(int(cfg.seed)).sample(sorted(users), int(max_users)))
        scored = [s for s in scored if s.user in keep]
    info = {
        "split": split,
        "num_samples": len(scored),
        "num_users": len({s.user for s in scored}),
        "transductive": transductive,
        "num_tuning_users": len({s.user for s in tuning}),
        "max_users": None if max_users is None else int(max_users),
    }
    return scored, info




def prediction_rows(samples: list[Sample], scores: torch.Tensor, scorer: Any = None,
                    digits: int = 5) -> list[dict]:
    """One row per sample: id, user, target, candidates, scores (rounded to `digits`), the
    positive's rank (ties against it) and, for generate-and-match, the raw output and what it
    matched. Also written by the baselines stage."""
    ranks = target_ranks(scores, [s.target_index for s in samples]).tolist()
    rows = []
    for i, (s, row_scores) in enumerate(zip(samples, scores.tolist())):
        row = {"id": s.id, "user": s.user, "target": s.target, "candidates": s.candidates,
               "scores": [round(v, digits) for v in row_scores], "rank": int(ranks[i])}
        if getattr(scorer, "matches", None):
            m = scorer.matches[i]
            row["output"] = scorer.outputs[i]
            row["matched"] = None if m.index is None else s.candidates[m.index]
            row["match_rule"] = m.rule
        rows.append(row)
    return rows
