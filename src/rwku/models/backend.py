"""The narrow model interface every evaluator talks to.

Evaluators never call ``model.generate`` or ``model(...)`` themselves: they build prompts and
hand them to a :class:`LanguageModel`. That keeps the benchmark logic independent of the
engine (transformers here; vLLM or a remote server can implement the same four calls), and it
puts every speed trick — batching, length sorting, shared-prefix KV caches, early stopping — in
one place where it is tested once.

Requests carry an optional ``group`` key. Requests with the same key are promised to share a
long common prefix (the 5-shot header of one MMLU task, the few-shot primer of TriviaQA, the
prompt of one TruthfulQA question): a backend may compute that prefix once and reuse it.
Grouping is only a hint for speed; results do not depend on it beyond floating-point noise.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class GenerationRequest:
    """One greedy generation: ``prompt`` is the exact model input text (chat template applied)."""

    prompt: str
    max_new_tokens: int
    group: Hashable | None = None
    #: Called on the decoded text generated so far; returning True ends this sequence early.
    #: Only for rules that cannot change the score (e.g. BBH's answer regex already matched).
    stop_when: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """Log-likelihood of ``continuation`` given ``context``.

    Tokenisation follows the reference's ``score_completions``: the text scored is
    ``context + continuation`` tokenised as one string, and the continuation tokens are those
    after the first ``len(tokenize(context))`` tokens.
    """

    context: str
    continuation: str
    group: Hashable | None = None


@dataclass
class ContinuationScore:
    """Per-token log-probabilities of a scored continuation."""

    token_logprobs: list[float]

    @property
    def sum(self) -> float:
        return float(np.sum(self.token_logprobs)) if self.token_logprobs else 0.0

    @property
    def mean(self) -> float:
        return float(np.mean(self.token_logprobs)) if self.token_logprobs else float("nan")


@dataclass
class TokenStats:
    """Everything membership-inference scores need from one raw text.

    ``token_logprobs[i]`` is log p(token i+1 | tokens ≤ i); ``mu`` and ``sigma2`` are the mean
    and variance of log p over the vocabulary at the same positions (for Min-K%++).
    """

    token_logprobs: np.ndarray
    mu: np.ndarray
    sigma2: np.ndarray
    n_tokens: int = field(default=0)


@runtime_checkable
class LanguageModel(Protocol):
    """What an evaluator may ask of a model. See :mod:`rwku.models.hf` for the reference engine."""

    name: str
    info: dict

    def chat_prompt(self, user: str) -> str:
        """The user turn through the model's chat template, with the generation prompt."""

    def generate(
        self, requests: Sequence[GenerationRequest], *, stop_token_ids: Sequence[int], desc: str = ""
    ) -> list[str]:
        """Greedy completions, decoded as the reference decodes them (special tokens skipped)."""

    def score(self, requests: Sequence[ScoreRequest], *, desc: str = "") -> list[ContinuationScore]:
        """Token log-probabilities of each continuation."""

    def next_token_logprobs(
        self, prompts: Sequence[str], candidate_token_ids: Sequence[int], *, groups: Sequence | None = None
    ) -> np.ndarray:
        """Log-probabilities of candidate next tokens after each prompt, shape [n, len(candidates)]."""

    def token_stats(self, texts: Sequence[str], *, desc: str = "") -> list[TokenStats]:
        """Per-token statistics of raw texts (no chat template) for membership inference."""

    def convert_tokens_to_ids(self, token: str) -> int | None:
        """The tokenizer's lookup, exposed because the reference builds stop ids with it."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``."""


def generate_with_scores(
    lm: LanguageModel,
    requests: Sequence[GenerationRequest],
    continuations: Sequence[str],
    *,
    stop_token_ids: Sequence[int],
    desc: str = "",
) -> tuple[list[str], list[ContinuationScore]]:
    """Greedy completions of each prompt and the log-probs of ``continuations[i]`` after it.

    A backend that can do both from one pass over the prompt offers ``generate_scored`` (the
    transformers engine does); any other backend gets the two plain calls. The scores equal
    ``lm.score([ScoreRequest(request.prompt, continuation, group=request.group)])`` either way.
    """
    if hasattr(lm, "generate_scored"):
        pairs = lm.generate_scored(
            requests, stop_token_ids=stop_token_ids, continuations=list(continuations), desc=desc
        )
        return [text for text, _ in pairs], [score for _, score in pairs]
    texts = lm.generate(requests, stop_token_ids=stop_token_ids, desc=desc)
    scores = lm.score(
        [ScoreRequest(r.prompt, c, group=r.group) for r, c in zip(requests, continuations)], desc=desc
    )
    return texts, scores
