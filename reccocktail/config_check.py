"""Check the whole composed config before the first stage: unknown keys, bad choices, values
out of range.

Hydra's own hint for a missing key is the `+key=value` form, which adds any key silently, so
`+mix.lamda=0.3`, `+backbone.lora.rr=3` or `+trainer.max_step=2` would run and be ignored (or
fail inside Lightning after the data stage), and `mix.mode=abx` or `mix.lambdas=[0.7,0.7]` would
only fail when its stage starts, after the earlier stages spent their time. So, before any stage:

* **Keys.** The known keys of a block are the union of the keys every file of its config group
  sets (`conf/<group>/*.yaml`), so a key that is valid in one option of a group (e.g.
  `mix.grid` in mix=grid) is accepted with another. Files a group's defaults list places in a
  sub-package (`/source@source` in conf/domain, each model of conf/baselines under its name)
  lend their keys there; a stage block of the tuning group and a model of the baselines group
  may override any shared key. The trainer block is Lightning's: its keys are the arguments of
  `lightning.pytorch.Trainer`. Maps of user-chosen names (`eval.adapters`, the general sources
  of a domain) are free at the name level; `logger` and `backbone.config` (the tiny
  architectures' transformers config) are free.
* **Choices** come from the modules that interpret them.
* **Values**: types and ranges (`RULES`), the mix option's own constraints (λ non-negative and
  summing to 1, grid points in [0, 1]), the full-catalogue protocol (beam wide enough), the
  variant names that become file names (no `../`), and the `baseline` names and each model
  block's `kind` against the baseline registry (`baselines/registry.py`).

Whether the backbone can be loaded, the dataset folders exist or the device is there is not
decided here (they are facts of the machine, not of the config).
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reccocktail.baselines.registry import BASELINES, baseline_names, kind_error
from reccocktail.data.prompts import FORMATS
from reccocktail.data.selection import selection_config
from reccocktail.data.splits import COLD_TRAIN_PARTS
from reccocktail.evaluation.config import normalize_errors
from reccocktail.ingredients import (
    DEFAULT,
    GENERAL,
    KEY,
    SPECIFIC,
    ingredient_errors,
    raw_names,
    resolve_weights,
)
from reccocktail.models.tuning_config import LOSS_NORMALIZATIONS, SCHEDULES
from reccocktail.models.tuning_config import MODES as TUNING_MODES
from reccocktail.utils.config import check_name
from reccocktail.utils.paths import CONF_DIR

# Blocks whose keys are checked against their group's files (and conf/run.yaml's own blocks).
CHECKED = ("data", "selection", "mix", "eval", "tuning", "scenario", "recommend", "backbone",
           "baselines", "domain", "paths", "placement")
# Blocks that are free-form below a level: maps of user-chosen names, keyword arguments of a
# class the config names.
FREE = ("eval.adapters", "backbone.config",
        "mix.lambdas", "mix.init_lambdas")  # λ by ingredient name (`ingredients`)
# `<prefix>.<any name>.<key>`: a map of user-chosen names whose entries are configs of a group
# (their keys: `_source_keys`).
NAMED_SOURCES = ("domain.general.sources",)
GLOBAL_GROUPS = ("experiment", "size", "debug", "hparams_search")  # `# @package _global_`
STAGE_BLOCKS = {"tuning": ("general", "specific")}  # may override any shared key of the block


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


def _group_keys(conf_dir: Path, group: str, prefix: str) -> set[str]:
    """The keys every file of `conf/<group>/` sets, under `prefix`, with those of the files
    its defaults lists place in a sub-package (`- /source@source: ml100k`)."""
    out: set[str] = set()
    folder = conf_dir / group
    for f in folder.glob("*.yaml") if folder.is_dir() else []:
        node = _yaml(f)
        out |= _flat_keys(node, prefix)
        for entry in node.get("defaults") or []:
            if not isinstance(entry, dict):
                continue
            for target in entry:
                other, _, pkg = str(target).lstrip("/").partition("@")
                if pkg and (conf_dir / other).is_dir() and other != group:
                    sub = f"{prefix}{pkg}"
                    out.add(sub)
                    out |= _group_keys(conf_dir, other, sub + ".")
    return out


@functools.lru_cache(maxsize=4)
def _source_keys(conf_dir: Path) -> frozenset[str]:
    """What a dataset source config may set (`domain.source.*`, `domain.general.sources.<name>.*`):
    the keys of conf/source/ and of the sources the domain files configure."""
    keys = {k.split(".", 1)[1] for k in _group_keys(conf_dir, "source", "source.")}
    for f in (conf_dir / "domain").glob("*.yaml"):
        node = _yaml(f)
        keys |= _flat_keys(node.get("source") or {})
        for src in ((node.get("general") or {}).get("sources") or {}).values():
            keys |= _flat_keys(src or {})
    return frozenset(keys)


def known_keys(conf_dir: Path = CONF_DIR) -> dict[str, set[str]]:
    """`block -> dotted keys` from every file of the block's group, what conf/run.yaml sets in
    that block, and what the global (`# @package _global_`) files of experiment/size/debug/
    hparams_search and of the block's own group set in it."""
    return copy.deepcopy(_known_keys(conf_dir))


@functools.lru_cache(maxsize=4)
def _known_keys(conf_dir: Path) -> dict[str, set[str]]:
    known: dict[str, set[str]] = {b: set() for b in CHECKED}
    for block in CHECKED:
        if block == "baselines":  # each model's file is packaged under its name
            for f in (conf_dir / block).glob("*.yaml"):
                prefix = f"{block}." if f.stem == "default" else f"{block}.{f.stem}."
                known[block] |= _flat_keys(_yaml(f), prefix) | {prefix.rstrip(".")}
        else:
            known[block] |= _group_keys(conf_dir, block, f"{block}.")
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
    for block, stages in STAGE_BLOCKS.items():
        shared = {k.split(".", 1)[1] for k in known[block]
                  if k.split(".")[1] not in stages}
        for stage in stages:
            known[block] |= {f"{block}.{stage}.{k}" for k in shared}
    models = set(BASELINES)  # the registry's names (tests hold it equal to the conf files)
    common = {k.split(".", 2)[2] for k in known["baselines"] if k.startswith("baselines.common.")}
    for model in models:  # a model may override any common setting
        known["baselines"] |= {f"baselines.{model}.{k}" for k in common}
    source = _source_keys(conf_dir)
    known["domain"] |= {f"domain.source.{k}" for k in source}
    return known


@functools.lru_cache(maxsize=1)
def trainer_keys() -> frozenset[str]:
    """The trainer block is `lightning.pytorch.Trainer(**block)`: its arguments, `_target_`."""
    from lightning.pytorch import Trainer  # lazy: +5 s (lightning)

    params = inspect.signature(Trainer.__init__).parameters
    return frozenset({"_target_"} | {p for p in params if p != "self"})


def _choices() -> dict[str, tuple[str, ...]]:
    from reccocktail.cocktail.entropy import OBJECTIVES  # lazy: +5 s (torch, lightning)
    from reccocktail.cocktail.mix import GRANULARITIES, MODES  # lazy: +1.4 s (torch)
    from reccocktail.cocktail.stage import NAMES  # lazy: a stage, +5 s
    from reccocktail.data.stage import COLD_NEGATIVES, NEGATIVES, SCENARIOS  # lazy: a stage
    from reccocktail.evaluation.full_catalogue import CANDIDATES  # lazy: +3.7 s (torch)
    from reccocktail.evaluation.scorers import SCORERS, SEARCHES  # lazy: +1.2 s (torch)

    return {"mix.name": tuple(NAMES), "mix.mode": tuple(MODES),
            "mix.granularity": tuple(GRANULARITIES), "mix.objective": tuple(OBJECTIVES),
            "eval.scorer": tuple(SCORERS),
            "eval.candidates": tuple(CANDIDATES), "eval.search": tuple(SEARCHES),
            "eval.multi_match": ("first", "miss"),
            "tuning.objective": tuple(FORMATS), "tuning.schedule": tuple(SCHEDULES),
            "tuning.mode": tuple(TUNING_MODES),
            "tuning.loss_normalization": LOSS_NORMALIZATIONS,
            "data.negatives": NEGATIVES, "scenario.name": SCENARIOS,
            "scenario.cold_negatives": COLD_NEGATIVES,
            "scenario.cold_train_part": COLD_TRAIN_PARTS,
            "backbone.source": ("gguf", "hub", "tiny"),
            "backbone.dtype": ("auto", "float32", "bfloat16", "float16"),
            "baselines.common.history": ("full", "sample")}


# -- values: types and ranges ----------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v)))


def _int(lo: int, nullable: bool = False) -> tuple[Callable[[Any], bool], str]:
    desc = f"an integer >= {lo}" + (" or null" if nullable else "")
    return (lambda v: (nullable and v is None) or (_is_int(v) and v >= lo)), desc


def _num(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
         nullable: bool = False) -> tuple[Callable[[Any], bool], str]:
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    desc = (f"a number in {left}{lo}, {hi}{right}" if hi is not None else
            f"a number {'>' if lo_open else '>='} {lo}") + (" or null" if nullable else "")

    def ok(v: Any) -> bool:
        if v is None:
            return nullable
        if not _is_num(v):
            return False
        x = float(v)
        if x < lo or (lo_open and x == lo):
            return False
        return hi is None or x < hi or (not hi_open and x == hi)
    return ok, desc


_BOOL = (lambda v: isinstance(v, bool)), "true or false"
_INT_OR_NULL = (lambda v: v is None or _is_int(v)), "an integer or null"


def _int_list(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, list) and bool(v) and all(_is_int(x) and x >= lo for x in v),
            f"a non-empty list of integers >= {lo}")


_TUNING = {
    "lr": _num(0, lo_open=True), "weight_decay": _num(0), "warmup_ratio": _num(0, 1),
    "warmup_steps": _int(0, True), "batch_size": _int(1), "val_batch_size": _int(1, True),
    "accumulate_grad_batches": _int(1), "epochs": _int(1), "max_steps": _int(-1),
    "group_by_length": _BOOL, "mega_batch_mult": _int(1), "gradient_checkpointing": _BOOL,
    "num_workers": _int(0), "val_max_samples": _int(1, True),
    "checkpoint_every_n_steps": _int(0, True), "log_every_n_steps": _int(1, True),
    "resume": _BOOL, "fraction": _num(0, 1, lo_open=True, nullable=True),
    "max_samples": _int(1, True), "seed": _INT_OR_NULL, "init_seed": _INT_OR_NULL,
    "sequence.max_titles": _int(2), "sequence.min_context": _int(1),
    "sequence.windows_per_user": _int(1, True),
    "betas": ((lambda v: isinstance(v, list) and len(v) == 2
               and all(_is_num(x) and 0 <= x < 1 for x in v)), "two numbers in [0, 1)"),
}
_BASELINE = {
    "dim": _int(1), "lr": _num(0, lo_open=True), "weight_decay": _num(0), "batch_size": _int(1),
    "eval_batch_size": _int(1), "num_negatives": _int(1, True), "max_len": _int(1),
    "max_windows_per_user": _int(1, True), "max_epochs": _int(1), "patience": _int(0),
    "min_delta": _num(0), "num_threads": _int(1, True),
}
# key -> (test, what it must be). Every rule's key exists in conf/ (a test checks it).
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_is_int, "an integer"), "allow_foreign_adapters": _BOOL,
    "data.history_len": _int(1), "data.num_candidates": _int(2), "data.min_core": _int(1),
    "data.max_title_tokens": _int(1), "data.seed": (_is_int, "an integer"),
    **{f"data.{k}": _int(1, True) for k in ("max_train_prompts_per_user", "max_train_prompts",
                                            "max_test_users", "max_valid_users")},
    "selection.lambda_users": _int(0), "selection.transductive": _BOOL,
    "selection.max_scored_users": _int(1, True),
    "scenario.new_item_fraction": _num(0, 1, lo_open=True, hi_open=True),
    "eval.batch_size": _int(1), "eval.generate_batch_size": _int(1),
    "eval.beam_size": _int(1, True), "eval.max_new_tokens": _int(1, True),
    "eval.ks": _int_list(1), "eval.full_ks": _int_list(1),
    **{f"eval.{k}": _BOOL for k in ("normalize", "packed", "share_trunk", "exclude_seen",
                                    "reference", "progress", "print")},
    **{f"tuning.{k}": rule for k, rule in _TUNING.items()},
    **{f"tuning.{stage}.{k}": _BOOL for stage in ("general", "specific")
       for k in ("include_valid", "reuse")},
    "tuning.specific.num_train_prompts": _int(0, True),
    "tuning.specific.init_from": ((lambda v: v in (None, "general")), "null or general"),
    "backbone.lora.r": _int(1), "backbone.lora.alpha": _num(0, lo_open=True),
    "backbone.lora.dropout": _num(0, 1, hi_open=True), "backbone.lora.top_layers": _int(1, True),
    "backbone.max_prompt_tokens": _int(1), "backbone.trust_remote_code": _BOOL,
    "backbone.chat_template": _BOOL, "backbone.allow_cpu_quantization": _BOOL,
    "backbone.quantization": ((lambda v: v in (None, "none", "nf4")), "null, none or nf4"),
    "trainer.max_epochs": _int(-1, True), "trainer.max_steps": _int(-1),
    "trainer.accumulate_grad_batches": _int(1), "trainer.log_every_n_steps": _int(1),
    "trainer.gradient_clip_val": _num(0, nullable=True),
    "trainer.num_sanity_val_steps": _int(-1),
    **{f"baselines.common.{k}": rule for k, rule in _BASELINE.items()},
    "recommend.batch_size": _int(1), "recommend.top_k": _int(1, True),
    "recommend.explain_max_new_tokens": _int(1),
    **{f"recommend.{k}": _BOOL for k in ("normalize", "print", "explain")},
    "placement.large_params": _num(0, lo_open=True), "placement.allow_cpu_large": _BOOL,
}


def _value(cfg: DictConfig, key: str) -> Any:
    """The resolved value at `key` (plain), or a marker when it is absent or unresolvable."""
    value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)
    if value is _ABSENT:
        return _ABSENT
    if OmegaConf.is_config(value):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception:  # noqa: BLE001 - an unresolvable value is reported by its stage
            return _ABSENT
    return value


_ABSENT = object()


def _rule_keys(cfg: DictConfig) -> list[tuple[str, str]]:
    """(key to read, rule key): every rule, and the shared tuning/baseline rules again for each
    stage block and model that overrides them."""
    out = [(k, k) for k in RULES]
    tuning = OmegaConf.select(cfg, "tuning", default=None)
    for stage in (*STAGE_BLOCKS["tuning"], *_named_blocks(cfg)):
        if tuning is not None and stage in tuning and OmegaConf.is_dict(tuning[stage]):
            out += [(f"tuning.{stage}.{k}", f"tuning.{k}") for k in _TUNING
                    if f"tuning.{stage}.{k}" not in RULES]
    baselines = OmegaConf.select(cfg, "baselines", default=None)
    for name in (baselines.keys() if OmegaConf.is_dict(baselines) else []):
        if name != "common" and OmegaConf.is_dict(baselines[name]):
            out += [(f"baselines.{name}.{k}", f"baselines.common.{k}") for k in _BASELINE]
    return out


def _named_blocks(cfg: DictConfig) -> list[str]:
    """The general-source ingredients of `cfg`: each may have a `tuning.<name>` block (the
    general block's keys, laid over it)."""
    try:
        names = raw_names(cfg)
    except ValueError:
        return []
    return [n for n in names if n not in DEFAULT and n not in STAGE_BLOCKS["tuning"]]


def value_errors(cfg: DictConfig) -> list[str]:
    """Values of the wrong type or out of range (`RULES`), one message each."""
    errors = []
    for key, rule in _rule_keys(cfg):
        value = _value(cfg, key)
        if value is _ABSENT:
            continue
        ok, desc = RULES[rule]
        try:
            good = ok(value)
        except (TypeError, ValueError):
            good = False
        if not good:
            errors.append(f"{key}={value!r}: expected {desc}")
    return errors


def _ingredient_errors(cfg: DictConfig) -> list[str]:
    """`ingredients` (known, distinct names; `reccocktail.ingredients`) and what depends on the
    list: S starting from G needs G first."""
    errors = ingredient_errors(cfg)
    if errors:
        return errors
    names = raw_names(cfg)
    if _value(cfg, "tuning.specific.init_from") == "general" and SPECIFIC in names and (
            GENERAL not in names or names.index(GENERAL) > names.index(SPECIFIC)):
        errors.append(f"tuning.specific.init_from=general: S starts from G, so {KEY}={names} "
                      "must list general before specific")
    return errors


def _mix_errors(cfg: DictConfig) -> list[str]:
    """The mix option's own constraints, as its stage would find them (it parses with the same
    function), for the run's ingredients (one weight each)."""
    from reccocktail.cocktail.stage import grid_points, mix_config  # lazy: a stage, +5 s

    if OmegaConf.select(cfg, "mix", default=None) is None:
        return []
    try:
        mcfg = mix_config(cfg)
    except (KeyError, ValueError) as err:
        return [str(err.args[0])]
    try:
        names = raw_names(cfg)
    except ValueError:
        return []  # said by _ingredient_errors
    errors = []
    if mcfg.name == "grid":
        grid = mcfg.grid
        if mcfg.grid_step is None and (not isinstance(grid, list) or not grid or not all(
                _is_num(g) and 0 <= float(g) <= 1 for g in grid)):
            errors.append(f"mix.grid={grid!r}: expected a non-empty list of numbers in [0, 1]")
        else:
            try:
                grid_points(grid, mcfg.grid_step, len(names))
            except ValueError as err:
                errors.append(str(err.args[0]))
        ok, desc = _int(1, True)
        if not ok(mcfg.grid_max_users):
            errors.append(f"mix.grid_max_users={mcfg.grid_max_users!r}: expected {desc}")
    if mcfg.name == "entropy":
        try:
            init = resolve_weights(mcfg.init_lambdas, names, "mix.init_lambdas")
        except ValueError as err:
            errors.append(str(err.args[0]))
        else:
            if init is not None and not all(_is_num(x) and x > 0 for x in init):
                errors.append(f"mix.init_lambdas={mcfg.init_lambdas!r}: expected null or "
                              f"{len(names)} positive numbers (one per ingredient)")
        for key, value, (ok, desc) in (
                ("mix.k", mcfg.k, _int(1)), ("mix.lr", mcfg.lr, _num(0, lo_open=True)),
                ("mix.steps", mcfg.steps, _int(1)), ("mix.batch_size", mcfg.batch_size, _int(1)),
                ("mix.micro_batch_size", mcfg.micro_batch_size, _int(1, True))):
            if not ok(value):
                errors.append(f"{key}={value!r}: expected {desc}")
    return errors


def _eval_errors(cfg: DictConfig) -> list[str]:
    """Variant names (they become file names) and the full-catalogue protocol's settings."""
    from reccocktail.evaluation.full_catalogue import (  # lazy: +3.7 s (torch)
        check_config as full_catalogue_errors,
    )

    errors = []
    variants = _value(cfg, "eval.variants")
    adapters = _value(cfg, "eval.adapters")
    named = [("eval.variants", v) for v in (variants if isinstance(variants, list) else [])]
    named += [("eval.adapters", k) for k in (adapters if isinstance(adapters, dict) else {})]
    for key, name in named:
        try:
            check_name(str(name), key)
        except ValueError as err:
            errors.append(str(err))
    if _value(cfg, "eval") is not _ABSENT:  # the full-catalogue rules, checked here only
        try:
            errors += full_catalogue_errors(cfg)
        except (KeyError, ValueError) as err:
            errors.append(str(err.args[0]))
    return errors


def _baseline_errors(cfg: DictConfig) -> list[str]:
    """`baseline` names a registered baseline, and no model block says another `kind` than the
    registry's (baselines/registry.py), before any stage trains."""
    errors = []
    value = _value(cfg, "baseline")
    if value is not _ABSENT:
        try:
            baseline_names(value)
        except ValueError as err:
            errors.append(str(err))
    blocks = _value(cfg, "baselines")
    for name, block in blocks.items() if isinstance(blocks, dict) else ():
        if name in BASELINES and isinstance(block, dict) and "kind" in block \
                and str(block["kind"]) != BASELINES[name].kind:
            errors.append(kind_error(name, block["kind"]))
    return errors


def _unknown(key: str, known: set[str], label: str = "unknown key") -> str:
    near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"{key}: {label}" + (f" (did you mean {near[0]}?)" if near else "")


def key_errors(cfg: DictConfig, conf_dir: Path = CONF_DIR) -> list[str]:
    """Every key of `cfg` that no config file (nor Lightning's Trainer) knows."""
    errors: list[str] = []
    plain = OmegaConf.to_container(cfg, resolve=False)
    top = top_level_keys(conf_dir)
    for key in plain:
        if key not in top:
            errors.append(_unknown(key, top, "unknown top-level key"))
    known = known_keys(conf_dir)
    source = {f"domain.source.{k}" for k in _source_keys(conf_dir)}
    own_blocks = _named_blocks(cfg)
    for block in CHECKED:
        have = _flat_keys(plain.get(block) or {}, f"{block}.")
        for key in sorted(have - known[block]):
            if any(key.startswith(f + ".") for f in FREE):
                continue
            parts = key.split(".", 2)
            if block == "tuning" and parts[1] in own_blocks and (
                    len(parts) == 2 or f"tuning.general.{parts[2]}" in known[block]):
                continue  # a general source's own block: the general block's keys
            named = next((p for p in NAMED_SOURCES if key.startswith(p + ".")), None)
            if named is not None:
                rest = key[len(named) + 1:].split(".", 1)
                if len(rest) == 1 or f"domain.source.{rest[1]}" in source:
                    continue
                key_as = f"domain.source.{rest[1]}"
                errors.append(f"{key}: unknown key" + (
                    f" (did you mean {named}.{rest[0]}.{m[0].split('.', 2)[2]}?)"
                    if (m := difflib.get_close_matches(key_as, sorted(source), 1, 0.75)) else ""))
                continue
            errors.append(_unknown(key, known[block]))
    trainer = plain.get("trainer")
    if isinstance(trainer, dict):
        allowed = trainer_keys()
        errors += [_unknown(f"trainer.{k}", {f"trainer.{a}" for a in allowed},
                            "unknown key (not an argument of lightning.pytorch.Trainer)")
                   for k in sorted(trainer) if k not in allowed]
    return errors


def config_errors(cfg: DictConfig, conf_dir: Path = CONF_DIR) -> list[str]:
    """Every unknown key, bad choice and out-of-range value of `cfg`, one message each
    (empty: fine)."""
    errors = key_errors(cfg, conf_dir)
    try:  # the one setting several stages read: its values (and deprecated aliases) up front
        selection_config(cfg)
    except (KeyError, ValueError) as err:
        errors.append(str(err.args[0]))

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
    errors += _ingredient_errors(cfg)
    errors += value_errors(cfg)
    errors += _mix_errors(cfg)
    errors += _eval_errors(cfg)
    errors += _baseline_errors(cfg)
    return list(dict.fromkeys(errors))  # the same problem found twice is said once


def check_config(cfg: DictConfig) -> None:
    """Raise before any stage runs when the config holds unknown keys, bad choices or values
    out of range."""
    errors = config_errors(cfg)
    if errors:
        raise ValueError("config: " + "; ".join(errors) + " (fix the override; a `+key=value` "
                         "adds a key that nothing reads)")
