"""Finding answer strings in text: the one matcher every attack's data filter uses.

The relearning data must not contain the answers it is evaluated on, or the attack would
simply teach them. "Contains" is decided here, once, so the filter that builds the data and
the test that checks it cannot disagree.

A text contains an answer when the answer, normalised, occurs in the normalised text as a whole
phrase: case-insensitive, with quotes/dashes/whitespace unified, and not inside a longer word
("Maine" is found in "Portland, Maine." but "It" is not found in "Italy"). Whole phrases rather
than raw substrings because RWKU's answers include short words ("It", "four", "1947") that would
otherwise match inside half of all words; case-insensitive because a sentence may start with
the answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

_QUOTES = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-"})
_SPACE = re.compile(r"\s+")
# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before
# whitespace and a capital letter, digit or opening quote. Abbreviations such as "U.S." or
# initials ("H. P. Lovecraft") may split a sentence in two; that only ever removes less text
# around an answer, never keeps an answer (filtering is per piece, the answer check is exact).
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")


def normalize(text: str) -> str:
    """Lower-case, NFKC, unified quotes and dashes, single spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    return _SPACE.sub(" ", text).strip().lower()


@lru_cache(maxsize=4096)
def _pattern(answer: str) -> re.Pattern[str] | None:
    norm = normalize(answer)
    if not norm:
        return None
    # a word character at either end of the answer must not continue into the text
    left = r"(?<!\w)" if re.match(r"\w", norm) else ""
    right = r"(?!\w)" if re.search(r"\w$", norm) else ""
    return re.compile(left + re.escape(norm) + right)


def contains_answer(text: str, answer: str) -> bool:
    """Whether ``answer`` occurs in ``text`` as a whole phrase (see the module doc)."""
    pattern = _pattern(answer)
    return bool(pattern is not None and pattern.search(normalize(text)))


def names_target(answer: str, target: str) -> bool:
    """Whether ``answer`` is the target's name: it contains the whole name, or it is one word of
    the name of three or more letters ("Genghis", "Cage", "Selena Gomez & the Scene", "RuPaul's
    Drag Race"; not "Kublai Khan" for Genghis Khan).

    Why: 99 of RWKU's 100 targets have forget probes answered by their own name ("Who wrote Das
    Kapital?" → "Karl Marx"). Every text about the person names them, so such an answer cannot be
    held out of any relearning text or related context: counted as an evaluated answer, it removed
    every line that names the target — 17 of Genghis Khan's 29 training lines ("Genghis"), 25 of
    Christina Aguilera's 35 (docs/attacks.md, "The data rule").
    """
    norm, name = normalize(answer), normalize(target)
    if not norm or not name:
        return False
    words = {w for w in re.findall(r"[\w'.-]+", name) if sum(c.isalpha() for c in w) >= 3}
    return norm in words or contains_answer(norm, name)


def answers_in(text: str, answers: Iterable[str]) -> list[str]:
    """The answers that ``text`` contains, in the order given."""
    norm = normalize(text)
    return [a for a in answers if (p := _pattern(a)) is not None and p.search(norm)]


def split_sentences(text: str) -> list[str]:
    """Split a passage into sentences (a simple rule, see ``_SENTENCE_END``); empty ones dropped."""
    parts = _SENTENCE_END.split(text.strip())
    return [p.strip() for p in parts if p and p.strip()]


def remove_answer_sentences(text: str, answers: Sequence[str]) -> tuple[str, int, int]:
    """``text`` without every sentence that contains one of ``answers``.

    Returns the remaining text and how many sentences were kept and dropped.
    """
    kept: list[str] = []
    dropped = 0
    for sentence in split_sentences(text):
        if answers_in(sentence, answers):
            dropped += 1
        else:
            kept.append(sentence)
    return " ".join(kept), len(kept), dropped
