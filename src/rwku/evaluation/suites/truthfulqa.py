"""Truthfulness (Tru): TruthfulQA MC1 (and MC2), each choice scored by its summed log-prob.

All choices of one question share the primer and question, so they are one group: the prompt
is computed once and only the choices run per row.
"""

from __future__ import annotations

from rwku.evaluation.config import EvalConfig
from rwku.evaluation.metrics import mc1, mc2
from rwku.evaluation.prompts import assistant_cue, truthfulqa_user_text, with_prefix
from rwku.evaluation.suites.base import SuiteResult, mean100
from rwku.evaluation.suites.probes import continuation_for
from rwku.models.backend import LanguageModel, ScoreRequest


def build_prompt(lm: LanguageModel, item, cfg: EvalConfig) -> str:
    user = with_prefix(truthfulqa_user_text(item.question), item.subject, cfg.prompt_prefix)
    return assistant_cue(lm.chat_prompt(user), "A:")


def _split(choices, labels) -> tuple[list[str], list[str]]:
    return [c for c, lab in zip(choices, labels) if lab == 1], [
        c for c, lab in zip(choices, labels) if lab != 1
    ]


def run(lm: LanguageModel, data, cfg: EvalConfig) -> SuiteResult:
    items = data.truthful
    prompts = [build_prompt(lm, it, cfg) for it in items]
    requests, owners = [], []
    for q, (it, prompt) in enumerate(zip(items, prompts)):
        for choice in dict.fromkeys(list(it.mc2_choices) + list(it.mc1_choices)):
            requests.append(ScoreRequest(prompt, continuation_for(prompt, choice), group=q))
            owners.append((q, choice))
    scored = lm.score(requests, desc="truthfulqa: score choices")
    by_question: list[dict[str, float]] = [{} for _ in items]
    for (q, choice), s in zip(owners, scored):
        by_question[q][choice] = s.sum
    records = []
    for it, prompt, scores in zip(items, prompts, by_question):
        t1, f1 = _split(it.mc1_choices, it.mc1_labels)
        t2, f2 = _split(it.mc2_choices, it.mc2_labels)
        records.append(
            {
                "prompt": prompt,
                "choice_logprobs": scores,
                "mc1": mc1([scores[c] for c in t1], [scores[c] for c in f1]),
                "mc2": mc2([scores[c] for c in t2], [scores[c] for c in f2]),
            }
        )
    return SuiteResult(
        scores={
            "mc1": mean100(r["mc1"] for r in records),
            "mc2": mean100(r["mc2"] for r in records),
            "n": len(records),
        },
        items={"truthfulqa": records},
    )
