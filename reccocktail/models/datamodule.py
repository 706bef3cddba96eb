"""Instruction-tuning batches: tokenised prompts, dynamic padding, length-grouped batches.

Prompts of one domain have similar lengths (30 candidate titles dominate them), but the history
and title lengths still vary; grouping samples of similar length into a batch keeps padding,
i.e. wasted compute, low. The batch sampler shards batches across DDP ranks itself (so the
trainer runs with `use_distributed_sampler=False`) and skips the batches an interrupted epoch
already consumed, so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from reccocktail.data.prompts import check_prompts
from reccocktail.data.samples import Sample

log = logging.getLogger(__name__)


def select_subset(samples: Sequence[Sample], fraction: float | None = None,
                  max_samples: int | None = None, seed: int = 0) -> list[Sample]:
    """A seeded subset (few-shot runs): `fraction` of the samples, then at most `max_samples`.

    The chosen samples keep their original order, so a subset of a subset is predictable.
    """
    n = len(samples)
    keep = n
    if fraction is not None:
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"tuning.fraction: expected a value in (0, 1], got {fraction}")
        keep = max(1, round(n * float(fraction))) if n else 0
    if max_samples is not None:
        if int(max_samples) < 1:
            raise ValueError(f"tuning.max_samples: expected a positive count, got {max_samples}")
        keep = min(keep, int(max_samples))
    if keep >= n:
        return list(samples)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=keep, replace=False))
    return [samples[i] for i in idx]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of pad tokens when every batch is padded to its longest example."""
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 0.0 if total == 0 else 1.0 - real / total


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Seeded shuffled batches of similar-length examples, sharded over DDP ranks.

    Each epoch shuffles all indices (seed + epoch), cuts them into mega-batches of
    `batch_size * mega_batch_mult`, sorts each mega-batch by length and cuts it into batches,
    then shuffles the batch order. Rank r takes batches r, r + R, ...; the batch list is padded
    by repeating its first batches so every rank gets the same count.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True,
                 group_by_length: bool = True, mega_batch_mult: int = 50, num_replicas: int = 1,
                 rank: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"tuning.batch_size: expected a positive count, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.lengths = list(lengths)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.mega_batch_mult = max(1, int(mega_batch_mult))
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, batches to skip in it)
        # Read when an epoch's iteration starts: how many of its batches were already trained on.
        self.consumed_fn: Callable[[], int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, epoch: int, batches: int) -> None:
        """Resume: drop the first `batches` of `epoch` (already trained on before the interruption)."""
        self._skip = (int(epoch), int(batches))

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of an epoch, before sharding over ranks."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            mega = self.batch_size * self.mega_batch_mult
            batches = []
            for start in range(0, n, mega):
                chunk = sorted(order[start : start + mega].tolist(), key=lambda i: -self.lengths[i])
                batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
            if self.shuffle:
                batches = [batches[i] for i in rng.permutation(len(batches))]
        else:
            order = order.tolist()
            batches = [order[j : j + self.batch_size] for j in range(0, n, self.batch_size)]
        if batches and len(batches) % self.num_replicas:
            extra = self.num_replicas - len(batches) % self.num_replicas
            batches += [batches[i % len(batches)] for i in range(extra)]
        return batches

    def __len__(self) -> int:
        n = math.ceil(len(self.lengths) / self.batch_size)
        return math.ceil(n / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: this body runs at the first `next()`, i.e. after Lightning has restored
        # the loop progress of a resumed run, even though the iterator was made before that
        mine = self.global_batches()[self.rank :: self.num_replicas]
        skip = self.consumed_fn() if self.consumed_fn is not None else 0
        if self._skip is not None and self._skip[0] == self.epoch:
            skip = max(skip, self._skip[1])
            self._skip = None
        if skip:
            log.info("resuming epoch %d after its first %d batches", self.epoch, skip)
        yield from mine[skip:]


class _ResumableLoader(DataLoader):
    """A DataLoader that tells Lightning it can resume mid-epoch.

    The position itself is not stored here: when an epoch's iteration starts, the batch sampler
    asks the data module how many batches Lightning's restored loop progress counts as done,
    and skips them (see `InstructionDataModule._consumed_batches`).
    """

    def state_dict(self) -> dict[str, Any]:
        return {"skips_consumed_batches": True}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class TokenizedDataset(Dataset):
    def __init__(self, examples: list[dict[str, list[int]]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]


def tokenize_samples(samples: Sequence[Sample], prompt_builder: Any, where: str | None = None
                     ) -> list[dict[str, list[int]]]:
    """Input ids + labels (prompt masked with -100) of every sample, via the PromptBuilder.

    All are built before any is used (`check_prompts`): a prompt over budget raises naming the
    split, the sample id and its file (`where` when the samples do not carry their file)."""
    return check_prompts(samples, prompt_builder, where)


def collate(examples: Sequence[dict[str, list[int]]], pad_token_id: int,
            multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example, rounded up to `multiple` tokens; pad labels are
    -100 and pad positions masked, so they cost no loss and change no real position's output."""
    width = max(len(e["input_ids"]) for e in examples)
    width = -(-width // multiple) * multiple
    n = len(examples)
    input_ids = torch.full((n, width), int(pad_token_id), dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    for row, e in enumerate(examples):
        k = len(e["input_ids"])
        input_ids[row, :k] = torch.tensor(e["input_ids"], dtype=torch.long)
        labels[row, :k] = torch.tensor(e["labels"], dtype=torch.long)
        attention_mask[row, :k] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


class _Collator:
    """Picklable collate function (DataLoader workers may be spawned processes)."""

    def __init__(self, pad_token_id: int, multiple: int = 1) -> None:
        self.pad_token_id = int(pad_token_id)
        self.multiple = int(multiple)

    def __call__(self, examples):
        return collate(examples, self.pad_token_id, self.multiple)


class InstructionDataModule(L.LightningDataModule):
    """Tokenised train (and optional validation) samples for one tuning stage.

    `prompt_builder` renders samples (`PromptBuilder.example`); the subset and the mix of
    samples are chosen by the stage before, so this module only batches.
    """

    def __init__(self, train_samples: Sequence[Sample], prompt_builder: Any,
                 val_samples: Sequence[Sample] | None = None, batch_size: int = 4,
                 val_batch_size: int | None = None, group_by_length: bool = True,
                 mega_batch_mult: int = 50, seed: int = 0, num_workers: int = 0,
                 pad_multiple: int = 1) -> None:
        super().__init__()
        if int(pad_multiple) < 1:
            raise ValueError(f"pad_multiple: expected a positive token count, got {pad_multiple}")
        if not train_samples:
            raise ValueError("no training samples for this tuning stage (check the data stage output)")
        self.train_samples = list(train_samples)
        self.val_samples = list(val_samples or [])
        self.prompt_builder = prompt_builder
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.group_by_length = group_by_length
        self.mega_batch_mult = mega_batch_mult
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.pad_multiple = int(pad_multiple)
        self.train_examples: list[dict[str, list[int]]] | None = None
        self.val_examples: list[dict[str, list[int]]] | None = None
        self.batch_sampler: LengthGroupedBatchSampler | None = None

    def tokenize(self, samples: Sequence[Any]) -> list[dict[str, list[int]]]:
        """Input ids + labels of each sample (the sequence objective renders windows instead)."""
        return tokenize_samples(samples, self.prompt_builder)

    @property
    def pad_token_id(self) -> int:
        tok = self.prompt_builder.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples is None:
            self.train_examples = self.tokenize(self.train_samples)
            self.val_examples = self.tokenize(self.val_samples)
            lengths = [len(e["input_ids"]) for e in self.train_examples]
            log.info("tokenised %d training examples (%d-%d tokens, mean %.0f), %d validation",
                     len(lengths), min(lengths), max(lengths), float(np.mean(lengths)),
                     len(self.val_examples))

    def train_lengths(self) -> list[int]:
        self.setup()
        return [len(e["input_ids"]) for e in self.train_examples]

    def mean_targets_per_batch(self) -> float:
        """Target tokens of a micro-batch on average (`batch_size` x the mean per example): the
        constant the `tokens` loss normalisation divides the summed loss by before backward."""
        self.setup()
        counts = [sum(1 for t in e["labels"][1:] if t != -100) for e in self.train_examples]
        return max(1.0, self.batch_size * float(np.mean(counts)))

    def make_batch_sampler(self, num_replicas: int = 1, rank: int = 0) -> LengthGroupedBatchSampler:
        return LengthGroupedBatchSampler(
            self.train_lengths(), self.batch_size, seed=self.seed, shuffle=True,
            group_by_length=self.group_by_length, mega_batch_mult=self.mega_batch_mult,
            num_replicas=num_replicas, rank=rank,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = self.make_batch_sampler(world, rank)
        if trainer is not None:
            sampler.consumed_fn = self._consumed_batches
        self.batch_sampler = sampler
        return _ResumableLoader(
            TokenizedDataset(self.train_examples), batch_sampler=sampler,
            collate_fn=_Collator(self.pad_token_id, self.pad_multiple), num_workers=self.num_workers,
        )

    def _consumed_batches(self) -> int:
        """Batches of the current epoch already trained on: 0 in a fresh epoch, the restored
        count when Lightning resumes mid-epoch (its epoch loop has reset the progress by now)."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if not self.val_examples:
            return []
        return DataLoader(
            TokenizedDataset(self.val_examples), batch_size=self.val_batch_size, shuffle=False,
            collate_fn=_Collator(self.pad_token_id, self.pad_multiple), num_workers=self.num_workers,
        )
