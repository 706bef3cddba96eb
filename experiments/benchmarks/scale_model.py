"""The 7B-shaped backbones of `gpu_scale.py`: random weights of a public architecture, their
FLOPs, the LoRA training setup of the pipeline, random adapters for the λ step, NF4."""

from __future__ import annotations

from typing import Any

import torch
from common import backbone_config
from omegaconf import OmegaConf

# -- shapes ---------------------------------------------------------------------------------
# Architecture numbers of the public configs (config.json on the hub) of the models that
# conf/backbone/<name>.yaml loads; the yaml gives the model name (checked) and the LoRA.
ARCHS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "qwen2_7b": ("qwen2", "Qwen/Qwen2-7B-Instruct", dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        max_position_embeddings=32768, tie_word_embeddings=False)),
    "llama31_8b": ("llama", "meta-llama/Llama-3.1-8B-Instruct", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rope_theta=500_000.0, rms_norm_eps=1e-5,
        max_position_embeddings=131072, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    # the bf16 anomaly (docs/benchmarks.md) was measured on this shape (SmolLM2-135M-Instruct)
    "smollm2_135m": ("llama", None, dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, rope_theta=100_000.0, rms_norm_eps=1e-5,
        max_position_embeddings=8192, tie_word_embeddings=True)),
}


TOKENIZER_VOCAB = 49152  # SmolLM2's, whose ids the sample file holds


def set_attention(model: Any, impl: str) -> None:
    fn = getattr(model, "set_attn_implementation", None)
    if callable(fn):
        fn(impl)
    else:
        model.config._attn_implementation = impl


def shape_config(shape: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(arch, transformers config kwargs, LoRA block) of a shape."""
    if shape == "tiny":
        b = backbone_config("tiny_llama")
        conf = OmegaConf.to_container(b.config)
        conf["vocab_size"] = TOKENIZER_VOCAB
        return str(b.arch), conf, OmegaConf.to_container(b.lora)
    arch, name, conf = ARCHS[shape]
    lora_from = shape if name else "qwen2_7b"
    b = backbone_config(lora_from)
    if name and b.pretrained != name:
        raise ValueError(f"conf/backbone/{shape}.yaml loads {b.pretrained}, the shape table "
                         f"holds {name}: update ARCHS")
    return arch, dict(conf), OmegaConf.to_container(b.lora)


def build_model(shape: str, dtype: torch.dtype, dev: torch.device, attn: str = "sdpa"):
    """A randomly initialised causal LM of the shape, built on `dev` (no host copy)."""
    import transformers

    arch, conf, _ = shape_config(shape)
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[arch]
    config = cls(**conf, attn_implementation=attn)
    torch.manual_seed(0)
    with torch.device(dev):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.requires_grad_(False)
    model.eval()
    return model


def flop_shape(shape: str) -> dict[str, int]:
    _, c, _ = shape_config(shape)
    d, L = c["hidden_size"], c["num_hidden_layers"]
    hd = c.get("head_dim") or d // c["num_attention_heads"]
    dq, dkv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    per_layer = d * dq + 2 * d * dkv + dq * d + 3 * d * c["intermediate_size"]
    return {"d": d, "L": L, "dq": dq, "V": c["vocab_size"], "N_body": L * per_layer}


def train_flops(f: dict, s: int, answer: int) -> tuple[float, float]:
    """(model FLOPs, with checkpointing's recomputation) of one training sequence: frozen
    weights need forward (2N) and input gradients (2N) per token, causal attention forward
    2·L·s²·dq and backward twice that, the LM head (2·d·V) only on the answer positions."""
    body, attn, head = 2 * f["N_body"] * s, 2 * f["L"] * s * s * f["dq"], 2 * f["d"] * f["V"] * answer
    model = 2 * body + 3 * attn + 2 * head
    return model, model + body + attn


def prefill_flops(f: dict, s: int) -> float:
    return 2 * f["N_body"] * s + 2 * f["L"] * s * s * f["dq"] + 2 * f["d"] * f["V"]


def lora_model(model: Any, lora: dict, quantized: bool):
    """The backbone as `reccocktail.models.tuning.build_peft_model` prepares it for training:
    LoRA (seeded), gradient checkpointing with use_reentrant=False, kbit preparation for NF4."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from reccocktail.models.backbone import lora_config

    kw = {"use_reentrant": False}
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs=kw)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    model.config.use_cache = False
    torch.manual_seed(0)
    cfg = lora_config({"lora": lora}, model.config.num_hidden_layers)  # the pipeline's LoRA
    peft_model = get_peft_model(model, cfg)
    peft_model.train()
    return peft_model


def unlora(peft_model: Any) -> Any:
    base = peft_model.unload()
    base.gradient_checkpointing_disable()
    base.config.use_cache = True
    base.requires_grad_(False)
    base.eval()
    return base


def random_adapters(model: Any, lora: dict) -> list:
    """Two random LoRA adapters (G, S) of the config's rank on the model's target modules."""
    from reccocktail.cocktail.mix import LoraAdapter

    targets = set(lora["target_modules"])
    out = []
    for seed, name in ((1, "general"), (2, "specific")):
        g = torch.Generator().manual_seed(seed)
        A, B = {}, {}
        for path, mod in model.named_modules():
            if path.rsplit(".", 1)[-1] in targets and hasattr(mod, "in_features"):
                key = f"base_model.model.{path}"
                A[key] = torch.randn(int(lora["r"]), mod.in_features, generator=g) * 0.01
                B[key] = torch.randn(mod.out_features, int(lora["r"]), generator=g) * 0.01
        cfg = {"r": int(lora["r"]), "lora_alpha": int(lora["alpha"]),
               "target_modules": sorted(targets), "peft_type": "LORA"}
        out.append(LoraAdapter(config=cfg, A=A, B=B, manifest={"init_seed": 0}, name=name))
    return out


def quantize_nf4(model: Any, dev: torch.device) -> Any:
    """The backbone's decoder linears as bitsandbytes NF4 (double quantisation, bf16 compute),
    in place, as `backbone.quantization=nf4` loads it (the LM head stays in bf16)."""
    import bitsandbytes as bnb

    for path, mod in list(model.named_modules()):
        if not isinstance(mod, torch.nn.Linear) or "layers." not in path:
            continue
        q = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None,
                              compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")
        q.weight = bnb.nn.Params4bit(mod.weight.data, requires_grad=False, quant_type="nf4",
                                     compress_statistics=True).to(dev)
        if mod.bias is not None:
            q.bias = torch.nn.Parameter(mod.bias.data, requires_grad=False)
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, q)
    model.is_loaded_in_4bit = True  # what transformers' bnb quantizer sets (peft reads it)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return model
