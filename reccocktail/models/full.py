"""Full fine-tuning of the backbone (`tuning.mode: full`): which weights train, and the model on disk.

The paper's P5 row is TALLRec's prompt with every weight of the LLM trained instead of a LoRA.
`tuning.mode: full` makes `InstructionTuningModule` train the backbone itself (`build_full_model`);
the result is a whole model, not an adapter, so it lives in its own kind of folder:

    config.json, model.safetensors (+ generation_config.json)   what `save_pretrained` writes:
                                                                `AutoModelForCausalLM.from_pretrained`
                                                                loads the folder as it is
    tokenizer files                                             the backbone's, so the folder stands alone
    manifest.json                                               {"kind": "full", "key", "backbone",
                                                                "backbone_identity", "objective",
                                                                "trainable", "config", "metrics", ...}

Weights are safetensors only (no pickles) and the folder is written atomically (temporary folder,
then rename). Models are cached like adapters, under `<cache_dir>/models/full/<key>/`; a run gets
hard links to the cached files (a full model is ~0.5 GB in fp32 for SmolLM2-135M, and the files
are never modified in place, only replaced by a rename), a copy where links are impossible.

Which weights train: `tuning.full.train_embeddings` (default false) decides whether the token
embedding matrix trains too. Every decoder layer and norm trains in both cases. Why the default
keeps it frozen: SmolLM2 and the small Qwen2 models tie the input embedding to the output head,
so this one matrix is the whole vocabulary's output layer; on a few hundred training rows its
update mostly raises the tokens of the training titles against every other token, a token-level
popularity prior that new (cold) items' titles, never trained on, pay for. It is also a fifth of
SmolLM2-135M's weights (28M of 135M) and of the Adam states. `train_embeddings: true` is the
literal "every weight" reading (P5 trained T5 whole).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from reccocktail.models.backbone import load_backbone
from reccocktail.utils.config import need
from reccocktail.utils.io import atomic_dir, read_json, to_plain, write_json

log = logging.getLogger(__name__)

FULL_KIND = "full"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
_MANIFEST_KEYS = ("kind", "key", "backbone", "objective", "trainable", "config", "metrics")


def set_full_trainable(model: torch.nn.Module, train_embeddings: bool) -> dict[str, int]:
    """Turn on the gradients of every weight (but the input embeddings, and with them a tied
    output head, unless `train_embeddings`); returns the counts `{trainable, frozen}`."""
    model.requires_grad_(True)
    if not train_embeddings:
        model.get_input_embeddings().requires_grad_(False)
        out = model.get_output_embeddings()
        if out is not None and out.weight is model.get_input_embeddings().weight:
            out.requires_grad_(False)
    # parameters() yields a tied matrix once, so the counts are of distinct tensors
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}


def build_full_model(backbone_cfg: Any, train_embeddings: bool = False,
                     gradient_checkpointing: bool = False) -> torch.nn.Module:
    """The backbone with its own weights trainable (`tuning.mode: full`), in train mode.

    A quantised backbone is refused: 4-bit weights cannot be trained, only adapters on them."""
    quant = need(backbone_cfg, "quantization", "backbone")
    if quant not in (None, "none"):
        raise ValueError(f"tuning.mode=full trains the backbone's own weights, which "
                         f"backbone.quantization={quant} makes 4-bit and frozen; set "
                         "backbone.quantization=null (or use tuning.mode=lora)")
    model, _ = load_backbone(backbone_cfg)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    counts = set_full_trainable(model, train_embeddings)
    log.info("full fine-tuning: %d trainable, %d frozen parameters (embeddings %s)",
             counts["trainable"], counts["frozen"], "train" if train_embeddings else "frozen")
    model.train()
    return model


def is_full_model_dir(path: str | os.PathLike) -> bool:
    """True when `path` holds a complete fully fine-tuned model (weights, config, manifest)."""
    path = Path(path)
    if not all((path / f).is_file() for f in ("config.json", WEIGHTS, MANIFEST)):
        return False
    return read_json(path / MANIFEST).get("kind") == FULL_KIND


def holds_full_model(path: str | os.PathLike, key: str) -> bool:
    return is_full_model_dir(path) and read_json(Path(path) / MANIFEST).get("key") == key


def save_full_model(model: Any, tokenizer: Any, path: str | os.PathLike, manifest: dict) -> Path:
    """Write the model (safetensors), its tokenizer and `manifest` into `path`, atomically."""
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"full model manifest for {path}: missing key(s) {missing}")
    if manifest["kind"] != FULL_KIND:
        raise ValueError(f"full model manifest kind: {manifest['kind']!r}, expected {FULL_KIND!r}")
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if not (tmp / WEIGHTS).is_file():  # a sharded save would need an index: not expected here
            raise RuntimeError(f"save_pretrained wrote no single {WEIGHTS} for {path} "
                               f"(files: {sorted(f.name for f in tmp.iterdir())})")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        write_json(tmp / MANIFEST, to_plain(manifest))
    return path


def load_full_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = None) -> torch.nn.Module:
    """The model of a full-model folder, in eval mode with gradients off."""
    from transformers import AutoModelForCausalLM  # lazy: +0.8 s (transformers)

    path = Path(path)
    if not is_full_model_dir(path):
        raise FileNotFoundError(f"{path}: not a complete full-fine-tuned model folder "
                                f"(config.json, {WEIGHTS} and a manifest of kind {FULL_KIND!r})")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype,
                                                 trust_remote_code=False)
    model.requires_grad_(False)
    model.eval()
    return model.to(device) if device is not None else model


def read_full_manifest(path: str | os.PathLike) -> dict:
    return read_json(Path(path) / MANIFEST)


def link_or_copy_dir(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """`dst` as a folder of hard links to `src`'s files (copies across file systems), atomically."""
    src, dst = Path(src), Path(dst)
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.is_file():
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
    return dst


def full_cache_dir(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / "models" / FULL_KIND / key
