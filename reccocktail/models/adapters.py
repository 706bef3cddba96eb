"""Adapters on disk: the standard PEFT folder plus our `manifest.json`, and the base-spirit cache.

An adapter folder holds `adapter_model.safetensors` + `adapter_config.json` (what
`PeftModel.from_pretrained` reads) and `manifest.json`:
`{"kind", "backbone", "init_seed", "data_hash", "config", "metrics", "files", "run", ...}`, where
`backbone` is the config's name and `backbone_identity` (or `config.backbone`) what its weights
were, the identity that mixing, evaluation and `recommend` compare (`check_backbone`). The base
spirit G depends only on the backbone, the general pool and the tuning config, so it is trained
once and cached under `<cache_dir>/adapters/general/<key>/`; runs of other domains copy it from
there.

Adapter folders are files someone may have cut short, overwritten or sent: `files` holds the
SHA-256 of the two PEFT files, checked whenever an adapter is reused or loaded (`is_intact`,
`verify_adapter`), so a corrupt one is named and repaired from the cache or retrained, never
used; `run` records the run it belongs to (domain, scenario, objective, data hashes), which
`verify_adapter` compares with the run that reads it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from safetensors import safe_open

from reccocktail.data.prompts import adapter_format, prompt_format
from reccocktail.utils.io import (
    atomic_dir,
    file_sha256,
    files_sha256,
    read_json,
    stable_hash,
    to_plain,
    write_json,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
MANIFEST = "manifest.json"
# general: the base spirit G; specific: the ingredient S; source: an ingredient trained on one
# general source's part of the pool (`reccocktail.ingredients`); mixed: a cocktail or WA.
KINDS = ("general", "specific", "source", "mixed")
POOL_KINDS = ("general", "source")  # trained on the general pool: shared by domains
_MANIFEST_KEYS = ("kind", "backbone", "init_seed", "data_hash", "config", "metrics")
_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}
FOREIGN_KEY = "allow_foreign_adapters"  # the config key that lets a foreign adapter be used


class AdapterError(ValueError):
    """An adapter folder that must not be used: incomplete, corrupt, or from another run."""


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
        write_json(tmp / MANIFEST, {**to_plain(manifest), "files": content_hashes(tmp)})
    return path


# -- integrity: every adapter read is checked against the hashes its manifest records -------

def content_hashes(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of the PEFT files of an adapter folder (what `manifest.json` records)."""
    return {f: file_sha256(Path(path) / f, length=64) for f in ADAPTER_FILES}


def _structure_problem(path: Path) -> str | None:
    """Why the PEFT files cannot be read (a cut or overwritten file), for folders whose
    manifest records no hashes (written before they were recorded, or by another tool)."""
    weights, config = path / ADAPTER_FILES[0], path / ADAPTER_FILES[1]
    try:
        with safe_open(str(weights), "pt") as fh:
            fh.keys()
    except Exception as err:  # noqa: BLE001 - the library's own error, without the path
        return f"{weights}: not a readable safetensors file ({err})"
    try:
        if not isinstance(read_json(config), dict):
            return f"{config}: not a JSON object"
    except (ValueError, UnicodeDecodeError) as err:
        return f"{config}: {err}"
    return None


def content_problem(path: str | os.PathLike, manifest: dict | None = None) -> str | None:
    """Why an adapter folder's files cannot be trusted, naming the file; None when intact.

    With a manifest that records `files` (hashes), every PEFT file must match its hash; with
    none (older manifests, a folder from elsewhere), the files must at least be complete."""
    path = Path(path)
    for f in ADAPTER_FILES:
        if not (path / f).is_file():
            return f"{path / f}: missing"
    recorded = (manifest or {}).get("files")
    if not isinstance(recorded, dict) or not recorded:
        return _structure_problem(path)
    for f in ADAPTER_FILES:
        want = recorded.get(f)
        if not want:
            return f"{path / MANIFEST}: records no content hash of {f}"
        got = file_sha256(path / f, length=len(str(want)))
        if got != want:
            return (f"{path / f}: content hash {got[:16]} differs from the {want[:16]} its "
                    "manifest records (the file is corrupt or was changed after it was written)")
    return None


def is_intact(path: str | os.PathLike) -> bool:
    """True when `path` holds a complete adapter whose files match its manifest; a folder that
    does not is logged naming the file (the caller repairs it: copies or trains it again)."""
    path = Path(path)
    if not is_adapter_dir(path):
        return False
    try:
        manifest = read_manifest(path)
    except ValueError as err:
        log.warning("%s; not reused", err)
        return False
    problem = content_problem(path, manifest)
    if problem:
        log.warning("%s; not reused", problem)
        return False
    return True


def check_content(path: str | os.PathLike) -> None:
    """Raise AdapterError naming the file when an adapter folder's files are corrupt (checked
    against the manifest's hashes when it has them); every load goes through here."""
    path = Path(path)
    manifest = None
    if (path / MANIFEST).is_file():
        try:
            manifest = read_json(path / MANIFEST)
        except ValueError as err:
            raise AdapterError(str(err)) from err
    problem = content_problem(path, manifest if isinstance(manifest, dict) else None)
    if problem:
        raise AdapterError(problem)


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of an adapter folder; a missing folder/file or key raises naming it."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: no adapter manifest (is {path} an adapter folder?)")
    manifest = read_json(mpath)
    if not isinstance(manifest, dict):
        raise AdapterError(f"{mpath}: expected a JSON object")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise AdapterError(f"{mpath}: missing key(s) {missing}")
    return manifest


def load_adapter(base_model: Any, path: str | os.PathLike, adapter_name: str = "default",
                 is_trainable: bool = False):
    """Wrap `base_model` with the adapter in `path` (a PeftModel)."""
    from peft import PeftModel  # lazy: +6 s (peft, torch) to a torch-free module

    path = Path(path)
    for f in ADAPTER_FILES:
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path / f}: missing (not a PEFT adapter folder)")
    check_content(path)
    return PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name,
                                     is_trainable=is_trainable)


def load_adapter_weights(path: str | os.PathLike) -> dict:
    """The adapter's tensors by name, straight from `adapter_model.safetensors`."""
    from safetensors.torch import load_file  # lazy: +1.4 s (torch)

    return load_file(str(Path(path) / "adapter_model.safetensors"))


# -- LoRA factors in memory (the mixer's view of an adapter folder) -------------------------

@dataclass
class LoraAdapter:
    """One LoRA adapter in memory: its PEFT config, factors per module and manifest."""

    config: dict[str, Any]
    A: dict[str, torch.Tensor]  # module name (PEFT key prefix) -> [r, in]
    B: dict[str, torch.Tensor]  # module name -> [out, r]
    manifest: dict[str, Any] = field(default_factory=dict)
    name: str = "adapter"

    @property
    def modules(self) -> list[str]:
        return sorted(self.A)

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def scaling(self) -> float:
        """PEFT's multiplier of `B A x`: alpha/r, or alpha/√r with rsLoRA."""
        r, alpha = self.rank, float(self.config["lora_alpha"])
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    @property
    def target_modules(self) -> list[str]:
        tm = self.config.get("target_modules")
        return sorted(tm) if isinstance(tm, (list, tuple, set)) else [str(tm)]


def read_lora(path: str | Path, name: str | None = None) -> LoraAdapter:
    """A PEFT LoRA folder's factors in memory, for mixing (safetensors + adapter_config.json,
    manifest.json if present); `load_adapter` instead wraps a model with it (PeftModel)."""
    path = Path(path)
    cfg_file, weights = path / ADAPTER_FILES[1], path / ADAPTER_FILES[0]
    if (path / "model.safetensors").exists() or (
            (path / MANIFEST).exists() and read_json(path / MANIFEST).get("kind") == "full"):
        raise ValueError(f"{path} holds a fully fine-tuned model (tuning.mode=full, e.g. the P5 "
                         "baseline), not a LoRA adapter: only LoRA adapters can be mixed")
    for f in (cfg_file, weights):
        if not f.exists():
            raise FileNotFoundError(f"{f}: no such file (is {path} a PEFT adapter folder?)")
    check_content(path)
    config = read_json(cfg_file)
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg_file}: peft_type {config.get('peft_type')!r} is not LORA")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise ValueError(f"{cfg_file}: missing key {key!r}")
    unsupported = [k for k in ("rank_pattern", "alpha_pattern", "modules_to_save",
                               "trainable_token_indices", "layer_replication")
                   if config.get(k)] + [k for k in ("use_dora", "lora_bias") if config.get(k)]
    if unsupported:
        raise ValueError(f"{cfg_file}: LoRA options {unsupported} are not supported by the mixer")
    A: dict[str, torch.Tensor] = {}
    B: dict[str, torch.Tensor] = {}
    for key, tensor in load_adapter_weights(path).items():
        for suffix, kind in _SUFFIXES.items():
            if key.endswith(suffix):
                (A if kind == "A" else B)[key[: -len(suffix)]] = tensor
                break
        else:
            raise ValueError(f"{weights}: unexpected tensor {key!r} (only lora_A/lora_B weights)")
    if set(A) != set(B) or not A:
        raise ValueError(f"{weights}: modules without both lora_A and lora_B: "
                         f"{sorted(set(A) ^ set(B)) or 'no LoRA tensors at all'}")
    manifest = read_json(path / MANIFEST) if (path / MANIFEST).exists() else {}
    return LoraAdapter(config=config, A=A, B=B, manifest=manifest, name=name or path.name)


def write_lora(path: str | Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
               manifest: Mapping[str, Any]) -> Path:
    """Write LoRA factors as a standard PEFT folder (+ manifest.json) atomically (a mixed
    adapter); `save_adapter` instead writes a PeftModel."""
    from safetensors.torch import save_file  # lazy: +1.4 s (torch)

    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                  str(tmp / ADAPTER_FILES[0]), metadata={"format": "pt"})
        write_json(tmp / ADAPTER_FILES[1], dict(config))
        write_json(tmp / MANIFEST, {**dict(manifest), "files": content_hashes(tmp)})
    return path


def copy_adapter(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy an adapter folder (a few MB) atomically; a copy survives cleaning the cache. The
    source is checked first and the copy after, so a corrupt adapter is never spread."""
    src, dst = Path(src), Path(dst)
    if not is_adapter_dir(src):
        raise FileNotFoundError(f"{src}: not a complete adapter folder")
    check_content(src)
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        check_content(tmp)
    return dst


def backbone_identity(backbone_cfg: Any) -> dict:
    """The backbone config without machine-specific paths (cache folders), for cache keys;
    `dtype: auto` is replaced by the dtype it resolves to (keys record what ran)."""
    from reccocktail.utils.device import resolve_dtype  # lazy: +1.2 s (torch)

    plain = to_plain(backbone_cfg)
    if isinstance(plain, dict) and str(plain.get("dtype")) == "auto":
        plain = {**plain, "dtype": resolve_dtype("auto")}

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
    from reccocktail.models.backbone import looks_like_path  # lazy: +1.3 s (torch)

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
    return files_sha256(paths)


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


def source_data_hash(general_hash: str, prefix: str) -> str:
    """What a general source's ingredient trains on: the pool `general_hash`, the rows of the
    users namespaced `<prefix>:` (the rule is fixed, so the pool's hash and the prefix say it)."""
    return stable_hash(general_hash, {"rows": "users with id prefix", "prefix": f"{prefix}:"})


def general_cache_key(backbone_cfg: Any, data_hash: str, tuning_cfg: Any, prompt_cfg: Any = None) -> str:
    """The key of a base spirit: what it was trained from (backbone, general pool, tuning, prompt)."""
    return stable_hash(backbone_identity(backbone_cfg), data_hash, to_plain(tuning_cfg),
                       to_plain(prompt_cfg))


def holds_adapter(path: str | os.PathLike, key: str) -> bool:
    """True when `path` is a complete, intact adapter folder whose manifest carries `key`; a
    corrupt one is logged naming the file and is not held (it is copied again or retrained)."""
    if not is_adapter_dir(path):
        return False
    try:
        if read_manifest(path).get("key") != key:
            return False
    except ValueError as err:
        log.warning("%s; not reused", err)
        return False
    return is_intact(path)


def adapter_cache_dir(cache_dir: str | os.PathLike, key: str, kind: str) -> Path:
    return Path(cache_dir) / "adapters" / kind / key


def lookup_cached(cache_dir: str | os.PathLike, key: str, kind: str) -> Path | None:
    """The cached adapter of `kind` (general: the base spirit; specific: an ingredient) for
    `key`, or None."""
    path = adapter_cache_dir(cache_dir, key, kind)
    return path if holds_adapter(path, key) else None


# -- which run an adapter belongs to -----------------------------------------------------------

IDENTITY_FIELDS = ("domain", "scenario", "objective", "data_hash")


def run_identity(cfg: Any, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a run's adapters must have been trained for: its domain, scenario and prompt
    format, and the data hashes of its `data/manifest.json` (target split, general pool; None
    when the run folder has no data stage output). Written into every manifest as `run`."""
    def pick(key: str) -> Any:
        v = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        return None if v is None else str(v)

    data: dict = {}
    if out_dir is not None:
        mpath = Path(out_dir) / "data" / "manifest.json"
        if mpath.is_file():
            m = read_json(mpath)
            data = m if isinstance(m, dict) else {}
    general = data.get("general_hash") or data.get("general_data_hash")
    return {"domain": pick("domain.name"), "scenario": pick("scenario.name"),
            "objective": prompt_format(cfg), "data_hash": data.get("data_hash"),
            "general_data_hash": general if isinstance(general, str) else None}


def recorded_identity(manifest: dict) -> dict[str, Any]:
    """The run an adapter's manifest says it belongs to (`run`), completed from the older
    fields for manifests written before `run` existed (unknown fields are None)."""
    out: dict[str, Any] = {k: None for k in (*IDENTITY_FIELDS, "general_data_hash")}
    run = manifest.get("run")
    if isinstance(run, dict):
        out.update({k: run.get(k) for k in out})
    out["objective"] = adapter_format(manifest)
    kind = manifest.get("kind")
    if kind in POOL_KINDS:  # G's own data is the general pool (a source's: a part of it)
        out["general_data_hash"] = manifest.get("data_hash")
    elif kind == "specific":
        out["data_hash"] = manifest.get("data_hash")
    elif kind == "mixed" and not isinstance(run, dict):
        for src in manifest.get("sources") or []:
            if isinstance(src, dict) and src.get("kind") == "specific":
                out["data_hash"] = src.get("data_hash")
            elif isinstance(src, dict) and src.get("kind") == "general":
                out["general_data_hash"] = src.get("data_hash")
    return out


def identity_differences(manifest: dict, expected: Mapping[str, Any],
                         fields: tuple[str, ...] = IDENTITY_FIELDS) -> list[str]:
    """`field: adapter's vs this run's` for each of `fields` the two both know and disagree on.
    The base spirit G (and a general source's ingredient) is shared by domains and scenarios:
    only its objective and general pool are compared."""
    if manifest.get("kind") in POOL_KINDS:
        fields = tuple(f for f in fields if f == "objective") + (
            ("general_data_hash",) if "data_hash" in fields else ())
    have = recorded_identity(manifest)
    return [f"{f}: {have[f]!r} (adapter) vs {expected.get(f)!r} (this run)" for f in fields
            if have.get(f) is not None and expected.get(f) is not None
            and str(have[f]) != str(expected[f])]


def verify_adapter(path: str | os.PathLike, where: str, cfg: Any = None,
                   out_dir: str | os.PathLike | None = None,
                   fields: tuple[str, ...] = IDENTITY_FIELDS) -> dict:
    """The one check before a stage uses an adapter folder; returns its manifest.

    Refused (AdapterError naming `where`, the file and the difference): missing PEFT files; a
    file whose content differs from the hash its manifest records, or that is cut short (never
    waived); weights other than `cfg.backbone` (never waived); a missing or incomplete manifest,
    or one that records another run than `cfg`/`out_dir` (`fields` of `run_identity`). The last
    two are waived by `allow_foreign_adapters=true`, for deliberate reuse: the manifest returned
    then carries `foreign` (what differs), which the results record."""
    path = Path(path)
    for f in ADAPTER_FILES:
        if not (path / f).is_file():
            raise AdapterError(f"{where}: {path / f}: missing (not a PEFT adapter folder)")
    allow = bool(cfg is not None and OmegaConf.select(cfg, FOREIGN_KEY, default=False))
    waive = (f"; to use it anyway (deliberate reuse, recorded in the results) set "
             f"{FOREIGN_KEY}=true")
    try:
        manifest = read_manifest(path)
    except (FileNotFoundError, ValueError) as err:
        problem = _structure_problem(path)
        if problem:
            raise AdapterError(f"{where}: {problem}") from err
        if not allow:
            raise AdapterError(f"{where}: {err}: its backbone, data, scenario, domain and "
                               f"objective cannot be checked{waive}") from err
        log.warning("%s: %s; used anyway (%s=true)", where, err, FOREIGN_KEY)
        return {"foreign": [f"no usable manifest ({err})"]}
    problem = content_problem(path, manifest)
    if problem:
        raise AdapterError(f"{where}: {problem}")
    if cfg is not None and OmegaConf.select(cfg, "backbone", default=None) is not None:
        check_backbone(manifest, cfg.backbone, where)
    if cfg is None:
        return manifest
    diff = identity_differences(manifest, run_identity(cfg, out_dir), fields)
    if not diff:
        return manifest
    if not allow:
        raise AdapterError(f"{where}: {path} was trained for another run: {'; '.join(diff)}"
                           f"{waive}")
    log.warning("%s: %s was trained for another run (%s); used anyway (%s=true)", where, path,
                "; ".join(diff), FOREIGN_KEY)
    return {**manifest, "foreign": diff}
