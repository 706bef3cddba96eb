"""`python -m reccocktail.reporting` is `python -m reccocktail.report`."""

from reccocktail.reporting.cli import main

raise SystemExit(main())
