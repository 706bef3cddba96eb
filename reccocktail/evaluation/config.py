"""The `eval:` block as a typed config (`EvalConfig`), parsed once by whoever scores like the
eval stage: the stage itself and the baselines that use its scorers (P5).

Its own module, not the stage's, so that the scorers and other stages read the type without
importing a stage module (and without an import cycle through the stage).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from omegaconf import DictConfig

from reccocktail.data.selection import ALIASES
from reccocktail.ingredients import expand, ingredient_names
from reccocktail.utils.config import need, typed
from reccocktail.utils.io import to_plain

SEARCHES = ("beam", "exact")  # eval.search

# Keys of the eval block read by `selection_config` (deprecated aliases of `selection:`).
_ALIASES = tuple(k.split(".", 1)[1] for k in ALIASES if k.startswith("eval."))


@dataclass(frozen=True)
class EvalConfig:
    """The `eval:` block, parsed once at the stage's entry. Every key is required: its one
    default is in conf/eval/default.yaml (a missing key raises naming it, an unknown one too)."""

    split: str
    scorer: tuple[str, ...]
    variants: tuple[str, ...]
    adapters: dict[str, str]
    normalize: bool
    batch_size: int
    packed: bool
    share_trunk: bool
    beam_size: int | None  # null: the protocol's largest cut-off
    search: str
    generate_batch_size: int
    max_new_tokens: int | None
    multi_match: str
    ks: tuple[int, ...]
    candidates: str
    full_ks: tuple[int, ...]
    exclude_seen: bool
    reference: bool
    device: str | None
    progress: bool
    print: bool

    @property
    def scorers(self) -> ScorerConfig:
        """The part of this block the scorers read."""
        return ScorerConfig.of(self)


@dataclass(frozen=True)
class ScorerConfig:
    """What a scorer reads of the eval block and nothing more, so that scorers are built alike
    by the eval stage, the P5 baseline and the scripts without handing them the whole block
    (`EvalConfig.scorers`). `beam_size` is resolved (never null)."""

    batch_size: int
    normalize: bool
    progress: bool
    packed: bool
    beam_size: int | None
    search: str
    generate_batch_size: int
    max_new_tokens: int | None
    multi_match: str

    @classmethod
    def of(cls, block: Any) -> ScorerConfig:
        """The scorer settings of a parsed eval block (any object with these attributes)."""
        return cls(**{f.name: getattr(block, f.name) for f in fields(cls)})


def eval_config(cfg: DictConfig) -> EvalConfig:
    """Parse and check `cfg.eval` (a non-empty scorer list; `adapters` a name -> path map);
    the entry `ingredients` of `eval.variants` becomes the run's ingredients, in order."""
    ec = typed(EvalConfig, to_plain(need(cfg, "eval")), "eval", ignore=_ALIASES)
    ec = replace(ec, variants=tuple(expand(ec.variants, ingredient_names(cfg))))
    if not ec.scorer:
        raise ValueError("eval.scorer: empty; choose likelihood, generate or naive")
    if not isinstance(ec.adapters, dict):
        raise ValueError(f"eval.adapters: expected a map name -> adapter folder, got {ec.adapters!r}")
    if ec.search not in SEARCHES:
        raise ValueError(f"eval.search={ec.search!r}: not one of {list(SEARCHES)}")
    bad = normalize_errors(ec.scorer, ec.normalize, ec.search)
    if bad:
        raise ValueError(bad[0])
    if ec.beam_size is None:  # max(full_ks) with candidates=all, else max(ks): defaults compose
        ec = replace(ec, beam_size=max(ec.full_ks if ec.candidates == "all" else ec.ks))
    return ec


def normalize_errors(scorers: Sequence[str] | str, normalize: bool, search: str) -> list[str]:
    """`eval.normalize=true` beside the beam scorer (either `eval.search`), one message (empty:
    fine). Beam and exact search rank by the summed log-probability of the answer (the exact
    search's bound needs a sum: a per-token mean is not monotone along a prefix), so they would
    ignore the flag and sit in one table beside normalised likelihood rows, unlabelled; the
    combination is refused before any stage runs."""
    names = [scorers] if isinstance(scorers, str) else [str(x) for x in scorers or []]
    if not normalize or "beam" not in names:
        return []
    return [f"eval.normalize=true with eval.scorer={names} (eval.search={search}): beam and "
            "exact search rank by the sum of the answer's log-probs and ignore eval.normalize; "
            "set eval.normalize=false, or score beam in a run of its own"]
