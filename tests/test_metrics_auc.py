"""ROC AUC (Mann-Whitney, ties one half) on tiny cases."""

from __future__ import annotations

import math

import pytest

from rwku.evaluation.metrics import roc_auc


def test_auc_by_hand() -> None:
    assert roc_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert roc_auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    # pairs (pos, neg): (1,0) win, (1,2) loss, (3,0) win, (3,2) win -> 3/4
    assert roc_auc([1.0, 3.0], [0.0, 2.0]) == pytest.approx(0.75, abs=1e-15)
    # pairs: (2,2) tie, (2,1) win, (1,2) loss, (1,1) tie -> (1 + 0.5 + 0.5) / 4
    assert roc_auc([2.0, 1.0], [2.0, 1.0]) == pytest.approx(0.5, abs=1e-15)
    # (5 vs 5,5,1): 0.5+0.5+1 = 2 of 3
    assert roc_auc([5.0], [5.0, 5.0, 1.0]) == pytest.approx(2 / 3, abs=1e-15)


def test_auc_undefined_cases() -> None:
    assert math.isnan(roc_auc([], [1.0]))
    assert math.isnan(roc_auc([1.0], []))
    assert math.isnan(roc_auc([1.0, float("nan")], [0.0]))
