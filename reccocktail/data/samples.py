"""The on-disk contract of the `data` stage, read back by every later stage.

`items.tsv`: `item_id<TAB>title` with a header. `{train,valid,test}.jsonl`: one object per line,
`{"id", "user", "history": [oldest first], "target", "candidates": [30 ids incl. target]}`.
Cold scenario: `new_items.json`, `{"test": [item ids], "valid": [item ids]}`, the test-new and
validation-new items.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from reccocktail.utils.io import atomic_path, numbered_jsonl


@dataclass(frozen=True)
class Sample:
    id: str
    user: str
    history: list[str]
    target: str
    candidates: list[str]
    # the file and line it was read from (set by `load_samples`), so that an error about the
    # sample can name them; not part of its identity
    file: str | None = field(default=None, compare=False, repr=False)
    line: int | None = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str | None:
        """`file:line` it was read from, if known."""
        return None if self.file is None else f"{self.file}:{self.line}"

    @property
    def target_index(self) -> int:
        return self.candidates.index(self.target)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "user": self.user,
            "history": list(self.history),
            "target": self.target,
            "candidates": list(self.candidates),
        }


_FIELDS = ("id", "user", "history", "target", "candidates")
NEW_ITEMS_FILE = "new_items.json"


def load_samples(path: str | os.PathLike, items: dict[str, str] | None = None) -> list[Sample]:
    """Read a split; every malformed line raises with the file and line number."""
    path = Path(path)
    fname = str(path)  # one string shared by all its samples
    out = []
    for lineno, row in numbered_jsonl(path):
        missing = [f for f in _FIELDS if f not in row]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing field(s) {missing}")
        s = Sample(
            id=str(row["id"]),
            user=str(row["user"]),
            history=[str(i) for i in row["history"]],
            target=str(row["target"]),
            candidates=[str(i) for i in row["candidates"]],
            file=fname,
            line=lineno,
        )
        if s.target not in s.candidates:
            raise ValueError(f"{path}:{lineno}: target {s.target!r} is not among the candidates")
        if items is not None:
            unknown = [i for i in (*s.history, *s.candidates) if i not in items]
            if unknown:
                raise ValueError(f"{path}:{lineno}: item id(s) {unknown[:5]} not in items.tsv")
        out.append(s)
    return out


def load_items(path: str | os.PathLike) -> dict[str, str]:
    """`item_id -> title` from an items.tsv written by the data stage."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (run the `data` stage first)")
    items: dict[str, str] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header != ["item_id", "title"]:
            raise ValueError(f"{path}:1: expected the header 'item_id<TAB>title', got {header}")
        for lineno, row in enumerate(reader, 2):
            if len(row) != 2 or not row[1]:
                raise ValueError(f"{path}:{lineno}: expected 'item_id<TAB>title', got {row}")
            items[row[0]] = row[1]
    return items


def write_items(path: str | os.PathLike, items: dict[str, str]) -> None:
    """Atomic items.tsv; titles never hold tabs or newlines (the readers collapse whitespace)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write("item_id\ttitle\n")
        for item_id, title in items.items():
            if "\t" in title or "\n" in title:
                raise ValueError(f"title of item {item_id!r} holds a tab or newline: {title!r}")
            fh.write(f"{item_id}\t{title}\n")
