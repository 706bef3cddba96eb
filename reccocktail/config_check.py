"""Check the whole composed config before the first stage: unknown keys and bad choices.

Hydra's own hint for a missing key is the `+key=value` form, which adds any key silently, so
`+mix.lamda=0.3` or `+data.histroy_len=5` would run and be ignored, and `mix.mode=abx` would
only fail when its stage starts, after the earlier stages spent their time. The known keys of a
block are the union of the keys every file of its config group sets (`conf/<group>/*.yaml`), so
a key that is valid in one option of a group (e.g. `mix.grid` in mix=grid) is accepted with
another; the choice values come from the modules that interpret them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# Blocks whose keys are checked against their group's files.
CHECKED = ("data", "selection", "mix", "eval", "tuning", "scenario", "recommend")
# Blocks that are free-form below a level: maps of user-chosen names.
FREE = ("eval.adapters",)
GLOBAL_GROUPS = ("experiment", "size", "debug", "hparams_search")  # `# @package _global_`


def top_level_keys(conf_dir: Path = CONF_DIR) -> set[str]:
    """Keys allowed at the root: the root file's own, every config group's, and what the global
    groups set."""
    keys = set(_yaml(conf_dir / "run.yaml")) | {p.name for p in conf_dir.iterdir() if p.is_dir()}
    for group in GLOBAL_GROUPS:
        for f in (conf_dir / group).glob("*.yaml"):
            keys |= set(_yaml(f))
    return (keys - {"defaults"}) | {"hydra"}


def _flat_keys(node: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "defaults":
                continue
            key = f"{prefix}{k}"
            out.add(key)
            if key not in FREE:
                out |= _flat_keys(v, key + ".")
    return out


def _yaml(path: Path) -> dict:
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return node if isinstance(node, dict) else {}


def known_keys(conf_dir: Path = CONF_DIR) -> dict[str, set[str]]:
    """`block -> dotted keys` from every file of the block's group, what conf/run.yaml sets in
    that block, and what the global (`# @package _global_`) files of experiment/size/debug/
    hparams_search and of the block's own group set in it."""
    known: dict[str, set[str]] = {b: set() for b in CHECKED}
    for block in CHECKED:
        group = conf_dir / block
        if group.is_dir():
            for f in group.glob("*.yaml"):
                known[block] |= _flat_keys(_yaml(f), f"{block}.")
    root = _yaml(conf_dir / "run.yaml")  # root blocks: data, selection, deprecated aliases
    for block in CHECKED:
        known[block] |= _flat_keys(root.get(block, {}), f"{block}.")
    for group in GLOBAL_GROUPS:
        for f in (conf_dir / group).glob("*.yaml"):
            node = _yaml(f)
            for block in CHECKED:
                known[block] |= _flat_keys(node.get(block, {}), f"{block}.")
    for block in CHECKED:  # a group file in the global package (eval/quick.yaml) sets blocks
        for f in (conf_dir / block).glob("*.yaml") if (conf_dir / block).is_dir() else []:
            if f.read_text().lstrip().startswith("# @package _global_"):
                node = _yaml(f)
                known[block] -= _flat_keys(node, f"{block}.")
                for other in CHECKED:
                    known[other] |= _flat_keys(node.get(other, {}), f"{other}.")
    return known


def _choices() -> dict[str, tuple[str, ...]]:
    from reccocktail.cocktail.mix import GRANULARITIES, MODES
    from reccocktail.cocktail.stage import NAMES
    from reccocktail.data.prompts import FORMATS
    from reccocktail.data.stage import _COLD_NEGATIVES, _NEGATIVES, _SCENARIOS
    from reccocktail.evaluation.scorers import SCORERS
    from reccocktail.models.tuning import _SCHEDULES
    from reccocktail.models.tuning import MODES as TUNING_MODES

    return {"mix.name": tuple(NAMES), "mix.mode": tuple(MODES),
            "mix.granularity": tuple(GRANULARITIES), "eval.scorer": tuple(SCORERS),
            "tuning.objective": tuple(FORMATS), "tuning.schedule": tuple(_SCHEDULES),
            "tuning.mode": tuple(TUNING_MODES),
            "data.negatives": _NEGATIVES, "scenario.name": _SCENARIOS,
            "scenario.cold_negatives": _COLD_NEGATIVES}


def config_errors(cfg: DictConfig, conf_dir: Path = CONF_DIR) -> list[str]:
    """Every unknown key and bad choice value of `cfg`, one message each (empty: fine)."""
    errors: list[str] = []
    plain = OmegaConf.to_container(cfg, resolve=False)
    top = top_level_keys(conf_dir)
    for key in plain:
        if key not in top:
            near = difflib.get_close_matches(key, sorted(top), n=1, cutoff=0.75)
            errors.append(f"{key}: unknown top-level key" + (f" (did you mean {near[0]}?)"
                                                            if near else ""))
    known = known_keys(conf_dir)
    # a stage block of the tuning group may override any shared tuning key
    shared = {k.split(".", 1)[1] for k in known["tuning"]}
    for stage in ("general", "specific"):
        known["tuning"] |= {f"tuning.{stage}.{k}" for k in shared}
    for block in CHECKED:
        have = _flat_keys(plain.get(block) or {}, f"{block}.")
        for key in sorted(have - known[block]):
            if any(key.startswith(f + ".") for f in FREE):
                continue
            near = difflib.get_close_matches(key, sorted(known[block]), n=1, cutoff=0.75)
            errors.append(f"{key}: unknown key" + (f" (did you mean {near[0]}?)" if near else ""))
    from reccocktail.data.selection import selection_config

    try:  # the one setting several stages read: its values (and deprecated aliases) up front
        selection_config(cfg)
    except (KeyError, ValueError) as err:
        errors.append(str(err.args[0]))
    from reccocktail.evaluation.scorers import normalize_errors

    def value(key: str, default: Any) -> Any:
        return OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)

    errors += normalize_errors(value("eval.scorer", None), bool(value("eval.normalize", False)),
                               str(value("eval.search", "beam")))
    for key, allowed in _choices().items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        values = list(value) if OmegaConf.is_list(value) or isinstance(value, list) else [value]
        for v in values:
            if v is not None and str(v) not in allowed:
                errors.append(f"{key}={v}: not one of {list(allowed)}")
    return errors


def check_config(cfg: DictConfig) -> None:
    """Raise before any stage runs when the config holds unknown keys or bad choices."""
    errors = config_errors(cfg)
    if errors:
        raise ValueError("config: " + "; ".join(errors) + " (fix the override; a `+key=value` "
                         "adds a key that nothing reads)")
