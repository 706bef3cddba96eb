"""The P5 baseline as the RecCocktail paper runs it: S's prompts and data, full fine-tuning.

The paper's P5 row "uses the same instruction template as TALLRec but full fine-tuning". Here:
the ingredient S's tuning config of this run (`tuning` + `tuning.specific`, so the same
objective, prompt format, rows, batch and schedule as S) with `baselines.p5.tuning` laid over it:
`mode: full` (the backbone's own weights train, `reccocktail/models/full.py`; the embedding
matrix stays frozen unless `full.train_embeddings`) and a learning rate for full fine-tuning.
The rows are S's own (`models.training.specific_training_data`): the sequence windows of the
sequence objective, or the validation + sampled training prompts of the instruction objective
with the `mix=grid` users held out. Scored by the eval stage's likelihood scorer
(`eval.batch_size`, `eval.normalize`) on the stored candidates of the scored users.

Faithful: full fine-tuning on the TALLRec-style prompts of the target domain, as the paper
describes its P5 row. Different from the original P5 (Geng et al., 2022): not T5, no multi-task
prompt collection, no whole-word item-ID tokens: items are titles, as for every LLM row here.

The model is cached like an adapter, by (backbone, target data, tuning config with the P5
overrides, prompt): `<cache_dir>/models/full/<key>/`; the run holds `models/p5/` (hard links).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from reccocktail.data.prompts import prompt_builder_from_config
from reccocktail.data.samples import Sample, load_items
from reccocktail.evaluation.config import ScorerConfig, eval_config
from reccocktail.evaluation.scorers import build_scorer
from reccocktail.models import adapters as ad
from reccocktail.models import full
from reccocktail.models.backbone import load_tokenizer, torch_dtype
from reccocktail.models.tuning_config import TuningConfig
from reccocktail.utils.config import need
from reccocktail.utils.device import place_backbone, resolve_device
from reccocktail.utils.io import read_json, stable_hash

log = logging.getLogger(__name__)


def p5_tuning(cfg: DictConfig, settings: dict[str, Any], name: str = "p5") -> TuningConfig:
    """S's tuning config with `baselines.<name>.tuning` laid over it (must say `mode: full`)."""
    from reccocktail.models.training import tuning_config  # lazy: +4 s (lightning)

    t = tuning_config(cfg, "specific")
    over = need(settings, "tuning", f"baselines.{name}")
    mode = over.get("mode")  # required, and only `full` is accepted: missing is the same error
    if mode != "full":
        raise ValueError(f"baselines.{name}.tuning.mode: must be full (the P5 row is the full "
                         f"fine-tuning of S's setting), got {mode!r}")
    # S may start from G (a LoRA); a full fine-tuning starts from the backbone
    return t.overlay({**over, "init_from": None})


def p5_key(cfg: DictConfig, out_dir: Path, t: TuningConfig, extra: dict) -> tuple[str, str]:
    """(key, target data hash) of the fully fine-tuned model."""
    from reccocktail.models.training import result_config  # lazy: +4 s (lightning)

    data_hash = ad.target_data_hash(Path(out_dir) / "data")
    key = stable_hash(ad.backbone_identity(cfg.backbone), data_hash, result_config(t),
                      extra["prompt"], extra, "full")
    return key, data_hash


def train_or_reuse(cfg: DictConfig, out_dir: Path, name: str, t: TuningConfig) -> dict[str, Any]:
    """The fully fine-tuned model into `<run>/models/<name>/`: kept when there, linked from the
    cache when cached, else trained on S's rows, saved and cached. Returns what happened."""
    from reccocktail.models.training import (  # lazy: +4 s (lightning)
        adapter_manifest,
        cache_root,
        prompt_builder,
        specific_plan,
        specific_training_data,
        train_adapter,
    )

    out_dir = Path(out_dir)
    extra = specific_plan(cfg, out_dir, t)
    key, data_hash = p5_key(cfg, out_dir, t, extra)
    dest = out_dir / "models" / name
    cached = full.full_cache_dir(cache_root(cfg), key)
    reuse = t.reuse
    if full.holds_full_model(dest, key):
        log.info("%s: %s already holds model %s; not training again", name, dest, key)
        return {"model": str(dest), "key": key, "reused": "run"}
    if reuse and full.holds_full_model(cached, key):
        full.link_or_copy_dir(cached, dest)
        log.info("%s: reusing cached full model %s from %s", name, key, cached)
        return {"model": str(dest), "key": key, "reused": "cache", "cache": str(cached)}

    items, train, val = specific_training_data(cfg, out_dir, t, extra, label=name)
    builder = prompt_builder(cfg, items, extra["prompt"], t.objective)
    stage = f"baselines/{name}"
    model, metrics, trainer = train_adapter(cfg, out_dir, stage, t, train, val, builder, key)
    counts = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "all": sum(p.numel() for p in model.parameters())}
    manifest = adapter_manifest(cfg, "specific", t, data_hash, key, metrics, out_dir, extra)
    manifest.update(kind=full.FULL_KIND, trainable=counts,
                    train_embeddings=t.full.train_embeddings)
    if trainer.is_global_zero:
        full.save_full_model(model, load_tokenizer(cfg.backbone), dest, manifest)
        if reuse:
            full.link_or_copy_dir(dest, cached)
        # the Lightning checkpoint holds the weights again plus two Adam states (~1.3 GB for
        # SmolLM2-135M); nothing reads it once the model is saved
        shutil.rmtree(out_dir / stage / "checkpoints" / key, ignore_errors=True)
    del model, trainer
    return {"model": str(dest), "key": key, "reused": False, "metrics": metrics}


def _lora_seconds(out_dir: Path, data_hash: str | None) -> float | None:
    """S's training seconds (its manifest), when S trained on the same target data."""
    m = Path(out_dir) / "adapters" / "specific" / "manifest.json"
    if not m.is_file():
        return None
    manifest = read_json(m)
    if data_hash is not None and manifest.get("data_hash") != data_hash:
        return None
    return (manifest.get("metrics") or {}).get("seconds")


def score_full_model(cfg: DictConfig, out_dir: Path, model_dir: Path, fmt: str,
                     samples: list[Sample], scorers: ScorerConfig | None = None) -> torch.Tensor:
    """Scores `[n, C]` of the stored candidates: the eval stage's likelihood scorer, prompts of
    format `fmt`, on the model saved in `model_dir` (what is scored is what was saved).
    `scorers`: the parsed scorer settings (parsed from `cfg.eval` when None)."""
    device = resolve_device(cfg, "eval.device")
    dtype = torch_dtype(need(cfg, "backbone.dtype"))
    model = full.load_full_model(model_dir, dtype=dtype, device=device)
    place_backbone(model, device, cfg, "baselines/p5")
    items = load_items(Path(out_dir) / "data" / "items.tsv")
    pb = prompt_builder_from_config(cfg, load_tokenizer(cfg.backbone), items, fmt=fmt)
    sc = eval_config(cfg).scorers if scorers is None else scorers
    return build_scorer("likelihood", model, pb, sc).score(samples)


def run_p5(cfg: DictConfig, out_dir: Path, name: str, settings: dict[str, Any],
           samples: list[Sample]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Baselines-stage entry: train (or reuse) the full fine-tuning and score `samples`."""
    t = p5_tuning(cfg, settings, name)
    sc = eval_config(cfg).scorers  # the eval stage's scorer settings, parsed once
    fmt = t.objective
    done = train_or_reuse(cfg, out_dir, name, t)
    manifest = full.read_full_manifest(done["model"])
    metrics = manifest.get("metrics") or {}
    t0 = time.time()
    scores = score_full_model(cfg, Path(out_dir), Path(done["model"]), fmt, samples, sc)
    return scores, {
        "method": "P5-style: full fine-tuning on S's prompts and rows",
        "objective": fmt, "scorer": "likelihood",
        "normalize": bool(sc.normalize),
        "train_seconds": metrics.get("seconds"),
        "lora_train_seconds": _lora_seconds(Path(out_dir), manifest.get("data_hash")),
        "score_seconds": round(time.time() - t0, 2),
        "trainable_params": (manifest.get("trainable") or {}).get("trainable"),
        "train_embeddings": manifest.get("train_embeddings"),
        "steps": metrics.get("steps"), "loss_first": metrics.get("loss_first"),
        "loss_last": metrics.get("loss_last"), "tokens_per_s": metrics.get("tokens_per_s"),
        "model": done["model"], "key": done["key"], "reused": done["reused"],
        "is_global_zero": True,
    }
