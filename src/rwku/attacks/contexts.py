"""Contexts for the in-context re-introduction attack ("ununlearning", Shumailov et al. 2024).

Each forget probe is asked again with a short context from the target's Wikipedia passages:

``answer``
    up to :data:`MAX_SENTENCES` sentences that contain the probe's gold answer, the ones
    sharing most words with the question first. The knowledge is handed back in the prompt.
``related``
    up to :data:`MAX_SENTENCES` sentences most related to the question (shared words) that
    contain *no* forget answer at all: on-topic text that cannot answer. The target's own name
    is not counted as an answer (:func:`rwku.attacks.answers.names_target`: nearly every
    sentence about a person names them) except for a probe the name answers, whose related
    sentences leave it out.
``renamed``
    the ``answer`` context, and the question, with the target's name replaced by an invented
    one (every word of the name, consistently). The context still holds the answer, but the
    name no longer cues what the model remembers: a model that answers here *reads*; one that
    answers with the real name but not here *recalls*.

A probe without any passage sentence holding its answer gets no ``answer``/``renamed``
context; the result counts those probes and scores only the probes that have one, beside the
same probes' plain score, so the gain is always paired.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rwku.attacks.answers import answers_in, contains_answer, names_target, normalize, split_sentences

CONTEXT_KINDS = ("answer", "related", "renamed")
MAX_SENTENCES = 3

_FIRST = ("Alden", "Brisa", "Corvin", "Delphine", "Evander", "Fenella", "Galen", "Halloran")
_LAST = ("Varnholt", "Quillane", "Ostermire", "Pellworth", "Drummage", "Kessling", "Tavenor", "Wrexley")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]+")
#: Words that say nothing about which sentence fits a question (ignored by the overlap rank).
_STOP_TEXT = (
    "the a an of in on at to for and or is was were be by with from as that this what which who "
    "whom whose when where why how did does do his her their its he she they it it's please "
    "answer question following briefly complete blank"
)
_STOP = frozenset(_STOP_TEXT.split())


def _words(text: str) -> set[str]:
    return {w for w in normalize(text).replace("'", " ").split() if w.isalnum() and w not in _STOP}


def rank_by_overlap(query: str, sentences: Sequence[str]) -> list[str]:
    """Sentences ordered by how many content words they share with ``query`` (ties: text order)."""
    q = _words(query)
    scored = [(-len(q & _words(s)), i, s) for i, s in enumerate(sentences)]
    return [s for _, _, s in sorted(scored)]


def invented_name(name: str) -> dict[str, str]:
    """A word-for-word replacement for every capitalised word of ``name`` (stable per name).

    "Stephen King" → {"Stephen": "Corvin", "King": "Ostermire"}: the first word gets a first
    name, every later one a surname from a different list, picked by a hash of the name.
    """
    words = [w for w in _WORD.findall(name) if w[:1].isupper() and len(w) > 2]
    h = int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16)
    out: dict[str, str] = {}
    for i, w in enumerate(words):
        pool = _FIRST if i == 0 else _LAST
        out.setdefault(w, pool[(h + i * 3) % len(pool)])
    return out


def rename(text: str, mapping: dict[str, str]) -> str:
    """Replace each name word as a whole word (possessives included: King's → Ostermire's)."""
    for old, new in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf"(?<![\w]){re.escape(old)}(?![\w])", new, text)
    return text


@dataclass(frozen=True)
class ProbeContext:
    """The contexts of one probe (None where no passage sentence fits)."""

    answer: str | None
    related: str | None
    renamed: str | None
    renamed_query: str
    renamed_gold: str


def build_contexts(
    probes: Sequence, passages: Sequence[str], target: str, all_answers: Sequence[str]
) -> list[ProbeContext]:
    """The three contexts of every probe (see the module doc)."""
    sentences = list(dict.fromkeys(s for p in passages for s in split_sentences(p)))
    held_out = [a for a in all_answers if not names_target(a, target)]
    clean = [s for s in sentences if not answers_in(s, held_out)]
    mapping = invented_name(target)
    out: list[ProbeContext] = []
    for probe in probes:
        holding = [s for s in sentences if contains_answer(s, probe.answer)]
        answer_ctx = " ".join(rank_by_overlap(probe.query, holding)[:MAX_SENTENCES]) or None
        safe = [s for s in clean if not contains_answer(s, probe.answer)]
        related_ctx = " ".join(rank_by_overlap(probe.query, safe)[:MAX_SENTENCES]) or None
        out.append(
            ProbeContext(
                answer=answer_ctx,
                related=related_ctx,
                renamed=rename(answer_ctx, mapping) if answer_ctx else None,
                renamed_query=rename(probe.query, mapping),
                renamed_gold=rename(probe.answer, mapping),
            )
        )
    return out
