"""The stage summary's peak RSS belongs to the process that reports it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reccocktail.utils import memory

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc only")
def test_child_started_by_a_large_parent_reports_its_own_peak():
    # ru_maxrss would report at least the parent's 600 MiB here: it survives fork and exec
    ballast = bytearray(600 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    assert memory.peak_rss_mib() > 600
    code = ("import json; from reccocktail.utils import memory; "
            "print(json.dumps(memory.peaks()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert json.loads(out)["peak_rss_mib"] < 300
    del ballast

