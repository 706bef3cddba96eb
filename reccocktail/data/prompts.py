"""The run's prompt builder, built one way from the config for every stage, in either format.

The formats are `PromptBuilder` (instruction prompts, `data/instruction_prompts.py`) and
`SequencePromptBuilder` (title sequences, `data/sequence_prompts.py`); this module picks one
from `tuning.objective` and fills its wording from the `domain` block, and checks a split's
prompts against the token budget (`check_prompts`). `PromptBuilder` and `PromptTooLongError`
are importable from here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from reccocktail.data.instruction_prompts import PromptBuilder, PromptTooLongError
from reccocktail.data.sequence_prompts import SequencePromptBuilder
from reccocktail.utils.config import need, one_of, unknown_keys
from reccocktail.utils.io import to_plain

__all__ = ["FORMATS", "PromptBuilder", "PromptTooLongError", "SequencePromptBuilder",
           "adapter_format", "build_prompt_builder", "check_prompts", "prompt_builder_from_config",
           "prompt_format", "prompt_wording"]

FORMATS = ("instruction", "sequence")


_SPLITS = ("train", "valid", "test")


def _split_of(sample: Any, file: str | None) -> str | None:
    """The split a sample belongs to: its file's name (train.jsonl), else its id (`user:split:pos`)."""
    if file:
        path, _, line = file.rpartition(":")
        stem = Path(path if line.isdigit() else file).stem  # `train.jsonl:12` or `train.jsonl`
        if stem in _SPLITS:
            return stem
    parts = str(sample.id).rsplit(":", 2)
    return parts[1] if len(parts) == 3 and parts[1] in _SPLITS else None


def check_prompts(samples: Sequence[Any], builder: Any, where: str | None = None
                  ) -> list[dict[str, list[int]]]:
    """Every sample's training example (`builder.example`), all checked before any is used.

    Samples whose prompt exceeds the budget even without history are counted, and the first
    is named in the PromptTooLongError: its split, its id and its `file:line` (from
    `load_samples`, else `where`, the file or split the caller read them from). The examples
    are returned, so checking costs no second tokenisation."""
    out: list[dict[str, list[int]]] = []
    first: tuple[Any, PromptTooLongError] | None = None
    bad = 0
    for s in samples:
        try:
            out.append(builder.example(s.history, s.candidates, s.target))
        except PromptTooLongError as err:
            bad += 1
            first = first or (s, err)
    if first is None:
        return out
    s, err = first
    file = getattr(s, "where", None) or where
    split = _split_of(s, file)
    more = f" (and {bad - 1} more of {len(samples)} samples)" if bad > 1 else ""
    new = PromptTooLongError(
        f"{file or 'unknown file'}: split {split or '?'}, sample {s.id!r}{more}: {err}")
    new.split, new.sample_id, new.file = split, str(s.id), file
    raise new from err


# The wording keys a domain may set (`domain.prompt`, `domain.general.prompt`) and the builder
# field each fills. noun and verb are required (every conf/domain file sets them); the others
# are optional by design and keep their one default in the builder's dataclass field.
_WORDING = {"noun": "noun", "verb": "verb", "template": "template", "separator": "separator",
            "system_prompt": "system_prompt", "sequence_header": "header"}
_REQUIRED_WORDING = ("noun", "verb")


def build_prompt_builder(tokenizer: Any, items: dict[str, str], domain_cfg: Any, backbone_cfg: Any,
                         max_title_tokens: int, fmt: str = "instruction") -> PromptBuilder:
    """The prompt builder of format `fmt` (`tuning.objective`: instruction | sequence) from the
    `domain.prompt` and `backbone` config blocks; a missing or unknown key raises naming it."""
    one_of(fmt, FORMATS, "tuning.objective")
    p = need(domain_cfg, "prompt", "domain")
    unknown_keys(p, _WORDING, "domain.prompt")
    wording = {_WORDING[k]: need(p, k, "domain.prompt") for k in _REQUIRED_WORDING}
    wording.update({_WORDING[k]: p[k] for k in _WORDING if k in p and k not in _REQUIRED_WORDING})
    if fmt == "instruction":
        wording.pop("header", None)  # the sequence format's own
    common = dict(
        tokenizer=tokenizer,
        items=items,
        max_prompt_tokens=int(need(backbone_cfg, "max_prompt_tokens", "backbone")),
        max_title_tokens=int(max_title_tokens),
        use_chat_template=bool(need(backbone_cfg, "chat_template", "backbone")),
        **wording,
    )
    if fmt == "instruction":
        return PromptBuilder(**common)
    return SequencePromptBuilder(**common)


def prompt_wording(cfg: Any, general: bool = False) -> dict:
    """The prompt wording (a plain dict): `domain.general.prompt` for the general pool when the
    domain sets one (optional), else `domain.prompt` (required)."""
    p = OmegaConf.select(cfg, "domain.general.prompt") if general else None
    return to_plain(need(cfg, "domain.prompt") if p is None else p)


def prompt_builder_from_config(cfg: Any, tokenizer: Any, items: dict[str, str], *,
                               general: bool = False, prompt: dict | None = None,
                               fmt: str | None = None) -> PromptBuilder:
    """The run's prompt builder, the one way every stage builds it from the config: wording from
    `domain` (`prompt_wording`, or `prompt` when given), `data.max_title_tokens`, the `backbone`
    block and `tuning.objective` (or `fmt`)."""
    wording = prompt_wording(cfg, general) if prompt is None else prompt
    return build_prompt_builder(tokenizer, items, {"prompt": wording}, need(cfg, "backbone"),
                                int(need(cfg, "data.max_title_tokens")),
                                fmt=prompt_format(cfg) if fmt is None else fmt)


def prompt_format(cfg: Any) -> str:
    """The prompt format every stage of a run uses: `tuning.objective` (what G and S learned)."""
    return one_of(str(need(cfg, "tuning.objective")), FORMATS, "tuning.objective")


def adapter_format(manifest: dict) -> str:
    """The format an adapter was trained in, from its manifest (older ones: instruction)."""
    tuning = (manifest.get("config") or {}).get("tuning") or {}
    return str(manifest.get("objective") or tuning.get("objective") or "instruction")
