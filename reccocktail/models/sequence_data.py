"""Training rows of the sequence objective: windows of users' chronological title sequences.

The rows come from `sequences.jsonl` (the target's, or the general pool's), which holds the
training part of each user's sequence only: no validation or test target and, in the cold
scenario, no new item, so nothing a later stage selects on or scores can leak into training.
A long sequence is cut into windows of at most `max_titles` titles, newest first; consecutive
windows overlap by `min_context` titles so that every title after a user's first `min_context`
is a target exactly once, always with at least `min_context` titles before it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reccocktail.models.datamodule import InstructionDataModule
from reccocktail.utils.io import numbered_jsonl


@dataclass(frozen=True)
class Window:
    """A slice of one user's training sequence; titles after the first `context` are targets."""

    user: str
    items: tuple[str, ...]
    context: int

    @property
    def num_targets(self) -> int:
        return max(0, len(self.items) - self.context)


def load_user_sequences(path: str | os.PathLike, items: dict[str, str] | None = None
                        ) -> dict[str, list[str]]:
    """`user -> training items, oldest first`; a bad line or unknown item names file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run the `data` stage again: sequences.jsonl "
                                "is written by this version of the data stage)")
    out: dict[str, list[str]] = {}
    for lineno, row in numbered_jsonl(path):
        if not isinstance(row.get("user"), str) or not isinstance(row.get("items"), list):
            raise ValueError(f"{path}:{lineno}: expected {{\"user\": str, \"items\": [ids]}}")
        seq = [str(i) for i in row["items"]]
        if items is not None:
            unknown = [i for i in seq if i not in items]
            if unknown:
                raise ValueError(f"{path}:{lineno}: item id(s) {unknown[:5]} not in items.tsv")
        out[row["user"]] = seq
    return out


def sequence_windows(user: str, seq: Sequence[str], max_titles: int, min_context: int,
                     max_windows: int | None = None) -> list[Window]:
    """Windows of `seq`, the newest first (the ones closest to the scored future)."""
    if max_titles <= min_context:
        raise ValueError(f"tuning.sequence.max_titles ({max_titles}) must exceed "
                         f"tuning.sequence.min_context ({min_context})")
    out: list[Window] = []
    end = len(seq)
    while end > min_context and (max_windows is None or len(out) < max_windows):
        start = max(0, end - max_titles)
        out.append(Window(user, tuple(seq[start:end]), min_context))
        end = start + min_context
        if start == 0:
            break
    return out


def build_windows(sequences: dict[str, list[str]], max_titles: int, min_context: int,
                  max_windows_per_user: int | None = None,
                  exclude_items: set[str] | frozenset[str] = frozenset()) -> list[Window]:
    """Every user's windows (users in file order). `exclude_items` is a guard for callers that
    know items no training row may hold; a sequence holding one is an error, not a filter."""
    out: list[Window] = []
    for user, seq in sequences.items():
        bad = [i for i in seq if i in exclude_items]
        if bad:
            raise ValueError(f"user {user!r}: training sequence holds excluded item(s) {bad[:5]}")
        out += sequence_windows(user, seq, max_titles, min_context, max_windows_per_user)
    return out


class SequenceDataModule(InstructionDataModule):
    """Batches of title-sequence windows (length-grouped, resumable, DDP-sharded as the
    instruction data): the builder renders each window with a loss on every target title."""

    def __init__(self, train_windows: Sequence[Window], prompt_builder: Any, **kwargs: Any) -> None:
        if not hasattr(prompt_builder, "sequence_example"):
            raise TypeError("the sequence objective needs a SequencePromptBuilder "
                            "(build_prompt_builder(..., fmt='sequence'))")
        super().__init__(train_windows, prompt_builder, **kwargs)

    def tokenize(self, windows: Sequence[Window]) -> list[dict[str, list[int]]]:
        return [self.prompt_builder.sequence_example(w.items, w.context) for w in windows]
