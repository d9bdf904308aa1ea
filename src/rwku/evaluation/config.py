"""Options of one evaluation, kept apart from the model and the data.

Everything here changes what is computed, so it is part of the result-cache key; options that
only change speed (batch size, threads, progress bars) live elsewhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

SUITES = ("forget", "neighbor", "mia", "utility")
UTILITY_PARTS = ("mmlu", "bbh", "truthfulqa", "triviaqa", "fluency")
LM_EVAL_FIELDS = ("lm_eval_tasks", "lm_eval_include")


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation computes.

    Attributes:
        limit: keep the first N items of every item list (each probe level, each utility set,
            each MIA set), in data order. None keeps everything.
        utility_limit: the same, for the utility sets only (a quick utility slice beside a
            full forget/neighbor/MIA evaluation).
        prompt_prefix: an instruction prepended to every user message and MIA text
            (in-context unlearning sets it; ``{subject}`` is filled with the target).
        stop_at_newline: cut forget/neighbor/TriviaQA outputs at their first line break. Off by
            default because the reference's newline stop ids never fire (see PROTOCOL.md).
        bbh_compat: report BBH with the reference's per-character comparison bug instead of
            the correct exact match (both are always stored per item).
        bbh_full_output: decode BBH to 256 tokens even after the answer is final; only the
            stored raw outputs change, never the score.
        lm_eval_tasks: lm-evaluation-harness tasks (or groups) added to the utility columns
            (:mod:`rwku.evaluation.lm_eval_backend`); each is its own cached part.
        lm_eval_include: folders of local lm-eval task YAMLs.
    """

    limit: int | None = None
    utility_limit: int | None = None
    prompt_prefix: str | None = None
    stop_at_newline: bool = False
    bbh_compat: bool = False
    bbh_full_output: bool = False
    lm_eval_tasks: tuple[str, ...] = ()
    lm_eval_include: tuple[str, ...] = ()

    def key(self) -> str:
        """Cache key of the built-in suites: the lm-eval options are left out (they do not change
        those numbers), and so are ``limit`` and ``utility_limit`` — they only choose items, and
        the items a suite reads are keyed by their own fingerprint (``TargetData.fingerprint``),
        so a forget result is found again whatever utility slice came with it."""
        skip = (*LM_EVAL_FIELDS, "limit", "utility_limit")
        values = {k: v for k, v in asdict(self).items() if k not in skip}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]

    def legacy_key(self) -> str:
        """The key results were cached under until 2026-11-29 (limits included), read as a
        fallback so a cache written then is not recomputed."""
        values = {k: v for k, v in asdict(self).items() if k not in LM_EVAL_FIELDS}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
