"""Conformance with the reference evaluators' run on the default model (../shared/conformance).

Marked slow: it loads SmolLM2-135M-Instruct and runs the full Stephen King evaluation once
(a few minutes on 2 cores). Checked: every prompt character for character, greedy outputs
equal to the reference's for at least 95% of generated items, MIA per-text scores to 1e-4,
and the per-item and suite scores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import CONFORMANCE, read_jsonl
from rwku.evaluation.config import EvalConfig
from rwku.evaluation.suites import bbh, fluency, mmlu, probes, triviaqa, truthfulqa

pytestmark = pytest.mark.slow
CFG = EvalConfig()


@pytest.fixture(scope="module")
def ref():
    if not CONFORMANCE.exists():
        pytest.skip("../shared/conformance is not available")
    return {
        name: read_jsonl(CONFORMANCE / f"{name}.jsonl")
        for name in (
            "forget",
            "neighbor",
            "mmlu",
            "bbh",
            "truthfulqa",
            "triviaqa",
            "fluency",
            "forget_mia",
            "retain_mia",
        )
    }


@pytest.fixture(scope="module")
def lm():
    from rwku.models.hf import HFLanguageModel
    from rwku.models.resolve import load_model

    loaded = load_model(None)
    return HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, progress=False)


@pytest.fixture(scope="module")
def sk(data_dir):
    from rwku.data import open_data

    return open_data(data_dir).load_target("Stephen King")


@pytest.fixture(scope="module")
def result(lm, sk, tmp_path_factory):
    from rwku.evaluation.runner import evaluate

    return evaluate(lm, sk, cfg=CFG)


def test_every_prompt_is_identical(lm, sk, ref):
    probes_all = [p for lv in ("level1", "level2", "level3") for p in sk.forget[lv]]
    assert [probes.build_prompt(lm, p, CFG) for p in probes_all] == [r["prompt"] for r in ref["forget"]]
    neighbors = [p for lv in ("level1", "level2") for p in sk.neighbor[lv]]
    assert [probes.build_prompt(lm, p, CFG) for p in neighbors] == [r["prompt"] for r in ref["neighbor"]]
    assert [mmlu.build_prompt(lm, it, CFG) for it in sk.mmlu] == [r["prompt"] for r in ref["mmlu"]]
    assert [bbh.build_prompt(lm, it, CFG) for it in sk.bbh] == [r["prompt"] for r in ref["bbh"]]
    assert [truthfulqa.build_prompt(lm, it, CFG) for it in sk.truthful] == [
        r["prompt"] for r in ref["truthfulqa"]
    ]
    assert [triviaqa.build_prompt(lm, it, CFG) for it in sk.triviaqa] == [
        r["prompt"] for r in ref["triviaqa"]
    ]
    assert [fluency.build_prompt(lm, it, CFG) for it in sk.fluency] == [r["prompt"] for r in ref["fluency"]]


def test_mmlu_candidates_and_truthfulqa_choices(lm, sk, ref):
    assert mmlu.letter_token_ids(lm) == ref["mmlu"][0]["candidate_token_ids"]
    for item, r in zip(sk.truthful, ref["truthfulqa"]):
        true, false = truthfulqa._split(item.mc2_choices, item.mc2_labels)
        assert true + false == r["completions"]


def _share_equal(ours: list[str], theirs: list[str]) -> float:
    assert len(ours) == len(theirs)
    return sum(a == b for a, b in zip(ours, theirs)) / len(theirs)


def test_greedy_outputs_match_reference(result, ref):
    items = result["items"]
    shares = {
        # the reference stores forget/neighbor outputs stripped (they are scored stripped)
        "forget": _share_equal(
            [i["output"].strip() for i in items["forget"]], [r["reference_output"] for r in ref["forget"]]
        ),
        "neighbor": _share_equal(
            [i["output"].strip() for i in items["neighbor"]], [r["reference_output"] for r in ref["neighbor"]]
        ),
        "triviaqa": _share_equal(
            [i["output"] for i in items["triviaqa"]], [r["reference_output"] for r in ref["triviaqa"]]
        ),
        "fluency": _share_equal(
            [i["output"] for i in items["fluency"]], [r["reference_output"] for r in ref["fluency"]]
        ),
        # BBH stops once the answer is final: our raw output is a prefix of the reference's
        "bbh": sum(
            r["reference_raw_output"].startswith(i["raw_output"])
            and i["prediction"] == r["reference_prediction"]
            for i, r in zip(items["bbh"], ref["bbh"])
        )
        / len(ref["bbh"]),
    }
    print("share of greedy outputs equal to the reference:", shares)
    total = sum(shares[k] * len(ref[k]) for k in shares) / sum(len(ref[k]) for k in shares)
    assert total >= 0.95, shares
    assert min(shares.values()) >= 0.9, shares


def test_scores_match_reference_suite_scores(result, ref):
    s = result["scores"]
    # Suite scores follow from the outputs; allow for the rare flipped output.
    assert s["forget"]["fb"] == pytest.approx(0.0, abs=5)
    assert s["neighbor"]["fb"] == pytest.approx(20.0, abs=5)
    mmlu_pred = [i["prediction"] for i in result["items"]["mmlu"]]
    assert _share_equal(mmlu_pred, [r["reference_prediction"] for r in ref["mmlu"]]) >= 0.97
    tq = result["items"]["truthfulqa"]
    assert _share_equal([i["mc1"] for i in tq], [r["reference_mc1"] for r in ref["truthfulqa"]]) >= 0.96
    assert np.allclose([i["mc2"] for i in tq], [r["reference_mc2"] for r in ref["truthfulqa"]], atol=1e-3)


def test_mia_per_text_scores_match_to_1e_4(result, ref):
    for split in ("forget_mia", "retain_mia"):
        ours, theirs = result["items"][split], ref[split]
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            for key, value in b.items():
                if key == "i":
                    continue
                assert math.isclose(a[key], value, abs_tol=1e-4), (split, b["i"], key, a[key], value)
    fm = result["scores"]["mia"]["fm"]["loss"]
    assert fm == pytest.approx(357.10922848094593, abs=0.01)  # −mean ll × 100, reference −3.5711
