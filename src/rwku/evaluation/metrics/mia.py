"""Membership-inference scores of one text from its per-token statistics.

RWKU asks whether the model still "recognises" texts about the target: a model that has
seen (and not forgotten) a text gives it a higher likelihood. For each text the reference
computes, from one forward pass without chat template:

- ``loss``: the log-likelihood, minus the mean token negative log-likelihood;
- ``zlib``: ``loss`` divided by the zlib-compressed length of the text in bytes, which
  discounts texts that are likely simply because they are repetitive;
- ``mink_{k}`` (Min-K%): the mean of the lowest fraction ``k`` of the token log-probs, i.e.
  how the model does on the text's hardest tokens;
- ``mink++_{k}`` (Min-K%++): the same on the token log-probs standardised per position by
  the mean ``mu = sum_v p_v log p_v`` and variance ``sigma2 = sum_v p_v (log p_v)^2 - mu^2``
  of the log-prob under the model's own next-token distribution.

The reference does this in float32 torch, then sorts and averages with numpy on the float32
array (numpy keeps float32 for the mean). We compute in float32 the same way so the values
agree with the reference to float32 rounding.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MIA_KEYS", "MINK_RATIOS", "mia_scores", "token_stats_from_logits"]

#: The reference's ratios, written as literals so that the keys read "mink_0.3", not
#: "mink_0.30000000000000004".
MINK_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

#: Every key :func:`mia_scores` returns, in the reference's order.
MIA_KEYS: tuple[str, ...] = (
    "loss",
    "zlib",
    *(f"mink_{ratio}" for ratio in MINK_RATIOS),
    *(f"mink++_{ratio}" for ratio in MINK_RATIOS),
)

ArrayLike = np.ndarray | torch.Tensor


def _float32(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float32).numpy()
    return np.asarray(values, dtype=np.float32).reshape(-1)


def token_stats_from_logits(
    logits: torch.Tensor, target_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position token log-prob, ``mu`` and ``sigma2`` from next-token logits.

    ``logits`` is ``[T, V]`` and ``target_ids`` ``[T]``, already aligned: row ``t`` holds the
    logits that predict ``target_ids[t]`` (for a causal LM, ``logits[:-1]`` and
    ``input_ids[1:]``). Computed in float32 as the reference does, with ``softmax`` and
    ``log_softmax`` evaluated separately (not ``exp`` of the log-probs), so that ``mu`` and
    ``sigma2`` round the same way. Returns float32 tensors of shape ``[T]``.
    """
    logits = logits.to(torch.float32)
    probs = F.softmax(logits, dim=-1)
    log_probs = F.log_softmax(logits, dim=-1)
    index = target_ids.to(device=logits.device, dtype=torch.long).reshape(-1, 1)
    token_log_probs = log_probs.gather(dim=-1, index=index).squeeze(-1)
    mu = (probs * log_probs).sum(-1)
    sigma2 = (probs * torch.square(log_probs)).sum(-1) - torch.square(mu)
    return token_log_probs, mu, sigma2


def _lowest_mean(values: np.ndarray, ratio: float) -> float:
    k_length = int(len(values) * ratio)
    lowest = np.sort(values)[:k_length]
    if k_length == 0:
        # numpy's mean of an empty slice, without its RuntimeWarning.
        return float("nan")
    return float(np.mean(lowest).item())


def mia_scores(
    token_logprobs: ArrayLike,
    mu: ArrayLike,
    sigma2: ArrayLike,
    text: str,
    mean_nll: float | None = None,
) -> dict[str, float]:
    """LOSS, Zlib, Min-K% and Min-K%++ scores of one text, keys as in :data:`MIA_KEYS`.

    ``token_logprobs``, ``mu`` and ``sigma2`` are per predicted token (see
    :func:`token_stats_from_logits`). ``loss`` is ``-mean_nll`` when given (the reference
    uses the model's own loss, ``-loss.item()``), else the float32 mean of the token
    log-probs, which equals it up to float32 rounding. ``zlib`` is ``loss`` divided by
    ``len(zlib.compress(text.encode("utf-8")))``: pass the text exactly as it was scored.

    For ``k`` in :data:`MINK_RATIOS` the lowest ``int(T * k)`` values are averaged. When that
    is zero (a text with fewer than ``1/k`` predicted tokens; ``mink_0.1`` for under 10
    tokens) the set is empty and the score is nan, as numpy's mean gives in the reference.
    """
    log_probs = _float32(token_logprobs)
    mus = _float32(mu)
    sigmas2 = _float32(sigma2)
    if not (log_probs.shape == mus.shape == sigmas2.shape):
        raise ValueError(
            f"token_logprobs, mu and sigma2 must have one value per token; got shapes "
            f"{log_probs.shape}, {mus.shape}, {sigmas2.shape}"
        )

    if mean_nll is not None:
        loss = -float(mean_nll)
    elif len(log_probs) == 0:
        loss = float("nan")
    else:
        loss = float(np.mean(log_probs).item())
    scores: dict[str, float] = {
        "loss": loss,
        "zlib": loss / len(zlib.compress(text.encode("utf-8"))),
    }
    for ratio in MINK_RATIOS:
        scores[f"mink_{ratio}"] = _lowest_mean(log_probs, ratio)
    # torch gives nan/inf silently where rounding leaves sigma2 <= 0; so does this.
    with np.errstate(invalid="ignore", divide="ignore"):
        standardised = (log_probs - mus) / np.sqrt(sigmas2)
    for ratio in MINK_RATIOS:
        scores[f"mink++_{ratio}"] = _lowest_mean(standardised, ratio)
    return scores
