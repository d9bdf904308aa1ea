"""General ability (Gen): 5-shot MMLU, prediction = argmax over the four letter tokens.

Items of one task share their whole 5-shot header, so they are grouped by task and the
header's KV cache is computed once per task.
"""

from __future__ import annotations

import numpy as np

from rwku.evaluation.config import EvalConfig
from rwku.evaluation.prompts import MMLU_LETTERS, PROBE_ASSISTANT_PREFIX, mmlu_user_text, with_prefix
from rwku.evaluation.suites.base import SuiteResult, mean100
from rwku.models.backend import LanguageModel


def letter_token_ids(lm: LanguageModel) -> list[int]:
    """The reference's candidates: the last token of " A", " B", " C", " D"."""
    return [lm.encode(" " + letter, add_special_tokens=False)[-1] for letter in MMLU_LETTERS]


def build_prompt(lm: LanguageModel, item, cfg: EvalConfig) -> str:
    user = mmlu_user_text(item.task, item.question, item.choices, item.examples)
    return lm.chat_prompt(with_prefix(user, item.subject, cfg.prompt_prefix)) + PROBE_ASSISTANT_PREFIX


def run(lm: LanguageModel, data, cfg: EvalConfig) -> SuiteResult:
    items = data.mmlu
    prompts = [build_prompt(lm, it, cfg) for it in items]
    logprobs = lm.next_token_logprobs(prompts, letter_token_ids(lm), groups=[it.task for it in items])
    records = []
    for it, prompt, lp in zip(items, prompts, logprobs):
        pred = int(np.argmax(lp))
        records.append(
            {
                "task": it.task,
                "prompt": prompt,
                "prediction": pred,
                "gold": it.answer,
                "correct": pred == it.answer,
                "letter_logprobs": [float(x) for x in lp],
            }
        )
    return SuiteResult(
        scores={"acc": mean100(float(r["correct"]) for r in records), "n": len(records)},
        items={"mmlu": records},
    )
