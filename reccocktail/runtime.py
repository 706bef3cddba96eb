"""What every stage shares at run time: the run folder, the loggers, the Lightning Trainer.

Stages import these from here; the orchestrator (`pipeline.run`) only calls the stages, so no
stage imports the orchestrator or another stage.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from reccocktail.utils.config import need

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    out = need(cfg, "paths.output_dir")
    if out is None:
        raise ValueError("paths.output_dir is not set (run through run.py, or set it explicitly)")
    return Path(out)


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


_LOGGERS: dict[str, Any] = {}


def make_loggers(cfg: DictConfig) -> list:
    """The configured Lightning loggers, built once per run and shared by every stage."""
    key = str(output_dir(cfg))
    if key in _LOGGERS:
        return _LOGGERS[key]
    loggers = []
    for name, lcfg in (need(cfg, "logger") or {}).items():  # logger=none: {}
        if lcfg is None:
            continue
        lcfg = OmegaConf.to_container(lcfg, resolve=True)
        if "WandbLogger" in str(need(lcfg, "_target_", f"logger.{name}")):
            if os.environ.get("WANDB_MODE") == "disabled":
                continue
            if lcfg.get("offline") == "auto":  # WandbLogger's argument; `auto` is ours
                lcfg["offline"] = not _wandb_has_credentials()
        try:
            loggers.append(instantiate(lcfg))
        except Exception as err:  # a logger must never take a run down with it
            log.warning("logger %s could not be created (%s); continuing without it", name, err)
    _LOGGERS[key] = loggers
    return loggers


def make_trainer(cfg: DictConfig, out_dir: Path, stage: str, callbacks: list | None = None,
                 **overrides: Any):
    """A Lightning Trainer from `cfg.trainer`, logging to the run's loggers, rooted in the stage's
    folder; `overrides` win over the config (e.g. max_steps for a stage)."""
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    tcfg.update(overrides)
    tcfg.setdefault("default_root_dir", str(out_dir / stage))
    loggers = make_loggers(cfg)
    return instantiate(tcfg, logger=loggers if loggers else False, callbacks=callbacks or [])


def finish_loggers(cfg: DictConfig) -> None:
    for lg in _LOGGERS.pop(str(output_dir(cfg)), []):
        try:
            lg.finalize("success")
            if type(lg).__name__ == "WandbLogger":
                import wandb  # lazy: +0.5 s (wandb), needed by W&B runs only

                wandb.finish()
        except Exception as err:  # noqa: BLE001
            log.warning("closing logger %s failed: %s", type(lg).__name__, err)
