"""ECO: a prompt classifier, and corrupted embeddings for the prompts it flags.

After Liu et al., "Large Language Model Unlearning via Embedding-Corrupted Prompts" (NeurIPS
2024, arXiv 2406.07933): the weights stay as they are; a flagged prompt's entity tokens get
additive Gaussian noise on the first ``dims`` dimensions of their input embeddings, at prefill
only (the generated tokens are not corrupted). Here:

* the classifier is :mod:`rwku.methods.guarding`'s (the model's own hidden states, trained on
  text the model writes; ECO uses a separate RoBERTa classifier);
* the corrupted tokens are those of the target's name or surname in the prompt; a flagged
  prompt that names neither has every token after the chat header corrupted but the last, as
  ECO does for prompts without a detected entity;
* the noise of a prompt is drawn from a generator seeded by the prompt's text, so a prompt is
  corrupted the same way wherever it appears;
* σ is chosen by ECO's zeroth-order search (central differences in log10 σ, sign steps that
  halve when they overshoot) on the model's own questions about the target, never the probes.
  The objective: the mean log-likelihood of the original model's answers to those questions
  under corruption should fall to the level those answers have when the question names another
  RWKU target instead (what a model that never knew the target would give them). ECO matches
  a retained model's score instead; RWKU has no retained model. The search's result is cached
  (:func:`sigma_cache_path`): ECO with and without the name gate search the same σ.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch

from rwku.errors import ConfigError
from rwku.io import atomic_write_json
from rwku.methods.base import register
from rwku.methods.guarding import (
    GUARD_DEFAULTS,
    GuardMethod,
    check_range,
    find_sequences,
    name_variants,
    statements,
)
from rwku.models.backend import GenerationRequest, ScoreRequest
from rwku.models.engine.hooks import RowHook

#: Questions and answer length the σ search uses.
SEARCH_QUESTIONS = 16
ANSWER_TOKENS = 24


def sigma_cache_path(lm, classifier, target, texts: dict, options: dict, seed: int) -> Path | None:
    """Where the σ search's result for these inputs is kept, or None (caching off, no fingerprint).

    Why: the search costs minutes on a 1.5B model on a CPU, and it reads nothing the name gate
    or the evaluation changes — ECO and ECO gated by name on one target search the same σ.
    Keyed like :class:`~rwku.methods.guarding.FeatureCache` (the model's fingerprint, dtype,
    device) plus everything the search reads: the target, the model-written texts, the other
    targets, ``dims``, ``search_steps``, the seed and the search's sizes.
    ``<$RWKU_CACHE or the user cache dir>/guards/sigma``."""
    cache = classifier.cache
    if cache is None or not cache.enabled:
        return None
    key = {
        **cache.model_key_of(lm),
        "target": target.name,
        "questions": list(texts["questions"]),
        "passages": list(texts["passages"]),
        "others": list(texts["others"]),
        "dims": int(options["dims"]),
        "search_steps": int(options["search_steps"]),
        "seed": int(seed),
        "sizes": [SEARCH_QUESTIONS, ANSWER_TOKENS],
    }
    digest = hashlib.sha256(json.dumps(key, ensure_ascii=False).encode()).hexdigest()
    return cache.root.parent / "sigma" / f"{digest[:40]}.json"


def _read_search(path: Path | None) -> tuple[float, dict] | None:
    if path is None or not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        sigma, search = float(saved["sigma"]), dict(saved["search"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged entry is searched again, never trusted
    return (sigma, search) if math.isfinite(sigma) and sigma > 0 else None


@register("eco")
class EmbeddingCorruption(GuardMethod):
    description: ClassVar[str] = (
        "ECO: a classifier flags prompts about the target; their name tokens' embeddings get Gaussian noise."
    )
    defaults: ClassVar[dict[str, Any]] = {**GUARD_DEFAULTS, "dims": 4, "sigma": None, "search_steps": 8}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        check_range(self.name, self.options, "dims", 1, 65536, open_lo=False)
        check_range(self.name, self.options, "search_steps", 0, 100, open_lo=False)
        if self.options["sigma"] is not None:
            check_range(self.name, self.options, "sigma", 0, 1e9)

    def replay_options(self, chosen: dict[str, Any]) -> dict[str, Any]:
        """The run's searched σ, so a rebuilt guard (an attack) corrupts exactly as the run did."""
        sigma = chosen.get("sigma")
        if self.options["sigma"] is None and isinstance(sigma, int | float) and sigma > 0:
            return {"sigma": float(sigma)}
        return {}

    def hook_for(
        self, lm, names: list[list[int]], header: list[int], text: str, *, sigma: float
    ) -> RowHook | None:
        """Noise on the name's tokens of ``text`` (all tokens after the header but the last without one)."""
        ids = lm._tokenize(text)
        positions = find_sequences(ids, names)
        if not positions:
            start = len(header) if header and ids[: len(header)] == header else 0
            positions = list(range(start, len(ids) - 1))
        if not positions:
            return None
        hidden = lm.model.config.hidden_size
        dims = min(int(self.option("dims")), hidden)
        gen = torch.Generator().manual_seed(zlib.crc32(text.encode()) ^ int(self.seed))
        delta = torch.zeros(len(positions), hidden)
        delta[:, :dims] = torch.randn(len(positions), dims, generator=gen) * sigma
        return RowHook(positions=tuple(positions), delta=delta)

    def hooks(self, lm, target, classifier, texts, log):
        names = [lm.encode(v) for v in name_variants(target.name)]
        hook = partial(self.hook_for, lm, names, classifier.header)
        sigma, search = self.option("sigma"), None
        if sigma is None:
            path = sigma_cache_path(lm, classifier, target, texts, self.options, self.seed)
            found = _read_search(path)
            if found is not None:
                sigma, search = found[0], {**found[1], "cached": True}
                log(f"eco: σ = {sigma:.3g} (the search's cached result)")
            else:
                sigma, search = self.search_sigma(lm, target, texts, list(texts["others"]), hook, log)
                if path is not None:
                    atomic_write_json(path, {"sigma": sigma, "search": search})
                search = {**search, "cached": False}
        return partial(hook, sigma=sigma), {
            "sigma": sigma,
            "dims": int(self.option("dims")),
            "search": search,
        }

    def search_sigma(self, lm, target, texts, others, hook, log) -> tuple[float, dict]:
        """ECO's zeroth-order search for σ (see the module doc); returns σ and its trace.

        The answers are the model's own greedy answers to its questions; when it answers none
        (a tiny test model), the sentences of its passages after "Tell me about {target}." are."""
        questions = texts["questions"]
        named = [q for q in questions if target.name in q][:SEARCH_QUESTIONS] or questions[:SEARCH_QUESTIONS]
        prompts = [lm.chat_prompt(q) for q in named]
        answers = lm.generate(
            [GenerationRequest(p, ANSWER_TOKENS) for p in prompts], stop_token_ids=[], desc="eco: answers"
        )
        pairs = [(q, p, a) for q, p, a in zip(named, prompts, answers) if a.strip()]
        if not pairs:
            ask = f"Tell me about {target.name}."
            pairs = [
                (ask, lm.chat_prompt(ask), " " + s) for s in statements(texts["passages"])[:SEARCH_QUESTIONS]
            ]
        if not pairs or not others:
            raise ConfigError(f"eco: no model-written question or answer about {target.name} to choose σ on")

        def mean_ll(requests, hooks=None) -> float:
            with lm.hooked(hooks):
                scores = lm.score(requests, desc="eco: sigma search")
            values = [s.mean for s in scores if s.token_logprobs]
            return sum(values) / len(values)

        swapped = [
            ScoreRequest(lm.chat_prompt(q.replace(target.name, others[i % len(others)])), a)
            for i, (q, _, a) in enumerate(pairs)
        ]
        reference = mean_ll(swapped)
        requests = [ScoreRequest(p, a) for _, p, a in pairs]

        def objective(s: float) -> float:
            hooks = {i: hook(p, sigma=10**s) for i, (_, p, _) in enumerate(pairs)}
            return (mean_ll(requests, {i: h for i, h in hooks.items() if h is not None}) - reference) ** 2

        s, step, delta = 0.0, 1.0, 0.25
        best = (objective(s), s)
        trace = [{"log10_sigma": s, "objective": best[0]}]
        for _ in range(int(self.option("search_steps"))):
            grad = (objective(s + delta) - objective(s - delta)) / (2 * delta)
            if grad == 0 or not math.isfinite(grad):
                break
            candidate = s - step * math.copysign(1.0, grad)
            value = objective(candidate)
            trace.append({"log10_sigma": candidate, "objective": value})
            if value < best[0]:
                best, s = (value, candidate), candidate
            else:
                step /= 2
        sigma = float(10 ** best[1])
        log(f"eco: σ = {sigma:.3g} (answer log-likelihood target {reference:.3f}, {len(trace)} points)")
        return sigma, {"reference_loglik": reference, "trace": trace, "questions": len(pairs)}
