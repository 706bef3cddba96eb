"""Pre-flight: what a run needs from the machine, checked in seconds before the first stage.

The config check (`config_check.py`) finds misspelt keys; this module finds what the config
names but the machine lacks: a backbone that cannot be loaded (a local folder that is not
there, a hub name that is neither in the local Hugging Face cache nor reachable, an offline GGUF
package that is not installed), a dataset folder that does not exist, or a device that is not
there. Without it `python run.py +experiment=beauty_cold` on a machine without the weights
would spend minutes in the data stage before the general stage found out. Every problem is
reported at once, each naming its config key and the fix.

Only what the run's stages use is checked: the backbone for the stages that load it (general,
specific, mix, eval with LLM variants, the P5/One-Model-for-All baselines, `task=recommend`),
the dataset folders for the data stage, the device for every stage but data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import model_info, try_to_load_from_cache
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
from omegaconf import DictConfig, OmegaConf

from reccocktail.baselines.registry import BASELINES
from reccocktail.models.backbone import check_model_folder, locate_gguf, looks_like_path
from reccocktail.utils.device import resolve_device

log = logging.getLogger(__name__)

# Stages that load the backbone (eval and baselines only for some settings, see needs_backbone):
# every ingredient stage (`ingredients`) and the mix.
BACKBONE_STAGES = ("general", "specific", "mix")
NO_BACKBONE_STAGES = ("data", "eval", "baselines")
READER_PATH_KEYS = ("path", "reviews", "meta")  # what reccocktail.data.readers read from disk
HUB_TIMEOUT_S = 10.0
_TRUE = ("1", "on", "yes", "true")


class PreflightError(RuntimeError):
    """What the machine lacks for this run, one line per problem (key: what, fix)."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now: read from the environment, not
    from huggingface_hub's constants, which are fixed when it is first imported."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cached(repo_id: str) -> bool:
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def _hub_reachable(repo_id: str, timeout: float) -> str | None:
    """None when the hub answers for `repo_id`, else why not (one line)."""
    try:
        model_info(repo_id, timeout=timeout)
    except GatedRepoError:
        return (f"{repo_id!r} is gated on the hub: accept its licence on huggingface.co and "
                "log in (`hf auth login`), or")
    except RepositoryNotFoundError:
        return f"the hub has no model {repo_id!r} (misspelt?), or it is private:"
    except Exception as err:  # noqa: BLE001 - no network, DNS, proxy, timeout: all "unreachable"
        return f"the Hugging Face hub is unreachable ({type(err).__name__}) and"
    return None


def backbone_problem(bcfg: Any, key: str = "backbone", timeout: float = HUB_TIMEOUT_S,
                     weights: bool = True) -> str | None:
    """Why the backbone block `bcfg` cannot be loaded on this machine, or None. Cheap: it looks
    at files, the local hub cache and (online only) asks the hub; it loads nothing.
    `weights=False` asks for a tokenizer only (a tiny backbone's `tokenizer` block)."""
    source = bcfg.get("source")
    if source == "tiny":  # random weights; the tokenizer comes from another backbone block
        tok = bcfg["tokenizer"] if "tokenizer" in bcfg else None
        if tok is None:
            return f"{key}.tokenizer: missing (a tiny backbone borrows a tokenizer)"
        return backbone_problem(tok, f"{key}.tokenizer", timeout, weights=False)
    if source == "gguf":
        gguf = bcfg["gguf_path"] if "gguf_path" in bcfg else None
        if gguf:
            if not Path(str(gguf)).expanduser().is_file():
                return (f"{key}.gguf_path: {gguf} is not a file; point it at a .gguf file, or "
                        f"drop it to use the package {bcfg.get('gguf_package')!r}")
            return None
        try:
            locate_gguf(str(bcfg["gguf_package"]), bcfg.get("gguf_file"))
        except FileNotFoundError as err:  # names the package and the pip line
            return f"{key}.gguf_package: {err}"
        return None
    if source == "hub":
        name = bcfg["pretrained"] if "pretrained" in bcfg else None
        if not name:
            return f"{key}.pretrained: empty; a hub name or a local model folder is required"
        name = str(name)
        if looks_like_path(name):
            try:
                check_model_folder(Path(name).expanduser(), f"{key}.pretrained", weights=weights)
            except (FileNotFoundError, NotADirectoryError) as err:
                return str(err)
            return None
        if _hub_cached(name):
            return None
        if hub_offline():
            why = f"{name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, so"
        else:
            why = _hub_reachable(name, timeout)
            if why is None:
                return None
        short = Path(name).name
        return (f"{key}.pretrained: {why} the model cannot be loaded. Download it where the hub "
                f"is reachable (`hf download {name} --local-dir /path/to/{short}`) and set "
                f"{key}.pretrained=/path/to/{short}")
    return f"{key}.source: unknown value {source!r}; choose gguf, hub or tiny"


def _eval_uses_backbone(cfg: DictConfig) -> bool:
    variants = OmegaConf.select(cfg, "eval.variants") or []
    adapters = OmegaConf.select(cfg, "eval.adapters") or {}
    return bool(list(variants)) or bool(dict(adapters))


def _baselines_use_backbone(names: Iterable[str]) -> bool:
    return any(BASELINES[n].uses_backbone for n in names if n in BASELINES)


def needs_backbone(cfg: DictConfig, stages: list[str], baselines: Iterable[str] = ()) -> bool:
    """Whether any of `stages` (of `task=train`) loads the backbone."""
    return (any(s in BACKBONE_STAGES or s not in NO_BACKBONE_STAGES for s in stages)
            or ("eval" in stages and _eval_uses_backbone(cfg))
            or ("baselines" in stages and _baselines_use_backbone(baselines)))


def _sources(cfg: DictConfig) -> list[tuple[str, Any]]:
    """(config key, source block) of the target and of every general source."""
    out = []
    if OmegaConf.select(cfg, "domain.source") is not None:
        out.append(("domain.source", cfg.domain.source))
    general = OmegaConf.select(cfg, "domain.general.sources") or {}
    for name in general:
        out.append((f"domain.general.sources.{name}", general[name]))
    return out


def dataset_problems(cfg: DictConfig) -> list[str]:
    """Every reader path of the run's sources that does not exist. A path computed by a
    resolver that fetches its data on demand (ML-100k's `ml100k_dir`) is left to it."""
    problems = []
    for where, scfg in _sources(cfg):
        reader = scfg.get("reader") if scfg is not None else None
        if not reader:
            continue
        raw = OmegaConf.to_container(reader, resolve=False)
        for k in READER_PATH_KEYS:
            if k not in raw or raw[k] is None or "${ml100k_dir:" in str(raw[k]):
                continue
            path = Path(str(reader[k])).expanduser()
            if not path.exists():
                problems.append(
                    f"{where}.reader.{k}: {path} does not exist; put the dataset there or point "
                    f"paths.data_root (RECCOCKTAIL_DATA) or {where}.reader.{k} at your copy")
    return problems


def device_problems(cfg: DictConfig, override_keys: Iterable[str] = ()) -> list[str]:
    """The devices the trainer (and a stage's own device key) ask for, if this machine lacks
    them: a GPU run without CUDA, or more GPUs than there are."""
    problems = []
    for key in (None, *override_keys):
        try:
            resolve_device(cfg, key)
        except (RuntimeError, ValueError) as err:
            problems.append(str(err))
    acc = str(OmegaConf.select(cfg, "trainer.accelerator")).lower()
    devices = OmegaConf.select(cfg, "trainer.devices")
    if acc in ("gpu", "cuda") and torch.cuda.is_available():
        have = torch.cuda.device_count()
        if OmegaConf.is_config(devices):
            devices = OmegaConf.to_container(devices)
        want = None
        if isinstance(devices, int) and devices > have:
            want = f"{devices} GPUs"
        elif isinstance(devices, (list, tuple)) and devices and max(map(int, devices)) >= have:
            want = f"GPU indices {list(devices)}"
        if want:
            problems.append(f"trainer.devices={devices}: asks for {want}, this machine has "
                            f"{have}; set trainer.devices={have} (or fewer)")
    return list(dict.fromkeys(problems))  # the trainer's problem once, not once per key


def preflight_problems(cfg: DictConfig, stages: list[str], baselines: Iterable[str] = ()) -> list[str]:
    """Everything this machine lacks for running `stages` (or `task=recommend`) of `cfg`."""
    recommend = cfg.task == "recommend"
    problems: list[str] = []
    if recommend or needs_backbone(cfg, stages, baselines):
        bad = backbone_problem(cfg.backbone)
        if bad:
            problems.append(bad)
    if not recommend and "data" in stages:
        problems += dataset_problems(cfg)
    if recommend:
        adapter = OmegaConf.select(cfg, "recommend.adapter")
        if adapter and not Path(str(adapter)).expanduser().is_dir():
            problems.append(f"recommend.adapter: {adapter} is not a folder; point it at a run's "
                            "adapters/<name> (e.g. adapters/cocktail), or null for the bare backbone")
        problems += device_problems(cfg, ["recommend.device"])
    elif any(s != "data" for s in stages):
        problems += device_problems(cfg, ["eval.device"] if "eval" in stages else [])
    return problems


def check_preflight(cfg: DictConfig, stages: list[str], baselines: Iterable[str] = ()) -> None:
    """Raise `PreflightError` listing every problem, before any stage has done work."""
    problems = preflight_problems(cfg, stages, baselines)
    if problems:
        raise PreflightError("pre-flight check failed; nothing has run yet:\n"
                             + "\n".join(f"  - {p}" for p in problems))
    log.info("pre-flight: backbone, data folders and devices are there")
