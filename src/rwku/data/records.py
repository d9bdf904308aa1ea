"""Typed records of the RWKU benchmark, and the checks that turn raw JSON into them.

Every evaluator and method works on these frozen records instead of raw dicts, so that a
malformed file fails once, at load time, with a message naming the file, the line and the
field, rather than as a ``KeyError`` deep inside a scoring loop an hour into a run.

The ``from_record`` constructors take the raw JSON object and a ``where`` string (for
example ``"eval/forget_level1.jsonl:12"``) that prefixes every error message. Fields the
benchmark does not use (``ngram`` of the MIA texts, the ``subject`` of MMLU dev examples)
are dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rwku.errors import DataError

FORGET_LEVELS: tuple[str, ...] = ("level1", "level2", "level3")
"""Keys of :attr:`TargetData.forget`: fill-in-the-blank (FB), question (QA), adversarial (AA)."""

NEIGHBOR_LEVELS: tuple[str, ...] = ("level1", "level2")
"""Keys of :attr:`TargetData.neighbor`: FB and QA probes about neighbouring entities."""

COUNT_KEYS: tuple[str, ...] = (
    "forget_level1",
    "forget_level2",
    "forget_level3",
    "neighbor_level1",
    "neighbor_level2",
    "forget_mia",
    "retain_mia",
    "mmlu",
    "bbh",
    "truthful",
    "triviaqa",
    "fluency",
)
"""Keys of :meth:`TargetData.counts`, in report order."""

# Bump when the canonical form of a record changes, so that cached results keyed by
# :meth:`TargetData.fingerprint` are not reused across incompatible versions.
_FINGERPRINT_FORMAT = "rwku-data-1"

_MISSING: Any = object()


# --------------------------------------------------------------------------- field checks


def _show(value: Any) -> str:
    """A short description of a bad value for an error message: its JSON type and a preview."""
    names = {str: "string", bool: "boolean", int: "integer", float: "number", list: "list", dict: "object"}
    kind = "null" if value is None else names.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}" if value is not None else kind


def _get(rec: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> Any:
    if key in rec:
        return rec[key]
    if default is not _MISSING:
        return default
    raise DataError(f"{where}: missing field {key!r}")


def _str(rec: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> str:
    value = _get(rec, key, where, default)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {_show(value)}")
    return value


def _int(rec: Mapping[str, Any], key: str, where: str) -> int:
    value = _get(rec, key, where)
    # bool is an int subclass; a JSON true/false where an index belongs is a data error.
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataError(f"{where}: field {key!r} must be an integer, got {_show(value)}")
    return value


def _str_list(rec: Mapping[str, Any], key: str, where: str, *, size: int | None = None) -> tuple[str, ...]:
    value = _get(rec, key, where)
    ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if ok and size is not None and len(value) != size:
        raise DataError(f"{where}: field {key!r} must be a list of {size} strings, got {len(value)} items")
    if not ok:
        want = f"a list of {size} strings" if size is not None else "a list of strings"
        raise DataError(f"{where}: field {key!r} must be {want}, got {_show(value)}")
    return tuple(value)


def _subject(rec: Mapping[str, Any], where: str, subject: str | None) -> str:
    """The record's own ``subject``; ``subject`` fills in for files that predate the field."""
    return _str(rec, "subject", where, _MISSING if subject is None else subject)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Target:
    """An unlearning target: a real person, with the one-line intro the methods are given.

    ``id`` is the authors' 1-based number (folder ``1_Stephen_King``); ``None`` only where a
    source has no numbering.
    """

    id: int | None
    name: str
    intro: str

    @property
    def dir_name(self) -> str:
        """The authors' per-target folder name, e.g. ``1_Stephen_King``."""
        stem = self.name.replace(" ", "_")
        return stem if self.id is None else f"{self.id}_{stem}"


@dataclass(frozen=True, slots=True)
class Probe:
    """A forget or neighbor probe: a cloze sentence or question, and its gold answer.

    ``level`` is kept as the string the data uses ("1", "2", "3"); ``type`` is the probe kind
    ("cloze", "simple question", or one of the adversarial attack types for level 3).
    ``neighbor`` names the neighbouring entity for neighbor probes and is ``None`` otherwise.
    """

    query: str
    answer: str
    level: str
    type: str
    subject: str
    neighbor: str | None = None

    @classmethod
    def from_record(
        cls, rec: Mapping[str, Any], where: str, *, subject: str | None = None, neighbor: bool = False
    ) -> Probe:
        level = _get(rec, "level", where)
        if isinstance(level, int) and not isinstance(level, bool):
            level = str(level)  # some re-serialisations store the level as a number
        elif not isinstance(level, str):
            raise DataError(f"{where}: field 'level' must be a string, got {_show(level)}")
        return cls(
            query=_str(rec, "query", where),
            answer=_str(rec, "answer", where),
            level=level,
            type=_str(rec, "type", where),
            subject=_subject(rec, where, subject),
            neighbor=_str(rec, "neighbor", where) if neighbor else None,
        )


@dataclass(frozen=True, slots=True)
class MiaText:
    """A text fragment scored raw by the membership-inference attacks (FM or RM set)."""

    text: str
    subject: str

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], where: str, *, subject: str | None = None) -> MiaText:
        return cls(text=_str(rec, "text", where), subject=_subject(rec, where, subject))


def _mmlu_example(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise DataError(f"{where}: must be an object, got {_show(value)}")
    choices = _str_list(value, "choices", where, size=4)
    answer = _int(value, "answer", where)
    if not 0 <= answer < len(choices):
        raise DataError(f"{where}: field 'answer' must be 0-3, got {answer}")
    return {"question": _str(value, "question", where), "choices": choices, "answer": answer}


@dataclass(frozen=True, slots=True)
class MmluItem:
    """An MMLU question (general ability) with its 5 dev examples used as shots.

    ``answer`` is the index (0-3) of the correct choice. Each example is a dict with
    ``question``, ``choices`` (tuple of 4) and ``answer`` (int).
    """

    task: str
    question: str
    choices: tuple[str, ...]
    answer: int
    examples: tuple[dict[str, Any], ...]
    subject: str

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], where: str, *, subject: str | None = None) -> MmluItem:
        choices = _str_list(rec, "choices", where, size=4)
        answer = _int(rec, "answer", where)
        if not 0 <= answer < len(choices):
            raise DataError(f"{where}: field 'answer' must be 0-3, got {answer}")
        examples = _get(rec, "examples", where)
        if not isinstance(examples, list):
            raise DataError(f"{where}: field 'examples' must be a list, got {_show(examples)}")
        return cls(
            task=_str(rec, "task", where),
            question=_str(rec, "question", where),
            choices=choices,
            answer=answer,
            examples=tuple(_mmlu_example(ex, f"{where}: examples[{i}]") for i, ex in enumerate(examples)),
            subject=_subject(rec, where, subject),
        )


@dataclass(frozen=True, slots=True)
class BbhItem:
    """A BIG-Bench Hard question (reasoning); ``cot`` is the task's 3-shot chain-of-thought prompt."""

    task: str
    question: str
    answer: str
    cot: str
    subject: str

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], where: str, *, subject: str | None = None) -> BbhItem:
        return cls(
            task=_str(rec, "task", where),
            question=_str(rec, "question", where),
            answer=_str(rec, "answer", where),
            cot=_str(rec, "cot", where),
            subject=_subject(rec, where, subject),
        )


def _mc_targets(rec: Mapping[str, Any], key: str, where: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    value = _get(rec, key, where)
    if not isinstance(value, Mapping):
        raise DataError(
            f"{where}: field {key!r} must be an object with choices and labels, got {_show(value)}"
        )
    choices = _str_list(value, "choices", f"{where}: {key}")
    labels = _get(value, "labels", f"{where}: {key}")
    if not (isinstance(labels, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in labels)):
        raise DataError(f"{where}: field '{key}.labels' must be a list of integers, got {_show(labels)}")
    if len(labels) != len(choices):
        raise DataError(
            f"{where}: field '{key}' has {len(choices)} choices but {len(labels)} labels; they must match"
        )
    return choices, tuple(labels)


@dataclass(frozen=True, slots=True)
class TruthfulItem:
    """A TruthfulQA question (truthfulness) with its MC1 and MC2 choices and 0/1 labels."""

    question: str
    mc1_choices: tuple[str, ...]
    mc1_labels: tuple[int, ...]
    mc2_choices: tuple[str, ...]
    mc2_labels: tuple[int, ...]
    subject: str

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], where: str, *, subject: str | None = None) -> TruthfulItem:
        mc1_choices, mc1_labels = _mc_targets(rec, "mc1_targets", where)
        mc2_choices, mc2_labels = _mc_targets(rec, "mc2_targets", where)
        return cls(
            question=_str(rec, "question", where),
            mc1_choices=mc1_choices,
            mc1_labels=mc1_labels,
            mc2_choices=mc2_choices,
            mc2_labels=mc2_labels,
            subject=_subject(rec, where, subject),
        )


@dataclass(frozen=True, slots=True)
class TriviaItem:
    """A TriviaQA question (factuality) with every accepted answer alias."""

    question: str
    answers: tuple[str, ...]
    subject: str

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], where: str, *, subject: str | None = None) -> TriviaItem:
        answers = _str_list(rec, "answers", where)
        if not answers:
            raise DataError(
                f"{where}: field 'answers' must be a non-empty list of strings, got an empty list"
            )
        return cls(
            question=_str(rec, "question", where), answers=answers, subject=_subject(rec, where, subject)
        )


@dataclass(frozen=True, slots=True)
class FluencyItem:
    """An AlpacaEval instruction whose free generation is scored for fluency (entropy)."""

    instruction: str
    subject: str

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], where: str, *, subject: str | None = None) -> FluencyItem:
        return cls(instruction=_str(rec, "instruction", where), subject=_subject(rec, where, subject))


# --------------------------------------------------------------------------- one target


def _jsonable(obj: Any) -> Any:
    """Plain JSON data for a record tree (dataclasses as dicts, tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


@dataclass(frozen=True, slots=True)
class TargetData:
    """Everything the benchmark evaluates for one target, in data order.

    ``forget`` has keys ``level1``/``level2``/``level3`` (FB, QA, AA probes) and ``neighbor``
    has ``level1``/``level2``. The utility lists are the per-target samples (171 MMLU,
    81 BBH, 50 TruthfulQA, 100 TriviaQA, 50 AlpacaEval in the full benchmark).
    """

    target: Target
    forget: dict[str, list[Probe]]
    neighbor: dict[str, list[Probe]]
    forget_mia: list[MiaText] = field(default_factory=list)
    retain_mia: list[MiaText] = field(default_factory=list)
    mmlu: list[MmluItem] = field(default_factory=list)
    bbh: list[BbhItem] = field(default_factory=list)
    truthful: list[TruthfulItem] = field(default_factory=list)
    triviaqa: list[TriviaItem] = field(default_factory=list)
    fluency: list[FluencyItem] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of records per set, keyed as :data:`COUNT_KEYS`."""
        return {
            **{f"forget_{k}": len(self.forget.get(k, [])) for k in FORGET_LEVELS},
            **{f"neighbor_{k}": len(self.neighbor.get(k, [])) for k in NEIGHBOR_LEVELS},
            "forget_mia": len(self.forget_mia),
            "retain_mia": len(self.retain_mia),
            "mmlu": len(self.mmlu),
            "bbh": len(self.bbh),
            "truthful": len(self.truthful),
            "triviaqa": len(self.triviaqa),
            "fluency": len(self.fluency),
        }

    def to_json(self) -> dict[str, Any]:
        """The whole target as plain JSON data (the canonical form hashed by :meth:`fingerprint`)."""
        return _jsonable(self)

    def fingerprint(self, fields: Sequence[str] | None = None) -> str:
        """SHA-256 (hex) of a canonical JSON of every record, or of the target and ``fields``.

        Results are cached under this key: it changes exactly when any probe, answer or
        utility item changes (including a ``limited`` subset), and not with the file layout
        or location the data was read from. With ``fields`` (names of this class's lists, e.g.
        ``("forget",)``) only the target and those lists are hashed, so one suite's cached result
        survives a change to another suite's items (a different utility slice, say).
        """
        data = self.to_json()
        if fields is not None:
            unknown = sorted(set(fields) - set(data) - {"target"})
            if unknown:
                raise ValueError(f"TargetData has no field(s) {unknown}")
            data = {"target": data["target"], **{f: data[f] for f in fields}}
        payload = {"format": _FINGERPRINT_FORMAT, "data": data}
        text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def limited(self, n: int | None) -> TargetData:
        """A copy keeping the first ``n`` items of every list (each probe level, each utility
        and MIA set), in data order; ``None`` keeps everything.

        This is what ``--limit`` runs use for quick smoke evaluations: every set stays
        represented, and the subset is deterministic so its fingerprint is stable.
        """
        if n is None:
            n_keep = None
        elif isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"limit must be a non-negative integer or None, got {n!r}")
        else:
            n_keep = n

        def cut(items: list[Any]) -> list[Any]:
            return list(items[:n_keep])

        return TargetData(
            target=self.target,
            forget={k: cut(v) for k, v in self.forget.items()},
            neighbor={k: cut(v) for k, v in self.neighbor.items()},
            forget_mia=cut(self.forget_mia),
            retain_mia=cut(self.retain_mia),
            mmlu=cut(self.mmlu),
            bbh=cut(self.bbh),
            truthful=cut(self.truthful),
            triviaqa=cut(self.triviaqa),
            fluency=cut(self.fluency),
        )
