"""Early stopping of G and S on validation NDCG@1 (`tuning.early_stopping`, off by default).

Every `every_n_steps` optimizer steps (or at the end of every epoch when it is null),
`RankingEarlyStopping` ranks the stored candidates of a fixed, seeded set of validation samples by
likelihood with the adapter as it is at that step (the eval stage's `LikelihoodScorer` and
`ranking_metrics`), logs `<stage>/val_ndcg1`, keeps a copy of the trainable weights of the best
check so far, and stops the training after `patience` checks without a new best. When training
ends (stopped, or its budget spent) the final weights are checked too if they were not yet, and
the best check's weights are put back into the module, so the adapter the stage saves after
`fit` is the best check's. Ties keep the earlier step.

Which samples: the base spirit G ranks `data/general/valid.jsonl`, the ingredient S
`data/valid.jsonl` (in the cold scenario: samples whose target is a new item), at most
`max_users` users of them (seeded). None of them is trained on: the stage leaves their samples
out of S's rows (`models/stage.py:specific_plan`) and refuses G's `include_valid` with early
stopping.

Why not Lightning's `EarlyStopping` + `ModelCheckpoint(monitor=..., mode="max")`: EarlyStopping
checks only when a validation loop or a training epoch ends, not every N optimizer steps within
an epoch; ModelCheckpoint writes only on its own triggers (every N train steps, or epoch and
validation ends), so the weights scored at the last step of a run cut by `max_steps` could not be
restored from it, and restoring means reading a whole checkpoint (optimizer states included) back
by path. A LoRA's trainable weights are a few MB: this callback keeps the best ones in memory and
in its `state_dict`, which Lightning writes into every checkpoint, so a resumed run continues with
the same best weights, curve and patience count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from reccocktail.data.samples import Sample
from reccocktail.evaluation.metrics import ranking_metrics
from reccocktail.evaluation.scorers import LikelihoodScorer, num_candidates

log = logging.getLogger(__name__)

METRIC = "val_ndcg1"  # logged as `<stage>/val_ndcg1`


def rank_validation(model: Any, prompt_builder: Any, samples: Sequence[Sample],
                    batch_size: int = 32, normalize: bool = False, packed: bool = True
                    ) -> dict[str, float]:
    """NDCG@1/@3 of `samples` ranked by the model's likelihood of each stored candidate."""
    scorer = LikelihoodScorer(model, prompt_builder, batch_size=batch_size, normalize=normalize,
                              packed=packed)
    scores = scorer.score(list(samples))
    targets = torch.tensor([s.target_index for s in samples])
    return ranking_metrics(scores, targets, ks=(1, 3))


class RankingEarlyStopping(L.Callback):
    """Checks validation NDCG@1 during training, stops after `patience` checks without a new
    best and leaves the best check's trainable weights in the module (see the module doc).

    After `fit`, `summary()` says what happened (for the adapter manifest)."""

    def __init__(self, samples: Sequence[Sample], prompt_builder: Any, stage: str,
                 every_n_steps: int | None, patience: int | None, normalize: bool = False,
                 batch_size: int = 32, packed: bool = True) -> None:
        if not samples:
            raise ValueError(f"tuning.early_stopping ({stage}): no validation samples to rank")
        num_candidates(samples)  # one candidate count for all (a rectangular score matrix)
        self.samples = list(samples)
        self.prompt_builder = prompt_builder
        self.monitor = f"{stage}/{METRIC}"
        self.every_n_steps = every_n_steps
        self.patience = patience
        self.normalize, self.batch_size, self.packed = normalize, batch_size, packed
        self.curve: list[dict[str, Any]] = []
        self.best: int | None = None  # index into `curve`
        self.best_weights: dict[str, torch.Tensor] = {}
        self.wait = 0
        self.stopped_early = False
        self.restored = False
        self._epoch = 0  # the epoch of the last training batch (a check's epoch)

    # -- scoring ------------------------------------------------------------------------------
    def score(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """NDCG@1/@3 of the validation samples with the module's model as it is now."""
        with trainer.precision_plugin.val_step_context():
            return rank_validation(pl_module.model, self.prompt_builder, self.samples,
                                   batch_size=self.batch_size, normalize=self.normalize,
                                   packed=self.packed)

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Score the current weights once per optimizer step; keep them if they are the best."""
        step = int(trainer.global_step)
        if step == 0 or (self.curve and self.curve[-1]["step"] == step):
            return
        metrics = self.score(trainer, pl_module)
        # every rank scores the same samples with the same weights; rank 0's value decides
        value = float(trainer.strategy.broadcast(float(metrics["ndcg@1"]), src=0))
        self.curve.append({"step": step, "epoch": self._epoch, "val_ndcg1": value,
                           "val_ndcg3": float(metrics["ndcg@3"])})
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics({self.monitor: value}, step=step)
        if self.best is None or value > self.curve[self.best]["val_ndcg1"]:
            self.best, self.wait = len(self.curve) - 1, 0
            self.best_weights = {n: p.detach().to("cpu", copy=True)
                                 for n, p in pl_module.named_parameters() if p.requires_grad}
        else:
            self.wait += 1
        log.info("%s at step %d: %.4f (best %.4f at step %d; %d check(s) without a new best)",
                 self.monitor, step, value, self.curve[self.best]["val_ndcg1"],
                 self.curve[self.best]["step"], self.wait)
        if self.patience is not None and self.wait >= self.patience and not trainer.should_stop:
            log.info("%s: no new best in %d checks: stopping at step %d", self.monitor,
                     self.wait, step)
            trainer.should_stop = True
            self.stopped_early = True

    # -- Lightning hooks ------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._epoch = int(trainer.current_epoch)
        # right after an optimizer step (global_step counts steps, not micro-batches)
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_steps is None:
            self.check(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer, pl_module)  # the final weights, unless just checked
        self.restore(pl_module)

    def restore(self, pl_module: L.LightningModule) -> None:
        """Put the best check's trainable weights back into `pl_module`."""
        if not self.best_weights:
            return
        params = dict(pl_module.named_parameters())
        missing = sorted(set(self.best_weights) - set(params))
        if missing:
            raise RuntimeError(f"early stopping: the module lacks best weights {missing[:3]}")
        with torch.no_grad():
            for n, w in self.best_weights.items():
                params[n].copy_(w.to(device=params[n].device, dtype=params[n].dtype))
        self.restored = True
        best = self.curve[self.best]
        log.info("%s: restored the weights of step %d (epoch %d, %.4f)", self.monitor,
                 best["step"], best["epoch"], best["val_ndcg1"])

    # -- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve, "best": self.best, "wait": self.wait,
                "best_weights": self.best_weights, "stopped_early": self.stopped_early}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = list(state_dict.get("curve", []))
        self.best = state_dict.get("best")
        self.wait = int(state_dict.get("wait", 0))
        self.best_weights = dict(state_dict.get("best_weights", {}))
        self.stopped_early = bool(state_dict.get("stopped_early", False))

    def summary(self) -> dict[str, Any]:
        """What the adapter manifest records: the best check, whether training stopped early,
        whether its weights were restored, and the whole curve."""
        best = self.curve[self.best] if self.best is not None else {}
        return {"best_step": best.get("step"), "best_epoch": best.get("epoch"),
                "best_val_ndcg1": best.get("val_ndcg1"), "stopped_early": self.stopped_early,
                "restored": self.restored, "every_n_steps": self.every_n_steps,
                "patience": self.patience, "normalize": self.normalize,
                "val_samples": len(self.samples),
                "val_users": len({s.user for s in self.samples}), "curve": list(self.curve)}
