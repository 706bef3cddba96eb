"""`run(cfg)`: the stages of an experiment in order, each reusing what is already built.

Stages read and write the run folder through fixed paths (the on-disk contract), so a run that
failed in one stage is continued by running the same command again. The heavy artifacts (split
caches, the base spirit) are keyed by content hashes under `paths.cache_dir` and shared by runs.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reccocktail.preflight import check_preflight
from reccocktail.runtime import finish_loggers, make_loggers, make_trainer, output_dir  # noqa: F401
from reccocktail.utils import memory
from reccocktail.utils.config import need
from reccocktail.utils.device import resolve_backbone_dtype
from reccocktail.utils.io import write_json

log = logging.getLogger(__name__)

# stage name -> "module:function"; each function is `f(cfg, out_dir) -> dict` (a summary).
STAGES: dict[str, str] = {
    "data": "reccocktail.data.stage:run_data_stage",
    "general": "reccocktail.models.stage:run_general_stage",
    "specific": "reccocktail.models.stage:run_specific_stage",
    "mix": "reccocktail.cocktail.stage:run_mix_stage",
    "eval": "reccocktail.evaluation.stage:run_eval_stage",
    "baselines": "reccocktail.baselines.stage:run_baselines_stage",
}


def _resolve(target: str):
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


# What each stage's outputs are derived from: a stage that starts makes its own summary and
# those of every stage downstream of it out of date.
DOWNSTREAM: dict[str, tuple[str, ...]] = {
    "data": ("general", "specific", "mix", "eval", "baselines"),
    "general": ("specific", "mix", "eval"),
    "specific": ("mix", "eval"),
    "mix": ("eval",),
    "eval": (),
    "baselines": (),
}


def invalidate(out_dir: Path, stage: str) -> None:
    """Before `stage` runs: remove its summary and those of the stages derived from it, and
    mark results.json stale when rows derive from it (the eval stage lifts the mark when it
    completes), so nothing half-updated passes for a finished run."""
    from reccocktail.evaluation.results import mark_stale

    for s in (stage, *DOWNSTREAM.get(stage, ())):
        (out_dir / "stages" / f"{s}.json").unlink(missing_ok=True)
    if DOWNSTREAM.get(stage):
        mark_stale(out_dir, stage)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run `cfg.task` (the stage pipeline, or `recommend`) and return per-stage summaries."""
    import lightning as L

    from reccocktail.config_check import check_config

    check_config(cfg)  # unknown keys and bad choices fail here, before any stage spends time
    resolve_backbone_dtype(cfg)  # `auto` -> the dtype that runs: keys and rows record it
    task = cfg.task
    if task == "recommend":
        check_preflight(cfg, [])
        return _resolve("reccocktail.recommend:run_recommend")(cfg)
    if task != "train":
        raise ValueError(f"task: unknown value {task!r}; choose train or recommend")

    from reccocktail.baselines.stage import baseline_names

    stages = list(cfg.stages)
    # validated here, so that a misspelt baseline fails before hours of training, not after
    if baseline_names(need(cfg, "baseline")) and "baselines" not in stages:
        stages.append("baselines")  # `baseline=sasrec` alone asks for their rows too
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    if {"eval", "baselines"} & set(stages):  # eval.candidates=all: beam wide enough, etc.
        from reccocktail.evaluation.full_catalogue import check_config as check_full

        bad = check_full(cfg)
        if bad:
            raise ValueError("config: " + "; ".join(bad))
    # what the machine lacks (backbone, dataset folders, device) fails here, in seconds
    check_preflight(cfg, stages, baseline_names(need(cfg, "baseline")))
    out_dir = output_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    summaries: dict[str, Any] = {}
    for lg in make_loggers(cfg):
        try:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        except Exception as err:  # noqa: BLE001
            log.warning("logging the config to %s failed: %s", type(lg).__name__, err)
    try:
        for stage in stages:
            t0 = time.time()
            log.info("stage %s: starting", stage)
            invalidate(out_dir, stage)
            memory.reset_peaks()
            summary = _resolve(STAGES[stage])(cfg, out_dir) or {}
            summary["seconds"] = round(time.time() - t0, 2)
            summary["memory"] = memory.peaks()
            summaries[stage] = summary
            write_json(out_dir / "stages" / f"{stage}.json", summary)
            log.info("stage %s: done in %.1fs (%s)", stage, summary["seconds"], summary["memory"])
            memory.release()  # the next stage starts from what is still referenced, not the peak
    finally:
        finish_loggers(cfg)
    return summaries


def main_task(cfg: DictConfig) -> float | None:
    """What `python run.py` and `reccocktail run` do with the composed config: `run` it and
    return the value a sweeper optimises. An error is written to the job's log too: Hydra
    reports it on the console once the job is over, when its run.log is closed, so the failed
    job of a multirun would otherwise not say why in its own folder."""
    try:
        return optimized_value(cfg, run(cfg))
    except Exception as err:
        log.error("run failed: %s: %s", type(err).__name__, err, exc_info=True)
        raise


def optimized_value(cfg: DictConfig, summaries: dict[str, Any]) -> float | None:
    """The number a sweeper optimises: `cfg.optimized_metric`, a dotted path into the stage
    summaries (e.g. `eval.variants.cocktail.ndcg@1`); None when no metric is asked for."""
    path = need(cfg, "optimized_metric")
    if not path:
        return None
    node: Any = summaries
    for part in str(path).split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"optimized_metric: {path!r} not found in the stage summaries "
                           f"(missing {part!r}; available here: {sorted(node) if isinstance(node, dict) else node})")
        node = node[part]
    return float(node)
