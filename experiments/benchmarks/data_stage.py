"""Time and peak memory of the `data` stage for the paper's data settings, full size.

    python experiments/benchmarks/data_stage.py [--data-root ../shared/data] [ml1m_warm ...]

Each setting runs in a fresh process with an empty cache (so nothing is reused and the peak
resident memory is that setting's own), then once more to time the cache reuse. Prints a
markdown table. The experiment files' caps are null: all training prefixes are written.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ["ml1m_warm", "ml1m_cold", "beauty_warm"]


def child(experiment: str, data_root: str, cache: str, out: str) -> None:
    """Build one setting in this process and print the stage summary as JSON."""
    from hydra import compose, initialize_config_dir

    from reccocktail.data.stage import run_data_stage

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=[f"+experiment={experiment}", f"paths.data_root={data_root}",
                                        f"paths.cache_dir={cache}", "logger=none"])
    t0 = time.perf_counter()
    summary = run_data_stage(cfg, Path(out))
    summary["stage_seconds"] = round(time.perf_counter() - t0, 2)
    # this process's own peak resident memory (ru_maxrss is in KiB on Linux)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    summary["peak_rss_mib"] = round(ru.ru_maxrss / 1024, 1)
    summary["cpu_seconds"] = round(ru.ru_utime + ru.ru_stime, 2)  # whole process, imports too
    print(json.dumps(summary))


def measure(experiment: str, data_root: str, cache: str, out: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", experiment, "--data-root", data_root,
         "--cache", cache, "--out", out],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{experiment} failed:\n{stderr[-3000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = round(wall, 2)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("experiments", nargs="*", default=DEFAULT)
    ap.add_argument("--data-root", default=os.environ.get("RECCOCKTAIL_DATA",
                                                          str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--child")
    ap.add_argument("--cache")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.data_root, args.cache, args.out)
        return

    rows = []
    for exp in args.experiments:
        with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
            first = measure(exp, args.data_root, f"{tmp}/cache", f"{tmp}/run1")
            again = measure(exp, args.data_root, f"{tmp}/cache", f"{tmp}/run2")
            assert again["reused_cache"] and not first["reused_cache"]
        s, g = first["samples"], first.get("general_samples", {})
        rows.append(
            f"| {exp} | {s['train']:,} / {s['valid']:,} / {s['test']:,} | "
            f"{g.get('train', 0):,} / {g.get('valid', 0):,} | {first['stage_seconds']:.1f} | "
            f"{first['wall_seconds']:.1f} | {first['cpu_seconds']:.1f} | {first['peak_rss_mib']:.0f} | "
            f"{again['stage_seconds']:.2f} |"
        )
        print(f"{exp}: done", file=sys.stderr, flush=True)
    print(f"\ndata stage, full size, {os.cpu_count()} CPU cores\n")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (build/process s are wall clock)\n")
    print("| setting | train / valid / test | general train / valid | build s | "
          "process s | process CPU s | peak RSS MiB | reuse s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
