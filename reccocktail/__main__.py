"""`python -m reccocktail` is the `reccocktail` command (reccocktail/cli.py)."""

from reccocktail.cli import main

raise SystemExit(main())
