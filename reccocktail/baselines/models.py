"""ID-based sequential recommenders (BPR-MF, GRU4Rec, SASRec, FMLP-Rec) and the Lightning module
that trains any of them on next-item prediction and scores stored candidates.

Every model is an `nn.Module` with the same small interface, so one LightningModule trains them
all (and the text-based model in `text.py`):

- `item_table() -> [num_items + 1, d]`: one vector per item (row 0 = padding);
- `encode(seq [B, L], user [B]) -> [B, L, d]`: the state after each position of a left-padded
  sequence (position -1 = after the most recent item);
- `project(h, e)`: how states and item vectors meet (identity = dot product).

Training objective (documented choice): full softmax cross-entropy over the items that occur in
the training sequences, at every position of a training window (SASRec/GRU4Rec/FMLP-Rec), or
BPR with one uniformly sampled negative per positive (BPR-MF). Items never seen in training (the
cold scenario's new items) are neither positives nor negatives, so Adam never moves their rows:
they keep their random initialisation, which is all an ID model can say about a new item.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.retrieval import RetrievalNormalizedDCG

from reccocktail.baselines.sequential import SequenceDataModule
from reccocktail.utils.config import need


def _init_embedding(emb: nn.Embedding, std: float) -> None:
    nn.init.normal_(emb.weight, std=std)
    with torch.no_grad():
        emb.weight[0].zero_()


class BPRMF(nn.Module):
    """Matrix factorisation: a user vector against item vectors; ignores the order of items.
    Users unknown at training time (index 0) get the zero vector, i.e. all candidates tie."""

    def __init__(self, num_items: int, num_users: int, dim: int = 64, init_std: float = 0.1,
                 **_: object):
        super().__init__()
        self.items = nn.Embedding(num_items, dim, padding_idx=0)
        self.users = nn.Embedding(num_users, dim, padding_idx=0)
        _init_embedding(self.items, init_std)
        _init_embedding(self.users, init_std)

    def item_table(self) -> torch.Tensor:
        return self.items.weight

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.users(user)[:, None, :].expand(-1, seq.size(1), -1)

    def project(self, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h, e


class GRU4Rec(nn.Module):
    """GRU over item embeddings (Hidasi et al.), with a final projection back to item space."""

    def __init__(self, num_items: int, dim: int = 64, hidden: int = 64, num_layers: int = 1,
                 dropout: float = 0.2, init_std: float = 0.1, **_: object):
        super().__init__()
        self.items = nn.Embedding(num_items, dim, padding_idx=0)
        _init_embedding(self.items, init_std)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, hidden, num_layers=num_layers, batch_first=True)
        self.out = nn.Linear(hidden, dim)

    def item_table(self) -> torch.Tensor:
        return self.items.weight

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.dropout(self.items(seq)))
        return self.out(out)

    def project(self, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h, e


def causal_pad_mask(seq: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Boolean attention mask [B * heads, L, L] (True = blocked): a position sees itself and the
    earlier non-padding positions; padding is never a key except for itself (no empty rows)."""
    b, n = seq.shape
    causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()
    real_key = (seq > 0)[:, None, :]  # [B, 1, L]
    eye = torch.eye(n, dtype=torch.bool, device=seq.device)
    allowed = causal[None] & (real_key | eye[None])
    return (~allowed).repeat_interleave(num_heads, dim=0)


class CausalTransformer(nn.Module):
    """SASRec's encoder: learned positions, pre-norm self-attention blocks, causal masking.
    Shared by SASRec (over ID embeddings) and the text model (over adapted title vectors)."""

    def __init__(self, dim: int, max_len: int, num_layers: int = 2, num_heads: int = 1,
                 dropout: float = 0.2, ffn_mult: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=dim * ffn_mult,
                                           dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        n = seq.size(1)
        if n > self.positions.num_embeddings:
            raise ValueError(f"sequence length {n} exceeds max_len {self.positions.num_embeddings}")
        pos = torch.arange(self.positions.num_embeddings - n, self.positions.num_embeddings,
                           device=seq.device)  # left-padded: the last item is always last
        real = (seq > 0).unsqueeze(-1)
        x = self.dropout((x + self.positions(pos)[None]) * real)
        x = self.blocks(x, mask=causal_pad_mask(seq, self.num_heads))
        return self.norm(x) * real


class SASRec(nn.Module):
    """Self-attentive sequential recommendation (Kang & McAuley) with tied item embeddings."""

    def __init__(self, num_items: int, dim: int = 64, max_len: int = 50, num_layers: int = 2,
                 num_heads: int = 1, dropout: float = 0.2, init_std: float = 0.02,
                 ffn_mult: int = 1, **_: object):
        super().__init__()
        self.items = nn.Embedding(num_items, dim, padding_idx=0)
        _init_embedding(self.items, init_std)
        self.encoder = CausalTransformer(dim, max_len, num_layers, num_heads, dropout, ffn_mult)
        self.scale = math.sqrt(dim)

    def item_table(self) -> torch.Tensor:
        return self.items.weight

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.items(seq) * self.scale, seq)

    def project(self, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h, e


class CausalFilter(nn.Module):
    """FMLP-Rec's learnable filter, made causal.

    FMLP-Rec multiplies the sequence's FFT by a learned complex filter: a circular convolution
    over the whole window, which lets position t see items after t when every position is
    trained on its next item. Here the filter is a learned kernel in the time domain, applied
    through a zero-padded FFT (length 2L), i.e. a linear convolution over the past only: the
    same global, all-MLP, FFT-based mixing without the leak.
    """

    def __init__(self, dim: int, max_len: int, dropout: float):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(1)
        size = 2 * n
        spec = torch.fft.rfft(x, n=size, dim=1) * torch.fft.rfft(self.kernel[:n], n=size, dim=0)
        y = torch.fft.irfft(spec, n=size, dim=1)[:, :n]
        return self.norm(x + self.dropout(y))


class FMLPRec(nn.Module):
    """Filter-enhanced MLP (Zhou et al.): filter blocks + point-wise feed-forward, no attention."""

    def __init__(self, num_items: int, dim: int = 64, max_len: int = 50, num_layers: int = 2,
                 dropout: float = 0.2, init_std: float = 0.02, ffn_mult: int = 4, **_: object):
        super().__init__()
        self.items = nn.Embedding(num_items, dim, padding_idx=0)
        _init_embedding(self.items, init_std)
        self.positions = nn.Embedding(max_len, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.in_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.filters = nn.ModuleList(CausalFilter(dim, max_len, dropout) for _ in range(num_layers))
        self.ffns = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim * ffn_mult), nn.GELU(), nn.Linear(dim * ffn_mult, dim),
                          nn.Dropout(dropout))
            for _ in range(num_layers))
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_layers))

    def item_table(self) -> torch.Tensor:
        return self.items.weight

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        n = seq.size(1)
        pos = torch.arange(self.positions.num_embeddings - n, self.positions.num_embeddings,
                           device=seq.device)
        real = (seq > 0).unsqueeze(-1)
        x = self.dropout(self.in_norm(self.items(seq) + self.positions(pos)[None])) * real
        for filt, ffn, norm in zip(self.filters, self.ffns, self.ffn_norms):
            x = filt(x) * real
            x = norm(x + ffn(x)) * real
        return x

    def project(self, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h, e


class RankingValidation:
    """Validation NDCG over the stored candidates, for any LightningModule with `score(batch)`,
    `val_metrics` and `prefix` (the ID/text RecModule and the RecFormer-style module)."""

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        scores = self.score(batch)
        target = F.one_hot(batch["target_index"], scores.size(1)).bool()
        indexes = batch["row"][:, None].expand_as(scores)
        for metric in self.val_metrics.values():
            metric.update(scores.flatten(), target.flatten(), indexes=indexes.flatten())

    def on_validation_epoch_end(self) -> None:
        for name, metric in self.val_metrics.items():
            self.log(f"{self.prefix}val/{name}", metric.compute(), prog_bar=name == "ndcg@1")
            metric.reset()


class RecModule(RankingValidation, L.LightningModule):
    """Trains a sequence model on next-item prediction; validates by NDCG@k on stored candidates.

    `loss`: `ce` (softmax over the training items) or `bpr` (one sampled negative per positive).
    `num_negatives` (ce only): null = full softmax; an int = sampled softmax against that many
    training items drawn uniformly per step and shared by the batch (uniform draws need no
    log-q correction; a draw equal to a row's positive is masked out for that row).
    Logged: `<prefix>train/loss`, `<prefix>val/ndcg@k` for k in `ks` (early stopping watches
    `<prefix>val/ndcg@1`).
    """

    def __init__(self, model: nn.Module, train_items: torch.Tensor, loss: str = "ce",
                 lr: float = 1e-3, weight_decay: float = 0.0, prefix: str = "",
                 ks: tuple[int, ...] = (1, 3), num_negatives: int | None = None):
        super().__init__()
        if loss not in ("ce", "bpr"):
            raise ValueError(f"baselines.<name>.loss: unknown value {loss!r}; choose ce or bpr")
        self.model = model
        self.loss_name = loss
        self.num_negatives = int(num_negatives) if num_negatives else None
        self.lr = lr
        self.weight_decay = weight_decay
        self.prefix = prefix
        num_rows = model.item_table().size(0)
        train_items = torch.as_tensor(train_items, dtype=torch.long)
        if len(train_items) == 0 or int(train_items.min()) < 1:
            raise ValueError("train_items must be non-empty item indices >= 1 (0 is padding)")
        lookup = torch.full((num_rows,), -1, dtype=torch.long)
        lookup[train_items] = torch.arange(len(train_items))
        self.register_buffer("train_items", train_items, persistent=False)
        self.register_buffer("lookup", lookup, persistent=False)
        self.val_metrics = nn.ModuleDict({f"ndcg@{k}": RetrievalNormalizedDCG(top_k=k) for k in ks})

    @property
    def monitor(self) -> str:
        return f"{self.prefix}val/ndcg@1"

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        target = batch["target"]
        mask = target > 0
        h = self.model.encode(batch["seq"], batch["user"])[mask]
        target = target[mask]
        h, table = self.model.project(h, self.model.item_table())
        if self.loss_name == "ce" and self.num_negatives is None:
            logits = h @ table[self.train_items].T
            loss = F.cross_entropy(logits, self.lookup[target])
        elif self.loss_name == "ce":
            neg = self.train_items[torch.randint(len(self.train_items), (self.num_negatives,),
                                                 device=target.device)]
            pos = (h * table[target]).sum(-1, keepdim=True)
            negs = (h @ table[neg].T).masked_fill(neg[None] == target[:, None], float("-inf"))
            logits = torch.cat([pos, negs], dim=1)
            loss = F.cross_entropy(logits, torch.zeros_like(target))
        else:
            neg = self.train_items[torch.randint(len(self.train_items), target.shape,
                                                 device=target.device)]
            diff = (h * (table[target] - table[neg])).sum(-1)
            loss = -F.logsigmoid(diff).mean()
        self.log(f"{self.prefix}train/loss", loss, prog_bar=True, batch_size=int(mask.sum()))
        return loss

    def score(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Scores [B, C] of each row's candidates (higher = better), from the last state."""
        h = self.model.encode(batch["seq"], batch["user"])[:, -1]
        h, table = self.model.project(h, self.model.item_table())
        return torch.einsum("bd,bcd->bc", h, table[batch["candidates"]])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class KeepBest(L.Callback):
    """Keeps an in-memory copy of the weights with the best monitored value, so the model scored
    after early stopping is the best epoch's, not the last one's (no checkpoint files, no pickles).
    """

    def __init__(self, monitor: str, mode: str = "max"):
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        value = float(value)
        if self.best is None or self.sign * value > self.sign * self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            self.state = {k: v.detach().to("cpu", copy=True)
                          for k, v in pl_module.state_dict().items()}

    def restore(self, pl_module: L.LightningModule) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)


@torch.no_grad()
def score_loader(module: RecModule, loader) -> torch.Tensor:
    """Scores [n, C] for every row of an evaluation loader, in loader order."""
    was_training = module.training
    module.eval()
    out = []
    for batch in loader:
        batch = {k: v.to(module.device) for k, v in batch.items()}
        out.append(module.score(batch).float().cpu())
    module.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


ID_MODELS = {"bpr": BPRMF, "gru4rec": GRU4Rec, "sasrec": SASRec, "fmlp": FMLPRec}


def rec_module(model: nn.Module, dm: SequenceDataModule, settings: Mapping[str, Any],
               name: str) -> RecModule:
    """`model` in the training module with the `baselines.<name>` loss and optimiser settings
    (one place, so the id and text models train alike)."""
    return RecModule(model, dm.train_items, loss=settings["loss"], lr=settings["lr"],
                     weight_decay=settings["weight_decay"], prefix=f"baselines/{name}/",
                     num_negatives=settings["num_negatives"])


def build_id(settings: Mapping[str, Any], dm: SequenceDataModule, cache_dir: Any = None,
             name: str = "sasrec") -> RecModule:
    """An ID model of `ID_MODELS` for `dm`'s vocabulary (`baselines.<name>.model` its arguments);
    the registry's builder of the `kind: id` baselines (`cache_dir`: unused, the common signature)."""
    dm.load()
    if name not in ID_MODELS:
        raise ValueError(f"baselines.{name}.kind: id, but {name!r} is not one of {list(ID_MODELS)}")
    kwargs = dict(need(settings, "model", f"baselines.{name}"))
    model = ID_MODELS[name](num_items=len(dm.vocab), num_users=dm.num_users, dim=settings["dim"],
                            max_len=settings["max_len"], **kwargs)
    return rec_module(model, dm, settings, name)
