"""The prompts of `gpu_scale.py` as token ids: written once from the real data (a small file
that travels to a GPU machine), read back, or synthesised with the same lengths."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

from common import backbone_config
from scale_model import TOKENIZER_VOCAB

DOMAINS = {"ml1m": ("ml-1m", "movie", "watched"), "beauty": ("amazon-beauty", "beauty product", "bought")}


def write_samples(path: Path, n: int, data_root: Path) -> dict:
    """Token ids of `n` test-like samples per domain (prompt, 30 responses, target index)."""
    from common import recbole_samples

    from reccocktail.data.prompts import build_prompt_builder
    from reccocktail.models.backbone import load_tokenizer

    bcfg = backbone_config("smollm2_135m")
    bcfg.max_prompt_tokens = int(backbone_config("qwen2_7b").max_prompt_tokens)  # paper budget
    tok = load_tokenizer(bcfg)
    out: dict[str, Any] = {"tokenizer": "SmolLM2-135M-Instruct (chat template)",
                           "eos_token_id": int(tok.eos_token_id),
                           "pad_token_id": int(tok.pad_token_id), "domains": {}}
    for name, (folder, noun, verb) in DOMAINS.items():
        samples, items = recbole_samples(data_root, folder, n, seed=0)
        pb = build_prompt_builder(tok, items, {"prompt": {"noun": noun, "verb": verb}}, bcfg,
                                  max_title_tokens=32)
        out["domains"][name] = [{"prompt": pb.prompt_ids(s.history, s.candidates),
                                 "responses": [pb.response_ids(c) for c in s.candidates],
                                 "target": s.candidates.index(s.target)} for s in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        json.dump(out, fh, separators=(",", ":"))
    return out


def synthetic_samples(n: int, seed: int = 0) -> dict:
    """Random token ids with the lengths of real prompts (when neither file nor data is there)."""
    rng = random.Random(seed)
    doms = {}
    for name, (p_len, r_len) in {"ml1m": (520, 12), "beauty": (793, 21)}.items():
        doms[name] = [{"prompt": [rng.randrange(100, TOKENIZER_VOCAB) for _ in
                                  range(max(64, int(rng.gauss(p_len, 30))))],
                       "responses": [[rng.randrange(100, TOKENIZER_VOCAB) for _ in
                                      range(max(2, int(rng.gauss(r_len, 4))))] + [2]
                                     for _ in range(30)],
                       "target": rng.randrange(30)} for _ in range(n)]
    return {"tokenizer": "synthetic", "eos_token_id": 2, "pad_token_id": 2, "domains": doms}


def load_samples(path: Path | None, data_root: Path, n: int, cache: Path) -> tuple[dict, str]:
    """(samples, where they came from): the file at `path`, else written from `data_root` into
    `cache`, else synthetic."""
    if path is not None:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return json.load(fh), str(path)
    if (data_root / "ml-1m").exists() and (data_root / "amazon-beauty").exists():
        return write_samples(cache, n, data_root), str(data_root)
    return synthetic_samples(n), "synthetic (no --samples, no data)"


def stats(samples: list[dict]) -> dict:
    p = [len(s["prompt"]) for s in samples]
    r = [len(s["responses"][s["target"]]) for s in samples]
    c = [sum(len(x) for x in s["responses"]) for s in samples]
    return {"n": len(samples), "mean_prompt_tokens": round(sum(p) / len(p), 1),
            "min_prompt_tokens": min(p), "max_prompt_tokens": max(p),
            "mean_response_tokens": round(sum(r) / len(r), 1),
            "mean_candidate_tokens": round(sum(c) / len(c), 1)}
