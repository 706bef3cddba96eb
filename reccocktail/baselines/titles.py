"""Frozen title vectors for the text-based baselines (AlphaRec-, VQ-Rec-style), one place.

By default the vectors come from the frozen all-MiniLM-L6-v2 encoder the UniSRec-style model
uses (`text.text_table`, cached per items.tsv content). A caller may inject any function from
titles to vectors instead (`embed`): tests do, so that they need no language model and run in
seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from reccocktail.baselines import text
from reccocktail.baselines.sequential import SequenceDataModule
from reccocktail.utils.config import need

TitleEmbedder = Callable[[list[str]], torch.Tensor]


def title_table(dm: SequenceDataModule, settings: dict[str, Any],
                cache_dir: str | os.PathLike | None = None,
                embed: TitleEmbedder | None = None, where: str = "baselines") -> torch.Tensor:
    """[len(dm.vocab), hidden] title vectors aligned with the vocabulary (row 0 = zero padding).

    `embed` None: the frozen encoder of the settings' `encoder_package`, `encoder_batch_size`
    and `encoder_max_tokens` (set in the model's file of conf/baselines/; `where` names it)."""
    dm.load()
    if embed is None:
        return text.text_table(dm.items, cache_dir, str(need(settings, "encoder_package", where)),
                          int(need(settings, "encoder_batch_size", where)),
                          int(need(settings, "encoder_max_tokens", where)))
    emb = torch.as_tensor(embed(list(dm.items.values()))).float()
    if emb.dim() != 2 or emb.size(0) != len(dm.items):
        raise ValueError(f"title embedder returned shape {tuple(emb.shape)}, expected "
                         f"[{len(dm.items)}, hidden]")
    return torch.cat([torch.zeros(1, emb.size(1)), emb])
