"""Where the backbone runs: one rule for every stage, and no silent fall-back to the CPU.

The rule: `trainer.accelerator` decides (the device Lightning trains on is the device every
other computation uses too), unless a stage names its own device (`eval.device`,
`recommend.device`: anything but `auto`/null wins). `gpu`/`cuda` without a visible CUDA device
is an error, never a quiet CPU run; only `auto` may resolve to the CPU.

`place_backbone` is called at each stage's start (and in the mix stage again after
`trainer.fit`, whose teardown moves the module back to the CPU): it moves a model whose
parameters are elsewhere to the configured device, logs where it lives and refuses a backbone
of more than `placement.large_params` parameters on the CPU unless
`placement.allow_cpu_large=true` (a 7B model there takes hours per stage).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import OmegaConf

from reccocktail.utils.config import need

log = logging.getLogger(__name__)

_AUTO = ("", "auto", "null", "none")  # a stage override that defers to the trainer


def _cuda_index(devices: Any) -> int | None:
    """The first GPU index of `trainer.devices` when it names one ([1] or "1,")."""
    if OmegaConf.is_config(devices):
        devices = OmegaConf.to_container(devices)
    if isinstance(devices, (list, tuple)) and devices:
        return int(devices[0])
    if isinstance(devices, str) and "," in devices:
        first = devices.split(",")[0].strip()
        return int(first) if first.isdigit() else None
    return None


def _require_cuda(where: str) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(f"{where} asks for a GPU, but torch sees no CUDA device "
                           f"(torch {torch.__version__}); use trainer=cpu to run on the CPU on "
                           "purpose")


def resolve_device(cfg: Any, override_key: str | None = None) -> torch.device:
    """The device a stage computes on (the rule of this module's docstring)."""
    if override_key is not None:
        dev = need(cfg, override_key)
        if dev is not None and str(dev).strip().lower() not in _AUTO:
            device = torch.device(str(dev))
            if device.type == "cuda":
                _require_cuda(f"{override_key}={dev}")
            return device
    acc = str(need(cfg, "trainer.accelerator")).lower()
    if acc == "cpu":
        return torch.device("cpu")
    if acc in ("gpu", "cuda"):
        _require_cuda(f"trainer.accelerator={acc}")
        index = _cuda_index(need(cfg, "trainer.devices"))
        return torch.device("cuda") if index is None else torch.device("cuda", index)
    if acc == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if acc == "mps":
        return torch.device("mps")
    raise ValueError(f"trainer.accelerator: {acc!r} is not supported here; use cpu, gpu or auto")


def num_parameters(model: torch.nn.Module) -> int:
    """Parameter count; a 4-bit model is counted unpacked (transformers' num_parameters)."""
    fn = getattr(model, "num_parameters", None)
    if callable(fn):
        try:
            return int(fn())
        except Exception:  # noqa: BLE001 - a wrapper without the transformers API
            pass
    return sum(p.numel() for p in model.parameters())


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's (first) parameters live: where its inputs must go. Not a config rule
    (that is `resolve_device`), the state of a loaded model."""
    return next(model.parameters()).device


def _devices(model: torch.nn.Module) -> set[torch.device]:
    return {p.device for p in model.parameters()} | {b.device for b in model.buffers()}


def _same(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:<current> are the same place."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        return True
    return a.index == b.index


def place_backbone(model: torch.nn.Module, device: torch.device | str, cfg: Any,
                   where: str = "stage") -> torch.nn.Module:
    """`model` on `device` (moved when any tensor lives elsewhere); logs where it runs and
    refuses a large backbone on the CPU unless `placement.allow_cpu_large` is set (`cfg`: the
    run config, or any config holding the `placement:` block of conf/run.yaml)."""
    device = torch.device(device)
    n = num_parameters(model)
    limit = int(float(need(cfg, "placement.large_params")))
    if device.type == "cpu" and n > limit and not bool(need(cfg, "placement.allow_cpu_large")):
        raise RuntimeError(
            f"{where}: the backbone has {n / 1e9:.2f}B parameters (more than "
            f"placement.large_params={limit:.3g}) and would run on the CPU, which takes hours. "
            "Run on a GPU (trainer=gpu), or set placement.allow_cpu_large=true to run it on the "
            "CPU on purpose.")
    before = _devices(model)
    if any(not _same(d, device) for d in before):
        log.info("%s: moving the backbone from %s to %s", where,
                 ", ".join(sorted(map(str, before))), device)
        model.to(device)
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    log.info("%s: backbone on %s (%.3gB parameters, %s)", where, device, n / 1e9, "/".join(dtypes))
    return model
