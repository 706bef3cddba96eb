"""Item titles: cleaning for display and normalisation for cross-dataset identity.

Cleaning only repairs the text (HTML entities, Unicode compatibility forms (NFKC), control and
zero-width characters, stray whitespace, the prompt separator `||` inside a title); shortening a title to a token budget is the prompt builder's job, because the
budget is counted in the backbone's tokens.
Normalisation is stricter and never shown: two datasets' items are "the same item" exactly when
their normalised titles are equal (ids of different datasets never mean the same thing).
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from pathlib import Path

log = logging.getLogger(__name__)

_WS = re.compile(r"\s+")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_SEPARATOR = re.compile(r"\|{2,}")  # the prompt separator (`||`) and longer runs


def clean_title(raw: object) -> str:
    """HTML-unescape (twice: Amazon metadata holds `&amp;amp;`), Unicode NFKC, drop control and
    format (zero-width) characters, collapse whitespace and replace the prompt separator `||` by
    `|` (see `clean_title_flagged`). The data stage cleans every title with it and `recommend`
    every typed one, so the two match.

    Returns "" for a missing title, so callers can count and drop such items.
    """
    return clean_title_flagged(raw)[0]


def clean_title_flagged(raw: object) -> tuple[str, bool]:
    """The cleaned title, and whether it held the prompt separator.

    Prompts join titles with ` || `, so a title holding `||` would make the item boundaries of
    a prompt ambiguous (10 titles reading as 16); every run of two or more `|` becomes one `|`.
    """
    if raw is None:
        return "", False
    text = str(raw)
    for _ in range(2):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = _visible(text)
    text, n = _SEPARATOR.subn("|", text)
    return _WS.sub(" ", text).strip(), n > 0


def _visible(text: str) -> str:
    """NFKC (full-width letters, ligatures and the like become their plain forms), whitespace
    controls (tabs, newlines) as spaces, and no other control (Cc) or format (Cf: zero-width
    space and joiners, BOM, bidirectional overrides, soft hyphen) character: such a title looks
    like another one, or like nothing, and can carry terminal escape sequences."""
    if text.isascii() and text.isprintable():
        return text
    text = unicodedata.normalize("NFKC", text)
    return "".join(" " if c.isspace() else c for c in text
                   if c.isspace() or unicodedata.category(c) not in ("Cc", "Cf", "Cs"))


def normalise_title(title: str) -> str:
    """Case-, accent- and punctuation-insensitive key: 'Amélie (2001)' == 'amelie 2001'."""
    text = unicodedata.normalize("NFKD", clean_title(title))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return _NON_ALNUM.sub(" ", text).strip()


def decode_bytes(data: bytes) -> str:
    """UTF-8 where valid, else latin-1, decided line by line (see `decode_lines`)."""
    return decode_lines(data)[0]


def decode_lines(data: bytes) -> tuple[str, list[int]]:
    """The text, and the (1-based) numbers of the lines that were decoded as latin-1.

    GroupLens ships latin-1 files and some copies were re-encoded to UTF-8; a file mixing both
    (one line appended by an editor in the other encoding) is decoded per line, so one odd line
    never turns the valid UTF-8 of the others into mojibake. Latin-1 decodes any byte string,
    so this never fails."""
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    parts: list[str] = []
    latin1: list[int] = []
    for lineno, line in enumerate(data.splitlines(keepends=True), 1):
        try:
            parts.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            parts.append(line.decode("latin-1"))
            latin1.append(lineno)
    return "".join(parts), latin1


def read_text(path: str | Path, encoding: str = "auto") -> str:
    """A text file decoded by `encoding` ('auto': UTF-8 where valid, latin-1 per other line).

    With 'auto', a file whose lines mix both encodings is decoded per line and logged as a
    warning naming the first latin-1 line (a wholly latin-1 file is normal and only noted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    if encoding == "auto":
        text, latin1 = decode_lines(data)
        if latin1:
            non_ascii = sum(1 for line in text.splitlines() if not line.isascii())
            if non_ascii > len(latin1):  # some lines are real UTF-8: the file mixes encodings
                log.warning("%s:%d: %d line(s) are not UTF-8 and were read as latin-1 (the other "
                            "lines are UTF-8)", path, latin1[0], len(latin1))
            else:
                log.info("%s: read as latin-1 (%d non-UTF-8 lines)", path, len(latin1))
        return text
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not valid {encoding} ({err.reason}); set the source's "
            "encoding to auto or latin-1"
        ) from err
