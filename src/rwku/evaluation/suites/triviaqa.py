"""Factuality (Fac): TriviaQA with five fixed shots, greedy 30 tokens, token F1 (EM also kept).

Every prompt starts with the same few-shot block, so all items form one group. Scoring uses
the raw, unstripped output, as the reference does.
"""

from __future__ import annotations

from rwku.evaluation.config import EvalConfig
from rwku.evaluation.metrics import exact_match, token_f1
from rwku.evaluation.prompts import TRIVIAQA_ASSISTANT_PREFIX, triviaqa_user_text, with_prefix
from rwku.evaluation.suites.base import SuiteResult, cut_at_newline, has_content_line, mean100
from rwku.models.backend import GenerationRequest, LanguageModel
from rwku.models.hf import reference_stop_ids

MAX_NEW_TOKENS = 30


def build_prompt(lm: LanguageModel, item, cfg: EvalConfig) -> str:
    user = with_prefix(triviaqa_user_text(item.question), item.subject, cfg.prompt_prefix)
    return lm.chat_prompt(user) + TRIVIAQA_ASSISTANT_PREFIX


def run(lm: LanguageModel, data, cfg: EvalConfig) -> SuiteResult:
    items = data.triviaqa
    prompts = [build_prompt(lm, it, cfg) for it in items]
    stop_when = has_content_line if cfg.stop_at_newline else None
    outputs = lm.generate(
        [GenerationRequest(p, MAX_NEW_TOKENS, group="triviaqa", stop_when=stop_when) for p in prompts],
        stop_token_ids=reference_stop_ids(lm, ("<|eot_id|>",)),
        desc="triviaqa: generate",
    )
    if cfg.stop_at_newline:
        outputs = [cut_at_newline(o) for o in outputs]
    records = [
        {
            "prompt": p,
            "output": o,
            "answers": list(it.answers),
            "f1": token_f1(o, list(it.answers)),
            "em": exact_match(o, list(it.answers)),
        }
        for it, p, o in zip(items, prompts, outputs)
    ]
    return SuiteResult(
        scores={
            "f1": mean100(r["f1"] for r in records),
            "em": mean100(r["em"] for r in records),
            "n": len(records),
        },
        items={"triviaqa": records},
    )
