"""`python -m reccocktail.report outputs/multirun/... [--out DIR]`: tables and plots over finished
runs. The code lives in `reccocktail.reporting` (see its `cli` module for the options); this
module keeps the documented command, and the names callers used to skip stale runs."""

from reccocktail.reporting.cli import build_report, main
from reccocktail.reporting.runs import collect_runs, stale_reason

__all__ = ["build_report", "collect_runs", "main", "stale_reason"]

if __name__ == "__main__":
    raise SystemExit(main())
