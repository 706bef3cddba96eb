"""Strict config reads: every setting has its one default in conf/ (docs/design.md §6).

Code that read `cfg.get(key, default)` kept a second default beside the YAML's, and some of
them disagreed; `need` reads a key that the composed config must hold and names it when it
does not, so a hand-built config that misses a key fails at once instead of running with a
default nobody chose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

_MISSING = object()


def need(cfg: Any, key: str, where: str | None = None) -> Any:
    """The value at dotted `key` of a DictConfig or a plain dict (None is a value); a missing
    key raises KeyError naming `where.key` (`where`: the block `cfg` is, e.g. "tuning")."""
    node: Any = cfg
    for part in key.split("."):
        if OmegaConf.is_config(node):
            if OmegaConf.is_list(node) or part not in node:
                node = _MISSING
                break
            node = node[part]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            node = _MISSING
            break
    if node is _MISSING:
        full = f"{where}.{key}" if where else key
        raise KeyError(f"{full}: missing config key (its default lives in conf/; compose the "
                       "config with Hydra or copy the key from its group's YAML)")
    return node
