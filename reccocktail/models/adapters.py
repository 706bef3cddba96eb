"""Adapters on disk: the standard PEFT folder plus our `manifest.json`, and the base-spirit cache.

An adapter folder holds `adapter_model.safetensors` + `adapter_config.json` (what
`PeftModel.from_pretrained` reads) and `manifest.json`:
`{"kind", "backbone", "init_seed", "data_hash", "config", "metrics", ...}`, where `backbone` is
the config's name and `backbone_identity` (or `config.backbone`) what its weights were, the
identity that mixing, evaluation and `recommend` compare (`check_backbone`). The base spirit G
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


# the fields of a backbone config that decide its frozen weights (and token ids); dtype,
# quantization, attention kernel, prompt budget and the config's name do not
_WEIGHT_KEYS = ("source", "pretrained", "revision", "gguf_package", "gguf_file", "gguf_path",
                "arch", "init_seed", "config", "tokenizer")


def weights_identity(backbone_cfg: Any) -> dict:
    """What an adapter's frozen weights were: their source (hub name, or the resolved local
    folder or GGUF file, or the GGUF package and file), and for a random backbone its
    architecture, init seed and tokenizer. Two adapters can be mixed, or one applied, only on
    equal identities; the backbone's *name* says nothing (one name, other weights).

    Record it in a manifest as `backbone_identity`; `recorded_weights` reads it back."""
    from reccocktail.models.backbone import looks_like_path

    plain = backbone_identity(backbone_cfg)
    out = {k: plain[k] for k in _WEIGHT_KEYS if plain.get(k) is not None}
    for k in ("pretrained", "gguf_path"):
        if k in out and (k == "gguf_path" or looks_like_path(str(out[k]))):
            out[k] = str(Path(str(out[k])).expanduser().resolve())
    if isinstance(out.get("tokenizer"), dict):
        out["tokenizer"] = weights_identity(out["tokenizer"])
    return out


def recorded_weights(manifest: dict) -> dict | None:
    """The weights identity an adapter manifest records: `backbone_identity`, else derived from
    the backbone config it keeps (`config.backbone`); None when it has neither."""
    if isinstance(manifest.get("backbone_identity"), dict):
        return manifest["backbone_identity"]
    cfg = (manifest.get("config") or {}).get("backbone")
    return weights_identity(cfg) if isinstance(cfg, dict) and cfg.get("source") else None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def weights_differences(a: dict, b: dict) -> list[str]:
    """`key: a vs b` for every field in which two weights identities differ."""
    fa, fb = _flat(a), _flat(b)
    return [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k)]


def check_backbone(manifest: dict, backbone_cfg: Any, where: str) -> None:
    """Refuse an adapter (its manifest) trained on other weights than `backbone_cfg`, naming the
    fields that differ; `where` names the adapter (e.g. `recommend.adapter: <path>`).

    A manifest without a recorded identity (older, or written by hand) is compared by name."""
    name = _cfg_name(backbone_cfg)
    trained_on = manifest.get("backbone")
    recorded = recorded_weights(manifest)
    if recorded is None:
        if trained_on and trained_on != name:
            raise ValueError(f"{where} was trained on backbone {trained_on!r}, but "
                             f"backbone={name!r}; pass backbone={trained_on}")
        return
    diff = weights_differences(recorded, weights_identity(backbone_cfg))
    if diff:
        raise ValueError(
            f"{where} was trained on backbone {trained_on!r} with other weights than the "
            f"configured backbone={name!r} (adapter vs configured: {'; '.join(diff)}); run with "
            "the backbone it was trained on")


def check_same_weights(manifests: dict[str, dict]) -> None:
    """Refuse mixing adapters (name -> manifest) trained on different weights, naming the pair
    and the fields; adapters whose manifests record no identity are compared by name."""
    items = list(manifests.items())
    for i, (n0, m0) in enumerate(items):
        for n1, m1 in items[i + 1:]:
            _check_pair(n0, m0, n1, m1)


def _check_pair(n0: str, m0: dict, n1: str, m1: dict) -> None:
    w0, w1 = recorded_weights(m0), recorded_weights(m1)
    pair = f"adapters {n0!r} and {n1!r}"
    if w0 is None or w1 is None:
        b0, b1 = m0.get("backbone"), m1.get("backbone")
        if b0 is not None and b1 is not None and b0 != b1:
            raise ValueError(f"{pair} were trained on different backbones: {b0!r} vs {b1!r}")
        return
    diff = weights_differences(w0, w1)
    if diff:
        raise ValueError(f"{pair} were trained on different backbone weights "
                         f"({'; '.join(diff)}): they cannot be mixed")


def _cfg_name(backbone_cfg: Any) -> str | None:
    plain = to_plain(backbone_cfg)
    return plain.get("name") if isinstance(plain, dict) else None


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
