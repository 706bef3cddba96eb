"""Score several adapter variants without recomputing the layers none of them adapts.

With LoRA on the top N decoder layers (`backbone.lora.top_layers`, the CPU default), zero-shot,
G, S, WA and the cocktail all compute the very same hidden states up to the first adapted
layer: only the top layers differ. Scoring five variants recomputed those lower layers five
times (22 of SmolLM2's 30 layers, ~55 % of a scoring forward pass). Here the first variant
*records* the hidden state that enters the first adapted layer, for every forward call of the
scorer, and the later variants *replay* it: the lower layers become pass-throughs and the
boundary layer returns the recorded state. Scores are bit-identical to scoring each variant
on its own (the same tensors reach the same top layers), which a test checks.

Safety: calls are replayed in the order they were recorded, each replayed call must see the
same input shape and the same checksum of the embedding output as its recording (so another
sample order, batch size or prompt cannot pick up a wrong state), and every recording must be
consumed. The lower layers still add (empty) entries to the KV cache so that cache lengths and
positions are what the model expects; their values are never read.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder's layer list (the same objects under a PEFT wrapper)."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and name.split(".")[-1] == "layers":
            if best is None or len(mod) > len(best):
                best = mod
    if best is None:
        raise ValueError(f"{type(model).__name__}: no decoder `layers` list found")
    return best


def first_adapted_layer(adapter_dirs: Sequence[Path | None], num_layers: int) -> int:
    """The lowest layer any of the adapters changes (`num_layers` if none does): the layers
    below it are shared by every variant. An adapter on every layer (no `layers_to_transform`)
    gives 0, i.e. nothing to share."""
    first = num_layers
    for path in adapter_dirs:
        if path is None:
            continue
        cfg_path = Path(path) / "adapter_config.json"
        if not cfg_path.is_file():
            return 0  # not a PEFT LoRA folder we can read: assume it adapts everything
        conf = json.loads(cfg_path.read_text(encoding="utf-8"))
        layers = conf.get("layers_to_transform")
        if layers is None:
            return 0
        layers = [layers] if isinstance(layers, int) else list(layers)
        if not layers:
            return 0
        first = min(first, min(int(i) for i in layers))
    return first


def _cache_of(kwargs: dict) -> Any:
    # transformers renamed the decoder layers' `past_key_values` argument to `cache`
    return kwargs.get("cache", kwargs.get("past_key_values"))


class TrunkReuse:
    """Record the state entering layer `boundary` once, replay it for later variants."""

    def __init__(self, boundary: int) -> None:
        if boundary < 1:
            raise ValueError(f"TrunkReuse: boundary {boundary} leaves no shared layer")
        self.boundary = boundary
        self.records: list[tuple[float, torch.Tensor]] = []
        self.recorded = False
        self.replays = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.records)

    @contextlib.contextmanager
    def record(self, model: torch.nn.Module) -> Iterator[None]:
        """Score normally and keep, per forward call, the state entering the first adapted layer."""
        if self.recorded:
            raise RuntimeError("TrunkReuse.record: already recorded")
        layers = decoder_layers(model)
        self._check_layers(layers)
        top = self.boundary - 1
        orig = {i: layers[i].forward for i in {0, top}}
        pending: list[float] = []

        def wrap(i: int):
            def fwd(hidden_states, *args, **kwargs):
                if i == 0:
                    pending.append(float(hidden_states.double().sum()))
                out = orig[i](hidden_states, *args, **kwargs)
                if i == top:
                    state = out[0] if isinstance(out, tuple) else out
                    self.records.append((pending.pop(), state.detach().clone()))
                return out
            return fwd

        for i in orig:
            layers[i].forward = wrap(i)
        try:
            yield
            self.recorded = True
        except BaseException:
            self.records.clear()
            raise
        finally:
            for i in orig:
                del layers[i].forward

    @contextlib.contextmanager
    def replay(self, model: torch.nn.Module) -> Iterator[None]:
        """Score with the lower layers skipped: each forward call gets its recorded state."""
        if not self.recorded:
            raise RuntimeError("TrunkReuse.replay: nothing recorded yet")
        layers = decoder_layers(model)
        self._check_layers(layers)
        lower = list(layers[: self.boundary])
        step = {"i": 0, "checksum": None}

        def make(idx: int, layer: torch.nn.Module):
            attn = getattr(layer, "self_attn", None)
            layer_idx = getattr(attn, "layer_idx", idx)

            def fwd(hidden_states, *args, **kwargs):
                if idx == 0:
                    step["checksum"] = float(hidden_states.double().sum())
                cache = _cache_of(kwargs)
                if cache is not None and kwargs.get("use_cache", True) is not False:
                    b, t = hidden_states.shape[0], hidden_states.shape[1]
                    dummy = hidden_states.new_zeros(1, 1, 1, 1).expand(b, 1, t, 1)
                    cache.update(dummy, dummy, layer_idx)
                if idx < self.boundary - 1:
                    return hidden_states
                i = step["i"]
                if i >= len(self.records):
                    raise RuntimeError("trunk replay: more forward calls than were recorded")
                checksum, state = self.records[i]
                if state.shape != hidden_states.shape or checksum != step["checksum"]:
                    raise RuntimeError(
                        f"trunk replay: call {i} differs from its recording (shape "
                        f"{tuple(hidden_states.shape)} vs {tuple(state.shape)}); the variants "
                        "must score the same samples in the same order (eval.share_trunk=false "
                        "turns the reuse off)")
                step["i"] = i + 1
                return state
            return fwd

        for idx, layer in enumerate(lower):
            layer.forward = make(idx, layer)
        try:
            yield
            if step["i"] != len(self.records):
                raise RuntimeError(f"trunk replay: {len(self.records) - step['i']} recorded "
                                   "call(s) were not replayed")
            self.replays += 1
        finally:
            for layer in lower:
                del layer.forward

    def _check_layers(self, layers: torch.nn.ModuleList) -> None:
        if self.boundary > len(layers):
            raise ValueError(f"TrunkReuse: boundary {self.boundary} > {len(layers)} layers")
        for layer in layers[: self.boundary]:
            if any(n.endswith("lora_A") for n, _ in layer.named_modules()):
                raise ValueError("TrunkReuse: a layer below the boundary carries a LoRA; "
                                 "its output is not shared by every variant")


def plan(adapter_dirs: Sequence[Path | None], model: torch.nn.Module, enabled: bool,
         scorer_names: Sequence[str]) -> TrunkReuse | None:
    """A `TrunkReuse` when it saves work: at least two variants, likelihood scoring, and at
    least one layer below every adapter."""
    if not enabled or len(adapter_dirs) < 2 or "likelihood" not in scorer_names:
        return None
    layers = decoder_layers(model)
    boundary = first_adapted_layer(adapter_dirs, len(layers))
    if boundary < 1:
        return None
    boundary = min(boundary, len(layers))
    log.info("eval: the lower %d of %d layers are shared by the %d variants; computed once",
             boundary, len(layers), len(adapter_dirs))
    return TrunkReuse(boundary)
