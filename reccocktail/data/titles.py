"""Item titles: cleaning for display and normalisation for cross-dataset identity.

Cleaning only repairs the text (HTML entities, stray whitespace); shortening a title to a token
budget is the prompt builder's job, because the budget is counted in the backbone's tokens.
Normalisation is stricter and never shown: two datasets' items are "the same item" exactly when
their normalised titles are equal (ids of different datasets never mean the same thing).
"""

from __future__ import annotations

import html
import re
import unicodedata
from pathlib import Path

_WS = re.compile(r"\s+")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def clean_title(raw: object) -> str:
    """HTML-unescape (twice: Amazon metadata holds `&amp;amp;`) and collapse whitespace.

    Returns "" for a missing title, so callers can count and drop such items.
    """
    if raw is None:
        return ""
    text = str(raw)
    for _ in range(2):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return _WS.sub(" ", text).strip()


def normalise_title(title: str) -> str:
    """Case-, accent- and punctuation-insensitive key: 'Amélie (2001)' == 'amelie 2001'."""
    text = unicodedata.normalize("NFKD", clean_title(title))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return _NON_ALNUM.sub(" ", text).strip()


def decode_bytes(data: bytes) -> str:
    """UTF-8 if the whole file is valid UTF-8, else latin-1 (GroupLens ships latin-1 files;
    some copies were re-encoded to UTF-8). Latin-1 decodes any byte string, so this never fails."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_text(path: str | Path, encoding: str = "auto") -> str:
    """A text file decoded by `encoding` ('auto': UTF-8 strictly, falling back to latin-1)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    if encoding == "auto":
        return decode_bytes(data)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not valid {encoding} ({err.reason}); set the source's "
            "encoding to auto or latin-1"
        ) from err
