"""Fluency: weighted n-gram entropy of a generation (the ROME/MEMIT fluency measure).

A model damaged by unlearning tends to repeat itself; repetition lowers the entropy of the
distribution of its word bigrams and trigrams. The reference scores each AlpacaEval output
by ``mean([2/3 * H2, 4/3 * H3])`` where ``H_n`` is the base-2 entropy of the output's n-gram
frequency distribution, with words from ``nltk.word_tokenize``, and averages over outputs
(the paper reports it x100). The arithmetic below follows the reference's numpy calls
operation for operation, n-gram order included, so the floats are identical.
"""

from __future__ import annotations

from collections.abc import Iterable

import nltk
import numpy as np

__all__ = ["mean_ngram_entropy", "ngram_entropy"]

_NS = (2, 3)
_WEIGHTS = (2 / 3, 4 / 3)


def ngram_entropy(text: str) -> float:
    """Weighted mean of the bigram and trigram entropies (bits) of ``text``'s word tokens.

    ``H_n = sum(-p * log(p) / log(2))`` over the relative frequencies ``p`` of the distinct
    n-grams, in ``nltk.FreqDist`` order; the result is ``numpy.mean([H2 * 2/3, H3 * 4/3])``.

    A text with too few tokens for any n-gram (fewer than two words: the empty string, a
    single word) has an empty frequency array; numpy then gives ``sum([]) == 0.0`` (not nan:
    the division by a zero total yields an empty array without a warning), so that n-gram
    order contributes 0 and such a text scores 0.0, exactly as in the reference.

    Needs nltk's Punkt data; :func:`rwku.evaluation.metrics.punkt.ensure_punkt` provides it
    offline (once per process).
    """
    # Imported here, not at the top, so that `python -m rwku.evaluation.metrics.punkt` does
    # not find its own module already imported by the package.
    from .punkt import ensure_punkt

    ensure_punkt()
    tokens = nltk.word_tokenize(text)
    entropies = []
    for n in _NS:
        freq_dist = nltk.FreqDist(nltk.ngrams(tokens, n))
        freqs = np.array([freq for _, freq in freq_dist.items()])
        freqs = freqs / freqs.sum()
        entropies.append(np.sum(-freqs * np.log(freqs) / np.log(2)))
    weighted = np.array(entropies) * np.array(_WEIGHTS)
    return float(np.mean(weighted))


def mean_ngram_entropy(texts: Iterable[str]) -> float:
    """Arithmetic mean of :func:`ngram_entropy` over ``texts`` (the reference's ``agg="arith"``).

    No texts gives nan (numpy's mean of an empty list), with numpy's RuntimeWarning.
    """
    return float(np.mean([ngram_entropy(text) for text in texts]))
