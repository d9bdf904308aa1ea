"""Reasoning (Rea): BBH with the task's 3-shot chain-of-thought prompt, greedy, 256 tokens.

The answer is the first match of "[t|T]he answer is (.*?)\\." (else the whole output). Once
that regex has matched, nothing generated later can change the prediction, so generation of
that item stops there (``bbh_full_output`` turns this off). Items of one task share their
3-shot prompt and are grouped so it is computed once.

Known reference bug, kept available: the reference compares the prediction with each single
character of the answer. By default the exact match is computed correctly; both are stored
per item, and ``bbh_compat`` reports the reference's value.
"""

from __future__ import annotations

from rwku.evaluation.config import EvalConfig
from rwku.evaluation.metrics import bbh_answer_complete, bbh_exact_match, extract_bbh_answer
from rwku.evaluation.prompts import assistant_cue, bbh_user_text, with_prefix
from rwku.evaluation.suites.base import SuiteResult, mean100
from rwku.models.backend import GenerationRequest, LanguageModel

MAX_NEW_TOKENS = 256


def build_prompt(lm: LanguageModel, item, cfg: EvalConfig) -> str:
    user = with_prefix(bbh_user_text(item.cot, item.question), item.subject, cfg.prompt_prefix)
    return assistant_cue(lm.chat_prompt(user), "A:")


def run(lm: LanguageModel, data, cfg: EvalConfig) -> SuiteResult:
    items = data.bbh
    prompts = [build_prompt(lm, it, cfg) for it in items]
    stop_when = None if cfg.bbh_full_output else bbh_answer_complete
    outputs = lm.generate(
        [
            GenerationRequest(p, MAX_NEW_TOKENS, group=it.task, stop_when=stop_when)
            for p, it in zip(prompts, items)
        ],
        stop_token_ids=[],  # the reference passes no stop sequences here: eos only
        desc="bbh: generate",
    )
    records = []
    for it, prompt, out in zip(items, prompts, outputs):
        pred = extract_bbh_answer(out)
        records.append(
            {
                "task": it.task,
                "prompt": prompt,
                "raw_output": out,
                "prediction": pred,
                "gold": it.answer,
                "em": bbh_exact_match(pred, it.answer),
                "em_as_coded": bbh_exact_match(pred, it.answer, compat=True),
            }
        )
    em = mean100(r["em"] for r in records)
    em_coded = mean100(r["em_as_coded"] for r in records)
    return SuiteResult(
        scores={
            "em": em_coded if cfg.bbh_compat else em,
            "em_correct": em,
            "em_as_coded": em_coded,
            "n": len(records),
        },
        items={"bbh": records},
    )
