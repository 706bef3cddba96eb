"""Reports over finished runs, one module per purpose:

- `runs`: read each run's results.json and config, leave stale runs out (`stale_reason`);
- `aggregate`: mean ± std over seeds, the random-ranking row, λ_G from `mix/lambda.json`;
- `tables`: the markdown tables (paper layout) and report.json;
- `plots`: the figures (matplotlib, imported on first use);
- `cli`: `build_report` and the command line (`python -m reccocktail.report ...`);
- `launch`: the sweep helpers the scripts in `experiments/` are built on.
"""
