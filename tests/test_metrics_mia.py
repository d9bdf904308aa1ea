"""Membership-inference formulas on a tiny hand-made example (3 tokens, vocabulary of 4)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rwku.evaluation.metrics import MIA_KEYS, mia_scores, token_stats_from_logits

LOGITS = [
    [2.0, 0.5, -1.0, 0.0],
    [0.0, 0.0, 3.0, 1.0],
    [-0.5, 1.5, 0.25, 1.0],
]
TARGETS = [1, 2, 0]
TEXT = "a tiny text"

EXPECTED_KEYS = [
    "loss",
    "zlib",
    "mink_0.1",
    "mink_0.2",
    "mink_0.3",
    "mink_0.4",
    "mink_0.5",
    "mink_0.6",
    "mink_0.7",
    "mink_0.8",
    "mink_0.9",
    "mink_1.0",
    "mink++_0.1",
    "mink++_0.2",
    "mink++_0.3",
    "mink++_0.4",
    "mink++_0.5",
    "mink++_0.6",
    "mink++_0.7",
    "mink++_0.8",
    "mink++_0.9",
    "mink++_1.0",
]


def _by_hand() -> tuple[list[float], list[float], list[float]]:
    """Token log-prob, mu and sigma^2 per position, in float64 from the definitions."""
    logps, mus, sigmas2 = [], [], []
    for row, target in zip(LOGITS, TARGETS, strict=True):
        log_z = math.log(sum(math.exp(x) for x in row))
        logp = [x - log_z for x in row]
        p = [math.exp(v) for v in logp]
        mu = sum(pi * li for pi, li in zip(p, logp, strict=True))
        second = sum(pi * li * li for pi, li in zip(p, logp, strict=True))
        logps.append(logp[target])
        mus.append(mu)
        sigmas2.append(second - mu * mu)
    return logps, mus, sigmas2


def test_token_stats_by_hand() -> None:
    logps, mus, sigmas2 = _by_hand()
    lp, mu, s2 = token_stats_from_logits(torch.tensor(LOGITS), torch.tensor(TARGETS))
    assert lp.dtype == mu.dtype == s2.dtype == torch.float32
    assert lp.shape == mu.shape == s2.shape == (3,)
    np.testing.assert_allclose(lp.numpy(), logps, atol=1e-6)
    np.testing.assert_allclose(mu.numpy(), mus, atol=1e-6)
    np.testing.assert_allclose(s2.numpy(), sigmas2, atol=1e-6)


def test_token_stats_upcast_half_logits() -> None:
    lp, _, _ = token_stats_from_logits(torch.tensor(LOGITS, dtype=torch.float16), torch.tensor(TARGETS))
    assert lp.dtype == torch.float32


def test_scores_by_hand() -> None:
    logps, mus, sigmas2 = _by_hand()
    z = [(lp - mu) / math.sqrt(s2) for lp, mu, s2 in zip(logps, mus, sigmas2, strict=True)]
    stats = token_stats_from_logits(torch.tensor(LOGITS), torch.tensor(TARGETS))
    scores = mia_scores(*stats, text=TEXT)
    assert list(scores) == EXPECTED_KEYS == list(MIA_KEYS)

    loss = sum(logps) / 3
    assert scores["loss"] == pytest.approx(loss, abs=1e-6)
    assert scores["zlib"] == pytest.approx(loss / len(zlib.compress(TEXT.encode("utf-8"))), abs=1e-7)

    # k = int(3 * ratio): 0 for 0.1..0.3 (3 * 0.3 == 0.8999...), 1 for 0.4..0.6, 2 for 0.7..0.9, 3.
    sizes = {0.1: 0, 0.2: 0, 0.3: 0, 0.4: 1, 0.5: 1, 0.6: 1, 0.7: 2, 0.8: 2, 0.9: 2, 1.0: 3}
    low_lp, low_z = sorted(logps), sorted(z)
    for ratio, k in sizes.items():
        if k == 0:
            assert math.isnan(scores[f"mink_{ratio}"])
            assert math.isnan(scores[f"mink++_{ratio}"])
        else:
            assert scores[f"mink_{ratio}"] == pytest.approx(sum(low_lp[:k]) / k, abs=1e-6)
            assert scores[f"mink++_{ratio}"] == pytest.approx(sum(low_z[:k]) / k, abs=1e-5)
    assert scores["mink_1.0"] == pytest.approx(scores["loss"], abs=1e-6)


def test_mean_nll_given_and_numpy_inputs() -> None:
    lp, mu, s2 = token_stats_from_logits(torch.tensor(LOGITS), torch.tensor(TARGETS))
    from_torch = mia_scores(lp, mu, s2, TEXT, mean_nll=1.25)
    from_numpy = mia_scores(lp.numpy(), mu.numpy(), s2.numpy(), TEXT, mean_nll=1.25)
    assert from_torch["loss"] == -1.25
    assert from_torch["zlib"] == -1.25 / len(zlib.compress(TEXT.encode("utf-8")))
    assert from_torch.keys() == from_numpy.keys()
    for key in from_torch:
        a, b = from_torch[key], from_numpy[key]
        assert (math.isnan(a) and math.isnan(b)) or a == b


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError):
        mia_scores(np.zeros(3), np.zeros(2), np.ones(3), TEXT)


def test_float32_like_the_reference() -> None:
    """Against the reference's own float32 torch -> numpy pipeline on random logits."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 50, generator=generator) * 4
    targets = torch.randint(0, 50, (37,), generator=generator)
    probs = F.softmax(logits, dim=-1)
    log_probs = F.log_softmax(logits, dim=-1)
    token_log_probs = log_probs.gather(dim=-1, index=targets.unsqueeze(-1)).squeeze(-1)
    mu = (probs * log_probs).sum(-1)
    sigma = (probs * torch.square(log_probs)).sum(-1) - torch.square(mu)
    mink_plus = (token_log_probs - mu) / sigma.sqrt()
    expected = {}
    for ratio in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]:
        k = int(len(token_log_probs) * ratio)
        expected[f"mink_{ratio}"] = np.mean(np.sort(token_log_probs.numpy())[:k]).item()
        expected[f"mink++_{ratio}"] = np.mean(np.sort(mink_plus.numpy())[:k]).item()

    scores = mia_scores(*token_stats_from_logits(logits, targets), text="x")
    for key, value in expected.items():
        assert scores[key] == value, key
