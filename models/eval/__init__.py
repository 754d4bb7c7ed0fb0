"""Offline evaluation: splits, metrics, baselines, the protocol that runs systems, report and plots.

Typical use::

    from models.eval import BASELINES, run_evaluation
    report = run_evaluation(load_log(folder), {"ease": BASELINES["ease"]}, split="user-last")
    print(report.test_users, report.positives, report.systems["ease"]["ndcg@10"])
"""

from models.eval.baselines import EASE, ItemKNN, Popularity, RandomScores, select_ease_lambda
from models.eval.metrics import MAX_K, candidate_recall, compute_metrics, top_k
from models.eval.protocol import (
    EvalContext,
    ListRecommender,
    Recommender,
    ScoringRecommender,
    SystemFactory,
    evaluate_system,
    recommend_lists,
    run_evaluation,
)
from models.eval.report import EvalReport
from models.eval.systems import BASELINES, DEFAULT_SYSTEMS
from models.split import SPLITS, Split, interaction_matrix, make_split

__all__ = [
    "BASELINES", "DEFAULT_SYSTEMS", "EASE", "MAX_K", "SPLITS", "EvalContext", "EvalReport", "ItemKNN",
    "ListRecommender", "Popularity", "RandomScores", "Recommender", "ScoringRecommender", "Split",
    "SystemFactory", "candidate_recall", "compute_metrics", "evaluate_system", "interaction_matrix",
    "make_split", "recommend_lists", "run_evaluation", "select_ease_lambda", "top_k",
]
