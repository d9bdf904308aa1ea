"""GUARD: a prompt classifier, and a logits processor that keeps flagged answers off the target.

After "GUARD: Generation-time LLM Unlearning via Adaptive Restriction and Detection" (arXiv
2505.13312; no public code): the weights stay as they are; while the model answers a flagged
prompt, tokens that would continue a *forbidden sequence* are penalised (or removed). Here:

* the classifier is :mod:`rwku.methods.guarding`'s (the paper trains an MLP on its own
  embeddings of forget and retain prompts);
* the forbidden sequences are the target's name and surname and the capitalised phrases
  (names, titles, places: runs of capitalised words) found in at least ``min_support`` of the
  model's own passages about the target and in at most a fifth as many of its passages about
  the other targets the classifier saw; the ``forbidden`` most distinctive are kept (the paper
  takes its forbidden tokens from the forget set's answers, which RWKU does not give);
* a token is penalised when it continues a forbidden sequence that the answer has begun (any
  length, matched on token ids, the phrase with and without a leading space), or when it starts
  one, unless that first token is a common word ("The" of "The Shining");
* with ``similarity`` (a cosine in (0, 1]), tokens whose input embedding is that close to a
  forbidden starting token are penalised as well (the paper's semantic matching);
* ``penalty`` is subtracted from the logits; ``inf`` removes the tokens.

The processor changes which token greedy decoding picks, not the model's probabilities: scored
likelihoods (the gold answers, MIA, MMLU's letters) are those of the original model.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from functools import partial
from typing import Any, ClassVar

import torch

from rwku.methods.base import register
from rwku.methods.guarding import (
    GUARD_DEFAULTS,
    GuardMethod,
    check_range,
)
from rwku.models.engine.hooks import RowHook

#: Runs of capitalised words (with "of", "the", "and" inside): names, titles, places.
PHRASE = re.compile(r"\b[A-Z][\w'’-]*(?:[ \t]+(?:(?:of|the|and|de|von|van)[ \t]+)?[A-Z][\w'’-]*){0,4}")
#: First words that are never penalised on their own.
COMMON = frozenset(
    [
        "the",
        "a",
        "an",
        "he",
        "she",
        "his",
        "her",
        "it",
        "its",
        "in",
        "on",
        "at",
        "of",
        "and",
        "or",
        "but",
        "this",
        "that",
        "they",
        "their",
        "there",
        "when",
        "what",
        "who",
        "where",
        "which",
        "how",
        "after",
        "before",
        "as",
        "for",
        "from",
        "with",
        "by",
        "to",
        "is",
        "was",
        "i",
        "you",
        "we",
    ]
)


def forbidden_phrases(
    name: str, own: list[str], others: list[str], *, limit: int, min_support: float
) -> list[str]:
    """The name, its surname, and the phrases distinctive of the target's passages."""

    def df(texts: list[str]) -> dict[str, float]:
        counts: dict[str, int] = defaultdict(int)
        for text in texts:
            for phrase in {m.group(0).strip(" .") for m in PHRASE.finditer(text)}:
                counts[phrase] += 1
        return {p: c / max(len(texts), 1) for p, c in counts.items()}

    mine, theirs = df(own), df(others)
    words = name.split()
    base = [name] + ([words[-1]] if len(words) > 1 and len(words[-1]) >= 4 else [])
    ranked = sorted(
        (p for p, f in mine.items() if f >= min_support and theirs.get(p, 0.0) <= f / 5 and len(p) >= 3),
        key=lambda p: (-(mine[p] - theirs.get(p, 0.0)), p),
    )
    out = list(base)
    for phrase in ranked:
        if phrase not in out and phrase.lower() not in COMMON:
            out.append(phrase)
        if len(out) >= limit:
            break
    return out


@register("guard")
class GenerationGuard(GuardMethod):
    description: ClassVar[str] = (
        "GUARD: a classifier flags prompts about the target; their answers may not continue forbidden phrases."
    )
    defaults: ClassVar[dict[str, Any]] = {
        **GUARD_DEFAULTS,
        "penalty": 10.0,
        "forbidden": 24,
        "min_support": 0.1,
        "similarity": None,
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        check_range(self.name, self.options, "penalty", 0, math.inf)
        check_range(self.name, self.options, "forbidden", 1, 500, open_lo=False)
        check_range(self.name, self.options, "min_support", 0, 1)
        if self.options["similarity"] is not None:
            check_range(self.name, self.options, "similarity", 0, 1)

    def sequences(self, lm, phrases: list[str]) -> tuple[dict[tuple[int, ...], list[int]], int]:
        """Trie of the forbidden token sequences: history suffix → tokens to penalise; longest key."""
        trie: dict[tuple[int, ...], set[int]] = defaultdict(set)
        for phrase in phrases:
            for form in (" " + phrase, phrase):
                ids = lm.encode(form)
                for k, tok in enumerate(ids):
                    if k == 0 and lm.tokenizer.decode([tok]).strip().lower() in COMMON | {""}:
                        continue
                    trie[tuple(ids[:k])].add(tok)
        similarity = self.option("similarity")
        if similarity is not None and trie.get(()):
            weight = lm.model.get_input_embeddings().weight.detach().float()
            unit = torch.nn.functional.normalize(weight, dim=-1)
            first = sorted(trie[()])
            close = (unit @ unit[first].T).max(dim=1).values >= float(similarity)
            trie[()].update(torch.nonzero(close).flatten().tolist())
        return {k: sorted(v) for k, v in trie.items()}, max((len(k) for k in trie), default=0)

    @staticmethod
    def process(trie, longest: int, penalty: float, history, logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        for n in range(0, min(longest, len(history)) + 1):
            ids = trie.get(tuple(history[len(history) - n :]) if n else ())
            if ids:
                if math.isinf(penalty):
                    out[ids] = float("-inf")
                else:
                    out[ids] -= penalty
        return out

    def hooks(self, lm, target, classifier, texts, log):
        others = [p for passages in texts["others"].values() for p in passages]
        phrases = forbidden_phrases(
            target.name,
            texts["passages"],
            others,
            limit=int(self.option("forbidden")),
            min_support=float(self.option("min_support")),
        )
        trie, longest = self.sequences(lm, phrases)
        penalty = float(self.option("penalty"))
        log(f"guard: {len(phrases)} forbidden phrases: {', '.join(phrases)}")
        chosen = {
            "penalty": penalty if math.isfinite(penalty) else "inf",
            "similarity": self.option("similarity"),
            "forbidden": phrases,
            "starting_tokens": len(trie.get((), [])),
        }
        hook = RowHook(processor=partial(self.process, trie, longest, penalty))
        return (lambda _text: hook), chosen
