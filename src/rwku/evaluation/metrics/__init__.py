"""Metric functions of the RWKU benchmark: pure functions on model outputs, no model.

Each metric lives in its own module and reproduces the reference implementation's numbers
(github ``jinzhuoran/RWKU``); where the reference has a bug, the correct score is the default
and the reference's value is available under a named compatibility option.
"""

from .auc import roc_auc
from .bbh import BBH_ANSWER_REGEX, bbh_answer_complete, bbh_exact_match, extract_bbh_answer
from .entropy import mean_ngram_entropy, ngram_entropy
from .mia import MIA_KEYS, MINK_RATIOS, mia_scores, token_stats_from_logits
from .qa import exact_match, normalize_answer, token_f1
from .rouge import NOANSWER, probe_score, rouge_l_recall
from .truthfulqa import mc1, mc2


def __getattr__(name: str) -> object:
    # ``ensure_punkt`` is loaded on first use, so that ``python -m
    # rwku.evaluation.metrics.punkt`` does not import its own module twice.
    if name == "ensure_punkt":
        from .punkt import ensure_punkt

        return ensure_punkt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BBH_ANSWER_REGEX",
    "MIA_KEYS",
    "MINK_RATIOS",
    "NOANSWER",
    "bbh_answer_complete",
    "bbh_exact_match",
    "ensure_punkt",
    "exact_match",
    "extract_bbh_answer",
    "mc1",
    "mc2",
    "mean_ngram_entropy",
    "mia_scores",
    "ngram_entropy",
    "normalize_answer",
    "probe_score",
    "roc_auc",
    "rouge_l_recall",
    "token_f1",
    "token_stats_from_logits",
]
