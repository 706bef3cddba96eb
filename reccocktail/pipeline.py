"""`run(cfg)`: the stages of an experiment in order, each reusing what is already built.

Stages read and write the run folder through fixed paths (the on-disk contract), so a run that
failed in one stage is continued by running the same command again. The heavy artifacts (split
caches, the base spirit) are keyed by content hashes under `paths.cache_dir` and shared by runs.
"""

from __future__ import annotations

import functools
import importlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reccocktail.baselines.registry import baseline_names
from reccocktail.config_check import check_config
from reccocktail.ingredients import (
    DEFAULT,
    GENERAL,
    KEY,
    SPECIFIC,
    downstream,
    expand,
    ingredient_names,
)
from reccocktail.preflight import check_preflight
from reccocktail.runtime import finish_loggers, make_loggers, make_trainer, output_dir  # noqa: F401
from reccocktail.utils import memory
from reccocktail.utils.config import need
from reccocktail.utils.device import resolve_backbone_dtype
from reccocktail.utils.io import write_json

log = logging.getLogger(__name__)

# stage name -> "module:function"; each function is `f(cfg, out_dir) -> dict` (a summary). The
# ingredient stages (G, S, a general source) come from the run's `ingredients` list
# (`stage_targets`); these are the stages of the default list.
FIXED_STAGES: dict[str, str] = {
    "data": "reccocktail.data.stage:run_data_stage",
    "mix": "reccocktail.cocktail.stage:run_mix_stage",
    "eval": "reccocktail.evaluation.stage:run_eval_stage",
    "baselines": "reccocktail.baselines.stage:run_baselines_stage",
}
INGREDIENT_STAGES = {GENERAL: "reccocktail.models.stage:run_general_stage",
                     SPECIFIC: "reccocktail.models.stage:run_specific_stage"}
SOURCE_STAGE = "reccocktail.models.stage:run_source_stage"  # f(cfg, out_dir, name)


def stage_targets(names: Sequence[str]) -> dict[str, str]:
    """Stage name -> "module:function" for the ingredient list `names` (in pipeline order); a
    general source's stage is `run_source_stage` called with its name."""
    return {"data": FIXED_STAGES["data"],
            **{n: INGREDIENT_STAGES.get(n, f"{SOURCE_STAGE}@{n}") for n in names},
            **{k: v for k, v in FIXED_STAGES.items() if k != "data"}}


STAGES: dict[str, str] = stage_targets(DEFAULT)


def _resolve(target: str):
    target, _, name = target.partition("@")
    module, fn = target.split(":")
    f = getattr(importlib.import_module(module), fn)
    return functools.partial(f, name=name) if name else f


# What each stage's outputs are derived from: a stage that starts makes its own summary and
# those of every stage downstream of it out of date (`ingredients.downstream` for another list).
DOWNSTREAM: dict[str, tuple[str, ...]] = downstream(DEFAULT)


def invalidate(out_dir: Path, stage: str,
               derived: dict[str, tuple[str, ...]] | None = None) -> None:
    """Before `stage` runs: remove its summary and those of the stages derived from it
    (`derived`: the run's `ingredients.downstream`, default the two-ingredient one), and mark
    results.json stale when rows derive from it (the eval stage lifts the mark when it
    completes), so nothing half-updated passes for a finished run."""
    from reccocktail.evaluation.results import mark_stale  # lazy: +2.2 s (torchmetrics)

    derived = DOWNSTREAM if derived is None else derived
    for s in (stage, *derived.get(stage, ())):
        (out_dir / "stages" / f"{s}.json").unlink(missing_ok=True)
    if derived.get(stage):
        mark_stale(out_dir, stage)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run `cfg.task` (the stage pipeline, or `recommend`) and return per-stage summaries."""
    import lightning as L  # lazy: +3.6 s (lightning)

    check_config(cfg)  # unknown keys and bad choices fail here, before any stage spends time
    resolve_backbone_dtype(cfg)  # `auto` -> the dtype that runs: keys and rows record it
    task = cfg.task
    if task == "recommend":
        check_preflight(cfg, [])
        return _resolve("reccocktail.recommend:run_recommend")(cfg)
    if task != "train":
        raise ValueError(f"task: unknown value {task!r}; choose train or recommend")

    names = ingredient_names(cfg)  # checked by check_config above
    targets, derived = stage_targets(names), downstream(names)
    stages = expand(cfg.stages, names)  # `ingredients` -> the list, in order
    # validated here, so that a misspelt baseline fails before hours of training, not after
    if baseline_names(need(cfg, "baseline")) and "baselines" not in stages:
        stages.append("baselines")  # `baseline=sasrec` alone asks for their rows too
    unknown = [s for s in stages if s not in targets]
    if unknown:
        raise ValueError(f"stages: unknown stage(s) {unknown}; choose from "
                         f"{[*targets, KEY]} (ingredient stages follow `{KEY}`={names})")
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
            invalidate(out_dir, stage, derived)
            memory.reset_peaks()
            summary = _resolve(targets[stage])(cfg, out_dir) or {}
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
