"""Which samples every method of a run is scored on, and the rows written per sample.

Shared by the eval and baselines stages (neither imports the other): the samples are
`data/<eval.split>.jsonl` minus the users whose unlabeled prompts tuned λ (unless
`selection.transductive`), then at most `selection.max_scored_users` users (a seeded choice,
file order kept), by `reccocktail.data.selection.select_users`, the function the mix stage
draws its λ users with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from reccocktail.data.samples import Sample, load_items, load_samples
from reccocktail.data.selection import LAMBDA_SPLIT, select_users, selection_config
from reccocktail.evaluation.metrics import target_ranks
from reccocktail.utils.config import need
from reccocktail.utils.io import read_json


def check_no_lambda_leak(out_dir: Path, split: str, scored: list[Sample]) -> None:
    """Refuse to score users whose prompts tuned the run's λ (`mix/lambda.json`), e.g. after the
    mix stage ran with another `selection.lambda_users` or seed than this evaluation.

    Called for every non-transductive evaluation, whatever the mix recorded: a mix that ran
    transductively still tuned on its `tuning_users`, and scoring them here would be the leak
    the setting exists to prevent."""
    lam = Path(out_dir) / "mix" / "lambda.json"
    if not lam.exists():
        return
    info = read_json(lam)
    if info.get("tuning_split", LAMBDA_SPLIT) != split:
        return
    leak = sorted(set(info.get("tuning_users") or []) & {s.user for s in scored})
    if leak:
        how = ("ran transductively (selection.transductive=true)" if info.get("transductive")
               else "ran with another selection (selection.lambda_users, seed)")
        raise ValueError(
            f"{lam}: λ was tuned on {len(leak)} user(s) that this evaluation would score "
            f"({leak[:5]}); the mix stage {how}: rerun the mix stage with this config, or set "
            "selection.transductive=true on purpose")


def run_data_hash(out_dir: Path) -> str | None:
    """The data stage's `data_hash` of this run folder (data/manifest.json), recorded on every
    scored row so that a paired test across rows (or run folders) can refuse other data."""
    path = Path(out_dir) / "data" / "manifest.json"
    if not path.exists():
        return None
    value = read_json(path).get("data_hash")
    return value if isinstance(value, str) else None


def eval_samples(cfg: DictConfig, out_dir: Path,
                 split: str | None = None) -> tuple[list[Sample], dict[str, Any]]:
    """The samples every method is scored on, and how they were chosen (for the results).
    `split`: the parsed `eval.split` (read from `cfg` when None)."""
    data_dir = Path(out_dir) / "data"
    split = str(need(cfg, "eval.split") if split is None else split)
    items = load_items(data_dir / "items.tsv")
    path = data_dir / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (run the `data` stage first, or check "
                                f"eval.split={split!r})")
    samples = load_samples(path, items)
    if not samples:
        raise ValueError(f"{path}: no samples")
    chosen = select_users(samples, selection_config(cfg), int(need(cfg, "seed")))
    if not chosen.selection.transductive:
        check_no_lambda_leak(Path(out_dir), split, chosen.scored)
    return chosen.scored, {"split": split, **chosen.info(), "data_hash": run_data_hash(out_dir)}


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
