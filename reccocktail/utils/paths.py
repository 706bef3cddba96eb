"""Where the repository's own files are: its root (run.py, experiments/) and the Hydra
configs (`conf/`). The package is installed in editable mode (`make setup`), so both are found
from this file; one definition, so that no module derives them differently.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
