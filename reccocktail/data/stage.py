"""The `data` stage: real logs -> the on-disk splits every later stage reads.

Built artifacts live in `${paths.cache_dir}/data/<key>/`, the key hashing the data config (the
`data` block, the domain's sources and general pool, the scenario), the identities (path, size,
mtime) of every file a reader argument names, and the code of this module and of every module
it imports (`reccocktail.utils.imports`), so a changed file or a code change never reuses a
stale split. The folder is written atomically and then hard-linked (or copied, across
file systems) into `<run>/data/`. A second run with the same config reuses it and says so.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from reccocktail.data.candidates import attach_candidates, drawable, popularity_weights
from reccocktail.data.filtering import Sequences, build_sequences, check_size
from reccocktail.data.general import (
    GeneralPool,
    build_general_pool,
    check_no_new_items,
    target_identity,
)
from reccocktail.data.readers import SourceTable
from reccocktail.data.samples import NEW_ITEMS_FILE, write_items
from reccocktail.data.splits import (
    COLD_TRAIN_PARTS,
    Rows,
    Split,
    candidate_pools,
    cap_rows,
    cap_users,
    cold_split,
    warm_split,
)
from reccocktail.data.titles import normalise_title
from reccocktail.utils.config import need, one_of, typed
from reccocktail.utils.imports import imported_files
from reccocktail.utils.io import (
    atomic_dir,
    file_fingerprint,
    files_sha256,
    read_json,
    stable_hash,
    to_plain,
    write_json,
)
from reccocktail.utils.leftovers import clean_stale_tmp

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SCENARIOS = ("warm", "cold")
NEGATIVES = ("uniform", "popularity")
COLD_NEGATIVES = ("mixed", "new")


def code_files() -> list[Path]:
    """This module and every module of the package it imports, directly or transitively (read
    from their source): the code that can change how the splits are built."""
    return imported_files(__name__)


def code_version() -> str:
    """Hash of the data code (each module's path in the package and its text): a change to any
    module the data stage can import, one imported later included, invalidates the cache."""
    root = Path(__file__).resolve().parents[2]
    return stable_hash(FORMAT_VERSION,
                       *[(f.relative_to(root).as_posix(), f.read_text()) for f in code_files()])


# -- sources ----------------------------------------------------------------------------------

def _reader_cfg(scfg: Any, where: str) -> dict:
    if scfg is None or "reader" not in scfg or not scfg["reader"]:
        raise ValueError(f"{where}.reader: missing (a reader `_target_` and its arguments)")
    rcfg = dict(scfg["reader"])
    if not str(rcfg.get("_target_", "")).startswith("reccocktail.data.readers."):
        raise ValueError(
            f"{where}.reader._target_: {rcfg.get('_target_')!r} is not a reader in "
            "reccocktail.data.readers (read_recbole, read_ml100k, read_ml_dat, read_ml_latest, "
            "read_amazon2014, read_amazon2018)"
        )
    for k in file_args(rcfg, where):
        for p in _paths_in(rcfg[k]):
            if not p.exists():
                raise FileNotFoundError(
                    f"{where}.reader.{k}: {p} does not exist; put the dataset there or point "
                    f"paths.data_root (or {where}.reader.{k}) at your copy"
                )
    return rcfg


def _reader_fn(rcfg: dict, where: str) -> Callable[..., SourceTable]:
    try:
        return get_method(rcfg["_target_"])
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{where}.reader._target_: {err}") from err


def _paths_in(value: Any) -> list[Path]:
    """The paths a reader argument's value names: a string or path, or a list of them."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [Path(v) for v in values if isinstance(v, (str, os.PathLike)) and str(v).strip()
            and str(v).strip() != "."]


def file_args(rcfg: dict, where: str) -> list[str]:
    """The reader arguments that name files, whatever they are called: those the reader
    annotates as a path (`str | Path`; they must exist) and any other whose value is an
    existing file or folder. Every one of them is fingerprinted into the cache key."""
    params = inspect.signature(_reader_fn(rcfg, where)).parameters
    out = []
    for k, v in rcfg.items():
        if k == "_target_" or v is None:
            continue
        annotated = k in params and "Path" in str(params[k].annotation)
        if annotated or any(p.exists() for p in _paths_in(v)):
            out.append(k)
    return sorted(out)


def input_fingerprints(scfg: Any, where: str) -> dict[str, list[dict]]:
    """Identity of every file a source's reader may read: per file argument, all files under
    the paths it names."""
    rcfg = _reader_cfg(scfg, where)
    out: dict[str, list[dict]] = {}
    for k in file_args(rcfg, where):
        files: list[Path] = []
        for p in _paths_in(rcfg[k]):
            files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        out[k] = [file_fingerprint(f) for f in files]
    return out


def load_source(scfg: Any, where: str) -> SourceTable:
    """Call the source's reader (a function of reccocktail.data.readers) with its arguments."""
    rcfg = _reader_cfg(scfg, where)
    fn = _reader_fn(rcfg, where)
    rcfg.pop("_target_")
    t0 = time.time()
    table = fn(**rcfg)
    log.info("%s: read %d interactions in %.1fs", where, len(table.interactions), time.time() - t0)
    return table


# -- writing ----------------------------------------------------------------------------------

def _chunks(rows: Rows, users_json: list[str], items_json: list[str], history_len: int,
            chunk: int = 32768) -> Iterator[str]:
    """JSON lines of a split, formatted directly from pre-encoded JSON ids, a chunk at a time
    (a million samples as Python lists at once would cost gigabytes)."""
    off, flat, split = rows.offsets.tolist(), rows.flat.tolist(), rows.split
    for a in range(0, len(rows), chunk):
        out = []
        for u, p, cand in zip(rows.user[a : a + chunk].tolist(), rows.pos[a : a + chunk].tolist(),
                              rows.candidates[a : a + chunk].tolist()):
            s = off[u]
            uj = users_json[u]
            hist = ",".join([items_json[i] for i in flat[s + max(0, p - history_len) : s + p]])
            out.append(
                f'{{"id":{uj[:-1]}:{split}:{p}","user":{uj},"history":[{hist}],'
                f'"target":{items_json[flat[s + p]]},'
                f'"candidates":[{",".join([items_json[i] for i in cand])}]}}\n'
            )
        yield "".join(out)


def _write_lines(path: Path, chunks: Iterator[str]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for text in chunks:
            fh.write(text)
            n += text.count("\n")
    return n


def _json_ids(ids: list[str], prefix: str = "") -> list[str]:
    return [json.dumps(prefix + i, ensure_ascii=False) for i in ids]


def _write_target(d: Path, seqs: Sequences, split: Split, history_len: int) -> dict[str, int]:
    items_json, users_json = _json_ids(seqs.items), _json_ids(seqs.users)
    write_items(d / "items.tsv", dict(zip(seqs.items, seqs.titles)))
    counts = {}
    for name in ("train", "valid", "test"):
        counts[name] = _write_lines(d / f"{name}.jsonl",
                                    _chunks(split.rows[name], users_json, items_json, history_len))
    with open(d / "sequences.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(_sequence_lines(split, users_json, items_json))
    return counts


def _sequence_lines(split: Split, users_json: list[str], items_json: list[str]) -> Iterator[str]:
    """`{"user", "items"}` per user: the training part of their sequence only (no validation or
    test target, no new item of the cold scenario, nothing after the cold test event unless
    `scenario.cold_train_part=all_non_new`), for popularity, the ID baselines, the sequence
    objective and the full-catalogue exclusion."""
    to, tf = split.train_offsets.tolist(), split.train_flat.tolist()
    for u, uj in enumerate(users_json):
        its = ",".join([items_json[i] for i in tf[to[u] : to[u + 1]]])
        yield f'{{"user":{uj},"items":[{its}]}}\n'


def _write_general(d: Path, pool: GeneralPool, history_len: int) -> dict[str, int]:
    d.mkdir()
    items: dict[str, str] = {}
    counts = {"train": 0, "valid": 0}
    parts = []
    for seqs, split in pool.parts:
        items.update(zip([f"{seqs.name}:{i}" for i in seqs.items], seqs.titles))
        parts.append((seqs, split, _json_ids(seqs.items, f"{seqs.name}:"),
                      _json_ids(seqs.users, f"{seqs.name}:")))
    write_items(d / "items.tsv", items)
    for name in counts:
        def gen(name: str = name) -> Iterator[str]:
            for _seqs, split, items_json, users_json in parts:
                yield from _chunks(split.rows[name], users_json, items_json, history_len)
        counts[name] = _write_lines(d / f"{name}.jsonl", gen())
    with open(d / "sequences.jsonl", "w", encoding="utf-8") as fh:
        for _seqs, split, items_json, users_json in parts:
            fh.writelines(_sequence_lines(split, users_json, items_json))
    return counts


# -- the stage --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataConfig:
    """The `data:` block, parsed once at the stage's entry. Every key is required: its one
    default is in conf/run.yaml (the size group sets the caps); a missing or unknown key raises
    naming it."""

    history_len: int
    num_candidates: int
    min_core: int
    negatives: str
    seed: int
    max_title_tokens: int
    max_train_prompts_per_user: int | None
    max_train_prompts: int | None
    max_test_users: int | None
    max_valid_users: int | None


def data_config(cfg: DictConfig) -> DataConfig:
    """Parse and check `cfg.data` (a known negatives rule, at least 2 candidates and 1 item of
    history)."""
    dc = typed(DataConfig, to_plain(need(cfg, "data")), "data")
    one_of(dc.negatives, NEGATIVES, "data.negatives")
    if dc.num_candidates < 2 or dc.history_len < 1:
        raise ValueError("data.num_candidates must be >= 2 and data.history_len >= 1")
    return dc


def _opt_int(x: Any) -> int | None:
    return None if x is None else int(x)


def _source_name(scfg: dict, fallback: str, where: str) -> str:
    """A source's `name` (every conf/source file sets it; null: `fallback`)."""
    return str(need(scfg, "name", where) or fallback)


_PROMPT_ONLY = ("max_title_tokens",)


def _drop_prompt(scfg: dict | None) -> dict | None:
    return None if scfg is None else {k: v for k, v in scfg.items() if k != "prompt"}


def _drop_prompt_all(sources: dict | None) -> dict:
    return {k: _drop_prompt(v) for k, v in (sources or {}).items()}


def data_key(cfg: DictConfig) -> tuple[str, dict]:
    """The cache key of this config's data, and what it hashes."""
    domain = OmegaConf.to_container(cfg.domain, resolve=True)
    general = need(domain, "general", "domain") or {}  # null: no general pool
    sources = {"source": need(domain, "source", "domain")}
    for k, s in ((need(general, "sources", "domain.general") if general else None) or {}).items():
        sources[f"general.sources.{k}"] = s
    prints = {k: input_fingerprints(s, f"domain.{k}") for k, s in sources.items()}
    data = OmegaConf.to_container(cfg.data, resolve=True)
    inputs = {
        # prompt-only settings (wording, title budget) do not change the splits
        "data": {k: v for k, v in data.items() if k not in _PROMPT_ONLY},
        "source": _drop_prompt(sources["source"]),
        "general": {k: (_drop_prompt_all(v) if k == "sources" else v)
                    for k, v in general.items() if k != "prompt"},
        "scenario": OmegaConf.to_container(cfg.scenario, resolve=True),
        "files": prints,
        "code": code_version(),
    }
    return stable_hash(inputs), inputs


@dataclass(frozen=True)
class ScenarioConfig:
    """The `scenario:` block, parsed once by the data stage. Only the cold scenario has new
    items: its four keys (conf/scenario/cold.yaml) are required there and unread in warm."""

    name: str
    new_item_fraction: float | None = None
    valid_new_item_fraction: float | None = None
    cold_negatives: str | None = None
    cold_train_part: str | None = None


def scenario_config(cfg: DictConfig) -> ScenarioConfig:
    """Parse and check `cfg.scenario` (a known name; in cold, every cold key with a known value)."""
    scen = need(cfg, "scenario")
    name = str(need(scen, "name", "scenario"))
    one_of(name, SCENARIOS, "scenario.name")
    if name == "warm":
        return ScenarioConfig(name)
    sc = ScenarioConfig(
        name, float(need(scen, "new_item_fraction", "scenario")),
        float(need(scen, "valid_new_item_fraction", "scenario")),
        str(need(scen, "cold_negatives", "scenario")), str(need(scen, "cold_train_part", "scenario")))
    one_of(sc.cold_negatives, COLD_NEGATIVES, "scenario.cold_negatives")
    one_of(sc.cold_train_part, COLD_TRAIN_PARTS, "scenario.cold_train_part")
    return sc


@dataclass
class _TargetData:
    """The target domain's sequences, split and capped rows, with what the general pool needs."""

    seqs: Sequences
    split: Split
    rows: dict[str, Rows]
    table: SourceTable
    src_cfg: dict


def _target_split(cfg: DictConfig, dc: DataConfig, sc: ScenarioConfig) -> _TargetData:
    """Read the target source, split it by the scenario, cap the stored splits and draw every
    sample's candidates."""
    domain = cfg.domain
    src_cfg = OmegaConf.to_container(need(domain, "source", "domain"), resolve=True)
    table = load_source(src_cfg, "domain.source")
    name = _source_name(src_cfg, str(domain.name), "domain.source")
    seqs = build_sequences(table, name, min_core=dc.min_core,
                           user_subset=need(src_cfg, "user_subset", "domain.source"))
    check_size(seqs, dc.num_candidates, f"domain {domain.name} ({name})")
    if sc.name == "warm":
        split = warm_split(seqs, dc.max_train_prompts_per_user)
    else:
        split = cold_split(seqs, sc.new_item_fraction, dc.seed, dc.max_train_prompts_per_user,
                           valid_new_item_fraction=sc.valid_new_item_fraction,
                           train_part=sc.cold_train_part)
    rows = split.rows
    pools = candidate_pools(split, sc.cold_negatives)
    if sc.cold_negatives == "new":
        # a validation user who touched nearly every validation-new item cannot fill a list of
        # them: left out of validation, counted (the test split keeps its error instead)
        ok = drawable(seqs, rows["valid"], pools["valid"], dc.num_candidates - 1)
        split.stats["valid_samples_without_enough_new_negatives"] = int((~ok).sum())
        rows["valid"] = rows["valid"].take(np.flatnonzero(ok))
    rows["test"] = cap_users(rows["test"], dc.max_test_users, dc.seed, 3)
    rows["valid"] = cap_users(rows["valid"], dc.max_valid_users, dc.seed, 2)
    rows["train"] = cap_rows(rows["train"], dc.max_train_prompts, dc.seed, 1)
    for k in ("train", "valid", "test"):
        if len(rows[k]) == 0:
            raise ValueError(
                f"domain {domain.name}, scenario {sc.name}: the {k} split is empty "
                f"({split.stats}); use a larger domain, lower data.min_core, or raise "
                "scenario.new_item_fraction / scenario.valid_new_item_fraction (cold)"
            )
    weights = (popularity_weights(split.train_flat, seqs.num_items)
               if dc.negatives == "popularity" else None)
    attach_candidates(seqs, [rows["train"], rows["valid"], rows["test"]], dc.num_candidates,
                      dc.seed, allowed=pools, weights=weights)
    return _TargetData(seqs, split, rows, table, src_cfg)


def _new_items(dest: Path, td: _TargetData, stats: dict[str, Any]) -> set[str]:
    """In cold: write the new items' ids, add the cold validation split's size to `stats`, and
    return the normalised titles of every new item (the general pool must hold none)."""
    split, seqs = td.split, td.seqs
    if split.new_test is None or split.new_valid is None:
        return set()
    new_ids = {k: [seqs.items[i] for i in np.flatnonzero(m)]
               for k, m in (("test", split.new_test), ("valid", split.new_valid))}
    write_json(dest / NEW_ITEMS_FILE, new_ids)
    stats["cold_valid"] = {
        "samples": stats["samples"]["valid"], "users": stats["users"]["valid"],
        "new_items": int(split.new_valid.sum()),
        "target_items": int(len(np.unique(td.rows["valid"].targets))),
        "note": "validation samples whose target is a validation-new item (disjoint from "
                "the test-new items and from every training sequence); the label-based "
                "choices of the cold scenario (mix=grid, early stopping) use them",
    }
    return {normalise_title(seqs.titles[i])
            for i in np.flatnonzero(split.new_test | split.new_valid)}


def _general_pool(cfg: DictConfig, dc: DataConfig, sc: ScenarioConfig, td: _TargetData,
                  new_titles: set[str], dest: Path) -> dict[str, Any] | None:
    """Build and write the general pool (`domain.general`) without the target's overlap and,
    in cold, without any new item; its stats, or None when the domain declares no pool."""
    domain = cfg.domain
    general = need(domain, "general", "domain")
    if not (general and need(general, "sources", "domain.general")):
        log.warning("domain %s declares no general sources: no general pool is written", domain.name)
        return None
    gcfg = OmegaConf.to_container(general, resolve=True)
    tables = {k: (s, load_source(s, f"domain.general.sources.{k}"))
              for k, s in gcfg["sources"].items()}
    titles, users = target_identity(td.table, need(td.src_cfg, "user_subset", "domain.source"))
    pool = build_general_pool(
        tables, titles, users, need(td.src_cfg, "user_space", "domain.source"),
        list(need(gcfg, "remove_overlap", "domain.general")), dc.min_core, dc.num_candidates,
        dc.seed,
        max_train_prompts_per_user=_opt_int(need(gcfg, "max_train_prompts_per_user",
                                                 "domain.general")),
        max_train_prompts=_opt_int(need(gcfg, "max_train_prompts", "domain.general")),
        max_valid_prompts=_opt_int(need(gcfg, "max_valid_prompts", "domain.general")),
        new_titles=new_titles,
    )
    check_no_new_items(pool, new_titles)
    gcounts = _write_general(dest / "general", pool, dc.history_len)
    out: dict[str, Any] = {"sources": pool.stats, "samples": gcounts,
                           "remove_overlap": list(gcfg["remove_overlap"])}
    if sc.name == "cold":
        out["new_items_removed"] = sum(int(st.get("new_items_removed", 0))
                                       for st in pool.stats.values())
    return out


def build_data(cfg: DictConfig, dc: DataConfig, dest: Path,
               sc: ScenarioConfig | None = None) -> dict[str, Any]:
    """Build every artifact of the data stage into the (empty) folder `dest`; returns stats.
    `dc`, `sc`: the parsed `data:` and `scenario:` blocks (`data_config`, `scenario_config`)."""
    t0 = time.time()
    sc = sc or scenario_config(cfg)
    td = _target_split(cfg, dc, sc)
    t_split = time.time()
    counts = _write_target(dest, td.seqs, td.split, dc.history_len)
    stats: dict[str, Any] = {
        "domain": str(cfg.domain.name),
        "scenario": sc.name,
        "source": td.seqs.stats,
        "split": td.split.stats,
        "samples": counts,
        "users": {k: int(len(np.unique(r.user))) for k, r in td.rows.items()},
        "negatives": dc.negatives,
        "cold_negatives": sc.cold_negatives,
        "cold_train_part": sc.cold_train_part,
        "num_candidates": dc.num_candidates,
        "candidates_note": (
            "negatives are drawn from the items the user never touched; in the cold scenario "
            "train negatives exclude every new item; test negatives may be warm or test-new "
            "(cold_negatives=mixed) or are test-new items only (cold_negatives=new), and "
            "validation negatives likewise with the validation-new items"
        ),
    }
    new_titles = _new_items(dest, td, stats)
    general = _general_pool(cfg, dc, sc, td, new_titles, dest)
    if general is not None:
        stats["general"] = general
    stats["seconds"] = {"target_split": round(t_split - t0, 2), "total": round(time.time() - t0, 2)}
    return stats


def _link_tree(src: Path, dst: Path) -> None:
    for f in src.rglob("*"):
        rel = dst / f.relative_to(src)
        if f.is_dir():
            rel.mkdir(parents=True, exist_ok=True)
            continue
        rel.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, rel)
        except OSError:
            shutil.copy2(f, rel)


def _complete(folder: Path, key: str) -> bool:
    """A built data folder for `key` with every file its manifest lists, at the listed size."""
    try:
        manifest = read_json(folder / "manifest.json")
    except (FileNotFoundError, ValueError):
        return False
    if manifest.get("data_hash") != key:
        return False
    return all((folder / f).is_file() and (folder / f).stat().st_size == n
               for f, n in manifest.get("files", {}).items())


def run_data_stage(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Build (or reuse from the cache) the splits of `cfg` and place them in `out_dir/data`."""
    dc = data_config(cfg)  # a missing, unknown or bad key fails before any file is read
    sc = scenario_config(cfg)
    key, inputs = data_key(cfg)
    cache = Path(cfg.paths.cache_dir) / "data" / key
    # temporary folders of a data stage killed earlier (an hour untouched) are never renamed
    # into place: remove them, in the cache and in this run's folder
    clean_stale_tmp(cache.parent)
    clean_stale_tmp(out_dir, prefix="data.")
    reused = _complete(cache, key)
    if reused:
        log.info("data stage: reusing the cached splits in %s (key %s)", cache, key)
    else:
        log.info("data stage: building the splits into %s (key %s)", cache, key)
        with atomic_dir(cache) as tmp:
            stats = build_data(cfg, dc, tmp, sc)
            write_json(tmp / "stats.json", stats)
            files = {str(f.relative_to(tmp)): f.stat().st_size
                     for f in sorted(tmp.rglob("*")) if f.is_file()}
            manifest = {"data_hash": key, "inputs": to_plain(inputs), "files": files,
                        "created": time.time()}
            if stats["cold_train_part"] is not None:  # where the cold training part ends
                manifest["cold_train_part"] = stats["cold_train_part"]
            if (tmp / "general").is_dir():
                # the pool's own identity, so the base spirit G is shared by runs whose pools
                # are equal even when their targets differ
                manifest["general_hash"] = files_sha256(
                    [tmp / "general" / f for f in ("items.tsv", "train.jsonl", "valid.jsonl", "sequences.jsonl")])
            write_json(tmp / "manifest.json", manifest)
    target = Path(out_dir) / "data"
    if not _complete(target, key):
        with atomic_dir(target) as tmp:
            _link_tree(cache, tmp)
    stats = read_json(cache / "stats.json")
    summary = {
        "data_hash": key,
        "reused_cache": reused,
        "cache_dir": str(cache),
        "samples": stats["samples"],
        "items": stats["source"]["items"],
        "users": stats["source"]["users"],
    }
    if "general" in stats:
        summary["general_samples"] = stats["general"]["samples"]
    if reused:
        summary["note"] = "reused the cached splits"
    log.info("data stage: %s", summary)
    return summary
