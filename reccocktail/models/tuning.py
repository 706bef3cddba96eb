"""`InstructionTuningModule`: LoRA instruction tuning of a frozen backbone (G or S).

The backbone is built in `configure_model`, so under DDP/FSDP each process builds its own
copy after the strategy is set up, and the LoRA initialisation is seeded explicitly with
`init_seed` so that the base spirit and the ingredient start from the same A/B matrices (the
cocktail's ab mixing only carries meaning then). Checkpoints keep the trainable (LoRA)
weights only: the backbone is rebuilt from its config on resume.

`tuning.mode: full` trains the backbone's own weights instead of a LoRA (the P5 baseline;
`reccocktail/models/full.py` says which weights and why); the loop, loss and checkpoints are the
same, only the model built in `configure_model` differs.

`tuning.loss_normalization` decides what an optimizer step's gradient is the gradient of when it
accumulates several micro-batches (`accumulate_grad_batches`, and DDP ranks): `tokens` (the
default) the mean loss over every target token of the effective batch, so a sequence window
with few targets counts for its few tokens; `micro_batch` (the rule before the key existed) the
mean of the micro-batches' own token means, so every micro-batch counts the same
(docs/design.md §8).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from reccocktail.models.adapters import load_adapter
from reccocktail.models.backbone import load_backbone, lora_config
from reccocktail.models.full import build_full_model
from reccocktail.models.head_loss import linear_cross_entropy
from reccocktail.models.tuning_config import SCHEDULES, TuningConfig
from reccocktail.utils.config import need

log = logging.getLogger(__name__)

def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int,
                   total_steps: int):
    """Linear warm-up, then cosine/linear decay to 0 or a constant rate (transformers' schedules)."""
    from transformers import (  # lazy: +1.9 s (transformers' optimization)
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    if schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup_steps)
    raise ValueError(f"tuning.schedule: unknown value {schedule!r}; choose one of {SCHEDULES}")


# Causal LMs whose logits are exactly `lm_head(decoder(x))` (no soft-capping or logit scale),
# so the head's loss can be taken from the decoder's hidden states (`head_loss`).
_PLAIN_HEAD_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})


def _plain_head(model) -> tuple[Any, torch.nn.Linear] | None:
    """(decoder, lm_head) of a model whose logits are the head applied to the decoder's output,
    else None (the loss then goes through the model's own forward)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(base, "config", None), "model_type", None) not in _PLAIN_HEAD_TYPES:
        return None
    head = base.get_output_embeddings()
    decoder = base.get_decoder()
    if (decoder is base or type(head) is not torch.nn.Linear or head.bias is not None):
        return None
    return decoder, head


def target_count(labels: torch.Tensor) -> int:
    """The labelled tokens a batch's loss is taken on (a label at position 0 has no prediction)."""
    return int((labels[:, 1:] != -100).sum())


def response_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor, fused: bool = True, reduction: str = "mean"
                  ) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (response) tokens (their sum with
    `reduction="sum"`; `target_count(labels)` tokens).

    Only the positions that predict a labelled token go through the LM head: with ~450-token
    prompts, ~10-token answers and a 49k-152k vocabulary, projecting every position would spend
    most of the head's time and memory on logits that the masked loss throws away. With `fused`
    (and a model of `_PLAIN_HEAD_TYPES`) the loss is taken from the decoder's hidden states a
    chunk of positions at a time (`head_loss.linear_cross_entropy`), so no [positions,
    vocabulary] logits block is kept for the backward. Otherwise the positions go to
    `logits_to_keep` as one 1-D index tensor (their union over the batch; length-grouped
    batches keep it tight), the form every transformers 5.x model accepts (transformers 5.17
    rejects a 2-D mask). Both equal the model's own loss (`labels=`) up to rounding.
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    targets = labels[:, 1:][keep[:, :-1]]
    if targets.numel() == 0:
        raise ValueError("a batch without response tokens (every label is -100)")
    parts = _plain_head(model) if fused else None
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                         use_cache=False).last_hidden_state
        return linear_cross_entropy(hidden[keep], head.weight, targets, reduction=reduction)
    pos = keep.any(dim=0).nonzero().squeeze(1)
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=pos)
    logits = out.logits
    if logits.shape[1] != pos.numel():  # a model that ignores logits_to_keep
        logits = logits[:, pos]
    logits = logits[keep[:, pos]]
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction=reduction)


def build_peft_model(backbone_cfg: Any, init_seed: int, gradient_checkpointing: bool = False,
                     init_adapter: str | None = None):
    """Backbone + a fresh LoRA (seeded) or a trainable copy of `init_adapter` (second round)."""
    from peft import get_peft_model, prepare_model_for_kbit_training  # lazy: +1.5 s (peft)

    model, _ = load_backbone(backbone_cfg)
    gc_kwargs = {"use_reentrant": False}
    if need(backbone_cfg, "quantization", "backbone") not in (None, "none"):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    if gradient_checkpointing:
        model.config.use_cache = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(init_seed))
        if init_adapter:
            peft_model = load_adapter(model, init_adapter, is_trainable=True)
        else:
            layers = getattr(model.config, "num_hidden_layers", None)
            peft_model = get_peft_model(model, lora_config(backbone_cfg, layers))
    return peft_model


class InstructionTuningModule(L.LightningModule):
    """Trains the LoRA weights (or, with `tuning.mode: full`, the backbone's own); loss on the
    response tokens (prompt labels are -100).

    `backbone` is the backbone config (a plain dict) and `tuning` the stage's typed tuning
    config; both are saved as hyperparameters as plain dicts (the tuning block as composed), so a
    checkpoint holds no class of ours. Metrics are logged as `<stage>/<name>`.
    """

    def __init__(self, backbone: dict, tuning: TuningConfig, stage: str = "train",
                 init_adapter: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters({"backbone": backbone, "tuning": dict(tuning.block),
                                   "stage": stage, "init_adapter": init_adapter})
        self.backbone_cfg = backbone
        self.tuning = tuning
        self.stage_name = stage
        self.init_adapter = init_adapter
        self.model = None
        self.strict_loading = False  # checkpoints hold the trainable weights only
        self.step_losses: list[float] = []
        self.tokens_seen = 0  # over the whole training, restored on resume
        self.pad_tokens_seen = 0
        self.session_tokens = 0  # in this process only (throughput)
        self.window_targets = 0  # target tokens of the micro-batches since the last step
        # `tokens`: the backward runs on each micro-batch's summed loss divided by this constant
        # (the mean targets of a micro-batch, the same on every rank), so gradients keep the
        # size of a mean loss's (fp16 loss scaling) until the step divides by the real count
        self.loss_scale = 1.0

    # -- model ------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.tuning.mode == "full":
            if self.init_adapter:
                raise ValueError("tuning.mode=full starts from the backbone's weights; "
                                 "tuning.specific.init_from (a LoRA) does not apply")
            self.model = build_full_model(
                self.backbone_cfg,
                train_embeddings=self.tuning.full.train_embeddings,
                gradient_checkpointing=self.tuning.gradient_checkpointing)
            return
        self.model = build_peft_model(
            self.backbone_cfg,
            init_seed=self.tuning.init_seed,
            gradient_checkpointing=self.tuning.gradient_checkpointing,
            init_adapter=self.init_adapter,
        )
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.model.parameters())
        log.info("%s: %d trainable of %d parameters (%.3f%%)", self.stage_name, n_train, n_all,
                 100.0 * n_train / max(1, n_all))
        self.model.train()  # load_backbone returns eval mode; LoRA dropout needs train mode

    @property
    def normalization(self) -> str:
        """`tuning.loss_normalization` (read when training runs, like every other key)."""
        return self.tuning.loss_normalization

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def loss(self, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
        return response_loss(self.model, batch["input_ids"], batch["attention_mask"],
                             batch["labels"], reduction=reduction)

    def _log(self, name: str, value, **kwargs) -> None:
        self.log(f"{self.stage_name}/{name}", value, **kwargs)

    # -- steps ------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        mean = getattr(dm, "mean_targets_per_batch", None)
        self.loss_scale = float(mean()) if callable(mean) else 1.0
        self.window_targets = 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.normalization == "tokens":
            n = target_count(batch["labels"])
            total = self.loss(batch, reduction="sum")
            self.window_targets += n
            loss = total.detach() / n  # this micro-batch's mean, for the logs
            backward_loss = total / self.loss_scale  # divided by the step's count later
        else:
            loss = backward_loss = self.loss(batch)
        mask = batch["attention_mask"]
        real = int(mask.sum())
        self.tokens_seen += real
        self.session_tokens += real
        self.pad_tokens_seen += mask.numel() - real
        bs = mask.shape[0]
        self._log("train_loss", loss, prog_bar=True, batch_size=bs)
        self._log("pad_frac", 1.0 - real / mask.numel(), batch_size=bs)
        self._log("tokens", float(self.tokens_seen), batch_size=bs)
        self.step_losses.append(float(loss.detach()))
        return backward_loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """`tokens`: turn the accumulated gradient into that of the mean over every target
        token of this step. Lightning divided each micro-batch's loss by
        `accumulate_grad_batches` (A) and DDP averaged over the W ranks, so the gradient now is
        sum(token losses) / (A * W * loss_scale); multiplied by A * W * loss_scale / N (N: the
        step's targets over all ranks) it is sum / N. Runs before gradient clipping (and after
        AMP unscaling), so clipping sees the normalised gradient."""
        if self.normalization != "tokens":
            return
        n = torch.tensor(float(self.window_targets), dtype=torch.float64, device=self.device)
        n = float(self.trainer.strategy.reduce(n, reduce_op="sum"))
        self.window_targets = 0
        factor = (self.trainer.accumulate_grad_batches * self.trainer.world_size
                  * self.loss_scale / n)
        for p in self.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self._log("val_loss", loss, prog_bar=True, sync_dist=True,
                  batch_size=batch["input_ids"].shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        sched = self.lr_schedulers()
        if sched is not None:
            self._log("lr", sched.get_last_lr()[0])

    # -- optimisation -----------------------------------------------------------------
    def configure_optimizers(self):
        t = self.tuning
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("no trainable parameters: check backbone.lora.target_modules")
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=t.betas)
        total = int(self.trainer.estimated_stepping_batches)
        sched = make_scheduler(opt, t.schedule, t.warmup_steps_for(total), total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints: trainable weights only ------------------------------------------
    def _trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        names = self._trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in names}
        checkpoint["tuning_stats"] = {"tokens_seen": self.tokens_seen,
                                      "pad_tokens_seen": self.pad_tokens_seen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        names = self._trainable_names()
        missing = names - set(checkpoint.get("state_dict", {}))
        if names and missing:
            raise ValueError(
                f"the checkpoint lacks {len(missing)} trainable weight(s) of this model, e.g. "
                f"{sorted(missing)[:3]}: it was written for another backbone or LoRA config"
            )
        stats = checkpoint.get("tuning_stats", {})
        self.tokens_seen = int(stats.get("tokens_seen", 0))
        self.pad_tokens_seen = int(stats.get("pad_tokens_seen", 0))
