"""Adapters on disk: the standard PEFT folder plus our `manifest.json`, and the base-spirit cache.

An adapter folder holds `adapter_model.safetensors` + `adapter_config.json` (what
`PeftModel.from_pretrained` reads) and `manifest.json`:
`{"kind", "backbone", "init_seed", "data_hash", "config", "metrics", ...}`. The base spirit G
depends only on the backbone, the general pool and the tuning config, so it is trained once and
cached under `<cache_dir>/adapters/general/<key>/`; runs of other domains copy it from there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from reccocktail.utils.io import atomic_dir, read_json, stable_hash, to_plain, write_json

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
MANIFEST = "manifest.json"
KINDS = ("general", "specific", "mixed")
_MANIFEST_KEYS = ("kind", "backbone", "init_seed", "data_hash", "config", "metrics")


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """True when the folder holds a complete adapter (weights, config and manifest)."""
    path = Path(path)
    return all((path / f).is_file() for f in (*ADAPTER_FILES, MANIFEST))


def save_adapter(model: Any, path: str | os.PathLike, manifest: dict) -> Path:
    """Write a PeftModel's adapter and its manifest into `path`, atomically (all or nothing)."""
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"adapter manifest for {path}: missing key(s) {missing}")
    if manifest["kind"] not in KINDS:
        raise ValueError(f"adapter manifest kind: {manifest['kind']!r}, expected one of {KINDS}")
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for f in ADAPTER_FILES:
            if not (tmp / f).is_file():
                raise RuntimeError(f"peft did not write {f} for {path}")
        write_json(tmp / MANIFEST, to_plain(manifest))
    return path


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of an adapter folder; a missing folder/file or key raises naming it."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: no adapter manifest (is {path} an adapter folder?)")
    manifest = read_json(mpath)
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"{mpath}: missing key(s) {missing}")
    return manifest


def load_adapter(base_model: Any, path: str | os.PathLike, adapter_name: str = "default",
                 is_trainable: bool = False):
    """Wrap `base_model` with the adapter in `path` (a PeftModel)."""
    from peft import PeftModel

    path = Path(path)
    for f in ADAPTER_FILES:
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path / f}: missing (not a PEFT adapter folder)")
    return PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name,
                                     is_trainable=is_trainable)


def load_adapter_weights(path: str | os.PathLike) -> dict:
    """The adapter's tensors by name, straight from `adapter_model.safetensors`."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


def copy_adapter(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy an adapter folder (a few MB) atomically; a copy survives cleaning the cache."""
    src, dst = Path(src), Path(dst)
    if not is_adapter_dir(src):
        raise FileNotFoundError(f"{src}: not a complete adapter folder")
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    return dst


def backbone_identity(backbone_cfg: Any) -> dict:
    """The backbone config without machine-specific paths (cache folders), for cache keys."""
    plain = to_plain(backbone_cfg)

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k != "cache_dir"}
        return obj

    return strip(plain)


def files_hash(paths: list[str | os.PathLike]) -> str:
    """A content hash of files (names and bytes): identical inputs give identical keys anywhere."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def general_data_hash(data_dir: str | os.PathLike) -> str:
    """The identity of the general pool of a run's `data/` folder.

    The manifest's `general_hash` (or `general.data_hash`) when the data stage writes one;
    otherwise a content hash of `general/{items.tsv,train.jsonl,valid.jsonl}`. The run-wide
    `data_hash` is not used: it also covers the target domain, and G must be shared across them.
    """
    data_dir = Path(data_dir)
    mpath = data_dir / "manifest.json"
    if mpath.is_file():
        m = read_json(mpath)
        for key in ("general_hash", "general_data_hash"):
            if isinstance(m.get(key), str):
                return m[key]
        if isinstance(m.get("general"), dict) and isinstance(m["general"].get("data_hash"), str):
            return m["general"]["data_hash"]
    gen = data_dir / "general"
    files = [gen / f for f in ("items.tsv", "train.jsonl", "valid.jsonl") if (gen / f).is_file()]
    if not files:
        raise FileNotFoundError(f"{gen}: no general pool (run the `data` stage first)")
    return files_hash(files)


def target_data_hash(data_dir: str | os.PathLike) -> str:
    """The manifest's `data_hash` of the target domain, else a content hash of its files."""
    data_dir = Path(data_dir)
    mpath = data_dir / "manifest.json"
    if mpath.is_file():
        m = read_json(mpath)
        if isinstance(m.get("data_hash"), str):
            return m["data_hash"]
    files = [data_dir / f for f in ("items.tsv", "train.jsonl", "valid.jsonl")
             if (data_dir / f).is_file()]
    if not files:
        raise FileNotFoundError(f"{data_dir}: no target-domain data (run the `data` stage first)")
    return files_hash(files)


def general_cache_key(backbone_cfg: Any, data_hash: str, tuning_cfg: Any, prompt_cfg: Any = None) -> str:
    """The key of a base spirit: what it was trained from (backbone, general pool, tuning, prompt)."""
    return stable_hash(backbone_identity(backbone_cfg), data_hash, to_plain(tuning_cfg),
                       to_plain(prompt_cfg))


def holds_adapter(path: str | os.PathLike, key: str) -> bool:
    """True when `path` is a complete adapter folder whose manifest carries `key`."""
    return is_adapter_dir(path) and read_manifest(path).get("key") == key


def adapter_cache_dir(cache_dir: str | os.PathLike, key: str, kind: str) -> Path:
    return Path(cache_dir) / "adapters" / kind / key


def lookup_cached(cache_dir: str | os.PathLike, key: str, kind: str) -> Path | None:
    """The cached adapter of `kind` (general: the base spirit; specific: an ingredient) for
    `key`, or None."""
    path = adapter_cache_dir(cache_dir, key, kind)
    return path if holds_adapter(path, key) else None
