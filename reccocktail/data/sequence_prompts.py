"""The sequence format: a user's titles as one plain text, the next title as the answer.

`I am a movie fan. The movies I watched, in order: t1 || t2 || ... ||` followed by the next
title and the separator. Training reads a whole chronological sequence in one forward pass and
takes a loss at every title after the first few (one target per ~10 tokens, where the
instruction format spends ~500 tokens on one target), which is what makes learning affordable
on a CPU. Scoring prompts are the last H history titles; a candidate is scored as the
continuation `title ||`, and the entropy-guided λ reads the first k tokens of that continuation.

Every title is tokenised once, as the chunk `" " + title + " ||"`, and sequences are built by
concatenating chunks, so a title has exactly the same tokens in training, in a prompt and as a
scored answer. The builder has the `PromptBuilder` interface (`prompt_ids`, `response_ids`,
`title`), so every scorer, the entropy λ and `recommend` work with it unchanged; candidates are
not part of the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from reccocktail.data.instruction_prompts import PromptBuilder, PromptTooLongError

DEFAULT_HEADER = "I am a {noun} fan. The {noun}s I {verb}, in order:"


@dataclass
class SequencePromptBuilder(PromptBuilder):
    """`PromptBuilder` of the sequence format (see the module docstring)."""

    header: str = DEFAULT_HEADER
    _chunks: dict[str, list[int]] = field(default_factory=dict, repr=False)

    format = "sequence"

    def __post_init__(self) -> None:
        self.use_chat_template = False  # a plain continuation: no chat turn to answer
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos token")
        self.sep = self.separator.rstrip()
        if not self.sep.strip():
            raise ValueError(f"domain.prompt.separator: {self.separator!r} has no visible text")
        sep_ids = self.tokenizer(self.sep, add_special_tokens=False)["input_ids"]
        # the answer ends at the separator: generation stops on its last token
        self.eos_token_id = int(sep_ids[-1])
        self.pad_token_id = int(eos)
        text = self.header.format(noun=self.noun, verb=self.verb)
        self.header_ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def response_ids(self, item_id: str) -> list[int]:
        """Tokens of `" " + title + " ||"`: the title as it appears inside a sequence."""
        r = self._chunks.get(item_id)
        if r is None:
            r = list(self.tokenizer(f" {self.title(item_id)}{self.sep}",
                                    add_special_tokens=False)["input_ids"])
            self._chunks[item_id] = r
        return r

    def text(self, history: list[str], candidates: list[str] | None = None) -> str:
        return self.header.format(noun=self.noun, verb=self.verb) + "".join(
            f" {self.title(i)}{self.sep}" for i in history)

    def prompt_ids(self, history: list[str], candidates: list[str] | None = None) -> list[int]:
        """Header + history chunks; the oldest titles go first when over the budget (the
        room of one answer is kept free). Candidates are scored, never shown."""
        budget = self.max_prompt_tokens - (self.max_title_tokens + 2)
        chunks = [self.response_ids(i) for i in history]
        n = len(self.header_ids)
        keep = 0
        for c in reversed(chunks):
            if n + len(c) > budget:
                break
            n += len(c)
            keep += 1
        if n > budget:
            raise PromptTooLongError(
                f"the sequence header alone needs {n} tokens, over max_prompt_tokens="
                f"{self.max_prompt_tokens} minus one answer; raise backbone.max_prompt_tokens")
        return self.header_ids + [t for c in chunks[len(chunks) - keep:] for t in c]

    def example(self, history: list[str], candidates: list[str], target: str) -> dict[str, list[int]]:
        """An instruction sample in this format: its history, then the target as the answer."""
        p = self.prompt_ids(history)
        r = self.response_ids(target)
        return {"input_ids": p + r, "labels": [-100] * len(p) + r}

    def sequence_example(self, items: Sequence[str], min_context: int = 3) -> dict[str, list[int]]:
        """One training row: header + every title; a loss on each title after the first
        `min_context` (they only give context) and none on the header."""
        ids = list(self.header_ids)
        labels = [-100] * len(ids)
        for j, item in enumerate(items):
            chunk = self.response_ids(item)
            ids += chunk
            labels += chunk if j >= min_context else [-100] * len(chunk)
        return {"input_ids": ids, "labels": labels}

    def clean_output(self, text: str) -> str:
        """A generated continuation up to the separator: the title it names."""
        return text.split(self.sep.strip(), 1)[0].strip()
