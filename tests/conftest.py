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


def experiment_script(name: str):
    """`experiments/<name>.py` imported as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"exp_{name}", ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


REPLACED = ("backbone", "domain", "trainer", "logger")  # taken whole from a test's blocks


def run_config(blocks: dict | None = None, *overrides: str):
    """The config `python run.py <overrides>` composes (conf/run.yaml, Hydra; logger=none), with
    the hand-built `blocks` merged over it (`REPLACED` blocks replace the composed ones): a test
    that calls a stage with a small config still gets every other setting's one default from
    conf/, never one from code."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=["logger=none", *overrides])
    OmegaConf.set_struct(cfg, False)
    blocks = dict(blocks or {})
    for key in REPLACED:
        if key in blocks:
            cfg[key] = None
    return OmegaConf.merge(cfg, OmegaConf.create(blocks))


def tuning_block(**over) -> dict:
    """The shared keys of conf/tuning/default.yaml (seed 0) with `over` laid on top: the stage
    view of the tuning config, for tests that build the tuning module by hand."""
    root = OmegaConf.create({"seed": 0, "tuning": OmegaConf.load(ROOT / "conf" / "tuning" /
                                                                 "default.yaml")})
    t = OmegaConf.to_container(root.tuning, resolve=True)
    return {**{k: v for k, v in t.items() if k not in ("general", "specific")}, **over}


def tuning_cfg(stage: str = "specific", **over):
    """The typed tuning config of `stage` from conf/tuning/default.yaml (seed 0, the fp32
    trainer's precision) with `over` laid on its block: for tests that build the tuning module
    or call the training API by hand."""
    from reccocktail.models.tuning_config import parse_tuning, stage_tuning_cfg

    root = OmegaConf.create({"seed": 0, "tuning": OmegaConf.load(ROOT / "conf" / "tuning" /
                                                                 "default.yaml")})
    return parse_tuning({**stage_tuning_cfg(root.tuning, stage), "precision": "32-true", **over})


@pytest.fixture(scope="session")
def tiny_llama_cfg():
    return backbone_cfg("tiny_llama")


@pytest.fixture(scope="session")
def tiny_qwen2_cfg():
    return backbone_cfg("tiny_qwen2")


@pytest.fixture(scope="session")
def smollm2_cfg():
    # fp32: the exactness checks on the real model compare scoring paths to 1e-4, and `auto`
    # would run it in bf16 on a CPU with native bf16 (tests/test_bf16.py covers bf16)
    cfg = backbone_cfg("smollm2_135m")
    cfg.dtype = "float32"
    return cfg


@pytest.fixture(scope="session")
def tokenizer(smollm2_cfg):
    from reccocktail.models.backbone import load_tokenizer

    return load_tokenizer(smollm2_cfg)


@pytest.fixture(scope="module")
def sharp_llama(tiny_llama_cfg):
    """The tiny random Llama with sharper logits (embeddings x8), so orders are far from flat
    (a fresh copy per test module: the scaling stays inside it)."""
    import torch

    from reccocktail.models.backbone import load_backbone

    model, tok = load_backbone(tiny_llama_cfg)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(8.0)
    return model, tok
