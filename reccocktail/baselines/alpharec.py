"""An AlphaRec-style recommender (Sheng et al., "Language Representations Can be What
Recommenders Need", ICLR 2025), trained on the target domain only.

What is faithful to the original:
- items are represented ONLY by frozen language-model embeddings of their titles, mapped into a
  collaborative space by a learned MLP (Linear - LeakyReLU - Linear); there is no item ID
  embedding, so a new item (cold scenario) is placed by its title alone;
- users have no ID embedding either: a user's language representation is the mean of its items'
  title embeddings, sent through the same MLP;
- LightGCN propagation (symmetric normalisation, no weights, no non-linearity, mean of the
  layer outputs) over the user-item graph of the training interactions;
- an InfoNCE loss on cosine similarities over a temperature.

What differs (kept honest):
- the encoder is the frozen all-MiniLM-L6-v2 (384-d), not the paper's text-embedding-3-large;
- negatives: the full softmax over the training items (`num_negatives: null`) or N shared
  uniform negatives per step, rather than the paper's sampling;
- a scored sample's user is folded in from its items: the user's training items (when it has
  any) plus the sample's history, through exactly the LightGCN user update (for a training user
  with no extra items this IS its graph embedding). So validation and test items appended to a
  history count, and users unseen in training are represented from their stored history;
- new items have no edges, so their representation is their MLP output alone (the other layers
  are zero; scores are cosines, so the layer mean does not shrink them). Trained only on items
  with edges, the model never sees such a vector as a positive, and on ML-1M cold it ranks new
  items below warm ones (`experiments/alpharec_cold.py`). `model.cold_item_dropout: p` (0 by
  default, i.e. the original) is our remedy, in the spirit of DropoutNet: at each training
  step a fraction p of the training items is represented by its MLP output alone, as a new
  item would be; it changes nothing at scoring time.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reccocktail.baselines.models import RecModule
from reccocktail.baselines.sequential import SequenceDataModule
from reccocktail.baselines.titles import TitleEmbedder, title_table
from reccocktail.utils.config import need, unknown_keys


class AlphaRec(nn.Module):
    """Frozen title vectors -> MLP -> LightGCN over the training graph; cosine / temperature.

    `interactions[u]`: the item indices user index u interacted with in training (index 0 of
    users and items is padding / unknown and has no edges)."""

    def __init__(self, text: torch.Tensor, interactions: list[list[int]], dim: int = 64,
                 hidden: int = 256, num_layers: int = 2, temperature: float = 0.15,
                 dropout: float = 0.0, cold_item_dropout: float = 0.0):
        super().__init__()
        if text.dim() != 2:
            raise ValueError(f"text embeddings must be [num_items + 1, hidden], got {tuple(text.shape)}")
        if num_layers < 0:
            raise ValueError(f"baselines.alpharec.model.num_layers must be >= 0, got {num_layers}")
        if not 0.0 <= cold_item_dropout < 1.0:
            raise ValueError("baselines.alpharec.model.cold_item_dropout must be in [0, 1), got "
                             f"{cold_item_dropout}")
        n_items, n_users = text.size(0), len(interactions)
        self.num_layers = int(num_layers)
        self.cold_item_dropout = float(cold_item_dropout)
        self.temperature = float(temperature)
        self.register_buffer("text", text.float(), persistent=False)
        self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(text.size(1), hidden),
                                 nn.LeakyReLU(), nn.Linear(hidden, dim))
        # the training graph: CSR of user -> items, degrees, and the normalised adjacency
        lengths = torch.tensor([len(set(x)) for x in interactions], dtype=torch.long)
        cols = [sorted(set(x)) for x in interactions]
        flat = torch.tensor([i for c in cols for i in c], dtype=torch.long)
        if len(flat) and (int(flat.min()) < 1 or int(flat.max()) >= n_items):
            raise ValueError("interactions must hold item indices in 1..num_items")
        rows = torch.repeat_interleave(torch.arange(n_users), lengths)
        self.register_buffer("indptr", torch.cat([torch.zeros(1, dtype=torch.long),
                                                  lengths.cumsum(0)]), persistent=False)
        self.register_buffer("indices", flat, persistent=False)
        item_deg = torch.bincount(flat, minlength=n_items).float()
        user_deg = lengths.float()
        self.register_buffer("item_inv_sqrt", item_deg.clamp(min=1).rsqrt(), persistent=False)
        weight = (user_deg.clamp(min=1).rsqrt()[rows] * self.item_inv_sqrt[flat])
        n = n_users + n_items
        idx = torch.stack([torch.cat([rows, flat + n_users]), torch.cat([flat + n_users, rows])])
        adj = torch.sparse_coo_tensor(idx, torch.cat([weight, weight]), (n, n),
                                      check_invariants=True).coalesce()
        self.register_buffer("adj", adj, persistent=False)
        mean = torch.sparse_coo_tensor(torch.stack([rows, flat]),
                                       1.0 / user_deg.clamp(min=1)[rows], (n_users, n_items), check_invariants=True)
        # a user's language representation: the mean of its training items' title vectors
        self.register_buffer("user_text", torch.sparse.mm(mean, self.text), persistent=False)
        self.num_users = n_users

    def layers(self) -> list[torch.Tensor]:
        """LightGCN layer outputs [num_users + num_items, dim], layer 0 first."""
        x = torch.cat([self.mlp(self.user_text), self.mlp(self.text)])
        out = [x]
        for _ in range(self.num_layers):
            x = torch.sparse.mm(self.adj, x)
            out.append(x)
        return out

    def propagate(self, layers: list[torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [U, d], items [I, d]): the mean of the layer outputs (`layers`: computed
        already by the caller)."""
        final = torch.stack(self.layers() if layers is None else layers).mean(0)
        return final[:self.num_users], final[self.num_users:]

    def item_table(self) -> torch.Tensor:
        return self.propagate()[1]

    def membership(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """[B, num_items] 0/1: each row's training items (known users) plus its sequence."""
        m = torch.zeros(seq.size(0), self.text.size(0), device=seq.device)
        m.scatter_(1, seq, 1.0)
        for b, u in enumerate(user.tolist()):
            if 0 < u < self.num_users:
                m[b, self.indices[self.indptr[u]:self.indptr[u + 1]]] = 1.0
        m[:, 0] = 0.0
        return m

    def fold_in(self, seq: torch.Tensor, user: torch.Tensor,
                layers: list[torch.Tensor] | None = None) -> torch.Tensor:
        """[B, d] users from their items through LightGCN's user update (see the docstring)."""
        layers = self.layers() if layers is None else layers
        m = self.membership(seq, user)
        count = m.sum(1, keepdim=True).clamp(min=1)
        out = [self.mlp((m @ self.text) / count)]
        norm = m * count.rsqrt() * self.item_inv_sqrt[None]
        for k in range(1, self.num_layers + 1):
            out.append(norm @ layers[k - 1][self.num_users:])
        return torch.stack(out).mean(0)

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.fold_in(seq, user)[:, None, :].expand(-1, seq.size(1), -1)

    def project(self, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(h, dim=-1) / self.temperature, F.normalize(e, dim=-1)


class AlphaRecModule(RecModule):
    """InfoNCE on (training user, training item) pairs from the graph; scoring by fold-in."""

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        model: AlphaRec = self.model
        target = batch["target"]
        mask = target > 0
        layers = model.layers()
        users, items = model.propagate(layers)
        if model.cold_item_dropout > 0:  # some items seen as new ones are: no edges (docstring)
            cold = torch.rand(items.size(0), 1, device=items.device) < model.cold_item_dropout
            items = torch.where(cold, layers[0][model.num_users:], items)
        pos = target[mask]
        user = batch["user"][:, None].expand_as(target)[mask]
        h, table = model.project(users[user], items)
        if self.num_negatives is None:
            logits = h @ table[self.train_items].T
            loss = F.cross_entropy(logits, self.lookup[pos])
        else:
            neg = self.train_items[torch.randint(len(self.train_items), (self.num_negatives,),
                                                 device=pos.device)]
            logits = torch.cat([(h * table[pos]).sum(-1, keepdim=True),
                                (h @ table[neg].T).masked_fill(neg[None] == pos[:, None],
                                                               float("-inf"))], dim=1)
            loss = F.cross_entropy(logits, torch.zeros_like(pos))
        self.log(f"{self.prefix}train/loss", loss, prog_bar=True, batch_size=int(mask.sum()))
        return loss

    def score(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        model: AlphaRec = self.model
        layers = model.layers()
        items = model.propagate(layers)[1]
        h, table = model.project(model.fold_in(batch["seq"], batch["user"], layers), items)
        return torch.einsum("bd,bcd->bc", h, table[batch["candidates"]])


def build(settings: dict[str, Any], dm: SequenceDataModule,
          cache_dir: str | os.PathLike | None = None,
          embed: TitleEmbedder | None = None, name: str = "alpharec") -> AlphaRecModule:
    """The AlphaRec-style module for `dm`'s training graph (`embed`: see titles.title_table)."""
    dm.load()
    where = f"baselines.{name}"
    text = title_table(dm, settings, cache_dir, embed, where)
    interactions: list[list[int]] = [[] for _ in range(dm.num_users)]
    for user, seq in dm.sequences.items():
        interactions[dm.users[user]] = dm.vocab.encode(seq, where="sequences.jsonl")
    model_settings = dict(need(settings, "model", where))
    known = set(inspect.signature(AlphaRec.__init__).parameters) - {"self", "text", "interactions", "dim"}
    unknown_keys(model_settings, known, f"{where}.model")
    model = AlphaRec(text, interactions, dim=int(settings["dim"]), **model_settings)
    return AlphaRecModule(model, dm.train_items, loss="ce", lr=float(settings["lr"]),
                          weight_decay=float(settings["weight_decay"]),
                          prefix=f"baselines/{name}/",
                          num_negatives=need(settings, "num_negatives", where))
