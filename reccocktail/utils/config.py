"""Strict config reads: every setting has its one default in conf/ (docs/design.md §6).

Code that read `cfg.get(key, default)` kept a second default beside the YAML's, and some of
them disagreed; `need` reads a key that the composed config must hold and names it when it
does not, so a hand-built config that misses a key fails at once instead of running with a
default nobody chose.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, fields
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from omegaconf import OmegaConf

_MISSING = object()
T = TypeVar("T")
# A user-chosen name that becomes a file or folder name (variant names: predictions/<name>.jsonl):
# letters, digits, `_` and `-`, starting with a letter or digit; no `/`, `..` or `.` (a dot
# separates a variant from its scorer in result rows).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_name(name: str, key: str) -> str:
    """`name` when it is a safe file name (`SAFE_NAME`), else a ValueError naming `key`."""
    if not SAFE_NAME.fullmatch(str(name)):
        raise ValueError(f"{key}: name {name!r} is not allowed (it becomes a file name): use "
                         "letters, digits, '_' and '-' only, starting with a letter or digit")
    return str(name)


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


def unknown_keys(block: Mapping, known: Iterable[str], where: str) -> None:
    """Raise ValueError naming every key of `block` outside `known` as `where.key` (with the
    nearest known key), so a misspelt key fails instead of being ignored."""
    known = sorted(known)
    bad = [k for k in block if k not in known]
    if bad:
        parts = []
        for k in bad:
            near = difflib.get_close_matches(str(k), known, n=1, cutoff=0.75)
            parts.append(f"{where}.{k}: unknown key"
                         + (f" (did you mean {where}.{near[0]}?)" if near else ""))
        raise ValueError("; ".join(parts))


def one_of(value: Any, options: Iterable[Any], key: str) -> Any:
    """`value` if it is among `options`; else a ValueError naming `key`, the value, the choices
    and the nearest one (the one wording every config reader uses)."""
    options = list(options)
    if value in options:
        return value
    near = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.6)
    raise ValueError(f"{key}: unknown value {value!r}; choose one of {options}"
                     + (f" (did you mean {near[0]!r}?)" if near else ""))


def typed(cls: type[T], block: Mapping, where: str, ignore: Iterable[str] = ()) -> T:
    """The dataclass `cls` from a plain config block: a key that is no field of `cls` (nor in
    `ignore`: read elsewhere) raises naming it, a field without a default that the block lacks
    raises naming `where.field`, and each value is converted to its field's type (int, float,
    bool, str, a tuple of them, or None where the type allows it)."""
    unknown_keys(block, {f.name for f in fields(cls)} | set(ignore), where)
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in block:
            values[f.name] = _coerce(block[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is MISSING and f.default_factory is MISSING:
            need(block, f.name, where)  # raises naming the key
    return cls(**values)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if get_origin(tp) in (Union, UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(get_args(tp)):
            return None
        return _coerce(value, args[0], key) if len(args) == 1 else value
    if value is None and tp in (int, float, bool, str):
        raise ValueError(f"{key}: null is not allowed (expected {tp.__name__})")
    try:
        if tp in (int, float, str):
            return tp(value)
        if tp is bool:
            return bool(value)
        if get_origin(tp) is tuple:
            items = [value] if isinstance(value, str) else list(value)
            return tuple(_coerce(v, get_args(tp)[0], key) for v in items)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key}: expected {tp}, got {value!r}") from err
    return value
