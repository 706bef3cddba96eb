"""The one list of baselines: name -> what it reads, where its settings live, how it runs.

Every reader of "which baselines exist and what are they" reads this table: the baselines stage
(how each one trains and scores), the config check (the names `baseline` accepts, the model
blocks of `baselines`, each block's `kind`), the pipeline (a misspelt `baseline` fails before
any stage runs) and the pre-flight check (which baselines load the backbone). Adding a baseline
is one entry here plus `conf/baselines/<name>.yaml` (and its module when it needs its own code);
tests/test_baseline_registry.py holds the table and the conf folder to each other.

Code is named by "module:function" and imported when a baseline runs, so that the config check
and the pipeline read the table without importing torch models.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reccocktail.utils.config import need

FAMILIES = ("id", "text", "llm")  # what a baseline reads: item ids, item titles, the backbone


@dataclass(frozen=True)
class Baseline:
    """One baseline. `kind` is the value of `kind:` in its conf file (the stage refuses a block
    whose `kind` disagrees); exactly one of `build`/`run` names its code, or neither for
    popularity (training counts, nothing to train)."""

    name: str
    kind: str
    family: str
    # "module:function(settings, dm, cache_dir, name=) -> RecModule": trained by the stage
    # (early stopping on validation NDCG@1), scores the stored candidates or every item
    build: str | None = None
    # "module:function(cfg, out_dir, name, settings, samples) -> (scores [n, C], info)": an LLM
    # baseline that trains and scores on the backbone itself, stored candidates only
    run: str | None = None

    @property
    def group(self) -> str:
        """Its settings block (`baselines.common` laid under it), file conf/baselines/<name>.yaml."""
        return f"baselines.{self.name}"

    @property
    def trained(self) -> bool:
        """False for popularity: ranked by training counts, nothing is fitted."""
        return self.build is not None or self.run is not None

    @property
    def uses_backbone(self) -> bool:
        """Loads the LLM backbone (the pre-flight check needs it then)."""
        return self.family == "llm"

    @property
    def ranks_full_catalogue(self) -> bool:
        """Can score every item (`eval.candidates=all`); the LLM runners score stored candidates."""
        return self.run is None

    def builder(self) -> Callable[..., Any]:
        """The function that builds its RecModule (ValueError when it trains none)."""
        if self.build is None:
            raise ValueError(f"baselines.{self.name}.kind: {self.kind!r} is not trainable "
                             "(id or text)")
        return _load(self.build)

    def runner(self) -> Callable[..., Any]:
        """The function that trains and scores it on its own (LLM baselines)."""
        if self.run is None:
            raise ValueError(f"baselines.{self.name}: no runner of its own (kind {self.kind!r})")
        return _load(self.run)


def _load(target: str) -> Callable[..., Any]:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


_ID = "reccocktail.baselines.models:build_id"
BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("pop", "popularity", "id"),
    Baseline("bpr", "id", "id", build=_ID),
    Baseline("gru4rec", "id", "id", build=_ID),
    Baseline("sasrec", "id", "id", build=_ID),
    Baseline("fmlp", "id", "id", build=_ID),
    Baseline("unisrec", "text", "text", build="reccocktail.baselines.text:build"),
    Baseline("alpharec", "alpharec", "text", build="reccocktail.baselines.alpharec:build"),
    Baseline("vqrec", "vqrec", "text", build="reccocktail.baselines.vqrec:build"),
    Baseline("recformer", "recformer", "text", build="reccocktail.baselines.recformer:build"),
    Baseline("p5", "llm_full", "llm", run="reccocktail.baselines.p5:run_p5"),
    Baseline("omfa", "llm_embed", "llm", run="reccocktail.baselines.omfa:run_omfa"),
)}
NAMES = tuple(BASELINES)


def baseline_names(value: Any) -> list[str]:
    """`cfg.baseline` (a name, a list, or empty) as a validated list."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else [str(v) for v in value]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"baseline: unknown name(s) {unknown}; choose from {list(NAMES)}")
    return names


def lookup(name: str, settings: Mapping[str, Any] | None = None) -> Baseline:
    """The registered baseline `name`; with its settings, their `kind` must be the registered
    one (a block that says otherwise would silently run another model)."""
    if name not in BASELINES:
        raise ValueError(f"baseline: unknown name {name!r}; choose from {list(NAMES)}")
    rec = BASELINES[name]
    if settings is not None:
        kind = need(settings, "kind", f"baselines.{name}")
        if str(kind) != rec.kind:
            raise ValueError(kind_error(name, kind))
    return rec


def kind_error(name: str, kind: Any) -> str:
    """The message for a `baselines.<name>.kind` that is not the registered one."""
    rec = BASELINES[name]
    return (f"baselines.{name}.kind={kind}: {name} is a {rec.kind!r} baseline "
            "(reccocktail/baselines/registry.py); drop the override")
