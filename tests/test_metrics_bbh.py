"""BBH answer extraction, exact match (correct and as coded), and early-stop safety."""

from __future__ import annotations

import pytest

from rwku.evaluation.metrics import (
    BBH_ANSWER_REGEX,
    bbh_answer_complete,
    bbh_exact_match,
    extract_bbh_answer,
)


def test_regex_is_the_reference_pattern() -> None:
    assert BBH_ANSWER_REGEX == r"[t|T]he answer is (.*?)\."


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("Let's think. So the answer is (A).", "(A)"),
        ("the answer is (A).", "(A)"),
        ("The answer is  True . More text.", "True"),
        ("the answer is A. Then the answer is B.", "A"),  # first match wins
        ("the answer is A\nso the answer is B.", "B"),  # "." does not cross a newline
        ("|he answer is x.", "x"),  # [t|T] is a character class that also accepts "|"
        ("I think it is B", "I think it is B"),  # no match: whole output, stripped
        ("  no period: the answer is C\n", "no period: the answer is C"),
        ("the answer is .", "NOANSWER"),  # empty group
        ("   \n", "NOANSWER"),
        ("", "NOANSWER"),
    ],
)
def test_extract(output: str, expected: str) -> None:
    assert extract_bbh_answer(output) == expected


def test_exact_match_correct_vs_as_coded() -> None:
    # "(A)" normalises to nothing ("a" is an article); as coded it is compared with each
    # character of "(C)", and "(" also normalises to nothing: a false match.
    assert bbh_exact_match("(A)", "(C)") == 0.0
    assert bbh_exact_match("(A)", "(C)", compat=True) == 1.0
    # As coded, "True" is compared with "T", "r", "u", "e" and never matches.
    assert bbh_exact_match("True", "True") == 1.0
    assert bbh_exact_match("True", "True", compat=True) == 0.0
    # Multiple-choice letters other than (A) survive normalisation and match either way.
    assert bbh_exact_match("(B)", "(B)") == 1.0
    assert bbh_exact_match("(B)", "(B)", compat=True) == 1.0
    assert bbh_exact_match("(B)", "(D)") == 0.0
    assert bbh_exact_match("(B)", "(D)", compat=True) == 0.0
    assert bbh_exact_match("no", "No") == 1.0
    assert bbh_exact_match("no", "No", compat=True) == 0.0


def test_answer_complete() -> None:
    assert not bbh_answer_complete("")
    assert not bbh_answer_complete("Let's see. So the answer is (A")
    assert bbh_answer_complete("Let's see. So the answer is (A).")
    assert not bbh_answer_complete("the answer is A\n")


@pytest.mark.parametrize(
    "text",
    [
        "Step one. So the answer is (A). Q: next question. The answer is (B).",
        "the answer is A\nmore words\nso the answer is B. and the answer is C.",
        "The answer is X\n So the answer is Y.\nthe answer is Z.",
        "the answer is 3.5 apples.",
    ],
)
def test_prediction_fixed_once_complete(text: str) -> None:
    """At the first prefix where the regex matches, the prediction is already the final one."""
    final = extract_bbh_answer(text)
    first = next(i for i in range(len(text) + 1) if bbh_answer_complete(text[:i]))
    for end in range(first, len(text) + 1):
        assert bbh_answer_complete(text[:end])
        assert extract_bbh_answer(text[:end]) == final
