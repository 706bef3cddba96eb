"""Match a generated answer to one of the candidate titles (the paper's generate-and-match).

Rules, tried in order; the first that yields a candidate decides:

1. **exact**: the stripped output equals a candidate title.
2. **normalised**: equal after normalisation (Unicode NFKC, case-folded, punctuation removed,
   whitespace collapsed), so "toy story (1995)" and "Toy Story  (1995)." both match.
3. **contained**: normalised candidate titles that occur in the normalised output on word
   boundaries ("I recommend Toy Story (1995)"). A title that occurs only inside a longer
   matched title is ignored ("Toy Story" inside "Toy Story 2").
   **Several titles in one output**: with `multi="first"` (default) the title mentioned first
   wins (the model's leading answer; the rest is usually a continued list); with
   `multi="miss"` the output is ambiguous and counts as a miss. Neither rule looks at which
   candidate is the positive.

Anything else (an invented title, an empty output) is a miss and an invalid output.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from reccocktail.utils.config import one_of

_PUNCT = re.compile(r"[^\w\s]|_", re.UNICODE)
_SPACE = re.compile(r"\s+")
MULTI_RULES = ("first", "miss")


def normalize_title(text: str) -> str:
    """Case/whitespace/punctuation-insensitive form of a title."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _PUNCT.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class Match:
    index: int | None  # candidate column, or None for a miss
    rule: str  # exact | normalized | contained | multiple | none
    num_titles: int = 0  # distinct candidate titles found in the output

    @property
    def valid(self) -> bool:
        return self.index is not None


def match_output(output: str, titles: Sequence[str], multi: str = "first") -> Match:
    """The candidate (column of `titles`) that `output` names, by the rules above."""
    one_of(multi, MULTI_RULES, "eval.multi_match")
    text = output.strip()
    for i, t in enumerate(titles):
        if text == t.strip():
            return Match(i, "exact", 1)
    norm_out = normalize_title(text)
    if not norm_out:
        return Match(None, "none", 0)
    norm_titles = [normalize_title(t) for t in titles]
    for i, t in enumerate(norm_titles):
        if t and norm_out == t:
            return Match(i, "normalized", 1)
    # Occurrences (start, end, index) of every title on word boundaries.
    spans: list[tuple[int, int, int]] = []
    padded = f" {norm_out} "
    for i, t in enumerate(norm_titles):
        if not t:
            continue
        needle = f" {t} "
        start = padded.find(needle)
        while start != -1:
            spans.append((start, start + len(needle) - 1, i))
            start = padded.find(needle, start + 1)
    if not spans:
        return Match(None, "none", 0)
    # Drop spans nested inside a longer span (a title that is part of another matched title).
    outer = [s for s in spans
             if not any(o is not s and o[0] <= s[0] and s[1] <= o[1] and (o[1] - o[0]) > (s[1] - s[0])
                        for o in spans)]
    found = sorted(outer, key=lambda s: (s[0], -(s[1] - s[0]), s[2]))
    distinct = {norm_titles[s[2]] for s in found}
    if len(distinct) == 1:
        return Match(found[0][2], "contained", 1)
    if multi == "miss":
        return Match(None, "multiple", len(distinct))
    return Match(found[0][2], "multiple", len(distinct))
