"""The tuning block of one adapter training as a typed config (`TuningConfig`).

A stage's tuning config is the shared keys of `tuning:` overridden by its stage block (and, for
a general-source ingredient, by its own block): `models/training.py:tuning_config` merges them
once at the stage's entry and parses the result here, so every later reader gets typed,
validated values and a misspelt, missing or mistyped key fails there, naming it.

The merged block is kept beside the typed fields (`TuningConfig.block`): an adapter's cache key
and manifest are made from it exactly as composed (`models/training.py:result_config`), so the
keys of adapters cached before this type existed are unchanged. `overlay` lays keys over it
(S's `init_seed` from G, the P5 baseline's full fine-tuning settings) and parses again, so the
block and the fields never disagree.

Imports nothing heavy: `config_check` reads the choices below without loading torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from reccocktail.data.prompts import FORMATS
from reccocktail.utils.config import need, one_of, typed
from reccocktail.utils.io import to_plain

OBJECTIVES = FORMATS  # the paper's prompts | users' title sequences (the prompt formats)
MODES = ("lora", "full")  # a LoRA on the frozen backbone | the backbone itself (P5 only)
SCHEDULES = ("cosine", "linear", "constant")
# a mean over every target token of the optimizer step | each micro-batch's own token mean,
# micro-batches weighted equally (adapters trained before the key)
LOSS_NORMALIZATIONS = ("tokens", "micro_batch")
STAGE_BLOCKS = ("general", "specific")
NESTED = ("full", "sequence", "early_stopping")


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """`tuning.early_stopping` (conf/tuning/default.yaml holds every key's one default)."""

    enabled: bool
    every_n_steps: int | None  # optimizer steps between checks; None: at every epoch's end
    patience: int | None       # checks without a new best before stopping; None: never stop
    max_users: int | None      # a seeded choice of validation users; None: all
    normalize: bool            # rank by the per-token mean log-likelihood instead of the sum


def early_stopping_config(block: Mapping[str, Any]) -> EarlyStoppingConfig | None:
    """The early-stopping settings of a tuning block (`block["early_stopping"]`), or None when
    `enabled` is false."""
    es = typed(EarlyStoppingConfig, need(block, "early_stopping", "tuning"),
               "tuning.early_stopping")
    if not es.enabled:
        return None
    for key in ("every_n_steps", "patience", "max_users"):
        v = getattr(es, key)
        if v is not None and v < 1:
            raise ValueError(f"tuning.early_stopping.{key}: expected a positive count or null, "
                             f"got {v}")
    return es


@dataclass(frozen=True)
class SequenceRows:
    """`tuning.sequence`: how users' title sequences become training rows (windows)."""

    max_titles: int         # titles per window
    min_context: int        # the first titles of a window are context only
    windows_per_user: int | None  # the newest windows of each user; None: all


@dataclass(frozen=True)
class FullTuning:
    """`tuning.full`: only read with `mode: full` (the P5 baseline)."""

    train_embeddings: bool


@dataclass(frozen=True)
class TuningConfig:
    """One stage's tuning settings, typed (see conf/tuning/default.yaml for what each means)."""

    objective: str
    mode: str
    full: FullTuning
    sequence: SequenceRows
    init_seed: int
    seed: int
    lr: float
    weight_decay: float
    betas: tuple[float, ...]
    schedule: str
    warmup_ratio: float
    warmup_steps: int | None
    batch_size: int
    val_batch_size: int | None
    accumulate_grad_batches: int
    loss_normalization: str
    epochs: int
    max_steps: int | None
    group_by_length: bool
    mega_batch_mult: int
    gradient_checkpointing: bool
    num_workers: int
    val_max_samples: int | None
    early_stopping: EarlyStoppingConfig | None  # None: off
    checkpoint_every_n_steps: int | None
    log_every_n_steps: int | None
    ckpt_path: str | None
    resume: bool
    fraction: float | None
    max_samples: int | None
    include_valid: bool
    reuse: bool
    precision: str                        # the trainer's, part of the adapter's key
    num_train_prompts: int | None = None  # the specific block's
    init_from: str | None = None          # the specific block's: null | general
    # the merged block as composed (read-only): what the cache key and the manifest are made of
    block: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        one_of(self.objective, OBJECTIVES, "tuning.objective")
        one_of(self.mode, MODES, "tuning.mode")
        one_of(self.schedule, SCHEDULES, "tuning.schedule")
        one_of(self.loss_normalization, LOSS_NORMALIZATIONS, "tuning.loss_normalization")

    @property
    def total_max_steps(self) -> int:
        """`max_steps` as Lightning reads it (-1: run the epochs)."""
        return -1 if self.max_steps is None else self.max_steps

    def warmup_steps_for(self, total_steps: int) -> int:
        """`warmup_steps` if set, else `warmup_ratio` of the optimizer steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(round(self.warmup_ratio * max(1, total_steps)))

    def overlay(self, over: Mapping[str, Any]) -> TuningConfig:
        """This config with `over` laid on its block (nested blocks key by key), parsed again."""
        return parse_tuning(merge_blocks(self.block, over))


def merge_blocks(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on `base`; a nested block (`early_stopping`, `sequence`, `full`) merges key by
    key, so `tuning.general.early_stopping.enabled=true` keeps the shared block's other keys."""
    out = dict(base)
    for k, v in over.items():
        both = isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = merge_blocks(out[k], v) if both else v
    return out


def stage_tuning_cfg(tuning: Any, stage: str, named: Sequence[str] = (),
                     own: str | None = None) -> dict:
    """The shared tuning keys overridden by the stage's own block (`tuning.general/specific`),
    then by the block `tuning.<own>` when there is one (a general-source ingredient: its
    `general` block with its own block's keys over it). `named`: the blocks of such
    ingredients, which are no shared keys."""
    one_of(stage, STAGE_BLOCKS, "tuning stage")
    plain = to_plain(tuning) if tuning is not None else {}
    merged = {k: v for k, v in plain.items() if k not in STAGE_BLOCKS and k not in named}
    for block in (stage, own):
        merged = merge_blocks(merged, (plain.get(block) or {}) if block else {})
    return merged


def parse_tuning(block: Mapping[str, Any], where: str = "tuning") -> TuningConfig:
    """The typed config of a merged stage block (every key of conf/tuning/default.yaml's shared
    part and of the stage's block, plus `precision`); a missing key raises naming it."""
    values = {k: v for k, v in block.items() if k not in NESTED}
    values["full"] = typed(FullTuning, need(block, "full", where), f"{where}.full")
    values["sequence"] = typed(SequenceRows, need(block, "sequence", where), f"{where}.sequence")
    values["early_stopping"] = early_stopping_config(block)
    values["block"] = MappingProxyType(dict(block))
    return typed(TuningConfig, values, where)
