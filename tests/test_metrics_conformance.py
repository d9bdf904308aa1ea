"""The metric functions give the reference's per-item scores on its own outputs.

Ground truth: the conformance fixture (the RWKU reference evaluators run on SmolLM2-135M-
Instruct for Stephen King), read from ``../shared`` beside the repository. Skipped when it
is not there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from rwku.errors import RwkuError
from rwku.evaluation.metrics import (
    bbh_answer_complete,
    bbh_exact_match,
    exact_match,
    extract_bbh_answer,
    mean_ngram_entropy,
    ngram_entropy,
    probe_score,
    token_f1,
)
from rwku.evaluation.metrics.punkt import ensure_punkt

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "stephen-king-smollm2"


def _rows(name: str) -> list[dict[str, Any]]:
    path = FIXTURE / name
    if not path.is_file():
        pytest.skip(f"conformance fixture not found: {path}")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    path = FIXTURE / "meta.json"
    if not path.is_file():
        pytest.skip(f"conformance fixture not found: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("suite", ["forget", "neighbor"])
def test_probe_scores(suite: str, meta: dict[str, Any]) -> None:
    rows = _rows(f"{suite}.jsonl")
    assert len(rows) == sum(
        v for k, v in meta["records_for_target"].items() if k.startswith(f"{suite}_level")
    )
    by_level: dict[str, list[float]] = {}
    for row in rows:
        # reference_output is stored as generated (here never with surrounding whitespace);
        # probe_score strips it and substitutes NOANSWER as the reference does.
        score = probe_score(row["reference_output"], row["gold"])
        assert score == row["reference_rouge_l_recall"], row["i"]
        by_level.setdefault(row["level"], []).append(score)
    for level, scores in by_level.items():
        # the package's avg=True sums in item order, then divides by the count
        assert sum(scores) / len(scores) == meta["suite_scores"][suite][f"level{level}_rouge_l_r"]


def test_bbh(meta: dict[str, Any]) -> None:
    rows = _rows("bbh.jsonl")
    assert len(rows) == meta["records_for_target"]["retain_bbh"]
    as_coded, correct = [], []
    for row in rows:
        raw = row["reference_raw_output"]
        prediction = extract_bbh_answer(raw)
        assert prediction == row["reference_prediction"], row["i"]
        assert bbh_exact_match(prediction, row["gold"], compat=True) == row["reference_em_as_coded"], row["i"]
        assert bbh_exact_match(prediction, row["gold"]) == row["em_answer_as_list"], row["i"]
        as_coded.append(row["reference_em_as_coded"])
        correct.append(row["em_answer_as_list"])
        # stopping at the first prefix that completes the answer would not change it
        if bbh_answer_complete(raw):
            first = next(i for i in range(len(raw) + 1) if bbh_answer_complete(raw[:i]))
            assert extract_bbh_answer(raw[:first]) == prediction
    assert sum(as_coded) / len(as_coded) == pytest.approx(meta["suite_scores"]["bbh"]["em"], abs=1e-15)
    assert (sum(as_coded), sum(correct)) == (4, 10)


def test_triviaqa(meta: dict[str, Any]) -> None:
    rows = _rows("triviaqa.jsonl")
    f1s, ems = [], []
    for row in rows:
        f1 = token_f1(row["reference_output"], row["answers"])
        em = exact_match(row["reference_output"], row["answers"])
        assert f1 == row["reference_f1"], row["i"]
        assert em == row["reference_em"], row["i"]
        f1s.append(f1)
        ems.append(em)
    assert sum(f1s) / len(f1s) == pytest.approx(meta["suite_scores"]["triviaqa"]["f1"], abs=1e-15)
    assert sum(ems) / len(ems) == meta["suite_scores"]["triviaqa"]["em"]


def test_fluency(meta: dict[str, Any]) -> None:
    rows = _rows("fluency.jsonl")
    try:
        ensure_punkt()
    except RwkuError as error:
        pytest.skip(f"punkt data unavailable: {error}")
    for row in rows:
        assert ngram_entropy(row["reference_output"]) == pytest.approx(row["reference_entropy"], abs=1e-9)
    mean = mean_ngram_entropy(row["reference_output"] for row in rows)
    assert mean == pytest.approx(meta["suite_scores"]["fluency"]["entropy"], abs=1e-9)


@pytest.mark.parametrize("suite", ["forget_mia", "retain_mia"])
def test_mia_rows_consistent_with_formulas(suite: str, meta: dict[str, Any]) -> None:
    """Without a model we can check the fixture against the formulas' invariants only."""
    rows = _rows(f"{suite}.jsonl")
    assert len(rows) == meta["records_for_target"][suite]
    for row in rows:
        # mink_1.0 is the mean token log-prob: the model's loss up to float32 rounding
        assert row["mink_1.0"] == pytest.approx(row["loss"], abs=1e-5)
        mink = [row[f"mink_{r}"] for r in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)]
        assert all(not math.isnan(v) for v in mink)
        assert mink == sorted(mink)  # the mean of a growing lowest-k set can only rise
    for key, value in meta["suite_scores"][suite].items():
        assert sum(row[key] for row in rows) / len(rows) == pytest.approx(value, abs=1e-12)
