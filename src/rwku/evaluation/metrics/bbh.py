"""BBH (reasoning): answer extraction from a chain-of-thought output, and exact match.

The BBH prompt asks the model to end with "so the answer is"; the reference takes the first
match of :data:`BBH_ANSWER_REGEX` as the prediction, or the whole stripped output when there
is none, and scores SQuAD-style exact match (:mod:`rwku.evaluation.metrics.qa`).

The reference has a bug: it passes the gold answer *string* where a list of references is
expected, so ``max`` runs over the answer's single characters. After normalisation a
prediction such as ``"(A)"`` (which normalises to nothing, "a" being an article) then matches
any answer that contains a punctuation character, e.g. ``"(C)"``, while ``"True"`` can never
match ``"True"`` (only ``"t"``, ``"r"``, ``"u"``, ``"e"``). :func:`bbh_exact_match` scores
correctly by default and reproduces the bug with ``compat=True``.
"""

from __future__ import annotations

import re

from .qa import exact_match

__all__ = [
    "BBH_ANSWER_REGEX",
    "NOANSWER",
    "bbh_answer_complete",
    "bbh_exact_match",
    "extract_bbh_answer",
]

#: The reference's extraction pattern, verbatim. ``[t|T]`` is a character class (it also
#: accepts "|"), and ``.`` does not cross a newline.
BBH_ANSWER_REGEX = r"[t|T]he answer is (.*?)\."
_ANSWER = re.compile(BBH_ANSWER_REGEX)

#: What the reference scores in place of an empty prediction.
NOANSWER = "NOANSWER"


def extract_bbh_answer(output: str) -> str:
    """The prediction the reference extracts from a raw generation.

    The first (leftmost) match's group, stripped; without a match the whole output,
    stripped; an empty result becomes ``"NOANSWER"``.
    """
    match = _ANSWER.search(output)
    prediction = match.group(1).strip() if match else output.strip()
    return prediction or NOANSWER


def bbh_exact_match(prediction: str, answer: str, compat: bool = False) -> float:
    """Exact match of an extracted prediction against the gold answer.

    ``compat=False`` (the default) is the evident intent: ``exact_match(prediction,
    [answer])``. ``compat=True`` reproduces the reference as coded, which compares with
    each single character of the answer: ``exact_match(prediction, list(answer))``.
    """
    references = list(answer) if compat else [answer]
    return exact_match(prediction, references)


def bbh_answer_complete(generated_text: str) -> bool:
    """True once the text generated so far already fixes the extracted prediction.

    Generation can then stop early without changing the score, because extending the text
    can no longer change the leftmost match of :data:`BBH_ANSWER_REGEX`:

    - the match found now ends at a period inside the text, and the lazy group stops at the
      first period after "the answer is ", so appending text does not alter it;
    - no match can start earlier in the longer text: an earlier "the answer is " lies wholly
      inside the current text (it starts before, and has the same length as, the matched
      one), and it did not match now only because a newline (which ``.`` does not cross)
      lies between it and every period, including the period that ends the current match;
      that newline is still there.

    Pass the decoded text of all tokens generated so far (the same decoding as the final
    output); the extracted prediction, and so the exact-match score, is then the same as
    after the full generation. Only the stored raw output becomes shorter.
    """
    return _ANSWER.search(generated_text) is not None
