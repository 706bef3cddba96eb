"""What a killed run leaves behind: a truncated checkpoint, hidden temporary folders.

`utils.io` writes every artifact beside its final path (`.name.xxxx.tmp`) and renames it into
place, so a kill never leaves a half-written file under a real name, but it may leave the
temporary one (and `.name.old` when it dies between the two renames of `atomic_dir`). Lightning
writes `last.ckpt` itself, so a kill (or a full disk) can leave it truncated.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

STALE_AFTER_S = 3600.0  # no writer of ours keeps a temporary entry untouched for an hour


class CheckpointError(ValueError):
    """A checkpoint file that cannot be resumed from (empty, truncated, not a checkpoint)."""


def check_checkpoint(path: str | os.PathLike, key: str | None = None) -> Path:
    """`path` if it is a complete torch checkpoint, else a CheckpointError naming it.

    `torch.save` (and so Lightning) writes a zip archive whose directory is at its end: a file
    cut short lacks it, which `zipfile` sees without reading the tensors. Without this check
    `trainer.fit(ckpt_path=...)` fails with a bare "Invalid argument" and no path. `key` is the
    config key the path came from (e.g. `tuning.ckpt_path`), named in the error when given."""
    path = Path(path)
    label = f"{key}: {path}" if key else str(path)
    if not loads_weights_only():
        raise CheckpointError(f"{label}: torch {_torch_version()} would unpickle the checkpoint "
                              "with code (torch.load loads weights only from torch 2.6); "
                              "install torch>=2.6 to resume")
    fix = ("; it was probably cut short by a killed run: delete it to train from the start, or "
           "point tuning.ckpt_path at an intact checkpoint")
    if not path.is_file():
        raise FileNotFoundError(f"{label}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{label}: the checkpoint is empty (0 bytes){fix}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{label}: not a complete checkpoint ({size} bytes; {err}){fix}") from err
    if not any(n.endswith("data.pkl") for n in names):
        raise CheckpointError(f"{label}: not a torch checkpoint (no data.pkl among {names[:5]}){fix}")
    return path


def _torch_version() -> str:
    import torch  # lazy: +1.1 s (torch) to the torch-free data stage

    return torch.__version__


def loads_weights_only() -> bool:
    """True when `torch.load` (which Lightning calls without `weights_only` on resume) loads
    tensors and plain containers only, never pickled code: torch >= 2.6."""
    major, minor = (int(x) for x in re.findall(r"\d+", _torch_version())[:2])
    return (major, minor) >= (2, 6)


def _age_s(entry: Path, now: float) -> float:
    """Seconds since anything in `entry` (a file, or a folder and its contents) was modified."""
    newest = entry.lstat().st_mtime
    if entry.is_dir() and not entry.is_symlink():
        for root, dirs, files in os.walk(entry):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except FileNotFoundError:
                    continue
    return now - newest


def clean_stale_tmp(folder: str | os.PathLike, prefix: str = "",
                    max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the hidden temporary entries (`.<prefix>*.tmp`, `.<prefix>*.old`) of `folder` that
    nothing has touched for `max_age_s`; returns what was removed.

    Age, not process ids, decides: the temporary names carry no owner, and a live writer (a
    concurrent run building the same data) keeps touching its folder, so an hour-old one is a
    kill's leftover."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for entry in sorted(folder.glob(f".{prefix}*")):
        if not entry.name.endswith((".tmp", ".old")):
            continue
        try:
            if _age_s(entry, now) < max_age_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another run cleaned it first
            continue
        removed.append(entry)
    if removed:
        log.info("removed %d stale temporary entr%s left by a killed run in %s: %s", len(removed),
                 "y" if len(removed) == 1 else "ies", folder, [p.name for p in removed])
    return removed
