"""ROC AUC between two groups of scores (membership-inference summary).

The reference reports only the mean MIA score on forget members (FM) and retain members
(RM). Whether a score *separates* the two groups is better summarised by the area under the
ROC curve, as MUSE and open-unlearning do: the probability that a randomly drawn positive
scores higher than a randomly drawn negative, ties counting one half (the Mann-Whitney U
statistic divided by ``n_pos * n_neg``). 0.5 means the score cannot tell them apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

__all__ = ["roc_auc"]


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(score of a positive > score of a negative) + P(tie) / 2.

    Computed from average ranks (O(n log n)), exact for ties. Returns nan if either group is
    empty, or if any score is nan (a Min-K% score of a very short text can be nan), since
    the ordering is then undefined.
    """
    pos = np.asarray(positive, dtype=np.float64).reshape(-1)
    neg = np.asarray(negative, dtype=np.float64).reshape(-1)
    n_pos, n_neg = len(pos), len(neg)
    if n_pos == 0 or n_neg == 0 or np.isnan(pos).any() or np.isnan(neg).any():
        return math.nan
    ranks = rankdata(np.concatenate([pos, neg]), method="average")
    u_statistic = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u_statistic / (n_pos * n_neg))
