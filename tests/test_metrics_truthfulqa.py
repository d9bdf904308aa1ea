"""TruthfulQA MC1 / MC2 from per-choice log-likelihoods."""

from __future__ import annotations

import math

import pytest

from rwku.evaluation.metrics import mc1, mc2


def test_mc1_first_true_must_beat_every_false() -> None:
    assert mc1([-1.0, -9.0], [-2.0, -3.0]) == 1.0
    assert mc1([-2.5, -0.1], [-2.0, -3.0]) == 0.0  # a later true choice does not count
    assert mc1([-2.0], [-2.0, -3.0]) == 0.0  # ties lose
    with pytest.raises(ValueError):
        mc1([], [-1.0])


def test_mc2_by_hand() -> None:
    true, false = [math.log(0.2), math.log(0.1)], [math.log(0.3)]
    assert mc2(true, false) == pytest.approx(0.3 / 0.6, abs=1e-15)
    assert mc2([0.0], [0.0, 0.0, 0.0]) == pytest.approx(0.25, abs=1e-15)
    assert mc2([-1.0], []) == 1.0
