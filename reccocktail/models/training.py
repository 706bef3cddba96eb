"""The training API of LoRA adapters (and of the P5 baseline's full fine-tuning), shared by
the `general`/`specific` stages and the LLM baselines: a stage's tuning config, what an adapter
trains on, the Lightning fit, its manifest, its cache folder and its prompt builder.

Kept out of `models/stage.py` so that another stage (the baselines) uses it without importing a
stage module: the orchestration (reuse, cache lookup, rank handling) stays in the stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from reccocktail import runtime
from reccocktail.data.prompts import prompt_builder_from_config, prompt_wording
from reccocktail.data.samples import Sample, load_items, load_samples
from reccocktail.data.selection import choose_users, selection_samples
from reccocktail.evaluation.config import ScorerConfig
from reccocktail.ingredients import SOURCE, ingredient, ingredients
from reccocktail.models import adapters as ad
from reccocktail.models.backbone import load_tokenizer
from reccocktail.models.datamodule import InstructionDataModule, padding_fraction, select_subset
from reccocktail.models.early_stopping import RankingEarlyStopping
from reccocktail.models.sequence_data import SequenceDataModule, build_windows, load_user_sequences
from reccocktail.models.tuning import InstructionTuningModule
from reccocktail.models.tuning_config import (
    LOSS_NORMALIZATIONS,
    MODES,
    STAGE_BLOCKS,
    TuningConfig,
    early_stopping_config,
    parse_tuning,
    stage_tuning_cfg,
)
from reccocktail.utils.config import need, one_of
from reccocktail.utils.device import backbone_dtype, length_bucket, resolve_device
from reccocktail.utils.io import to_plain
from reccocktail.utils.leftovers import check_checkpoint

log = logging.getLogger(__name__)

# Every key conf/tuning/default.yaml sets: the shared ones, then each stage block's own. A run's
# tuning config must hold all of them (its one default is in that file); a missing one raises.
TUNING_KEYS = ("objective", "mode", "full", "sequence", "init_seed", "seed", "lr", "weight_decay",
               "betas", "schedule", "warmup_ratio", "warmup_steps", "batch_size",
               "val_batch_size", "accumulate_grad_batches", "loss_normalization", "epochs",
               "max_steps", "group_by_length", "mega_batch_mult", "gradient_checkpointing",
               "num_workers", "val_max_samples", "early_stopping", "checkpoint_every_n_steps",
               "log_every_n_steps", "ckpt_path", "resume", "fraction", "max_samples")
STAGE_TUNING_KEYS = {"general": ("include_valid", "max_samples", "reuse"),
                     "specific": ("include_valid", "num_train_prompts", "init_from", "reuse")}
# Keys that change how a run is executed or stored, not the adapter it produces.
_NON_RESULT_KEYS = ("ckpt_path", "resume", "num_workers", "checkpoint_every_n_steps", "reuse",
                    "log_every_n_steps")


def result_config(t: TuningConfig) -> dict:
    """The part of a stage's tuning config that determines the trained adapter: its block as
    composed (`TuningConfig.block`), so the keys of adapters cached before the typed config are
    kept (`result_block`)."""
    return result_block(t.block)


def result_block(block: Mapping[str, Any]) -> dict:
    """The adapter-determining part of a merged tuning block. Keys that change nothing in the
    settings where they are left out, so the keys of adapters cached before them do not change:
    a LoRA's config leaves out the full fine-tuning keys (`mode: lora`, `full`), a disabled
    `early_stopping` block is left out, and so is `loss_normalization: micro_batch` (the rule
    every adapter trained before the key used)."""
    out = {k: v for k, v in block.items() if k not in _NON_RESULT_KEYS}
    if one_of(str(need(out, "mode", "tuning")), MODES, "tuning.mode") == "lora":
        out.pop("mode", None)
        out.pop("full", None)
    if early_stopping_config(out) is None:
        out.pop("early_stopping", None)
    if one_of(str(need(out, "loss_normalization", "tuning")), LOSS_NORMALIZATIONS,
              "tuning.loss_normalization") == "micro_batch":
        out.pop("loss_normalization", None)
    return out


def prompt_cfg(cfg: DictConfig, general: bool) -> dict:
    """The prompt wording (`reccocktail.data.prompts.prompt_wording`), which enters the keys."""
    return prompt_wording(cfg, general)


def prompt_builder(cfg: DictConfig, items: dict[str, str], prompt: dict, fmt: str) -> Any:
    """The prompt builder an adapter trains with: the run's tokenizer, `prompt` (the wording that
    entered its key) and format `fmt`, so training and scoring render prompts the same way."""
    return prompt_builder_from_config(cfg, load_tokenizer(cfg.backbone), items, prompt=prompt,
                                      fmt=fmt)


def sequence_training_windows(path: Path, items: dict[str, str], t: TuningConfig,
                              exclude_items: set[str] | frozenset[str] = frozenset(),
                              keep_user: Callable[[str], bool] | None = None) -> list:
    """The sequence objective's rows: windows of `sequences.jsonl` (of the users `keep_user`
    accepts, when given), then the seeded `fraction`/`max_samples` of them (a budget in
    windows, i.e. ~max_titles targets each)."""
    sequences = load_user_sequences(path, items)
    if keep_user is not None:
        sequences = {u: seq for u, seq in sequences.items() if keep_user(u)}
    windows = build_windows(sequences, t.sequence.max_titles, t.sequence.min_context,
                            t.sequence.windows_per_user, exclude_items=exclude_items)
    if not windows:
        raise ValueError(f"{path}: no user has more than tuning.sequence.min_context titles")
    return select_subset(windows, t.fraction, t.max_samples, seed=t.seed)


def load_split(path: Path, items: dict[str, str] | None, required: bool = True) -> list[Sample]:
    """A split file of the data stage; a missing one raises naming it unless not `required`."""
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path}: missing (run the `data` stage first)")
        return []
    return load_samples(path, items)


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 6) if xs else None


def _find_resume(t: TuningConfig, ckpt_dir: Path) -> str | None:
    if t.ckpt_path:
        p = Path(t.ckpt_path)
        if not p.is_file():
            raise FileNotFoundError(f"tuning.ckpt_path: {p} does not exist")
        return str(check_checkpoint(p, "tuning.ckpt_path"))
    last = ckpt_dir / "last.ckpt"
    if t.resume and last.is_file():
        log.info("resuming from %s", last)
        return str(check_checkpoint(last))
    return None


def train_adapter(cfg: DictConfig, out_dir: Path, stage: str, t: TuningConfig, train: list[Sample],
                  val: list[Sample], prompt_builder: Any, key: str,
                  init_adapter: str | None = None,
                  rank_val: list[Sample] | None = None,
                  scorers: ScorerConfig | None = None) -> tuple[Any, dict, Any]:
    """Fit a LoRA on `train` with Lightning; returns (peft model, metrics, trainer).

    `rank_val`: the validation samples early stopping ranks (`tuning.early_stopping` enabled);
    the returned model then holds the best check's weights and `metrics["early_stopping"]`
    says which. None: no early stopping (the P5 baseline's full fine-tuning). `scorers`: how
    they are ranked (the eval block's scorer settings, `EvalConfig.scorers`), required with them.
    `loss_first`/`loss_last` are means over the first/last (up to 5) batch losses this process
    saw (after a resume: those of the resumed part)."""
    L.seed_everything(t.seed, workers=True, verbose=False)
    dm_cls = SequenceDataModule if t.objective == "sequence" else InstructionDataModule
    dm = dm_cls(
        train, prompt_builder, val_samples=val, batch_size=t.batch_size,
        val_batch_size=t.val_batch_size, group_by_length=t.group_by_length,
        mega_batch_mult=t.mega_batch_mult, seed=t.seed, num_workers=t.num_workers,
        pad_multiple=length_bucket(backbone_dtype(cfg.backbone), resolve_device(cfg)),
    )
    module = InstructionTuningModule(to_plain(cfg.backbone), t, stage=stage, init_adapter=init_adapter)
    ckpt_dir = out_dir / stage / "checkpoints" / key
    every = t.checkpoint_every_n_steps or 0
    callbacks: list[Any] = [ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0,
                                            every_n_train_steps=every if every > 0 else None)]
    es = t.early_stopping
    stopper = None
    if rank_val is not None:
        if es is None or scorers is None:
            raise ValueError("train_adapter: validation samples to rank need "
                             "tuning.early_stopping.enabled and the eval block's scorer settings")
        stopper = RankingEarlyStopping(
            rank_val, prompt_builder, stage, every_n_steps=es.every_n_steps,
            patience=es.patience, normalize=es.normalize,
            batch_size=scorers.batch_size, packed=scorers.packed)
        callbacks.append(stopper)
    overrides: dict[str, Any] = {
        "max_epochs": t.epochs,
        "max_steps": t.total_max_steps,
        "accumulate_grad_batches": t.accumulate_grad_batches,
        "use_distributed_sampler": False,  # the batch sampler shards over ranks itself
        "enable_checkpointing": True,
    }
    if t.log_every_n_steps:
        overrides["log_every_n_steps"] = t.log_every_n_steps
    if not val:
        overrides["limit_val_batches"] = 0
    trainer = runtime.make_trainer(cfg, out_dir, stage, callbacks=callbacks, **overrides)
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
        "objective": t.objective,
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
        "loss_normalization": t.loss_normalization,
    }
    if stopper is not None:
        metrics["early_stopping"] = stopper.summary()
    return module.model, metrics, trainer


def adapter_manifest(cfg: DictConfig, kind: str, t: TuningConfig, data_hash: str, key: str,
                     metrics: dict, out_dir: Path, extra: dict | None = None) -> dict:
    """The `manifest.json` of a trained adapter: what it was trained from (the key's parts, so
    a later stage can check it) and how the training went."""
    return {
        "kind": kind,
        "backbone": str(cfg.backbone.name),
        "backbone_identity": ad.weights_identity(cfg.backbone),
        # the dtype the frozen weights ran in (the LoRA and its optimizer state are fp32)
        "backbone_dtype": backbone_dtype(cfg.backbone),
        "objective": t.objective,
        "init_seed": t.init_seed,
        "data_hash": data_hash,
        "key": key,
        "config": {"tuning": result_config(t), "backbone": ad.backbone_identity(cfg.backbone),
                   **(extra or {})},
        "metrics": metrics,
        "run": ad.run_identity(cfg, out_dir),  # checked by every stage that reads the adapter
        "trained_in": str(out_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def tuning_block(cfg: DictConfig, stage: str) -> str:
    """The `tuning.<block>` an ingredient stage trains with: its own for `general`/`specific`,
    `general` for a general-source ingredient (`reccocktail.ingredients`)."""
    if stage in STAGE_BLOCKS:
        return stage
    return ingredient(cfg, stage).tuning_block


def tuning_config(cfg: DictConfig, stage: str) -> TuningConfig:
    """The stage's tuning config, parsed once at its entry: the shared keys overridden by the
    stage's block (a general-source ingredient: `tuning.general`, then `tuning.<name>` if set),
    `seed`/`init_seed` null -> the run's seed, `precision` from the trainer.
    Every key of conf/tuning/default.yaml must be there (a missing one raises naming it)."""
    named = [i.name for i in ingredients(cfg) if i.kind == SOURCE]
    block = tuning_block(cfg, stage)
    t = stage_tuning_cfg(need(cfg, "tuning"), block, named,
                         own=stage if stage in named else None)
    for k in required_tuning_keys(block):
        need(t, k, f"tuning (stage {stage})")
    if t["init_seed"] is None:
        t["init_seed"] = int(need(cfg, "seed"))
    if t["seed"] is None:
        t["seed"] = int(need(cfg, "seed"))
    t["precision"] = str(need(cfg, "trainer.precision"))
    return parse_tuning(t)


def required_tuning_keys(stage: str) -> list[str]:
    """The keys `stage`'s tuning config must hold: the shared ones and the stage's block's
    (`TUNING_KEYS`, `STAGE_TUNING_KEYS`; a test keeps them equal to conf/tuning/default.yaml)."""
    one_of(stage, STAGE_BLOCKS, "tuning stage")
    return [*TUNING_KEYS, *STAGE_TUNING_KEYS[stage]]


def cache_root(cfg: DictConfig) -> Path:
    """`paths.cache_dir`: the root of the adapter and model caches shared by runs."""
    return Path(need(cfg, "paths.cache_dir"))



def specific_samples(train: list[Sample], valid: list[Sample], t: TuningConfig) -> list[Sample]:
    """The ingredient's mix: valid (if `include_valid`) + N sampled training prompts, then the
    seeded `fraction`/`max_samples` of that pool (few-shot runs)."""
    n = t.num_train_prompts
    sampled = select_subset(train, None, n, seed=t.seed) if n != 0 else []
    pool = (list(valid) if t.include_valid else []) + sampled
    pool = select_subset(pool, t.fraction, t.max_samples, seed=t.seed)
    if not pool:
        raise ValueError("tuning.specific: the ingredient has no training samples "
                         "(num_train_prompts=0 with include_valid=false, or in the cold "
                         "scenario, where valid.jsonl never trains S?)")
    return pool


def early_stopping_samples(path: Path, items: dict[str, str] | None, t: TuningConfig,
                           keep_user: Callable[[str], bool] | None = None) -> list[Sample]:
    """The validation samples early stopping ranks: every sample of a seeded choice of at most
    `tuning.early_stopping.max_users` users of `path` (of those `keep_user` accepts, when
    given; none when early stopping is off). The choice depends only on the set of users and
    `tuning.seed`, so the specific stage's plan (which leaves them out of S's rows) and its
    training draw the same users."""
    es = t.early_stopping
    if es is None:
        return []
    samples = load_split(path, items)
    if keep_user is not None:
        samples = [s for s in samples if keep_user(s.user)]
    chosen = choose_users(samples, es.max_users, t.seed)
    if not chosen:
        raise ValueError(f"tuning.early_stopping: {path} holds no validation samples to rank")
    return chosen


def cold_targets(cfg: DictConfig, data_dir: Path) -> set[str]:
    """In the cold scenario the test and validation targets are new items: no training row may
    hold one."""
    if str(need(cfg, "scenario.name")) != "cold":
        return set()
    return {s.target for f in ("test.jsonl", "valid.jsonl") for s in load_samples(data_dir / f)}


def _trains_on_valid(cfg: DictConfig, t: TuningConfig) -> bool:
    """Whether S's instruction rows include `valid.jsonl`: `include_valid`, except in cold, where
    its targets are the validation-new items that no adapter may see."""
    return (t.objective == "instruction" and t.include_valid
            and str(need(cfg, "scenario.name")) != "cold")


def specific_plan(cfg: DictConfig, out_dir: Path, t: TuningConfig) -> dict[str, Any]:
    """What the ingredient trains on, decided before training: the manifest extras (prompt, the
    validation users held out for `mix=grid`) that enter its key. Shared with the P5 baseline,
    which trains on exactly S's rows."""
    data_dir = Path(out_dir) / "data"
    extra: dict[str, Any] = {"prompt": prompt_cfg(cfg, general=False)}
    held_out: set[str] = set()
    stopping_users = {s.user for s in early_stopping_samples(data_dir / "valid.jsonl", None, t)}
    if stopping_users:  # early stopping on: which users it ranks (part of S's key then)
        extra["early_stopping_valid_users"] = sorted(stopping_users)
    if _trains_on_valid(cfg, t):
        # validation users a later stage selects on (mix=grid) or early stopping ranks never
        # train S (the sequence objective trains on sequences.jsonl, which holds no
        # validation target)
        valid_all = load_split(data_dir / "valid.jsonl", None)
        valid_users = {s.user for s in valid_all}
        held_out = {s.user for s in selection_samples(valid_all, need(cfg, "mix"),
                                                     int(need(cfg, "seed")))} | stopping_users
        extra["held_out_valid_users"] = sorted(held_out)
        extra["valid_users_trained"] = sorted(valid_users - held_out)
    elif t.objective == "instruction" and t.include_valid:
        extra["valid_users_trained"] = []
        extra["valid_not_trained"] = ("cold: valid.jsonl's targets are validation-new items, "
                                      "kept out of every training row")
    return extra


def specific_training_data(cfg: DictConfig, out_dir: Path, t: TuningConfig, extra: dict[str, Any],
                           label: str = "ingredient") -> tuple[dict[str, str], list, list]:
    """(items, training rows, validation rows) of the ingredient: sequence windows of
    `sequences.jsonl`, or the valid + sampled train prompts (held-out users left out)."""
    data_dir = Path(out_dir) / "data"
    items = load_items(data_dir / "items.tsv")
    if t.objective == "sequence":
        windows = sequence_training_windows(data_dir / "sequences.jsonl", items, t,
                                            exclude_items=cold_targets(cfg, data_dir))
        log.info("%s: training on %d sequence windows, %d targets", label,
                 len(windows), sum(w.num_targets for w in windows))
        return items, windows, []
    held_out = set(extra.get("held_out_valid_users") or ())
    train = load_split(data_dir / "train.jsonl", items)
    valid = ([s for s in load_split(data_dir / "valid.jsonl", items) if s.user not in held_out]
             if _trains_on_valid(cfg, t) else [])
    samples = specific_samples(train, valid, t)
    log.info("%s: training on %d samples (%d valid + sampled train, %d validation users held "
             "out for selection)", label, len(samples), len(valid), len(held_out))
    return items, samples, []


