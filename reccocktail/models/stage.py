"""Stages `general` (the base spirit G) and `specific` (the ingredient S).

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
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reccocktail.data.samples import Sample, load_items, load_samples
from reccocktail.data.selection import choose_users, selection_samples
from reccocktail.models import adapters as ad
from reccocktail.models.datamodule import InstructionDataModule, padding_fraction, select_subset
from reccocktail.models.early_stopping import early_stopping_config
from reccocktail.models.tuning import loss_normalization
from reccocktail.utils.config import need, one_of
from reccocktail.utils.io import stable_hash, to_plain

log = logging.getLogger(__name__)

STAGE_BLOCKS = ("general", "specific")
# Keys that change how a run is executed or stored, not the adapter it produces.
_NON_RESULT_KEYS = ("ckpt_path", "resume", "num_workers", "checkpoint_every_n_steps", "reuse",
                    "log_every_n_steps")


def stage_tuning_cfg(tuning: Any, stage: str) -> dict:
    """The shared tuning keys overridden by the stage's own block (`tuning.general/specific`)."""
    one_of(stage, STAGE_BLOCKS, "tuning stage")
    plain = to_plain(tuning) if tuning is not None else {}
    merged = {k: v for k, v in plain.items() if k not in STAGE_BLOCKS}
    for k, v in (plain.get(stage) or {}).items():
        # a block (`early_stopping`, `sequence`, `full`) is merged key by key, so
        # `tuning.general.early_stopping.enabled=true` keeps the shared block's other keys
        both = isinstance(v, dict) and isinstance(merged.get(k), dict)
        merged[k] = {**merged[k], **v} if both else v
    return merged


def result_config(t: dict) -> dict:
    """The part of a stage's tuning config that determines the trained adapter. Keys that
    change nothing in the settings where they are left out, so the keys of adapters cached
    before them do not change: a LoRA's config leaves out the full fine-tuning keys
    (`mode: lora`, `full`), a disabled `early_stopping` block is left out, and so is
    `loss_normalization: micro_batch` (the rule every adapter trained before the key used)."""
    out = {k: v for k, v in t.items() if k not in _NON_RESULT_KEYS}
    if str(need(out, "mode", "tuning")) == "lora":
        out.pop("mode", None)
        out.pop("full", None)
    if early_stopping_config(out) is None:
        out.pop("early_stopping", None)
    if loss_normalization(out) == "micro_batch":
        out.pop("loss_normalization", None)
    return out


def _prompt_cfg(cfg: DictConfig, general: bool) -> dict:
    """The prompt wording (`reccocktail.data.prompts.prompt_wording`), which enters the keys."""
    from reccocktail.data.prompts import prompt_wording

    return prompt_wording(cfg, general)


def _prompt_builder(cfg: DictConfig, items: dict[str, str], prompt: dict, fmt: str):
    from reccocktail.data.prompts import prompt_builder_from_config
    from reccocktail.models.backbone import load_tokenizer

    return prompt_builder_from_config(cfg, load_tokenizer(cfg.backbone), items, prompt=prompt,
                                      fmt=fmt)


OBJECTIVES = ("instruction", "sequence")


def objective(t: dict) -> str:
    """`tuning.objective`: instruction (the paper's prompts) | sequence (title sequences)."""
    return one_of(str(need(t, "objective", "tuning")), OBJECTIVES, "tuning.objective")


def sequence_training_windows(path: Path, items: dict[str, str], t: dict,
                              exclude_items: set[str] | frozenset[str] = frozenset()) -> list:
    """The sequence objective's rows: windows of `sequences.jsonl`, then the seeded
    `fraction`/`max_samples` of them (a budget in windows, i.e. ~max_titles targets each)."""
    from reccocktail.models.sequence_data import build_windows, load_user_sequences

    windows = build_windows(load_user_sequences(path, items),
                            int(need(t, "sequence.max_titles", "tuning")),
                            int(need(t, "sequence.min_context", "tuning")),
                            need(t, "sequence.windows_per_user", "tuning"),
                            exclude_items=exclude_items)
    if not windows:
        raise ValueError(f"{path}: no user has more than tuning.sequence.min_context titles")
    return select_subset(windows, need(t, "fraction", "tuning"), need(t, "max_samples", "tuning"),
                         seed=int(need(t, "seed", "tuning")))


def _load_split(path: Path, items: dict[str, str], required: bool = True) -> list[Sample]:
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path}: missing (run the `data` stage first)")
        return []
    return load_samples(path, items)


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 6) if xs else None


def _find_resume(t: dict, ckpt_dir: Path) -> str | None:
    from reccocktail.utils.leftovers import check_checkpoint

    if need(t, "ckpt_path", "tuning"):
        p = Path(t["ckpt_path"])
        if not p.is_file():
            raise FileNotFoundError(f"tuning.ckpt_path: {p} does not exist")
        return str(check_checkpoint(p, "tuning.ckpt_path"))
    last = ckpt_dir / "last.ckpt"
    if need(t, "resume", "tuning") and last.is_file():
        log.info("resuming from %s", last)
        return str(check_checkpoint(last))
    return None


def train_adapter(cfg: DictConfig, out_dir: Path, stage: str, t: dict, train: list[Sample],
                  val: list[Sample], prompt_builder: Any, key: str,
                  init_adapter: str | None = None,
                  rank_val: list[Sample] | None = None) -> tuple[Any, dict, Any]:
    """Fit a LoRA on `train` with Lightning; returns (peft model, metrics, trainer).

    `rank_val`: the validation samples early stopping ranks (`tuning.early_stopping` enabled);
    the returned model then holds the best check's weights and `metrics["early_stopping"]`
    says which. None: no early stopping (the P5 baseline's full fine-tuning).
    `loss_first`/`loss_last` are means over the first/last (up to 5) batch losses this process
    saw (after a resume: those of the resumed part)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from reccocktail.models.early_stopping import RankingEarlyStopping
    from reccocktail.models.sequence_data import SequenceDataModule
    from reccocktail.models.tuning import InstructionTuningModule
    from reccocktail.runtime import make_trainer

    seed = int(need(t, "seed", "tuning"))
    L.seed_everything(seed, workers=True, verbose=False)
    dm_cls = SequenceDataModule if objective(t) == "sequence" else InstructionDataModule
    dm = dm_cls(
        train, prompt_builder, val_samples=val, batch_size=int(need(t, "batch_size", "tuning")),
        val_batch_size=need(t, "val_batch_size", "tuning"),
        group_by_length=bool(need(t, "group_by_length", "tuning")),
        mega_batch_mult=int(need(t, "mega_batch_mult", "tuning")), seed=seed,
        num_workers=int(need(t, "num_workers", "tuning")),
    )
    module = InstructionTuningModule(to_plain(cfg.backbone), t, stage=stage, init_adapter=init_adapter)
    ckpt_dir = out_dir / stage / "checkpoints" / key
    every = int(need(t, "checkpoint_every_n_steps", "tuning") or 0)
    callbacks: list[Any] = [ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0,
                                            every_n_train_steps=every if every > 0 else None)]
    es = early_stopping_config(t)
    stopper = None
    if rank_val is not None:
        if es is None:
            raise ValueError("train_adapter: validation samples to rank without "
                             "tuning.early_stopping.enabled")
        stopper = RankingEarlyStopping(
            rank_val, prompt_builder, stage, every_n_steps=es.every_n_steps,
            patience=es.patience, normalize=es.normalize,
            batch_size=int(need(cfg, "eval.batch_size")), packed=bool(need(cfg, "eval.packed")))
        callbacks.append(stopper)
    overrides: dict[str, Any] = {
        "max_epochs": int(need(t, "epochs", "tuning")),
        "max_steps": int(-1 if need(t, "max_steps", "tuning") is None else t["max_steps"]),
        "accumulate_grad_batches": int(need(t, "accumulate_grad_batches", "tuning")),
        "use_distributed_sampler": False,  # the batch sampler shards over ranks itself
        "enable_checkpointing": True,
    }
    if need(t, "log_every_n_steps", "tuning"):
        overrides["log_every_n_steps"] = int(t["log_every_n_steps"])
    if not val:
        overrides["limit_val_batches"] = 0
    trainer = make_trainer(cfg, out_dir, stage, callbacks=callbacks, **overrides)
    resume = _find_resume(t, ckpt_dir)
    t0 = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    seconds = time.time() - t0
    if val and f"{stage}/val_loss" not in trainer.callback_metrics:
        trainer.validate(module, datamodule=dm, verbose=False)  # stopped by max_steps mid-epoch
    lengths = dm.train_lengths()
    sampler = dm.make_batch_sampler()
    losses = module.step_losses
    k = max(1, min(5, len(losses) // 2))
    cm = trainer.callback_metrics
    val_loss = cm.get(f"{stage}/val_loss")
    total = module.tokens_seen + module.pad_tokens_seen
    metrics = {
        "objective": objective(t),
        "train_samples": len(train),
        "targets": sum(getattr(x, "num_targets", 1) for x in train),
        "val_samples": len(val),
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "loss_first": _mean(losses[:k]),
        "loss_last": _mean(losses[-k:]),
        "val_loss": round(float(val_loss), 6) if val_loss is not None else None,
        "tokens": int(module.tokens_seen),
        "pad_frac": round(module.pad_tokens_seen / total, 4) if total else None,
        "pad_frac_epoch0": round(padding_fraction(lengths, sampler.global_batches(0)), 4),
        "seconds": round(seconds, 2),
        # this process's tokens over this process's time (a resumed run counts its part only)
        "tokens_per_s": round(module.session_tokens / seconds, 1) if seconds > 0 else None,
        "resumed_from": resume,
        "loss_normalization": loss_normalization(t),
    }
    if stopper is not None:
        metrics["early_stopping"] = stopper.summary()
    return module.model, metrics, trainer


def _manifest(cfg: DictConfig, kind: str, t: dict, data_hash: str, key: str, metrics: dict,
              out_dir: Path, extra: dict | None = None) -> dict:
    return {
        "kind": kind,
        "backbone": str(cfg.backbone.name),
        "backbone_identity": ad.weights_identity(cfg.backbone),
        "objective": objective(t),
        "init_seed": int(t["init_seed"]),
        "data_hash": data_hash,
        "key": key,
        "config": {"tuning": result_config(t), "backbone": ad.backbone_identity(cfg.backbone),
                   **(extra or {})},
        "metrics": metrics,
        "trained_in": str(out_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


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


def tuning_config(cfg: DictConfig, stage: str) -> dict:
    """The stage's tuning config, parsed once at its entry: the shared keys overridden by the
    stage's block, `seed`/`init_seed` null -> the run's seed, `precision` from the trainer.
    Every key of conf/tuning/default.yaml must be there (a missing one raises naming it)."""
    t = stage_tuning_cfg(need(cfg, "tuning"), stage)
    for k in _required_tuning_keys(stage):
        need(t, k, f"tuning (stage {stage})")
    if t["init_seed"] is None:
        t["init_seed"] = int(need(cfg, "seed"))
    if t["seed"] is None:
        t["seed"] = int(need(cfg, "seed"))
    t["precision"] = str(need(cfg, "trainer.precision"))
    return t


def _required_tuning_keys(stage: str) -> list[str]:
    """The keys conf/tuning/default.yaml sets for `stage` (the shared ones and the stage's)."""
    from reccocktail.config_check import CONF_DIR

    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "tuning" / "default.yaml"),
                                  resolve=False)
    return [k for k in node if k not in STAGE_BLOCKS] + list(node.get(stage) or {})


def _cache_dir(cfg: DictConfig) -> Path:
    return Path(need(cfg, "paths.cache_dir"))


_LABELS = {"general": "base spirit", "specific": "ingredient"}


def _from_cache(cache_dir: Path, kind: str, key: str, dest: Path) -> dict | None:
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
             _LABELS[kind], key, trained_in, cached)
    return {"adapter": str(dest), "key": key, "reused": "cache", "cache": str(cached),
            "trained_in": trained_in}


def _reuse_or_train(cfg: DictConfig, out_dir: Path, kind: str, t: dict, key: str, data_hash: str,
                    extra: dict, load_data: Callable[[], tuple[dict[str, str], list[Sample],
                                                               list[Sample]]],
                    init_adapter: Path | None = None,
                    load_ranking: Callable[[dict[str, str]], list[Sample]] | None = None) -> dict:
    """The adapter of `kind` for `key` into `adapters/<kind>/`: kept when the run already holds
    it, copied from the cache when there, else trained on `load_data()` (items, train, val),
    saved and cached. `extra` (with the `prompt`) goes into the manifest. With early stopping,
    `load_ranking(items)` gives the validation samples it ranks."""
    from reccocktail.models.tuning import tuning_mode

    if tuning_mode(t) != "lora":
        raise ValueError(f"tuning.mode={tuning_mode(t)}: the {kind} stage trains a LoRA adapter "
                         "(G and S are mixed in weight space, which a fully fine-tuned model is "
                         "not); the full fine-tuning row is the P5 baseline: baseline=p5")
    dest = out_dir / "adapters" / kind
    if ad.holds_adapter(dest, key):
        log.info("%s: %s already holds adapter %s; not training again", _LABELS[kind], dest, key)
        return {"adapter": str(dest), "key": key, "reused": "run"}
    cache_dir = _cache_dir(cfg)
    reused = _from_cache(cache_dir, kind, key, dest) if need(t, "reuse", "tuning") else None
    if reused:
        return reused

    items, train, val = load_data()
    rank_val = None
    if early_stopping_config(t) is not None:
        if load_ranking is None:
            raise ValueError(f"tuning.early_stopping: the {kind} stage has no validation samples "
                             "to rank")
        rank_val = load_ranking(items)
    builder = _prompt_builder(cfg, items, extra["prompt"], objective(t))
    model, metrics, trainer = train_adapter(cfg, out_dir, kind, t, train, val, builder, key,
                                            init_adapter=str(init_adapter) if init_adapter else None,
                                            rank_val=rank_val)
    if trainer.is_global_zero:
        ad.save_adapter(model, dest, _manifest(cfg, kind, t, data_hash, key, metrics, out_dir, extra))
        if t["reuse"]:
            ad.copy_adapter(dest, ad.adapter_cache_dir(cache_dir, key, kind))
    _barrier(trainer)
    return {"adapter": str(dest), "key": key, "reused": False, "metrics": metrics}


def run_general_stage(cfg: DictConfig, out_dir: Path) -> dict:
    """Train (or reuse) the base spirit G on the general pool; writes `adapters/general/`."""
    out_dir = Path(out_dir)
    t = tuning_config(cfg, "general")
    data_dir = out_dir / "data"
    gen_dir = data_dir / "general"
    data_hash = ad.general_data_hash(data_dir)
    prompt = _prompt_cfg(cfg, general=True)
    key = ad.general_cache_key(cfg.backbone, data_hash, result_config(t), prompt)
    if (early_stopping_config(t) is not None and objective(t) == "instruction"
            and need(t, "include_valid", "tuning.general")):
        raise ValueError("tuning.early_stopping.enabled with tuning.general.include_valid=true: "
                         "the base spirit would be early-stopped on validation samples it trains "
                         "on; set tuning.general.include_valid=false")

    def load_data():
        items = load_items(gen_dir / "items.tsv")
        if objective(t) == "sequence":
            windows = sequence_training_windows(gen_dir / "sequences.jsonl", items, t)
            log.info("base spirit: training on %d general sequence windows, %d targets (key %s)",
                     len(windows), sum(w.num_targets for w in windows), key)
            return items, windows, []
        train = _load_split(gen_dir / "train.jsonl", items)
        val = _load_split(gen_dir / "valid.jsonl", items, required=False)
        if need(t, "include_valid", "tuning.general"):
            train, val = train + val, []
        train = select_subset(train, need(t, "fraction", "tuning"),
                              need(t, "max_samples", "tuning"), seed=int(t["seed"]))
        val = (select_subset(val, None, need(t, "val_max_samples", "tuning"), seed=int(t["seed"]))
               if val else [])
        log.info("base spirit: training on %d general samples (key %s)", len(train), key)
        return items, train, val

    return _reuse_or_train(cfg, out_dir, "general", t, key, data_hash, {"prompt": prompt}, load_data,
                           load_ranking=lambda items: early_stopping_samples(
                               gen_dir / "valid.jsonl", items, t))


def specific_samples(train: list[Sample], valid: list[Sample], t: dict) -> list[Sample]:
    """The ingredient's mix: valid (if `include_valid`) + N sampled training prompts, then the
    seeded `fraction`/`max_samples` of that pool (few-shot runs)."""
    seed = int(need(t, "seed", "tuning"))
    n = need(t, "num_train_prompts", "tuning.specific")
    sampled = select_subset(train, None, n, seed=seed) if n != 0 else []
    pool = (list(valid) if need(t, "include_valid", "tuning.specific") else []) + sampled
    pool = select_subset(pool, need(t, "fraction", "tuning"), need(t, "max_samples", "tuning"),
                         seed=seed)
    if not pool:
        raise ValueError("tuning.specific: the ingredient has no training samples "
                         "(num_train_prompts=0 with include_valid=false, or in the cold "
                         "scenario, where valid.jsonl never trains S?)")
    return pool


def early_stopping_samples(path: Path, items: dict[str, str] | None, t: dict) -> list[Sample]:
    """The validation samples early stopping ranks: every sample of a seeded choice of at most
    `tuning.early_stopping.max_users` users of `path` (none when early stopping is off). The
    choice depends only on the set of users and `tuning.seed`, so the specific stage's plan
    (which leaves them out of S's rows) and its training draw the same users."""
    es = early_stopping_config(t)
    if es is None:
        return []
    chosen = choose_users(_load_split(path, items), es.max_users, int(need(t, "seed", "tuning")))
    if not chosen:
        raise ValueError(f"tuning.early_stopping: {path} holds no validation samples to rank")
    return chosen


def _cold_targets(cfg: DictConfig, data_dir: Path) -> set[str]:
    """In the cold scenario the test and validation targets are new items: no training row may
    hold one."""
    if str(need(cfg, "scenario.name")) != "cold":
        return set()
    return {s.target for f in ("test.jsonl", "valid.jsonl") for s in load_samples(data_dir / f)}


def _trains_on_valid(cfg: DictConfig, t: dict) -> bool:
    """Whether S's instruction rows include `valid.jsonl`: `include_valid`, except in cold, where
    its targets are the validation-new items that no adapter may see."""
    return (objective(t) == "instruction" and bool(need(t, "include_valid", "tuning.specific"))
            and str(need(cfg, "scenario.name")) != "cold")


def specific_plan(cfg: DictConfig, out_dir: Path, t: dict) -> dict[str, Any]:
    """What the ingredient trains on, decided before training: the manifest extras (prompt, the
    validation users held out for `mix=grid`) that enter its key. Shared with the P5 baseline,
    which trains on exactly S's rows."""
    data_dir = Path(out_dir) / "data"
    extra: dict[str, Any] = {"prompt": _prompt_cfg(cfg, general=False)}
    held_out: set[str] = set()
    stopping_users = {s.user for s in early_stopping_samples(data_dir / "valid.jsonl", None, t)}
    if stopping_users:  # early stopping on: which users it ranks (part of S's key then)
        extra["early_stopping_valid_users"] = sorted(stopping_users)
    if _trains_on_valid(cfg, t):
        # validation users a later stage selects on (mix=grid) or early stopping ranks never
        # train S (the sequence objective trains on sequences.jsonl, which holds no
        # validation target)
        valid_all = _load_split(data_dir / "valid.jsonl", None)
        valid_users = {s.user for s in valid_all}
        held_out = {s.user for s in selection_samples(valid_all, need(cfg, "mix"),
                                                     int(need(cfg, "seed")))} | stopping_users
        extra["held_out_valid_users"] = sorted(held_out)
        extra["valid_users_trained"] = sorted(valid_users - held_out)
    elif objective(t) == "instruction" and need(t, "include_valid", "tuning.specific"):
        extra["valid_users_trained"] = []
        extra["valid_not_trained"] = ("cold: valid.jsonl's targets are validation-new items, "
                                      "kept out of every training row")
    return extra


def specific_training_data(cfg: DictConfig, out_dir: Path, t: dict, extra: dict[str, Any],
                           label: str = "ingredient") -> tuple[dict[str, str], list, list]:
    """(items, training rows, validation rows) of the ingredient: sequence windows of
    `sequences.jsonl`, or the valid + sampled train prompts (held-out users left out)."""
    data_dir = Path(out_dir) / "data"
    items = load_items(data_dir / "items.tsv")
    if objective(t) == "sequence":
        windows = sequence_training_windows(data_dir / "sequences.jsonl", items, t,
                                            exclude_items=_cold_targets(cfg, data_dir))
        log.info("%s: training on %d sequence windows, %d targets", label,
                 len(windows), sum(w.num_targets for w in windows))
        return items, windows, []
    held_out = set(extra.get("held_out_valid_users") or ())
    train = _load_split(data_dir / "train.jsonl", items)
    valid = ([s for s in _load_split(data_dir / "valid.jsonl", items) if s.user not in held_out]
             if _trains_on_valid(cfg, t) else [])
    samples = specific_samples(train, valid, t)
    log.info("%s: training on %d samples (%d valid + sampled train, %d validation users held "
             "out for selection)", label, len(samples), len(valid), len(held_out))
    return items, samples, []


def run_specific_stage(cfg: DictConfig, out_dir: Path) -> dict:
    """Train the ingredient S on the target domain; writes `adapters/specific/`."""
    out_dir = Path(out_dir)
    t = tuning_config(cfg, "specific")
    data_dir = out_dir / "data"
    data_hash = ad.target_data_hash(data_dir)
    init_from = need(t, "init_from", "tuning.specific")
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
        t["init_seed"] = int(g["init_seed"])
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
