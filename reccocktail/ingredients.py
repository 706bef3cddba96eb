"""The ingredients of a cocktail: which LoRA adapters are trained and mixed (`ingredients:`).

The root key `ingredients` lists them in order (default `[general, specific]`, the paper's
base spirit G and ingredient S). Each entry is

- `general`: the pooled general pool `data/general/` (the base spirit G);
- `specific`: the target domain's training part (S);
- the name of one source in `domain.general.sources` (e.g. `sports`, `games` for Beauty):
  trained like G, on the general pool's rows of that one source only (the pool's ids are
  namespaced `<source name>:<id>`, so its rows are those whose user id carries the prefix).

An ingredient's name is its stage name, its adapter folder (`adapters/<name>/`) and its results
row. The stage list's entry `ingredients` (the default `stages=[data, ingredients, mix, eval]`)
expands to the list in order; `eval.variants` does the same. Every stage and reader learns
the list from here (docs/design.md §11).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from reccocktail.utils.config import check_name

KEY = "ingredients"          # the root config key, and the token that expands to the list
GENERAL, SPECIFIC, SOURCE = "general", "specific", "source"  # ingredient kinds
DEFAULT = (GENERAL, SPECIFIC)
# Names an ingredient may not take: other stages, the mixed variants, the bare backbone.
RESERVED = ("data", "mix", "eval", "baselines", KEY, "wa", "cocktail", "zero_shot", SOURCE)


@dataclass(frozen=True)
class Ingredient:
    """One entry of `ingredients`: `kind` general | specific | source; for a source, its key
    in `domain.general.sources` (= `name`) and the id namespace (`prefix`) of its pool rows."""

    name: str
    kind: str
    prefix: str | None = None

    @property
    def tuning_block(self) -> str:
        """The `tuning.<block>` it trains with: a single general source trains like G."""
        return SPECIFIC if self.kind == SPECIFIC else GENERAL


def _select(cfg: Any, key: str) -> Any:
    if OmegaConf.is_config(cfg):
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def general_sources(cfg: Any) -> dict[str, str]:
    """`domain.general.sources` key -> the id prefix of its rows in the pool (its `name`, or the
    key when the name is null, the rule `data/general.py` namespaces ids by)."""
    sources = _select(cfg, "domain.general.sources") or {}
    out = {}
    for key, scfg in (sources.items() if isinstance(sources, Mapping) else []):
        name = scfg.get("name") if isinstance(scfg, Mapping) else None
        out[str(key)] = str(name or key)
    return out


def raw_names(cfg: Any) -> list[str]:
    """`ingredients` as given (absent or null: the paper's `[general, specific]`)."""
    value = _select(cfg, KEY)
    if value is None:
        return list(DEFAULT)
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{KEY}: expected a list of names, got {value!r} "
                         f"(e.g. {KEY}=[general,specific])")
    return [str(x) for x in value]


def ingredient_errors(cfg: Any) -> list[str]:
    """Why `ingredients` cannot be used (one message each; empty: fine): unknown or reserved
    names, duplicates, fewer than two."""
    try:
        names = raw_names(cfg)
    except ValueError as err:
        return [str(err)]
    sources = general_sources(cfg)
    allowed = [GENERAL, SPECIFIC, *sources]
    errors = []
    unknown = [n for n in names if n not in allowed]
    if unknown:
        errors.append(f"{KEY}: unknown name(s) {unknown}; choose from {allowed} (general, "
                      "specific, or a source of domain.general.sources)")
    reserved = [n for n in names if n in RESERVED]
    if reserved:
        errors.append(f"{KEY}: {reserved} name(s) a stage or variant; rename the general source")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        errors.append(f"{KEY}: {dup} given twice")
    if len(names) < 2:
        errors.append(f"{KEY}: {names} holds {len(names)} ingredient(s); a cocktail mixes at "
                      "least 2")
    for n in names:
        try:
            check_name(n, KEY)
        except ValueError as err:
            errors.append(str(err))
    return errors


def ingredients(cfg: Any) -> list[Ingredient]:
    """The checked ingredient list of `cfg`, in order (a bad one raises naming `ingredients`)."""
    errors = ingredient_errors(cfg)
    if errors:
        raise ValueError("; ".join(errors))
    sources = general_sources(cfg)
    return [Ingredient(n, n, None) if n in DEFAULT else Ingredient(n, SOURCE, sources[n])
            for n in raw_names(cfg)]


def ingredient_names(cfg: Any) -> list[str]:
    """The names of `ingredients(cfg)`, in order."""
    return [i.name for i in ingredients(cfg)]


def ingredient(cfg: Any, name: str) -> Ingredient:
    """The ingredient called `name` (one of the run's, else an error naming `ingredients`)."""
    for i in ingredients(cfg):
        if i.name == name:
            return i
    raise ValueError(f"{name!r} is not one of {KEY}={ingredient_names(cfg)}")


def expand(entries: Iterable[Any], names: Sequence[str]) -> list[str]:
    """A stage or variant list with the entry `ingredients` replaced by `names` (in order);
    an ingredient named again beside it is kept once, where it first appears."""
    out: list[str] = []
    for e in entries:
        for x in (names if str(e) == KEY else [str(e)]):
            if x not in out:
                out.append(x)
    return out


def downstream(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """What each stage's outputs are derived from, for this ingredient list: data feeds every
    ingredient, the mix and eval; an ingredient feeds the mix and eval (G also feeds S, which
    may start from it: `tuning.specific.init_from=general`); the mix feeds eval."""
    out: dict[str, tuple[str, ...]] = {
        "data": (*names, "mix", "eval", "baselines"),
        "mix": ("eval",), "eval": (), "baselines": ()}
    for n in names:
        feeds = (SPECIFIC,) if n == GENERAL and SPECIFIC in names else ()
        out[n] = (*feeds, "mix", "eval")
    return out


def resolve_weights(value: Any, names: Sequence[str], key: str) -> list[float] | None:
    """λ given as a list in ingredient order or as a mapping name -> weight, as a list in
    ingredient order (None stays None). A mapping must name every ingredient exactly once."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        keys = [str(k) for k in value]
        missing = [n for n in names if n not in keys]
        extra = [k for k in keys if k not in names]
        if missing or extra:
            raise ValueError(f"{key}: a mapping must name every ingredient of {KEY}={list(names)}"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; not an ingredient: {extra}" if extra else ""))
        return [value[n] for n in names]
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{key}: expected a list in {KEY} order {list(names)} or a mapping "
                         f"name -> weight, got {value!r}")
    if len(value) != len(names):
        raise ValueError(f"{key}: {len(value)} weight(s) for {len(names)} ingredients "
                         f"{list(names)}")
    return list(value)


def by_name(lambdas: Any, names: Sequence[str]) -> dict[str, Any]:
    """λ (a vector in ingredient order, or module -> vector with `granularity=layer`) as
    `{ingredient: weight}`; per module, the ingredient's mean weight over the modules."""
    if isinstance(lambdas, Mapping):
        rows = [list(v) for v in lambdas.values()]
        return {n: (sum(r[i] for r in rows) / len(rows) if rows else None)
                for i, n in enumerate(names)}
    return {n: float(w) for n, w in zip(names, lambdas)}
