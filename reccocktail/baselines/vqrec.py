"""A VQ-Rec-style recommender (Hou et al., "Learning Vector-Quantized Item Representation for
Transferable Sequential Recommenders", WWW 2023), trained on the target domain only.

What is faithful to the original:
- item text -> a frozen text embedding -> D discrete codes by optimised product quantisation
  (OPQ: a learned rotation, then D sub-spaces with M centroids each), fitted on the TRAINING
  items only; every other item (validation/test, the cold scenario's new items) gets its codes
  from its text alone, by the nearest centroids;
- an item's representation is the SUM of its D code embeddings (M x D learned vectors shared by
  all items), so there is no item ID embedding and a new item's vector is made of codes that
  training moved;
- a causal Transformer over the sequence of item representations; the next item by the dot
  product of the last state and the item representations, softmax cross-entropy.

What differs (kept honest):
- the text encoder is the frozen all-MiniLM-L6-v2 (titles only), not BERT over title, brand
  and category;
- PQ/OPQ and k-means are written here in torch (no faiss): Lloyd iterations from random
  training points, OPQ by alternating PQ and an orthogonal Procrustes rotation (`opq_iters`);
  `quantizer: pq` skips the rotation;
- no multi-domain pre-training (sequence-item and sequence-sequence contrastive losses with
  mixed-domain code negatives) and no permutation-based code-embedding fine-tuning: the code
  embeddings and the Transformer are trained from scratch on the target domain, with the same
  objective as the ID baselines (`baselines.common`: full softmax or sampled negatives).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from reccocktail.baselines.models import CausalTransformer, RecModule
from reccocktail.baselines.sequential import SequenceDataModule
from reccocktail.baselines.titles import TitleEmbedder, title_table
from reccocktail.utils.config import need

log = logging.getLogger(__name__)


def _assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Nearest centroid per sub-space: x [D, n, s], centroids [D, k, s] -> [D, n]."""
    out = []
    for start in range(0, x.size(1), chunk):
        part = x[:, start:start + chunk]
        out.append(torch.cdist(part, centroids).argmin(-1))
    return torch.cat(out, dim=1)


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means run independently in each sub-space: x [D, n, s] -> centroids [D, k, s].

    Starts from k distinct random points per sub-space; an empty cluster is re-seeded with a
    random point (so all k centroids stay in use when n >= k)."""
    d, n, _ = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means: k={k} must be in 1..{n} (the number of points)")
    gen = torch.Generator().manual_seed(seed)
    start = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(d)])  # [D, k]
    centroids = torch.gather(x, 1, start[..., None].expand(-1, -1, x.size(2))).clone()
    for _ in range(iters):
        codes = _assign(x, centroids)  # [D, n]
        sums = torch.zeros_like(centroids).scatter_add_(
            1, codes[..., None].expand(-1, -1, x.size(2)), x)
        counts = torch.zeros(d, k).scatter_add_(1, codes, torch.ones(d, n))
        empty = counts == 0
        centroids = torch.where(empty[..., None], centroids, sums / counts.clamp(min=1)[..., None])
        if empty.any():
            for sub, c in empty.nonzero().tolist():
                centroids[sub, c] = x[sub, int(torch.randint(n, (1,), generator=gen))]
    return centroids


class ProductQuantizer:
    """(O)PQ codes of vectors: rotation [h, h] (identity for PQ) and centroids [D, M, h/D]."""

    def __init__(self, rotation: torch.Tensor, centroids: torch.Tensor):
        self.rotation = rotation
        self.centroids = centroids

    @property
    def num_subspaces(self) -> int:
        return self.centroids.size(0)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.rotation).reshape(x.size(0), self.num_subspaces, -1).transpose(0, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[n, h] vectors -> [n, D] codes in 0..M-1."""
        return _assign(self._split(x.float()), self.centroids).T.contiguous()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[n, D] codes -> [n, h] reconstructions (in the original, unrotated space)."""
        parts = torch.stack([self.centroids[d, codes[:, d]] for d in range(self.num_subspaces)], 1)
        return parts.reshape(codes.size(0), -1) @ self.rotation.T

    @classmethod
    def fit(cls, x: torch.Tensor, num_subspaces: int, num_codes: int, iters: int = 25,
            opq_iters: int = 0, seed: int = 0) -> ProductQuantizer:
        """PQ (`opq_iters` 0) or OPQ: alternate PQ on x R and R = argmin ||x R - decoded|| over
        orthogonal R (Procrustes: R = U V^T from the SVD of x^T y)."""
        x = x.float()
        h = x.size(1)
        if h % num_subspaces:
            raise ValueError(f"baselines.vqrec.model.num_subspaces={num_subspaces} must divide "
                             f"the text embedding size {h}")
        k = min(num_codes, x.size(0))
        rotation = torch.eye(h)
        for it in range(opq_iters + 1):
            pq = cls(rotation, torch.zeros(num_subspaces, 1, h // num_subspaces))
            pq.centroids = kmeans(pq._split(x), k, iters, seed + it)
            if it == opq_iters:
                return pq
            codes = pq.encode(x)
            y = torch.stack([pq.centroids[d, codes[:, d]] for d in range(num_subspaces)], 1)
            u, _, vt = torch.linalg.svd(x.T @ y.reshape(x.size(0), -1))  # rotated space
            rotation = u @ vt
        raise AssertionError("unreachable")


class VQRec(nn.Module):
    """Sum of D code embeddings per item -> causal Transformer; dot-product scores."""

    def __init__(self, codes: torch.Tensor, num_codes: int, dim: int = 64, max_len: int = 50,
                 num_layers: int = 2, num_heads: int = 2, dropout: float = 0.2,
                 ffn_mult: int = 1, init_std: float = 0.02, **_: object):
        super().__init__()
        if codes.dim() != 2:
            raise ValueError(f"codes must be [num_items + 1, D], got {tuple(codes.shape)}")
        d = codes.size(1)
        offsets = torch.arange(d) * num_codes
        self.register_buffer("flat_codes", codes.long() + offsets[None], persistent=False)
        self.codes = nn.Embedding(d * num_codes, dim)
        nn.init.normal_(self.codes.weight, std=init_std)
        self.encoder = CausalTransformer(dim, max_len, num_layers, num_heads, dropout, ffn_mult)

    def item_table(self) -> torch.Tensor:
        table = self.codes(self.flat_codes).sum(1)
        return torch.cat([torch.zeros_like(table[:1]), table[1:]])  # row 0: padding

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.codes(self.flat_codes[seq]).sum(2), seq)

    def project(self, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h, e


def item_codes(text: torch.Tensor, train_items: torch.Tensor, num_subspaces: int,
               num_codes: int, quantizer: str = "opq", kmeans_iters: int = 25,
               opq_iters: int = 4, seed: int = 0) -> torch.Tensor:
    """[num_items + 1, D] codes: the quantiser is fitted on the training items' vectors only,
    then every item (row 0 too, unused) is encoded from its own vector."""
    if quantizer not in ("pq", "opq"):
        raise ValueError(f"baselines.vqrec.quantizer: unknown value {quantizer!r}; choose pq or opq")
    if num_codes > len(train_items):
        log.warning("vqrec: %d codes per sub-space but only %d training items; k-means uses %d",
                    num_codes, len(train_items), len(train_items))
    pq = ProductQuantizer.fit(text[train_items], num_subspaces, num_codes, kmeans_iters,
                              opq_iters if quantizer == "opq" else 0, seed)
    return pq.encode(text)


def build(settings: dict[str, Any], dm: SequenceDataModule,
          cache_dir: str | os.PathLike | None = None,
          embed: TitleEmbedder | None = None, name: str = "vqrec") -> RecModule:
    """The VQ-Rec-style module: codes from `dm`'s titles (`embed`: see titles.title_table)."""
    dm.load()
    where = f"baselines.{name}"
    text = title_table(dm, settings, cache_dir, embed, where)
    kwargs = dict(need(settings, "model", where))
    num_codes = int(need(kwargs, "num_codes", f"{where}.model"))
    num_subspaces = int(need(kwargs, "num_subspaces", f"{where}.model"))
    del kwargs["num_codes"], kwargs["num_subspaces"]
    codes = item_codes(text, dm.train_items, num_subspaces, num_codes,
                       str(need(settings, "quantizer", where)),
                       int(need(settings, "kmeans_iters", where)),
                       int(need(settings, "opq_iters", where)),
                       int(need(settings, "quantizer_seed", where)))
    model = VQRec(codes, num_codes, dim=int(settings["dim"]), max_len=int(settings["max_len"]),
                  **kwargs)
    return RecModule(model, dm.train_items, loss=settings["loss"],
                     lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"]),
                     prefix=f"baselines/{name}/", num_negatives=need(settings, "num_negatives", where))
