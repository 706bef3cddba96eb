"""The ingredient stages: `general` (the base spirit G), `specific` (the ingredient S) and one
per general source named in `ingredients` (trained like G on that source's rows of the pool).

G trains on the general pool `data/general/{train,valid}.jsonl`; it is keyed by
(backbone, general pool, tuning config, prompt) and cached under
`${paths.cache_dir}/adapters/general/<key>/`, so a second domain with the same pool reuses it.
S trains on the target domain's `valid.jsonl` plus N sampled `train.jsonl` prompts (the paper's
recipe), optionally a seeded fraction of that (few-shot runs), optionally starting from G
(`tuning.specific.init_from: general`, second-round fine-tuning). In the cold scenario
`valid.jsonl` is the cold validation split (targets: validation-new items), so S never trains
on it there: N sampled `train.jsonl` prompts only.

S is cached the same way (`adapters/specific/<key>/`, key: backbone, target data, tuning, prompt,
init), so a rerun of the same command in a new run folder trains neither again.
With `tuning.early_stopping.enabled`, G is checked on `data/general/valid.jsonl` and S on
`data/valid.jsonl` (validation NDCG@1, `models/early_stopping.py`) and the best check's weights
are saved; S's rows then leave those validation users out, as they do the grid's.
Lightning checkpoints go to `<run>/<stage>/checkpoints/<key>/`; a rerun in the same folder
(`hydra.run.dir=...`) resumes an interrupted training from `last.ckpt` there (or from
`tuning.ckpt_path`), and a finished adapter whose key matches is not trained again.
What an adapter trains on and how (tuning config, rows, the fit, manifest, cache root) is the
training API in `models/training.py`, which the LLM baselines use too; this module decides
whether to train at all (run folder, cache, ranks).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from reccocktail.data.samples import Sample, load_items
from reccocktail.evaluation.config import eval_config
from reccocktail.ingredients import GENERAL, SOURCE, SPECIFIC, Ingredient, ingredient
from reccocktail.models import adapters as ad
from reccocktail.models.datamodule import select_subset
from reccocktail.models.training import (
    adapter_manifest,
    cache_root,
    early_stopping_samples,
    load_split,
    prompt_builder,
    prompt_cfg,
    result_config,
    sequence_training_windows,
    specific_plan,
    specific_training_data,
    train_adapter,
    tuning_config,
)
from reccocktail.models.tuning_config import TuningConfig
from reccocktail.utils.io import stable_hash

log = logging.getLogger(__name__)


def _barrier(trainer: Any) -> None:
    """Let every rank wait until rank 0 has written the adapter the next stage reads."""
    try:
        trainer.strategy.barrier("adapter_saved")
    except Exception as err:  # noqa: BLE001 - the process group may be gone after fit
        log.debug("no barrier after saving the adapter: %s", err)


def _launched_rank() -> int:
    """The global rank of a process that a DDP launcher started (0 before any launch)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", "0") or 0)
    return local if node == 0 else local + 1


def _wait_for_adapter(path: Path, key: str, timeout_s: float = 600.0) -> None:
    """Other ranks wait for rank 0 to copy the adapter rather than race it on the same folder."""
    t0 = time.time()
    while not ad.holds_adapter(path, key):
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"rank {_launched_rank()}: {path} did not appear within {timeout_s}s")
        time.sleep(0.5)


_LABELS = {"general": "base spirit", "specific": "ingredient"}


def _label(name: str) -> str:
    return _LABELS.get(name, f"ingredient {name}")


def _from_cache(cache_dir: Path, kind: str, key: str, dest: Path, name: str) -> dict | None:
    """Copy the cached adapter of `kind` for `key` into the run (rank 0; the other ranks wait
    for it) and return the stage summary, or None when there is none."""
    cached = ad.lookup_cached(cache_dir, key, kind)
    if cached is None:
        return None
    if _launched_rank() == 0:
        ad.copy_adapter(cached, dest)
    else:
        _wait_for_adapter(dest, key)
    trained_in = ad.read_manifest(cached).get("trained_in")
    log.info("%s: reusing cached adapter %s (trained in %s) from %s",
             _label(name), key, trained_in, cached)
    return {"adapter": str(dest), "key": key, "reused": "cache", "cache": str(cached),
            "trained_in": trained_in}


def _reuse_or_train(cfg: DictConfig, out_dir: Path, kind: str, t: TuningConfig, key: str,
                    data_hash: str,
                    extra: dict, load_data: Callable[[], tuple[dict[str, str], list[Sample],
                                                               list[Sample]]],
                    init_adapter: Path | None = None,
                    load_ranking: Callable[[dict[str, str]], list[Sample]] | None = None,
                    name: str | None = None) -> dict:
    """The adapter of `kind` for `key` into `adapters/<name>/` (`name`: the ingredient, default
    `kind`): kept when the run already holds it, copied from the cache when there, else
    trained on `load_data()` (items, train, val), saved and cached under
    `adapters/<kind>/<key>/`. `extra` (with the `prompt`) goes into the manifest. With early
    stopping, `load_ranking(items)` gives the validation samples it ranks."""
    name = name or kind
    if t.mode != "lora":
        raise ValueError(f"tuning.mode={t.mode}: the {name} stage trains a LoRA adapter "
                         "(the ingredients are mixed in weight space, which a fully fine-tuned "
                         "model is not); the full fine-tuning row is the P5 baseline: baseline=p5")
    dest = out_dir / "adapters" / name
    if ad.holds_adapter(dest, key):
        log.info("%s: %s already holds adapter %s; not training again", _label(name), dest, key)
        return {"adapter": str(dest), "key": key, "reused": "run"}
    cache_dir = cache_root(cfg)
    reused = _from_cache(cache_dir, kind, key, dest, name) if t.reuse else None
    if reused:
        return reused

    items, train, val = load_data()
    rank_val = ranker = None
    if t.early_stopping is not None:
        ranker = eval_config(cfg).scorers  # ranked as the eval stage scores
        if load_ranking is None:
            raise ValueError(f"tuning.early_stopping: the {kind} stage has no validation samples "
                             "to rank")
        rank_val = load_ranking(items)
    builder = prompt_builder(cfg, items, extra["prompt"], t.objective)
    model, metrics, trainer = train_adapter(cfg, out_dir, name, t, train, val, builder, key,
                                            init_adapter=str(init_adapter) if init_adapter else None,
                                            rank_val=rank_val, scorers=ranker)
    if trainer.is_global_zero:
        ad.save_adapter(model, dest, adapter_manifest(cfg, kind, t, data_hash, key, metrics, out_dir, extra))
        if t.reuse:
            ad.copy_adapter(dest, ad.adapter_cache_dir(cache_dir, key, kind))
    _barrier(trainer)
    return {"adapter": str(dest), "key": key, "reused": False, "metrics": metrics}


def run_general_stage(cfg: DictConfig, out_dir: Path) -> dict:
    """Train (or reuse) the base spirit G on the general pool; writes `adapters/general/`."""
    return _run_pool_stage(cfg, Path(out_dir), Ingredient(GENERAL, GENERAL))


def run_source_stage(cfg: DictConfig, out_dir: Path, name: str) -> dict:
    """Train (or reuse) the ingredient `name`, one source of `domain.general.sources`, like G
    but on that source's rows of the general pool only; writes `adapters/<name>/`."""
    ing = ingredient(cfg, name)
    if ing.kind != SOURCE:
        raise ValueError(f"run_source_stage: {name!r} is the {ing.kind} ingredient, not a "
                         "general source")
    return _run_pool_stage(cfg, Path(out_dir), ing)


def run_ingredient_stage(cfg: DictConfig, out_dir: Path, name: str) -> dict:
    """The stage of ingredient `name` (`ingredients`): G, S or a general source."""
    if name == GENERAL:
        return run_general_stage(cfg, out_dir)
    if name == SPECIFIC:
        return run_specific_stage(cfg, out_dir)
    return run_source_stage(cfg, out_dir, name)


def _run_pool_stage(cfg: DictConfig, out_dir: Path, ing: Ingredient) -> dict:
    """An ingredient trained on the general pool `data/general/`: G on all of it, a general
    source's ingredient on the rows of its users (ids `<prefix>:...`). The key is G's rule over
    what it trains on: the pool's hash, for a source with the source's namespace folded in."""
    t = tuning_config(cfg, ing.name)
    data_dir = out_dir / "data"
    gen_dir = data_dir / "general"
    data_hash = ad.general_data_hash(data_dir)
    prompt = prompt_cfg(cfg, general=True)
    extra: dict[str, Any] = {"prompt": prompt}
    keep_user: Callable[[str], bool] | None = None
    label = _label(ing.name)
    key_hash = data_hash
    if ing.kind == SOURCE:
        prefix = f"{ing.prefix}:"
        extra["source"] = {"ingredient": ing.name, "user_prefix": prefix}

        def keep_user(user: str) -> bool:
            return user.startswith(prefix)

        key_hash = ad.source_data_hash(data_hash, ing.prefix)
    key = ad.general_cache_key(cfg.backbone, key_hash, result_config(t), prompt)
    if t.early_stopping is not None and t.objective == "instruction" and t.include_valid:
        raise ValueError(f"tuning.early_stopping.enabled with tuning.general.include_valid=true: "
                         f"the {label} would be early-stopped on validation samples it trains "
                         "on; set tuning.general.include_valid=false")

    def mine(samples: list[Sample], what: str) -> list[Sample]:
        if keep_user is None:
            return samples
        kept = [s for s in samples if keep_user(s.user)]
        if samples and not kept:
            raise ValueError(f"ingredients: {ing.name!r}: the general pool holds no {what} of "
                             f"source {ing.prefix!r} (its overlap with the target removed it "
                             "all?); see data/stats.json general.sources")
        return kept

    def load_data():
        items = load_items(gen_dir / "items.tsv")
        if t.objective == "sequence":
            windows = sequence_training_windows(gen_dir / "sequences.jsonl", items, t,
                                                keep_user=keep_user)
            log.info("%s: training on %d general sequence windows, %d targets (key %s)",
                     label, len(windows), sum(w.num_targets for w in windows), key)
            return items, windows, []
        train = mine(load_split(gen_dir / "train.jsonl", items), "training prompt")
        val = mine(load_split(gen_dir / "valid.jsonl", items, required=False), "validation prompt")
        if t.include_valid:
            train, val = train + val, []
        train = select_subset(train, t.fraction, t.max_samples, seed=t.seed)
        val = select_subset(val, None, t.val_max_samples, seed=t.seed) if val else []
        log.info("%s: training on %d general samples (key %s)", label, len(train), key)
        return items, train, val

    kind = GENERAL if ing.kind == GENERAL else SOURCE
    return _reuse_or_train(cfg, out_dir, kind, t, key, data_hash, extra, load_data,
                           load_ranking=lambda items: early_stopping_samples(
                               gen_dir / "valid.jsonl", items, t, keep_user=keep_user),
                           name=ing.name)


def run_specific_stage(cfg: DictConfig, out_dir: Path) -> dict:
    """Train the ingredient S on the target domain; writes `adapters/specific/`."""
    out_dir = Path(out_dir)
    t = tuning_config(cfg, "specific")
    data_dir = out_dir / "data"
    data_hash = ad.target_data_hash(data_dir)
    init_from = t.init_from
    init_adapter = None
    extra = specific_plan(cfg, out_dir, t)
    prompt = extra["prompt"]
    if init_from:
        if init_from != "general":
            raise ValueError(f"tuning.specific.init_from: unknown value {init_from!r}; use null or general")
        init_adapter = out_dir / "adapters" / "general"
        if not ad.is_adapter_dir(init_adapter):
            raise FileNotFoundError(f"tuning.specific.init_from=general: {init_adapter} is missing "
                                    "(run the `general` stage first)")
        g = ad.read_manifest(init_adapter)
        extra["init_from"] = {"adapter": "general", "key": g.get("key")}
        t = t.overlay({"init_seed": int(g["init_seed"])})  # ab mixing needs G's init
    key = stable_hash(ad.backbone_identity(cfg.backbone), data_hash, result_config(t), prompt, extra)

    def load_data():
        log.info("ingredient: key %s", key)
        return specific_training_data(cfg, out_dir, t, extra)

    def load_ranking(items: dict[str, str]) -> list[Sample]:
        samples = early_stopping_samples(data_dir / "valid.jsonl", items, t)
        trained = {s.user for s in samples} & set(extra.get("valid_users_trained") or ())
        if trained:  # the plan left them out; a guard against the two drawing differently
            raise RuntimeError(f"early stopping would rank validation users S trains on: "
                               f"{sorted(trained)[:5]}")
        return samples

    return _reuse_or_train(cfg, out_dir, "specific", t, key, data_hash, extra, load_data,
                           init_adapter=init_adapter, load_ranking=load_ranking)
