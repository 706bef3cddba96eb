"""Shared fixtures: where the real datasets are, the split/backbone cache, tiny backbones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import reccocktail  # noqa: F401  (registers the config resolvers)

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Converted backbones are cached across test runs (converting the GGUF costs ~20 s once).
os.environ.setdefault("RECCOCKTAIL_CACHE", str(ROOT / "outputs" / "cache"))


def data_root() -> Path:
    return Path(os.environ.get("RECCOCKTAIL_DATA", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (../shared/data, or RECCOCKTAIL_DATA); skip when absent."""
    root = data_root()
    if not (root / "ml-1m").exists():
        pytest.skip(f"real datasets not found at {root} (set RECCOCKTAIL_DATA)")
    return root


def backbone_cfg(name: str):
    cfg = OmegaConf.load(ROOT / "conf" / "backbone" / f"{name}.yaml")
    cfg.cache_dir = os.environ["RECCOCKTAIL_CACHE"]
    if "tokenizer" in cfg:
        cfg.tokenizer.cache_dir = os.environ["RECCOCKTAIL_CACHE"]
    return cfg


@pytest.fixture(scope="session")
def tiny_llama_cfg():
    return backbone_cfg("tiny_llama")


@pytest.fixture(scope="session")
def tiny_qwen2_cfg():
    return backbone_cfg("tiny_qwen2")


@pytest.fixture(scope="session")
def smollm2_cfg():
    return backbone_cfg("smollm2_135m")


@pytest.fixture(scope="session")
def tokenizer(smollm2_cfg):
    from reccocktail.models.backbone import load_tokenizer

    return load_tokenizer(smollm2_cfg)
