"""SQuAD-style normalisation, token F1 and exact match, by hand."""

from __future__ import annotations

import pytest

from rwku.evaluation.metrics import exact_match, normalize_answer, token_f1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Beatles!", "beatles"),
        ("  An  apple,  a DAY ", "apple day"),
        ("(A)", ""),  # "a" is an article once the parentheses are gone
        ("(B)", "b"),
        ("Theatre", "theatre"),  # articles only as whole words
        ("rock-'n'-roll", "rocknroll"),
        ("Café Über", "café über"),  # only ASCII punctuation is removed
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_token_f1_by_hand() -> None:
    # prediction tokens [big, red, dog], reference [red, dog]: P = 2/3, R = 1, F1 = 0.8.
    assert token_f1("the big red dog", ["red dog", "cat"]) == pytest.approx(0.8, abs=1e-15)
    # common tokens are counted with multiplicity: P = 1/2, R = 1, F1 = 2/3.
    assert token_f1("dog dog", ["dog"]) == pytest.approx(2 / 3, abs=1e-15)
    # max over references
    assert token_f1("Paris", ["London", "paris.", "Rome"]) == 1.0
    assert token_f1("Berlin", ["London"]) == 0.0


def test_token_f1_empty_cases() -> None:
    assert token_f1("", ["the"]) == 1.0  # both normalise to no tokens
    assert token_f1("a", [""]) == 1.0
    assert token_f1("x", ["an"]) == 0.0
    assert token_f1("", ["x"]) == 0.0
    assert token_f1("x", []) == 0.0


def test_token_f1_raw_output_with_leading_space() -> None:
    assert token_f1(" The answer: 1908\nQ: next", ["1908"]) == pytest.approx(2 * (1 / 4) / (1 / 4 + 1))


def test_exact_match() -> None:
    assert exact_match("The Beatles!", ["beatles"]) == 1.0
    assert exact_match("Beatles band", ["beatles"]) == 0.0
    assert exact_match(" beatles\n", ["Rolling Stones", "The  Beatles"]) == 1.0
    assert exact_match("x", []) == 0.0
    assert isinstance(exact_match("x", ["x"]), float)
