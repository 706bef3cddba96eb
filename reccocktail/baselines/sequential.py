"""Item sequences as tensors: the data side of the ID- and text-based baselines.

The baselines read the data stage's contract files (`items.tsv`, `sequences.jsonl`,
`valid.jsonl`, `test.jsonl`) and never build splits of their own, so they are scored on the very
same samples and candidates as the LLM variants.

Conventions: item index 0 is padding, items.tsv's items are 1..N in file order (so items that
never occur in training, e.g. the cold scenario's new items, still have an index and keep
whatever their initialisation gave them). Sequences are LEFT-padded to `max_len`, so the last
position always holds the most recent item.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from reccocktail.data.samples import Sample, load_items, load_samples
from reccocktail.utils.io import iter_jsonl


@dataclass(frozen=True)
class ItemVocab:
    """`item id <-> index`; index 0 is padding."""

    ids: tuple[str, ...]

    @classmethod
    def from_items(cls, items: dict[str, str]) -> ItemVocab:
        return cls(ids=("<pad>", *items.keys()))

    @property
    def index(self) -> dict[str, int]:
        # cached on first use; a frozen dataclass cannot hold it as a field cheaply
        cache = self.__dict__.get("_index")
        if cache is None:
            cache = {item: i for i, item in enumerate(self.ids)}
            cache.pop("<pad>", None)
            object.__setattr__(self, "_index", cache)
        return cache

    def __len__(self) -> int:
        """Number of rows of an embedding table (items + padding)."""
        return len(self.ids)

    def encode(self, items: Sequence[str], where: str = "") -> list[int]:
        idx = self.index
        try:
            return [idx[i] for i in items]
        except KeyError as err:
            raise ValueError(f"{where}: item id {err.args[0]!r} is not in items.tsv") from err


def load_sequences(path: str | os.PathLike) -> dict[str, list[str]]:
    """`user -> training items (oldest first)` from sequences.jsonl; bad lines name file:line."""
    path = Path(path)
    out: dict[str, list[str]] = {}
    for lineno, row in enumerate(iter_jsonl(path), 1):
        if "user" not in row or not isinstance(row.get("items"), list):
            raise ValueError(f"{path}:{lineno}: expected {{'user': ..., 'items': [...]}}")
        user = str(row["user"])
        if user in out:
            raise ValueError(f"{path}:{lineno}: user {user!r} occurs twice")
        out[user] = [str(i) for i in row["items"]]
    return out


def left_pad(seq: Sequence[int], length: int) -> list[int]:
    """Keep the last `length` entries and pad on the left with 0."""
    seq = list(seq)[-length:] if length > 0 else []
    return [0] * (length - len(seq)) + seq


def training_windows(seq: Sequence[int], max_len: int, max_windows: int | None) -> list[list[int]]:
    """Cut a sequence into windows of max_len + 1 items (consecutive windows share one item), the
    most recent first, so every item after the first is a next-item target exactly once."""
    seq = list(seq)
    out: list[list[int]] = []
    end = len(seq)
    while end >= 2 and (max_windows is None or len(out) < max_windows):
        start = max(0, end - max_len - 1)
        out.append(seq[start:end])
        end = start + 1
        if start == 0:
            break
    return out


def merge_history(train_seq: Sequence[str], history: Sequence[str]) -> list[str]:
    """The user's training sequence extended by the sample's history, when the history continues
    it (its first k items are the sequence's last k); otherwise the sample history alone.

    Item ids occur once per user (the data stage drops duplicates), so an overlap can only mean
    the history starts inside the training sequence's tail: nothing from after the target leaks.
    """
    history = list(history)
    train_seq = list(train_seq)
    for k in range(min(len(history), len(train_seq)), 0, -1):
        if train_seq[-k:] == history[:k]:
            return train_seq + history[k:]
    return history


class _TrainSet(Dataset):
    def __init__(self, rows: list[tuple[int, list[int]]], max_len: int):
        self.rows = rows
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        user, window = self.rows[i]
        return {
            "user": torch.tensor(user),
            "seq": torch.tensor(left_pad(window[:-1], self.max_len)),
            "target": torch.tensor(left_pad(window[1:], self.max_len)),
        }


class _SampleSet(Dataset):
    def __init__(self, rows: list[dict[str, torch.Tensor]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


class SequenceDataModule(L.LightningDataModule):
    """Training windows from sequences.jsonl; validation/test rows from the stored samples.

    `history`: `sample` scores a sample from its stored history only (the same items the LLM
    sees, at most data.history_len); `full` extends it backwards with the user's training
    sequence when the history continues it (see `merge_history`).
    """

    def __init__(self, data_dir: str | os.PathLike, max_len: int = 50, batch_size: int = 256,
                 eval_batch_size: int = 512, max_windows_per_user: int | None = None,
                 history: str = "sample", num_workers: int = 0, seed: int = 0):
        super().__init__()
        if history not in ("sample", "full"):
            raise ValueError(f"baselines.common.history: unknown value {history!r}; "
                             "choose sample or full")
        if max_len < 1:
            raise ValueError(f"baselines.common.max_len must be >= 1, got {max_len}")
        self.data_dir = Path(data_dir)
        self.max_len = int(max_len)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.max_windows_per_user = max_windows_per_user
        self.history = history
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self._loaded = False

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        """Read the contract files once (idempotent)."""
        if self._loaded:
            return
        d = self.data_dir
        self.items = load_items(d / "items.tsv")
        self.vocab = ItemVocab.from_items(self.items)
        self.sequences = load_sequences(d / "sequences.jsonl")
        self.users = {u: i + 1 for i, u in enumerate(self.sequences)}  # 0 = unknown user
        rows: list[tuple[int, list[int]]] = []
        seen: list[int] = []  # every training interaction, for the item counts
        for user, seq in self.sequences.items():
            ids = self.vocab.encode(seq, where=f"{d / 'sequences.jsonl'} (user {user})")
            seen += ids
            rows += [(self.users[user], w)
                     for w in training_windows(ids, self.max_len, self.max_windows_per_user)]
        if not rows:
            raise ValueError(f"{d / 'sequences.jsonl'}: no user has two or more training items")
        self.train_rows = rows
        counts = torch.bincount(torch.tensor(seen, dtype=torch.long), minlength=len(self.vocab))
        self.item_counts = counts
        # the items a model may see as positives or negatives while training
        self.train_items = torch.nonzero(counts > 0).flatten()
        self.valid_samples = load_samples(d / "valid.jsonl", self.items)
        self.test_samples = load_samples(d / "test.jsonl", self.items)
        self._loaded = True

    def setup(self, stage: str | None = None) -> None:
        self.load()

    @property
    def num_users(self) -> int:
        """Rows of a user embedding table (users + unknown)."""
        return len(self.users) + 1

    def sample_rows(self, samples: list[Sample], where: str) -> list[dict[str, torch.Tensor]]:
        """Tensors for scoring the stored candidates of `samples` (all must have as many)."""
        self.load()
        rows = []
        n_cand = None
        for k, s in enumerate(samples):
            if n_cand is None:
                n_cand = len(s.candidates)
            elif len(s.candidates) != n_cand:
                raise ValueError(f"{where}: sample {s.id!r} has {len(s.candidates)} candidates, "
                                 f"the first one has {n_cand}; all must have the same number")
            history = s.history
            if self.history == "full":
                history = merge_history(self.sequences.get(s.user, []), s.history)
            rows.append({
                "row": torch.tensor(k),
                "user": torch.tensor(self.users.get(s.user, 0)),
                "seq": torch.tensor(left_pad(self.vocab.encode(history, where), self.max_len)),
                "candidates": torch.tensor(self.vocab.encode(s.candidates, where)),
                "target_index": torch.tensor(s.target_index),
            })
        return rows

    # -- loaders ---------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self.load()
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(_TrainSet(self.train_rows, self.max_len), batch_size=self.batch_size,
                          shuffle=True, generator=gen, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self.samples_dataloader(self.valid_samples, str(self.data_dir / "valid.jsonl"))

    def samples_dataloader(self, samples: list[Sample], where: str = "samples") -> DataLoader:
        return DataLoader(_SampleSet(self.sample_rows(samples, where)),
                          batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers)
