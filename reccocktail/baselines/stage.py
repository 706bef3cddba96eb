"""The `baselines` stage: train each model named in `cfg.baseline`, score the stored test
candidates, write `predictions/<name>.jsonl` and one row per model in `results.json`.

Scored samples: `test.jsonl` filtered exactly as the eval stage filters it (the users that
`split_unlabeled` sets aside for entropy tuning are not scored unless `mix.transductive`), so a
baseline's row and the LLM variants' rows come from the very same samples and candidates.

Which baselines exist and how each one trains and scores is the registry's
(`baselines/registry.py`); the stage is `plan_baselines` (settings, samples, catalogue: all
checked before the first model trains), `train_and_score` per baseline, and `record_sampled` /
`record_full` (its row and predictions).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig, OmegaConf

from reccocktail import runtime
from reccocktail.baselines.models import KeepBest, RecModule, score_loader
from reccocktail.baselines.registry import NAMES, baseline_names, lookup  # noqa: F401  (re-exported)
from reccocktail.baselines.sequential import ItemVocab, SequenceDataModule
from reccocktail.data.samples import Sample, load_items
from reccocktail.evaluation import full_catalogue as fc
from reccocktail.evaluation.confidence import ci_fields
from reccocktail.evaluation.config import eval_config
from reccocktail.evaluation.metrics import DEFAULT_KS, ranking_metrics, target_ranks
from reccocktail.evaluation.results import clear_stale, record_results, start_rows, update_paired
from reccocktail.evaluation.samples import eval_samples, prediction_rows, run_data_hash
from reccocktail.utils.config import need
from reccocktail.utils.io import write_jsonl

log = logging.getLogger(__name__)

TrainerFactory = Callable[..., L.Trainer]


def settings_for(cfg: DictConfig, name: str) -> dict[str, Any]:
    """`baselines.common` overlaid by `baselines.<name>` (a model may override any common key)."""
    group = OmegaConf.select(cfg, "baselines")
    if group is None or name not in group:
        raise ValueError(f"baselines.{name}: no settings; add `- baselines: default` to the "
                         "defaults of conf/run.yaml (or compose with +baselines=default)")
    common = OmegaConf.to_container(need(group, "common", "baselines"), resolve=True)
    out = {**common, **OmegaConf.to_container(group[name], resolve=True)}
    lookup(name, out)  # a registered name, whose block's `kind` is the registered one
    return out


def make_datamodule(data_dir: Path, settings: dict[str, Any], seed: int) -> SequenceDataModule:
    return SequenceDataModule(
        data_dir, max_len=settings["max_len"], batch_size=settings["batch_size"],
        eval_batch_size=settings["eval_batch_size"],
        max_windows_per_user=settings["max_windows_per_user"], history=settings["history"],
        seed=seed)


def build_module(name: str, settings: dict[str, Any], dm: SequenceDataModule,
                 cache_dir: str | Path | None = None) -> RecModule:
    """The RecModule for one baseline, sized from the datamodule's vocabulary, by the builder
    the registry names for it (`baselines/registry.py`)."""
    dm.load()
    return lookup(name, settings).builder()(settings, dm, cache_dir, name=name)


def fit_baseline(module: RecModule, dm: SequenceDataModule, settings: dict[str, Any],
                 trainer_factory: TrainerFactory) -> dict[str, Any]:
    """Train with early stopping on validation NDCG@1; the best epoch's weights are kept.

    `trainer_factory(callbacks=[...], **overrides)` returns a Lightning Trainer (the stage passes
    `pipeline.make_trainer`; tests construct one directly)."""
    keep = KeepBest(module.monitor, mode="max")
    stop = EarlyStopping(module.monitor, mode="max", patience=int(settings["patience"]),
                         min_delta=float(settings["min_delta"]))
    overrides: dict[str, Any] = {"max_epochs": int(settings["max_epochs"]),
                                 "check_val_every_n_epoch": 1, "num_sanity_val_steps": 0,
                                 "enable_checkpointing": False, "max_steps": -1}
    if need(settings, "max_time", "baselines.common"):
        overrides["max_time"] = settings["max_time"]
    if need(settings, "limit_val_batches", "baselines.common") is not None:
        overrides["limit_val_batches"] = settings["limit_val_batches"]
    trainer = trainer_factory(callbacks=[keep, stop], **overrides)
    t0 = time.time()
    trainer.fit(module, datamodule=dm)
    seconds = time.time() - t0
    keep.restore(module)
    return {"train_seconds": round(seconds, 2), "epochs": trainer.current_epoch,
            "best_epoch": keep.best_epoch, "best_val_ndcg@1": keep.best,
            "is_global_zero": trainer.is_global_zero}


def popularity_scores(dm: SequenceDataModule, samples: list[Sample]) -> torch.Tensor:
    """Scores [n, C]: each candidate's number of training interactions."""
    dm.load()
    rows = dm.sample_rows(samples, "popularity")
    if not rows:
        return torch.empty(0, 0)
    cands = torch.stack([r["candidates"] for r in rows])
    return dm.item_counts[cands].float()


@torch.no_grad()
def score_all_items(module: RecModule, dm: SequenceDataModule, samples: list[Sample],
                    where: str = "test.jsonl", max_cells: int = 1 << 25) -> torch.Tensor:
    """Scores [n, V] of EVERY item (vocabulary order, column 0 = padding at -inf) for each sample,
    through the module's own `score` with all items as the candidates, so any RecModule (and its
    subclasses' scoring rules) ranks the full catalogue unchanged. Rows go in chunks that keep the
    [rows, V, dim] item gather near `max_cells` numbers."""
    rows = dm.sample_rows(samples, where)
    v = len(dm.vocab)
    items = torch.arange(1, v)
    dim = int(module.model.item_table().shape[-1])
    step = max(1, max_cells // max(1, (v - 1) * dim))
    was_training = module.training
    module.eval()
    out = torch.full((len(rows), v), float("-inf"))
    for a in range(0, len(rows), step):
        chunk = rows[a : a + step]
        batch = {k: torch.stack([r[k] for r in chunk]).to(module.device)
                 for k in ("row", "user", "seq", "target_index")}
        batch["candidates"] = items.to(module.device)[None].expand(len(chunk), -1)
        out[a : a + len(chunk), 1:] = module.score(batch).float().cpu()
    module.train(was_training)
    return out


def scored_test_samples(cfg: DictConfig, out_dir: Path,
                        split: str | None = None) -> tuple[list[Sample], str]:
    """The samples the eval stage scores (its own selection: split, unlabeled users left out,
    `eval.max_users`), so that baseline rows and LLM rows share every sample. `split`: the
    parsed `eval.split` (read from `cfg` when None)."""
    samples, info = eval_samples(cfg, out_dir, split)
    how = (f"{info['split']}: {'all users (transductive)' if info.get('transductive') else 'users not used as unlabeled tuning prompts'}"
           + (f", {info['max_users']} users sampled" if info.get("max_users") else ""))
    return samples, how


def run_one(name: str, settings: dict[str, Any], data_dir: Path, samples: list[Sample],
            trainer_factory: TrainerFactory, seed: int, cache_dir: str | Path | None = None,
            full: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """Train (unless popularity) and score `samples`; returns (scores [n, C], info), or with
    `full` (eval.candidates=all) scores [n, V] of every item in vocabulary order."""
    rec = lookup(name, settings)
    dm = make_datamodule(data_dir, settings, seed)
    dm.load()
    if not rec.trained:  # popularity: the training counts
        t0 = time.time()
        scores = (dm.item_counts.float()[None].expand(len(samples), -1).clone() if full
                  else popularity_scores(dm, samples))
        return scores, {"train_seconds": round(time.time() - t0, 2), "is_global_zero": True}
    threads_before = torch.get_num_threads()
    if need(settings, "num_threads", "baselines.common"):
        torch.set_num_threads(int(settings["num_threads"]))
    try:
        L.seed_everything(seed, workers=True, verbose=False)
        module = build_module(name, settings, dm, cache_dir)
        info = fit_baseline(module, dm, settings, trainer_factory)
        t0 = time.time()
        scores = (score_all_items(module, dm, samples) if full
                  else score_loader(module, dm.samples_dataloader(samples, "test.jsonl")))
        info["score_seconds"] = round(time.time() - t0, 2)
    finally:
        torch.set_num_threads(threads_before)
    return scores, info


@dataclass
class BaselinesPlan:
    """What the stage scores, fixed before any model trains: the baselines and their merged
    settings, the eval stage's samples, and the full catalogue when `eval.candidates=all`."""

    names: list[str]
    settings: dict[str, dict[str, Any]]
    samples: list[Sample]
    scored_on: str
    data_hash: str | None
    catalogue: Any  # full_catalogue.FullCatalogue, or None: the stored candidates


def plan_baselines(cfg: DictConfig, out_dir: Path, names: list[str]) -> BaselinesPlan:
    """Check everything a baseline needs before the first one trains: its settings (and
    `kind`), the samples, and that it can rank the full catalogue when asked to."""
    ec = eval_config(cfg)  # the eval block, parsed once: split and full-catalogue protocol
    samples, how = scored_test_samples(cfg, out_dir, ec.split)
    if not samples:
        raise ValueError(f"{out_dir / 'data' / 'test.jsonl'}: no test samples to score")
    settings = {n: settings_for(cfg, n) for n in names}
    data_hash = run_data_hash(out_dir)  # on every row: paired tests refuse other data
    cc = fc.catalogue_config(cfg, ec)  # None: the stored candidates
    cat = fc.FullCatalogue.load(cc, out_dir, samples) if cc is not None else None
    stored_only = [n for n in names if cat is not None and not lookup(n).ranks_full_catalogue]
    if stored_only:  # fail before any training, not after
        raise ValueError(f"baseline {stored_only}: scores the stored candidates only, not the full "
                         "catalogue (eval.candidates=all); drop it from `baseline`")
    return BaselinesPlan(names, settings, samples, how, data_hash, cat)


def train_and_score(cfg: DictConfig, out_dir: Path, name: str,
                    plan: BaselinesPlan) -> tuple[torch.Tensor, dict[str, Any]]:
    """One baseline trained (or counted) and scored the way the registry says: an LLM baseline
    by its own runner, the others by `run_one` (every item with the full catalogue)."""
    settings = plan.settings[name]

    def factory(callbacks=None, **overrides):
        return runtime.make_trainer(cfg, out_dir, f"baselines/{name}", callbacks=callbacks,
                                    **overrides)

    log.info("baseline %s: training on %s", name, out_dir / "data")
    rec = lookup(name, settings)
    if rec.run is not None:  # P5, OMfA: LLMs on the backbone, the stored candidates only
        return rec.runner()(cfg, out_dir, name, settings, plan.samples)
    return run_one(name, settings, out_dir / "data", plan.samples, factory, int(cfg.seed),
                   need(cfg, "paths.cache_dir"), full=plan.catalogue is not None)


def record_full(out_dir: Path, name: str, plan: BaselinesPlan, scores: torch.Tensor,
                info: dict[str, Any]) -> dict[str, float]:
    """A row over the full catalogue: the catalogue's columns of every item's score, the same
    exclusion and cut-off as the LLM rows."""
    cat, samples = plan.catalogue, plan.samples
    vocab = ItemVocab.from_items(load_items(out_dir / "data" / "items.tsv")).index
    if scores.shape != (len(samples), len(vocab) + 1):
        raise ValueError(f"baseline {name}: scored {tuple(scores.shape)}, not every item "
                         f"({len(vocab)}); it cannot rank the full catalogue "
                         "(eval.candidates=all): drop it from `baseline`")
    ranks, lists = cat.ranks_from_scores(
        scores[:, torch.tensor([vocab[i] for i in cat.items])], samples)
    metrics = fc.record_row(out_dir, name, cat, samples, ranks, lists, kind="baseline",
                            num_samples=len(samples), scored_on=plan.scored_on,
                            data_hash=plan.data_hash, **info)
    log.info("baseline %s (full catalogue): %s", name, metrics)
    return metrics


def record_sampled(out_dir: Path, name: str, plan: BaselinesPlan, scores: torch.Tensor,
                   info: dict[str, Any]) -> dict[str, float]:
    """A row over the stored candidates, with its predictions file and bootstrap CIs."""
    samples = plan.samples
    targets = [s.target_index for s in samples]
    metrics = ranking_metrics(scores, targets)
    write_jsonl(out_dir / "predictions" / f"{name}.jsonl",
                prediction_rows(samples, scores, digits=6))
    record_results(out_dir, name, metrics,
                   **ci_fields(target_ranks(scores, targets), [s.user for s in samples],
                               DEFAULT_KS),
                   kind="baseline", num_samples=len(samples), scored_on=plan.scored_on,
                   data_hash=plan.data_hash, **info)
    log.info("baseline %s: ndcg@1=%.4f ndcg@3=%.4f (%.0fs training)", name,
             metrics["ndcg@1"], metrics["ndcg@3"], info["train_seconds"])
    return metrics


def run_baselines_stage(cfg: DictConfig, out_dir: Path) -> dict:
    """Stage entry (contract): every baseline in `cfg.baseline`, scored and recorded."""
    out_dir = Path(out_dir)
    names = baseline_names(need(cfg, "baseline"))
    if not names:
        log.info("baselines: cfg.baseline is empty; nothing to do")
        return {"baselines": []}
    plan = plan_baselines(cfg, out_dir, names)
    summary: dict[str, Any] = {"baselines": names, "scored_samples": len(plan.samples),
                               "scored_on": plan.scored_on, "metrics": {}}
    start_rows(out_dir, names, "baselines")
    record = record_sampled if plan.catalogue is None else record_full
    for name in names:
        scores, info = train_and_score(cfg, out_dir, name, plan)
        if not info.pop("is_global_zero", True):
            continue
        summary["metrics"][name] = {**record(out_dir, name, plan, scores, info), **info}
    if summary["metrics"]:  # cocktail (when already scored) against the new rows, per sample
        update_paired(out_dir)
    clear_stale(out_dir, ("baselines",))
    return summary
