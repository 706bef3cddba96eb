"""Evaluation: candidate scorers, ranking metrics, reference rows, results tables, stage `eval`."""

from reccocktail.evaluation.metrics import RankingMetrics, random_expectation, ranking_metrics
from reccocktail.evaluation.report import record_results
from reccocktail.evaluation.scorers import (
    GenerateMatchScorer,
    LikelihoodScorer,
    NaiveLikelihoodScorer,
)

__all__ = [
    "GenerateMatchScorer",
    "LikelihoodScorer",
    "NaiveLikelihoodScorer",
    "RankingMetrics",
    "random_expectation",
    "ranking_metrics",
    "record_results",
]
