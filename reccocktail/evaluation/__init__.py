"""Evaluation: candidate scorers, ranking metrics, reference rows, results tables, stage `eval`.

The names below load on first use (PEP 562), so that importing a torch-free submodule
(`evaluation.chance`) does not pull in torch, torchmetrics and the scorers.
"""

import importlib

_LAZY = {
    "RankingMetrics": "metrics",
    "ranking_metrics": "metrics",
    "random_expectation": "chance",
    "record_results": "results",
    "GenerateMatchScorer": "scorers",
    "LikelihoodScorer": "scorers",
    "NaiveLikelihoodScorer": "scorers",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
