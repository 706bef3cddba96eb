"""Render a sample as token ids: the instruction prompt and the response (a title).

The response is the title's tokens followed by the end-of-turn token, so that scoring a title
also says "and nothing more" (a title that is a prefix of another does not win for free).
Titles are cut to `max_title_tokens` once, and the cut text is used everywhere (prompt, target
and candidate scoring) so the model is never asked for a title it was shown differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_TEMPLATE = (
    "I am a {noun} fan. I {verb} [{history}]. "
    "Please recommend me only one most likely {noun} from [{candidates}]."
)


class PromptTooLongError(ValueError):
    """Even with no history the prompt exceeds the token budget.

    Raised by `check_prompts` with the split, the sample id and the `file:line` of the first
    sample over the budget (None when the builder raises it for a bare prompt)."""

    split: str | None = None
    sample_id: str | None = None
    file: str | None = None


@dataclass
class PromptBuilder:
    tokenizer: Any
    items: dict[str, str]
    noun: str = "item"
    verb: str = "interacted with"
    template: str = DEFAULT_TEMPLATE
    separator: str = " || "
    max_prompt_tokens: int = 1024
    max_title_tokens: int = 32
    use_chat_template: bool = True
    system_prompt: str | None = None
    _titles: dict[str, str] = field(default_factory=dict, repr=False)
    _response: dict[str, list[int]] = field(default_factory=dict, repr=False)

    format = "instruction"  # the prompt format (`tuning.objective`), recorded with results

    def __post_init__(self) -> None:
        for key in ("{history}", "{candidates}"):
            if key not in self.template:
                raise ValueError(f"prompt.template must contain {key}: {self.template!r}")
        if self.use_chat_template and not getattr(self.tokenizer, "chat_template", None):
            self.use_chat_template = False
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos token to end a response with")
        self.eos_token_id = int(eos)

    # -- titles -------------------------------------------------------------------------
    def title(self, item_id: str) -> str:
        """The (token-budgeted) title shown for an item."""
        t = self._titles.get(item_id)
        if t is None:
            try:
                raw = self.items[item_id]
            except KeyError as err:
                raise KeyError(f"item {item_id!r} has no title in items.tsv") from err
            ids = self.tokenizer(raw, add_special_tokens=False)["input_ids"]
            if len(ids) <= self.max_title_tokens:
                t = raw
                self._response[item_id] = [*ids, self.eos_token_id]
            else:
                t = self.tokenizer.decode(ids[: self.max_title_tokens]).strip()
            self._titles[item_id] = t
        return t

    def response_ids(self, item_id: str) -> list[int]:
        """Token ids of the answer naming `item_id`, ending with the end-of-turn token."""
        title = self.title(item_id)  # an uncut title caches its response ids on the way
        r = self._response.get(item_id)
        if r is None:
            r = [*self.tokenizer(title, add_special_tokens=False)["input_ids"], self.eos_token_id]
            self._response[item_id] = r
        return r

    # -- prompt -------------------------------------------------------------------------
    def text(self, history: list[str], candidates: list[str]) -> str:
        return self.template.format(
            noun=self.noun,
            verb=self.verb,
            history=self.separator.join(self.title(i) for i in history),
            candidates=self.separator.join(self.title(i) for i in candidates),
        )

    def _encode(self, text: str) -> list[int]:
        if self.use_chat_template:
            messages = [{"role": "user", "content": text}]
            if self.system_prompt:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            out = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            if isinstance(out, dict) or hasattr(out, "keys"):
                out = out["input_ids"]
            return list(out)
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def prompt_ids(self, history: list[str], candidates: list[str]) -> list[int]:
        """Prompt ids within the budget: history is cut from the oldest side, never candidates."""
        ids = self._encode(self.text(history, candidates))
        if len(ids) <= self.max_prompt_tokens:
            return ids
        lo, hi = 0, len(history)  # binary search for the most recent history that fits
        best: list[int] | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            trial = self._encode(self.text(history[len(history) - mid :], candidates))
            if len(trial) <= self.max_prompt_tokens:
                best, lo = trial, mid + 1
            else:
                hi = mid - 1
        if best is None:
            n = len(self._encode(self.text([], candidates)))
            raise PromptTooLongError(
                f"the prompt needs {n} tokens with an empty history and {len(candidates)} "
                f"candidates, over max_prompt_tokens={self.max_prompt_tokens}; raise "
                "backbone.max_prompt_tokens or lower data.max_title_tokens"
            )
        return best

    def example(self, history: list[str], candidates: list[str], target: str) -> dict[str, list[int]]:
        """One training example: input ids and labels with the prompt masked (-100)."""
        p = self.prompt_ids(history, candidates)
        r = self.response_ids(target)
        return {"input_ids": p + r, "labels": [-100] * len(p) + r}

    def clean_output(self, text: str) -> str:
        """A generated answer as the title it names (the whole answer in this format)."""
        return text.strip()
