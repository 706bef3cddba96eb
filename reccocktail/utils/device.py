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

`backbone.dtype: auto` is resolved here too (`resolve_dtype`): bfloat16 on a CPU whose flags
(/proc/cpuinfo) show native bf16 arithmetic (`avx512_bf16` or `amx_bf16`), else float32 (with a
log line saying why); on a GPU float32, the dtype the GPU path always loaded the small backbone
in (the trainer's `precision: bf16-mixed` adds the bf16 arithmetic there). The run resolves it
once (`resolve_backbone_dtype`), so cache keys, manifests and results rows record the dtype
that ran, never `auto`.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf, open_dict

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


# CPU flags that mean native bf16 arithmetic (AVX-512 BF16 dot products, AMX tiles)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def _read_cpuinfo() -> str:
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The `flags` of the first processor in /proc/cpuinfo (or of the text `cpuinfo`); empty
    where there is no such file (not Linux)."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_model(cpuinfo: str | None = None) -> str | None:
    """The processor's `model name` in /proc/cpuinfo (or in `cpuinfo`), None when absent."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name":
            return value.strip()
    return None


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (one of `BF16_CPU_FLAGS`)."""
    return bool(cpu_flags(cpuinfo) & set(BF16_CPU_FLAGS))


DTYPE_NAMES = ("float32", "bfloat16", "float16")


def resolve_dtype(name: Any, device: torch.device | str | None = None,
                  cpuinfo: str | None = None) -> str:
    """The backbone dtype `backbone.dtype` asks for on `device` (default: cuda when visible,
    else the CPU): the name itself, or for `auto` the rule of this module's docstring. `cpuinfo`
    replaces /proc/cpuinfo's text (tests)."""
    value = "float32" if name is None else str(name)
    if value != "auto":
        if value not in DTYPE_NAMES:
            raise ValueError(f"backbone.dtype: unknown value {value!r}; choose auto or one of "
                             f"{list(DTYPE_NAMES)}")
        return value
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind != "cpu":
        return "float32"
    if cpu_has_bf16(cpuinfo):
        return "bfloat16"
    log.info("backbone.dtype=auto: float32, because the CPU flags show no native bf16 (none of "
             "%s in /proc/cpuinfo); bf16 would be emulated and slower", ", ".join(BF16_CPU_FLAGS))
    return "float32"


def backbone_dtype(backbone_cfg: Any, device: torch.device | str | None = None) -> str:
    """The resolved dtype name of a backbone config (`dtype`, `auto` resolved)."""
    value = backbone_cfg.get("dtype") if hasattr(backbone_cfg, "get") else None
    return resolve_dtype(value, device)


# oneDNN, which runs bf16/fp16 matmuls on the CPU, keeps memory and builds kernels per input
# shape: with a new sequence length at every training batch the demo's bf16 peak RSS doubled
# (2.4 -> 5.0 GiB) and fixed shapes ran faster. Rounding a batch's width up to a multiple of
# this bounds the shapes (experiments/benchmarks/bf16_shapes.py; docs/benchmarks.md).
CPU_LOW_PRECISION_BUCKET = 64


def length_bucket(dtype: str, device: torch.device | str) -> int:
    """Tokens a training batch's width is rounded up to: `CPU_LOW_PRECISION_BUCKET` for a
    bf16/fp16 backbone on the CPU; 1 (no rounding) for fp32 or an accelerator."""
    if torch.device(device).type == "cpu" and dtype in ("bfloat16", "float16"):
        return CPU_LOW_PRECISION_BUCKET
    return 1


def model_length_bucket(model: torch.nn.Module) -> int:
    """`length_bucket` of a loaded model: its input embedding's dtype (the backbone's; LoRA
    factors may be float32) and device."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    weight = getattr(emb, "weight", None)
    if not isinstance(weight, torch.Tensor):
        weight = next(model.parameters())
    return length_bucket(str(weight.dtype).removeprefix("torch."), weight.device)


def resolve_backbone_dtype(cfg: Any) -> str | None:
    """Replace `backbone.dtype: auto` in the run config by the dtype it resolves to on the
    run's device, once at the run's start (cache keys, manifests and rows then record it);
    returns the dtype, None for a config without a backbone block."""
    bb = cfg.get("backbone") if hasattr(cfg, "get") else None
    if bb is None:
        return None
    if str(bb.get("dtype")) != "auto":
        return resolve_dtype(bb.get("dtype"))
    resolved = resolve_dtype("auto", resolve_device(cfg))
    with open_dict(cfg):
        cfg.backbone.dtype = resolved
    log.info("backbone.dtype=auto resolved to %s", resolved)
    return resolved
