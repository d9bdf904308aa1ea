"""ROUGE-L recall as `rouge` 1.0.1 computes it, on cases worked out by hand."""

from __future__ import annotations

import pytest
from rouge import Rouge

from rwku.evaluation.metrics import NOANSWER, probe_score, rouge_l_recall


def test_recall_by_hand() -> None:
    # gold words {the, cat, on, a, mat} (5); the LCS with the prediction is "the cat on mat" (4).
    assert rouge_l_recall("the cat sat on the mat", "the cat on a mat") == pytest.approx(4 / 5, abs=1e-15)


def test_case_sensitive_and_punctuation_kept() -> None:
    assert rouge_l_recall("It was carrie", "Carrie") == 0.0
    assert rouge_l_recall("It was Carrie, I think", "Carrie") == 0.0  # "Carrie," is another word
    assert rouge_l_recall("It was Carrie", "Carrie") == 1.0
    # "Durham," vs "Portland,": only "Maine" is shared, 1 of 2 gold words.
    assert rouge_l_recall("Portland, Maine", "Durham, Maine") == 0.5


def test_periods_split_sentences() -> None:
    # The period splits "It is Carrie." into one sentence "It is Carrie": full recall.
    assert rouge_l_recall("It is Carrie.", "Carrie") == 1.0
    # "H.P. Lovecraft" becomes the sentences "H", "P", " Lovecraft": 3 gold words.
    assert rouge_l_recall("Lovecraft", "H.P. Lovecraft") == pytest.approx(1 / 3)


def test_distinct_words_counted_once() -> None:
    # The package keeps words in sets: the gold has 3 distinct words, all recovered.
    assert rouge_l_recall("King of the King", "King of the King") == 1.0
    assert rouge_l_recall("King", "King of the King") == pytest.approx(1 / 3)


def test_matches_the_package_call() -> None:
    pairs = [("the cat sat on the mat", "the cat on a mat"), ("a b c. d e", "e d. c"), ("x\ny z", "y x")]
    for hyp, ref in pairs:
        expected = Rouge().get_scores([hyp], [ref], avg=True)["rouge-l"]["r"]
        assert rouge_l_recall(hyp, ref) == expected


def test_empty_hypothesis_after_preprocessing_scores_zero() -> None:
    with pytest.raises(ValueError):
        Rouge().get_scores(["."], ["author"], avg=True)
    assert rouge_l_recall(".", "author") == 0.0
    assert rouge_l_recall("...", "author") == 0.0
    assert rouge_l_recall("", "author") == 0.0
    assert probe_score(" . ", "author") == 0.0


def test_empty_gold_still_raises() -> None:
    with pytest.raises(ValueError):
        rouge_l_recall("some answer", "")


def test_probe_score_strips_and_uses_noanswer() -> None:
    assert NOANSWER == "NOANSWER"
    assert probe_score("  Carrie \n\n", "Carrie") == 1.0
    assert probe_score("\n  \t", "Carrie") == 0.0
    # The empty output is scored as the literal string "NOANSWER".
    assert probe_score("", "NOANSWER") == 1.0
    assert probe_score("   ", "NOANSWER") == 1.0
    assert probe_score("\nStephen King wrote it\n", "Stephen King") == rouge_l_recall(
        "Stephen King wrote it", "Stephen King"
    )
