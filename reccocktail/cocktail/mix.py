"""Mixing operators of the LoRA cocktail: pure functions over PEFT adapter folders.

Two modes (docs/design.md §1.1):

- `ab` (the paper's eq. 7): `A_m = Σ λ_i A_i`, `B_m = Σ λ_i B_i`, same rank. Its weight update
  `B_m A_m` carries cross terms `λ_i λ_j B_i A_j`, meaningful only when the adapters started from
  the same LoRA initialisation, hence the warning on different `init_seed`s.
- `delta` (the authors' released code): `ΔW = Σ λ_i s_i B_i A_i`, written exactly as one LoRA of
  rank `Σ r_i` by stacking the factors.

Each adapter's own scaling `s_i` (alpha/r, or alpha/√r with rsLoRA) is kept exact: when the
scalings differ (and always in mode delta) it is folded into B and the result is written with
`lora_alpha = r`, i.e. scaling 1. Granularity `model` takes one λ vector; `layer` one λ vector
per LoRA module (a mapping from module name to λ). The same `mix_factors` function builds the
exported adapter and the differentiable merged forward of `reccocktail.cocktail.entropy`, so
what is learned is exactly what is written.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from reccocktail.models.adapters import (
    LoraAdapter,
    check_same_weights,
    recorded_weights,
    write_lora,
)
from reccocktail.utils.config import one_of

log = logging.getLogger(__name__)

MODES = ("ab", "delta")
GRANULARITIES = ("model", "layer")
_PREFIX = "base_model.model."

Lambdas = Sequence[float] | torch.Tensor | Mapping[str, Sequence[float] | torch.Tensor]


def model_module_name(key: str) -> str:
    """The module path inside the bare HF model for a PEFT module key."""
    return key[len(_PREFIX):] if key.startswith(_PREFIX) else key


def check_compatible(adapters: Sequence[LoraAdapter], mode: str) -> None:
    """Refuse adapters that cannot be mixed, naming the difference; warn on ab with seeds apart."""
    one_of(mode, MODES, "mix.mode")
    if len(adapters) < 2:
        raise ValueError(f"mixing needs at least 2 adapters, got {len(adapters)}")
    ref = adapters[0]
    for other in adapters[1:]:
        pair = f"adapters {ref.name!r} and {other.name!r}"
        check_same_weights({ref.name: ref.manifest, other.name: other.manifest})
        if ref.target_modules != other.target_modules:
            raise ValueError(f"{pair} have different target modules: "
                             f"{ref.target_modules} vs {other.target_modules}")
        if ref.modules != other.modules:
            diff = sorted(set(ref.modules) ^ set(other.modules))
            raise ValueError(f"{pair} adapt different modules, e.g. {diff[:3]}")
        if mode == "ab" and ref.rank != other.rank:
            raise ValueError(f"{pair} have different ranks (r={ref.rank} vs r={other.rank}); "
                             "mode ab needs equal ranks, mode delta does not")
        for m in ref.modules:
            for kind, x, y in (("lora_A", ref.A[m], other.A[m]), ("lora_B", ref.B[m], other.B[m])):
                same = x.shape == y.shape if mode == "ab" else (
                    x.shape[1] == y.shape[1] if kind == "lora_A" else x.shape[0] == y.shape[0])
                if not same:
                    raise ValueError(f"{pair} differ in the shape of {m}.{kind}: "
                                     f"{tuple(x.shape)} vs {tuple(y.shape)}")
    if mode == "ab":
        seeds = {a.name: a.manifest.get("init_seed") for a in adapters}
        if len({str(s) for s in seeds.values()}) > 1:
            warnings.warn(
                f"mode ab mixes adapters with different LoRA init seeds {seeds}: the cross terms "
                "λ_i λ_j B_i A_j then mix unrelated subspaces (mode delta has none)",
                stacklevel=2,
            )


def common_scaling(adapters: Sequence[LoraAdapter], mode: str) -> float | None:
    """The scaling kept in the result (ab with equal scalings), or None when folded into B."""
    if mode == "ab" and len({round(a.scaling, 12) for a in adapters}) == 1:
        return adapters[0].scaling
    return None


def mix_factors(As: Sequence[torch.Tensor], Bs: Sequence[torch.Tensor], scalings: Sequence[float],
                weights: Sequence[float] | torch.Tensor, mode: str,
                keep_scaling: float | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A_m, B_m, s_m) of one LoRA module, with the path `s_m · B_m A_m x`. Differentiable in
    `weights` (a tensor with grad works). `keep_scaling`: the common scaling of mode ab, left out of
    B; None folds each adapter's scaling into its B and returns s_m = 1."""
    w = [weights[i] for i in range(len(As))]
    if mode == "ab":
        A = sum(wi * a for wi, a in zip(w, As))
        if keep_scaling is not None:
            return A, sum(wi * b for wi, b in zip(w, Bs)), float(keep_scaling)
        return A, sum(wi * (s * b) for wi, s, b in zip(w, scalings, Bs)), 1.0
    if mode == "delta":
        A = torch.cat(list(As), dim=0)
        B = torch.cat([wi * (s * b) for wi, s, b in zip(w, scalings, Bs)], dim=1)
        return A, B, 1.0
    raise ValueError(f"mix.mode: unknown value {mode!r}; choose one of {list(MODES)}")


def lambdas_for(lambdas: Lambdas, module: str, n: int) -> torch.Tensor:
    """The λ vector of one module from a model-level vector or a per-module mapping."""
    if isinstance(lambdas, Mapping):
        if module in lambdas:
            lam = lambdas[module]
        elif model_module_name(module) in lambdas:
            lam = lambdas[model_module_name(module)]
        else:
            raise KeyError(f"granularity layer: no λ for module {model_module_name(module)!r}")
    else:
        lam = lambdas
    lam = torch.as_tensor(lam, dtype=torch.float64).flatten()
    if lam.numel() != n:
        raise ValueError(f"{lam.numel()} λ value(s) for {n} adapters (module {module!r})")
    return lam


def mix_adapters(adapters: Sequence[LoraAdapter], lambdas: Lambdas, mode: str = "ab",
                 check: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config, state dict) of the mixed adapter, ready for `write_lora`.

    `lambdas` is one λ vector (granularity model) or a mapping module -> λ vector (layer). The
    arithmetic runs in float64 and is cast back to the adapters' dtype.
    """
    if check:
        check_compatible(adapters, mode)
    keep = common_scaling(adapters, mode)
    scalings = [a.scaling for a in adapters]
    dtype = adapters[0].A[adapters[0].modules[0]].dtype
    tensors: dict[str, torch.Tensor] = {}
    rank = 0
    for m in adapters[0].modules:
        lam = lambdas_for(lambdas, m, len(adapters))
        A, B, _ = mix_factors([a.A[m].double() for a in adapters],
                              [a.B[m].double() for a in adapters], scalings, lam, mode, keep)
        tensors[f"{m}.lora_A.weight"] = A.to(dtype).contiguous()
        tensors[f"{m}.lora_B.weight"] = B.to(dtype).contiguous()
        rank = A.shape[0]
    config = dict(adapters[0].config)
    config.update(r=int(rank), rank_pattern={}, alpha_pattern={}, inference_mode=True)
    if keep is None:  # scaling folded into B: alpha = r gives PEFT scaling 1
        config.update(lora_alpha=int(rank), use_rslora=False)
    return config, tensors


def describe_lambdas(lambdas: Lambdas) -> dict[str, Any]:
    """λ as JSON: {"granularity": "model", "lambdas": [...]} or per module names."""
    if isinstance(lambdas, Mapping):
        return {"granularity": "layer",
                "lambdas": {model_module_name(k): [float(x) for x in torch.as_tensor(v).flatten()]
                            for k, v in lambdas.items()}}
    return {"granularity": "model", "lambdas": [float(x) for x in torch.as_tensor(lambdas).flatten()]}


def mix_and_save(adapters: Sequence[LoraAdapter], lambdas: Lambdas, mode: str, out: str | Path,
                 extra: Mapping[str, Any] | None = None) -> Path:
    """Mix `adapters` with `lambdas` and write the result as a `mixed` adapter folder."""
    config, tensors = mix_adapters(adapters, lambdas, mode)
    ref = adapters[0].manifest
    manifest = {
        "kind": "mixed",
        "backbone": ref.get("backbone"),
        "backbone_identity": recorded_weights(ref),
        "init_seed": ref.get("init_seed"),
        "data_hash": ref.get("data_hash"),
        "mode": mode,
        **describe_lambdas(lambdas),
        "sources": [{"name": a.name, "kind": a.manifest.get("kind"),
                     "init_seed": a.manifest.get("init_seed"),
                     "data_hash": a.manifest.get("data_hash")} for a in adapters],
        "config": {"r": config["r"], "lora_alpha": config["lora_alpha"]},
        "metrics": {},
        **dict(extra or {}),
    }
    return write_lora(out, config, tensors, manifest)
