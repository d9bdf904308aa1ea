"""Fluency (Flu): AlpacaEval instructions, greedy 256 tokens, weighted 2/3-gram entropy (×100)."""

from __future__ import annotations

import numpy as np

from rwku.evaluation.config import EvalConfig
from rwku.evaluation.metrics import ensure_punkt, ngram_entropy
from rwku.evaluation.prompts import fluency_user_text, with_prefix
from rwku.evaluation.suites.base import SuiteResult
from rwku.models.backend import GenerationRequest, LanguageModel
from rwku.models.hf import reference_stop_ids

MAX_NEW_TOKENS = 256


def build_prompt(lm: LanguageModel, item, cfg: EvalConfig) -> str:
    return lm.chat_prompt(with_prefix(fluency_user_text(item.instruction), item.subject, cfg.prompt_prefix))


def run(lm: LanguageModel, data, cfg: EvalConfig) -> SuiteResult:
    ensure_punkt()
    items = data.fluency
    prompts = [build_prompt(lm, it, cfg) for it in items]
    outputs = lm.generate(
        [GenerationRequest(p, MAX_NEW_TOKENS, group="fluency") for p in prompts],
        stop_token_ids=reference_stop_ids(lm, ("<|eot_id|>",)),
        desc="fluency: generate",
    )
    records = [{"prompt": p, "output": o, "entropy": ngram_entropy(o)} for p, o in zip(prompts, outputs)]
    entropy = float(np.mean([r["entropy"] for r in records])) if records else None
    return SuiteResult(
        scores={"entropy": entropy * 100 if entropy is not None else None, "n": len(records)},
        items={"fluency": records},
    )
