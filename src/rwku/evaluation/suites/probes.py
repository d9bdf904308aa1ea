"""Forget and neighbor probes: greedy answers scored by ROUGE-L recall, plus gold likelihood.

Both sets are scored the same way (fill-in-the-blank, questions, and for the forget set the
nine adversarial attack types), so one function serves both suites.

Beyond the reference, every probe also gets the likelihood of its gold answer given the exact
probe prompt: the mean token log-probability of ``" " + gold`` (the space follows the
reference's ``score_completions`` rule) and its exponential. A 135M model rarely generates a
right answer, so ROUGE barely moves when it forgets; the likelihood does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from rwku.evaluation.config import EvalConfig
from rwku.evaluation.metrics import probe_score
from rwku.evaluation.prompts import CONTEXT_TEMPLATE, probe_user_text, with_prefix
from rwku.evaluation.suites.base import SuiteResult, cut_at_newline, has_content_line, mean100
from rwku.models.backend import GenerationRequest, LanguageModel, generate_with_scores
from rwku.models.hf import reference_stop_ids

LEVEL_NAMES = {"1": "fb", "2": "qa", "3": "aa"}
MAX_NEW_TOKENS = 30


def build_prompt(lm: LanguageModel, probe, cfg: EvalConfig, context: str | None = None) -> str:
    """The reference's probe prompt; ``context`` (the in-context attack) goes before the user text."""
    user, cue = probe_user_text(probe.query, probe.level, probe.type)
    if context:
        user = CONTEXT_TEMPLATE.format(context=context) + user
    return lm.chat_prompt(with_prefix(user, probe.subject, cfg.prompt_prefix)) + cue


def continuation_for(prompt: str, gold: str) -> str:
    """The reference's scoring rule: a space before the answer unless the prompt ends in one."""
    return gold if prompt[-1:] in ("\n", " ") else " " + gold


def run_probes(
    lm: LanguageModel,
    levels: dict[str, list],
    cfg: EvalConfig,
    name: str,
    contexts: Sequence[str | None] | None = None,
) -> SuiteResult:
    """Generate and score every probe of ``levels``; ``contexts`` (aligned with the probes in
    level order) puts a context before each probe's user text (``rwku.attacks.incontext``)."""
    probes = [p for level in sorted(levels) for p in levels[level]]
    contexts = list(contexts) if contexts is not None else [None] * len(probes)
    if len(contexts) != len(probes):
        raise ValueError(f"{len(contexts)} contexts for {len(probes)} probes")
    prompts = [build_prompt(lm, p, cfg, c) for p, c in zip(probes, contexts)]
    stop_when = has_content_line if cfg.stop_at_newline else None
    outputs, likelihoods = generate_with_scores(
        lm,
        [GenerationRequest(p, MAX_NEW_TOKENS, group=name, stop_when=stop_when) for p in prompts],
        [continuation_for(p, probe.answer) for p, probe in zip(prompts, probes)],
        stop_token_ids=reference_stop_ids(lm),
        desc=f"{name}: generate and score gold",
    )
    if cfg.stop_at_newline:
        outputs = [cut_at_newline(o) for o in outputs]
    items = []
    for probe, prompt, output, lik in zip(probes, prompts, outputs, likelihoods):
        mean_lp = lik.mean
        items.append(
            {
                "prompt": prompt,
                "output": output,
                "gold": probe.answer,
                "score": probe_score(output, probe.answer),
                "likelihood": mean_lp,
                "likelihood_prob": math.exp(mean_lp) if not math.isnan(mean_lp) else None,
                "level": LEVEL_NAMES.get(probe.level, probe.level),
                "type": probe.type,
                "query": probe.query,
                **({"neighbor": probe.neighbor} if getattr(probe, "neighbor", None) else {}),
            }
        )
    by_level = defaultdict(list)
    for item in items:
        by_level[item["level"]].append(item)
    scores: dict = {
        lv: mean100(i["score"] for i in by_level[lv]) for lv in LEVEL_NAMES.values() if lv in by_level
    }
    scores["all"] = mean100(i["score"] for i in items)
    levels = [lv for lv in LEVEL_NAMES.values() if lv in by_level]
    scores["likelihood"] = {lv: mean100(i["likelihood_prob"] for i in by_level[lv]) for lv in levels}
    scores["likelihood"]["all"] = mean100(i["likelihood_prob"] for i in items)
    scores["mean_logprob"] = {lv: _mean(i["likelihood"] for i in by_level[lv]) for lv in levels}
    if "aa" in by_level:
        by_type = defaultdict(list)
        for item in by_level["aa"]:
            by_type[item["type"]].append(item["score"])
        scores["aa_by_type"] = {t: mean100(v) for t, v in sorted(by_type.items())}
        lik_type = defaultdict(list)
        for item in by_level["aa"]:
            lik_type[item["type"]].append(item["likelihood_prob"])
        scores["likelihood"]["aa_by_type"] = {t: mean100(v) for t, v in sorted(lik_type.items())}
    scores["n"] = {lv: len(v) for lv, v in by_level.items()}
    return SuiteResult(scores=scores, items={name: items})


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None
