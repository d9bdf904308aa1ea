"""SQuAD-style answer normalisation, token F1 and exact match (TriviaQA, BBH).

The reference's TriviaQA and BBH evaluators share one ``Metric`` class (taken from
McGill-NLP/topiocqa) whose normalisation differs slightly from the original SQuAD script: it
lower-cases *before* removing punctuation and removes articles by replacing them with a
space. These functions reproduce it exactly, because the order matters for the articles
(``"(A)"`` normalises to the empty string: ``"a"`` is an article).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = ["exact_match", "normalize_answer", "token_f1"]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, replace the articles a/an/the by a space, squeeze
    whitespace: the reference's ``Metric._normalize_text``, step for step."""
    text = text.lower()
    text = "".join(char for char in text if char not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    if not text:
        return []
    return normalize_answer(text).split()


def _f1_one(prediction: str, reference: str) -> float:
    reference_tokens = _tokens(reference)
    prediction_tokens = _tokens(prediction)
    if not reference_tokens or not prediction_tokens:
        # If either is empty, F1 is 1 when both are, 0 otherwise.
        return float(reference_tokens == prediction_tokens)
    num_common = sum((Counter(reference_tokens) & Counter(prediction_tokens)).values())
    if num_common == 0:
        return 0.0
    precision = 1.0 * num_common / len(prediction_tokens)
    recall = 1.0 * num_common / len(reference_tokens)
    return (2 * precision * recall) / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """Token-level F1 of ``prediction`` against the best of ``references`` (answer aliases).

    Tokens are the whitespace-separated words of :func:`normalize_answer`; common tokens are
    counted with multiplicity. If the prediction or a reference has no token, that pair
    scores 1.0 when both have none and 0.0 otherwise. TriviaQA passes the raw, unstripped
    generation, as the reference does (normalisation makes stripping irrelevant).

    An empty ``references`` makes the reference crash (``max`` of nothing); here it scores
    0.0, since nothing can be matched.
    """
    return max((_f1_one(prediction, reference) for reference in references), default=0.0)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised token list of ``prediction`` equals that of any reference.

    An empty ``references`` scores 0.0 (the reference would crash on ``max`` of nothing).
    """
    prediction_tokens = _tokens(prediction)
    return max((float(_tokens(reference) == prediction_tokens) for reference in references), default=0.0)
