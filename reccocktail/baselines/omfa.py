"""One-Model-for-All-style baseline (Tang et al., 2024, "LLM-Rec"), on the run's backbone with a LoRA.

The method: a user's behaviours from several domains are mixed into one sequence, their item
titles concatenated into one text; a pre-trained LLM encodes that text and, separately, each
item's title; the user and the item are the LLM's last-token hidden states; the next item is
the one whose representation is most similar, and the LLM is fine-tuned with a softmax
(cross-entropy) over the target and negatives (the authors' code: `last_hidden_state` at the last
real token, dot products, cross-entropy; full fine-tuning or LoRA).

Here:
- **Data**: windows of `max_titles` titles from the training sequences of the general pool
  (`data/general/sequences.jsonl`, every general source) and of the target domain
  (`data/sequences.jsonl`), `general_windows` + `target_windows` of them (seeded choice, the
  newest window per user), shuffled together into one training set. Both hold the training part
  only (no validation or test target, no new item of the cold scenario). A sequence is the
  sequence prompt of this framework, `I am a movie fan. The movies I watched, in order: t1 ||
  t2 || ...`, i.e. concatenated titles.
- **Representations**: the final hidden state (after the last norm) at the last token; the user
  after k titles is the state at the separator that ends title k (a causal LM gives every prefix
  of a window in one pass); an item is `item_prefix` + its title chunk, encoded alone.
- **Objective**: at every position after `min_context` titles, the user state predicts the next
  title: softmax over the batch's distinct titles (in-batch negatives; the user's other titles in
  the window are masked out as negatives), cosine similarity over a temperature.
- **Scoring**: the sample's history (the same last `data.history_len` titles the LLM rows see)
  against each stored candidate's title; a new (cold) item is scored from its text exactly like
  any other item: nothing about an item is learned but through its title.

Different from the original (kept honest in the row name, "One-Model-for-All-style (<backbone>,
LoRA)"): a LoRA on the run's backbone (`backbone.lora`; on SmolLM2 the top 8 layers) instead of
OPT/Flan-T5 fully fine-tuned at 40M-6.7B; cosine/temperature instead of raw dot products; a
target at every position of a window and in-batch negatives instead of one target per sequence
with sampled negatives (so a CPU budget sees ~17 targets per window); and "mixed domain" is the
training set, not one user's sequence: the data stage removes users shared between the pool and
the target domain, so no user here has behaviour in two domains.

The trained LoRA is saved (safetensors, `<run>/models/<name>/`) and cached by (backbone, both
data hashes, settings) under `<cache_dir>/models/omfa/<key>/`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from reccocktail import runtime
from reccocktail.data.prompts import prompt_builder_from_config
from reccocktail.data.samples import Sample, load_items
from reccocktail.evaluation.scorers import num_candidates
from reccocktail.models import adapters as ad
from reccocktail.models.backbone import load_backbone, load_tokenizer
from reccocktail.models.datamodule import select_subset
from reccocktail.models.full import link_or_copy_dir
from reccocktail.models.sequence_data import build_windows, load_user_sequences
from reccocktail.models.training import cache_root, cold_targets
from reccocktail.models.tuning import build_peft_model, make_scheduler
from reccocktail.utils.config import need
from reccocktail.utils.device import model_device, place_backbone, resolve_device
from reccocktail.utils.io import atomic_dir, read_json, stable_hash, to_plain, write_json

log = logging.getLogger(__name__)

_RESULT_KEYS = ("general_windows", "target_windows", "max_titles", "min_context", "batch_size",
                "epochs", "lr", "warmup_ratio", "temperature", "item_prefix")
WHERE = "baselines.omfa"  # the settings block, for errors (conf/baselines/omfa.yaml)


def result_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide the trained LoRA (its cache key), each required."""
    return {k: need(settings, k, WHERE) for k in _RESULT_KEYS}


@dataclass(frozen=True)
class TitleWindow:
    """One training row: token ids of the sequence text, where each title's chunk ends, and the
    titles (the item side's keys) in order; titles after the first `context` are targets."""

    tokens: tuple[int, ...]
    ends: tuple[int, ...]
    titles: tuple[str, ...]
    context: int


def title_window(builder: Any, items: Sequence[str], context: int) -> TitleWindow:
    """A window of item ids as the sequence prompt renders it (`SequencePromptBuilder`)."""
    tokens = list(builder.header_ids)
    ends = []
    for i in items:
        tokens += builder.response_ids(i)
        ends.append(len(tokens) - 1)
    return TitleWindow(tuple(tokens), tuple(ends), tuple(builder.title(i) for i in items), context)


def item_tokens(builder: Any, item_id: str, prefix_ids: Sequence[int]) -> list[int]:
    """What the item side encodes: the prefix, then the title chunk as it appears in sequences."""
    return list(prefix_ids) + list(builder.response_ids(item_id))


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[k, : len(r)] = 1
    return ids, mask


def collate_windows(rows: Sequence[TitleWindow], pad_id: int,
                    title_ids: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """A batch: the windows (right-padded), one query per target position (row, position of the
    previous title's end, index of the target among the batch's distinct titles), the distinct
    titles' item tokens, and the mask of each query's same-window non-target titles."""
    ids, mask = _pad([r.tokens for r in rows], pad_id)
    titles = list(dict.fromkeys(t for r in rows for t in r.titles))
    index = {t: k for k, t in enumerate(titles)}
    q_row, q_pos, q_tgt, own = [], [], [], []
    for b, r in enumerate(rows):
        mine = sorted({index[t] for t in r.titles})
        for k in range(r.context, len(r.titles)):
            q_row.append(b)
            q_pos.append(r.ends[k - 1])
            q_tgt.append(index[r.titles[k]])
            own.append(mine)
    if not q_row:
        raise ValueError("a batch without targets (every window holds <= min_context titles)")
    neg_mask = torch.zeros(len(q_row), len(titles), dtype=torch.bool)
    for q, mine in enumerate(own):
        neg_mask[q, mine] = True
        neg_mask[q, q_tgt[q]] = False
    item_ids, item_mask = _pad([title_ids[t] for t in titles], pad_id)
    return {"input_ids": ids, "attention_mask": mask, "q_row": torch.tensor(q_row),
            "q_pos": torch.tensor(q_pos), "q_tgt": torch.tensor(q_tgt), "neg_mask": neg_mask,
            "item_ids": item_ids, "item_mask": item_mask}


def decoder_of(model: Any) -> torch.nn.Module:
    """The decoder stack (embeddings, layers, final norm; no LM head) of a causal LM or a
    PeftModel around one: the LoRA layers live inside it, so calling it applies them."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dec = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    if dec is None:
        raise TypeError(f"{type(base).__name__}: no decoder stack to encode with")
    return dec


def hidden_states(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[B, T, d]` final hidden states (after the last norm) of right-padded rows."""
    out = decoder_of(model)(input_ids=ids, attention_mask=mask, use_cache=False)
    return out.last_hidden_state


def last_states(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[B, d]` the hidden state at each row's last real token (right padding)."""
    h = hidden_states(model, ids, mask)
    return h[torch.arange(h.size(0), device=h.device), mask.sum(1) - 1]


def contrastive_loss(model: Any, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """Next-title cross-entropy over the batch's distinct titles, cosine / temperature."""
    h = hidden_states(model, batch["input_ids"], batch["attention_mask"])
    users = F.normalize(h[batch["q_row"], batch["q_pos"]].float(), dim=-1)
    items = F.normalize(last_states(model, batch["item_ids"], batch["item_mask"]).float(), dim=-1)
    logits = (users @ items.T / temperature).masked_fill(batch["neg_mask"], float("-inf"))
    return F.cross_entropy(logits, batch["q_tgt"])


class OMfAModule(L.LightningModule):
    """The backbone with a seeded LoRA (`build_peft_model`), trained with `contrastive_loss`."""

    def __init__(self, backbone: dict, settings: dict[str, Any], init_seed: int = 0) -> None:
        super().__init__()
        self.backbone_cfg, self.settings, self.init_seed = backbone, settings, init_seed
        self.model = None
        self.step_losses: list[float] = []

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = build_peft_model(self.backbone_cfg, init_seed=self.init_seed)
        self.model.train()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = contrastive_loss(self.model, batch, float(self.settings["temperature"]))
        self.log("baselines/omfa/train_loss", loss, prog_bar=True,
                 batch_size=int(batch["input_ids"].shape[0]))
        self.step_losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(self.settings["lr"]), weight_decay=0.0)
        total = int(self.trainer.estimated_stepping_batches)
        warm = int(round(float(need(self.settings, "warmup_ratio", WHERE)) * max(1, total)))
        return {"optimizer": opt, "lr_scheduler": {
            "scheduler": make_scheduler(opt, "cosine", warm, total), "interval": "step"}}


def training_loader(rows: Sequence[TitleWindow], pad_id: int, title_ids: dict[str, list[int]],
                    batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    """Shuffled (seeded) batches of windows of every domain together."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        list(rows), batch_size=int(batch_size), shuffle=True, generator=gen,
        collate_fn=lambda b: collate_windows(b, pad_id, title_ids))


def fit(module: OMfAModule, rows: Sequence[TitleWindow], pad_id: int,
        title_ids: dict[str, list[int]], trainer: L.Trainer, seed: int) -> dict[str, Any]:
    """Train `module` on `rows`; returns steps, seconds and the first/last losses."""
    loader = training_loader(rows, pad_id, title_ids, int(module.settings["batch_size"]), seed)
    t0 = time.time()
    trainer.fit(module, train_dataloaders=loader)
    losses = module.step_losses
    k = max(1, min(5, len(losses) // 2))
    return {"steps": int(trainer.global_step), "seconds": round(time.time() - t0, 2),
            "windows": len(rows), "targets": sum(len(r.titles) - r.context for r in rows),
            "loss_first": round(sum(losses[:k]) / k, 4) if losses else None,
            "loss_last": round(sum(losses[-k:]) / k, 4) if losses else None}


@torch.no_grad()
def score_samples(model: Any, builder: Any, samples: Sequence[Sample], prefix_ids: Sequence[int],
                  batch_size: int = 64) -> torch.Tensor:
    """`[n, C]` cosine of each sample's history encoding and each stored candidate's title
    encoding (candidate order kept). An item is encoded from its title alone: a new item needs
    nothing else."""
    c = num_candidates(samples)
    was_training = model.training
    model.eval()
    try:
        pad = int(builder.pad_token_id)
        dev = model_device(model)

        def encode(rows: list[list[int]]) -> torch.Tensor:
            out = []
            for start in range(0, len(rows), batch_size):
                ids, mask = _pad(rows[start:start + batch_size], pad)
                out.append(F.normalize(last_states(model, ids.to(dev), mask.to(dev)).float(), dim=-1).cpu())
            return torch.cat(out)

        users = encode([builder.prompt_ids(s.history) for s in samples])
        cand = list(dict.fromkeys(i for s in samples for i in s.candidates))
        vecs = encode([item_tokens(builder, i, prefix_ids) for i in cand])
        index = {i: k for k, i in enumerate(cand)}
        cidx = torch.tensor([[index[i] for i in s.candidates] for s in samples])
        scores = torch.einsum("nd,ncd->nc", users, vecs[cidx])
    finally:
        model.train(was_training)
    assert scores.shape == (len(samples), c)
    return scores


# -- the baselines stage ----------------------------------------------------------------------
def _windows(path: Path, items: dict[str, str], n: int | None, max_titles: int, min_context: int,
             seed: int, exclude: set[str]) -> list:
    windows = build_windows(load_user_sequences(path, items), max_titles, min_context, 1,
                            exclude_items=exclude)
    if not windows:
        raise ValueError(f"{path}: no user has more than {min_context} titles "
                         "(baselines.omfa.min_context)")
    return select_subset(windows, None, n, seed=seed)


def _builder(cfg: DictConfig, tokenizer: Any, items: dict[str, str], general: bool) -> Any:
    return prompt_builder_from_config(cfg, tokenizer, items, general=general, fmt="sequence")


def build_rows(cfg: DictConfig, out_dir: Path, settings: dict[str, Any], tokenizer: Any
               ) -> tuple[list[TitleWindow], dict[str, list[int]], Any, list[int], dict[str, int]]:
    """(training rows of both domains, title -> item tokens, the target's builder, the item
    prefix ids, counts per domain)."""
    data_dir = Path(out_dir) / "data"
    seed = int(cfg.seed)
    mt, mc = int(settings["max_titles"]), int(settings["min_context"])
    prefix = str(need(settings, "item_prefix", WHERE) or "")  # null: no prefix
    prefix_ids = list(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else []
    rows: list[TitleWindow] = []
    title_ids: dict[str, list[int]] = {}
    counts = {}
    target_builder = None
    for domain, folder, n in (("general", data_dir / "general",
                               need(settings, "general_windows", WHERE)),
                              ("target", data_dir, need(settings, "target_windows", WHERE))):
        if n == 0:
            counts[domain] = 0
            continue
        items = load_items(folder / "items.tsv")
        b = _builder(cfg, tokenizer, items, general=domain == "general")
        if domain == "target":
            target_builder = b
        exclude = cold_targets(cfg, data_dir) if domain == "target" else set()
        ws = _windows(folder / "sequences.jsonl", items, n, mt, mc, seed, exclude)
        counts[domain] = len(ws)
        for w in ws:
            rows.append(title_window(b, w.items, w.context))
            for i in w.items:
                title_ids.setdefault(b.title(i), item_tokens(b, i, prefix_ids))
    if target_builder is None:
        target_builder = _builder(cfg, tokenizer, load_items(data_dir / "items.tsv"), False)
    if not rows:
        raise ValueError("baselines.omfa: general_windows and target_windows are both 0")
    random.Random(seed).shuffle(rows)
    return rows, title_ids, target_builder, prefix_ids, counts


def omfa_key(cfg: DictConfig, out_dir: Path, settings: dict[str, Any]) -> str:
    data_dir = Path(out_dir) / "data"
    return stable_hash(ad.backbone_identity(cfg.backbone), ad.general_data_hash(data_dir),
                       ad.target_data_hash(data_dir), result_settings(settings),
                       int(cfg.seed), "omfa")


def _holds(path: Path, key: str) -> bool:
    return ((path / "adapter_model.safetensors").is_file() and (path / "manifest.json").is_file()
            and read_json(path / "manifest.json").get("key") == key)


def run_omfa(cfg: DictConfig, out_dir: Path, name: str, settings: dict[str, Any],
             samples: list[Sample]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Baselines-stage entry: train (or reuse) the LoRA on mixed-domain sequences, then score."""
    from peft import PeftModel  # lazy: +1.5 s (peft)

    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(cfg.backbone)
    rows, title_ids, builder, prefix_ids, counts = build_rows(cfg, out_dir, settings, tokenizer)
    key = omfa_key(cfg, out_dir, settings)
    dest, cached = out_dir / "models" / name, cache_root(cfg) / "models" / "omfa" / key
    reused: str | bool = False
    if _holds(dest, key):
        reused = "run"
    elif _holds(cached, key):
        link_or_copy_dir(cached, dest)
        reused = "cache"
    if not reused:
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        module = OMfAModule(to_plain(cfg.backbone), settings, init_seed=int(cfg.seed))
        trainer = runtime.make_trainer(cfg, out_dir, f"baselines/{name}",
                                       max_epochs=int(settings["epochs"]), max_steps=-1,
                                       enable_checkpointing=False, limit_val_batches=0,
                                       num_sanity_val_steps=0)
        metrics = fit(module, rows, int(builder.pad_token_id), title_ids, trainer, int(cfg.seed))
        with atomic_dir(dest) as tmp:
            module.model.save_pretrained(str(tmp), safe_serialization=True)
            write_json(tmp / "manifest.json", {
                "kind": "omfa", "key": key, "backbone": str(cfg.backbone.name),
                "settings": result_settings(settings), "windows": counts,
                "metrics": metrics, "trained_in": str(out_dir)})
        link_or_copy_dir(dest, cached)
        del module, trainer
    manifest = read_json(dest / "manifest.json")
    metrics = manifest["metrics"]
    device = resolve_device(cfg, "eval.device")
    base, _ = load_backbone(cfg.backbone, device=device)
    place_backbone(base, device, cfg, f"baselines/{name}")
    model = PeftModel.from_pretrained(base, str(dest), is_trainable=False)
    t0 = time.time()
    scores = score_samples(model, builder, samples, prefix_ids,
                           int(need(settings, "score_batch_size", WHERE)))
    return scores, {
        "method": f"One-Model-for-All-style ({cfg.backbone.name}, LoRA)",
        "scorer": "cosine of last-token states", "train_seconds": metrics["seconds"],
        "score_seconds": round(time.time() - t0, 2), "windows": manifest.get("windows"),
        "steps": metrics["steps"], "targets": metrics["targets"],
        "loss_first": metrics["loss_first"], "loss_last": metrics["loss_last"],
        "model": str(dest), "key": key, "reused": reused, "is_global_zero": True,
    }
