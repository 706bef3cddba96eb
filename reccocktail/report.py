"""`python -m reccocktail.report outputs/multirun/... [--out DIR]`: tables and plots over finished
runs. The code lives in `reccocktail.reporting` (see its `cli` module for the options); this
module keeps the documented command."""

from reccocktail.reporting.cli import build_report, main

__all__ = ["build_report", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
