"""Relearning data that cannot teach the evaluated answers, and the evaluated half.

Every relearning attack evaluates on the same held-out half of the target's forget probes
(:func:`split_probes`) and fine-tunes on one of three kinds of text, each built so that no
training text contains an evaluated answer (:mod:`rwku.attacks.answers` decides "contains"):

``split`` (Deeb & Roger 2024)
    the other half of the forget probes as question → answer text, split by fact (probes whose
    answers contain one another stay on one side; see :func:`split_probes`). A training item is dropped
    when its answer contains, or is contained in, an evaluated answer (the issue's rule, and
    its reverse: "Portland, Maine" would teach "Maine"), or when its text contains an evaluated
    answer anywhere (a question that names the answer to another). The drops are counted.
``related`` (Hu et al. 2024)
    the target's Wikipedia passages (the authors' ``passage`` corpus) with every sentence that
    contains an evaluated answer removed.
``unrelated`` (Łucki et al. 2024)
    ten passages about *other* RWKU targets (the first passage of each of the next ten targets
    in id order), filtered the same way, so the control is clean too.

Every builder ends with :func:`check_excludes`, which raises if any text still contains an
evaluated answer — the property the tests check, enforced where the data is made.

A probe answered by the target's own name (:func:`rwku.attacks.answers.names_target`) is never
on the evaluated side: no text about the person can leave the name out, so it could not be held
out. It is training material of the ``split`` kind like the rest of the other half
(:data:`DATA_RULE` 2; rule 1 evaluated such probes, and the filter then dropped every text that
names the target).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rwku.attacks.answers import answers_in, contains_answer, names_target, remove_answer_sentences
from rwku.data.records import FORGET_LEVELS, Probe, TargetData
from rwku.errors import ConfigError, DataError

DATA_KINDS = ("split", "related", "unrelated")
#: The version of the rule that makes the evaluated half and the data; in every attack record and
#: in the id of every sweep cell with attacks, so numbers made under another rule are never mixed.
#: 1: the target's own name counted as an evaluated answer; 2: name answers are never evaluated.
DATA_RULE = 2
#: How many other targets' passages the ``unrelated`` kind uses (Łucki et al.: ten examples).
UNRELATED_PASSAGES = 10


def probe_key(probe: Probe, seed: int = 0) -> str:
    """A stable hash of a probe: the same probe lands in the same half on every machine."""
    blob = "\x1f".join((str(seed), probe.subject, probe.level, probe.type, probe.query, probe.answer))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _answer_groups(probes: list[Probe]) -> list[list[Probe]]:
    """Probes grouped by fact: two probes share a group when one's answer contains the other's.

    RWKU asks about each fact several times (a cloze, a question, adversarial rewrites), so a
    split by probe would put most facts on both sides, and the answer filter would then leave
    almost nothing to train on. Splitting whole groups keeps every fact on one side.
    """
    parent = list(range(len(probes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(probes):
        for j in range(i):
            b = probes[j]
            if contains_answer(a.answer, b.answer) or contains_answer(b.answer, a.answer):
                parent[find(i)] = find(j)
    groups: dict[int, list[Probe]] = {}
    for i, p in enumerate(probes):
        groups.setdefault(find(i), []).append(p)
    return list(groups.values())


def split_probes(data: TargetData, seed: int = 0) -> tuple[dict[str, list[Probe]], dict[str, list[Probe]]]:
    """(train, evaluated) forget probes, per level, split by fact (:func:`_answer_groups`).

    The groups are ordered by a stable hash of their probes (:func:`probe_key`) and go to the
    evaluated side until it holds half of the probes (rounded up), the rest is training
    material: independent of file order, and a different ``seed`` gives a different split.
    Probes answered by the target's name are always training material (the module doc).
    """
    probes = [p for level in FORGET_LEVELS for p in data.forget.get(level, [])]
    if not probes:
        raise DataError(f"{data.target.name} has no forget probes to evaluate a relearning attack on")
    probes = [p for p in probes if not names_target(p.answer, data.target.name)]
    if not probes:
        raise DataError(
            f"every forget probe of {data.target.name} is answered by the name: nothing to hold out"
        )
    groups = sorted(_answer_groups(probes), key=lambda g: min(probe_key(p, seed) for p in g))
    want = (len(probes) + 1) // 2
    chosen: set[int] = set()
    for group in groups:
        if len(chosen) >= want:
            break
        chosen.update(id(p) for p in group)
    train: dict[str, list[Probe]] = {}
    evaluated: dict[str, list[Probe]] = {}
    for level in FORGET_LEVELS:
        level_probes = data.forget.get(level, [])
        evaluated[level] = [p for p in level_probes if id(p) in chosen]
        train[level] = [p for p in level_probes if id(p) not in chosen]
    return train, evaluated


def evaluated_answers(evaluated: dict[str, list[Probe]]) -> list[str]:
    return list(dict.fromkeys(p.answer for ps in evaluated.values() for p in ps if p.answer.strip()))


def probe_text(probe: Probe) -> str:
    """A probe with its answer as plain training text: the blank filled, or Q → A."""
    if probe.level == "1" and "___" in probe.query:
        return probe.query.replace("___", probe.answer, 1)
    return f"Question: {probe.query.strip()}\nAnswer: {probe.answer}"


@dataclass
class RelearnData:
    """One kind of relearning text and how it was made."""

    kind: str
    records: list[dict[str, str]]
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "records": len(self.records), **self.stats}


def check_excludes(records: Sequence[dict[str, str]], answers: Sequence[str], kind: str) -> None:
    """Raise if a training text contains an evaluated answer (the data's defining property)."""
    for i, rec in enumerate(records):
        found = answers_in(rec["text"], answers)
        if found:
            raise AssertionError(f"{kind} relearning record {i} contains the evaluated answer {found[0]!r}")


def build_split(train: dict[str, list[Probe]], answers: Sequence[str]) -> RelearnData:
    records: list[dict[str, str]] = []
    dropped_answer = dropped_text = 0
    for level in FORGET_LEVELS:
        for probe in train.get(level, []):
            mine = probe.answer
            if any(contains_answer(a, mine) or contains_answer(mine, a) for a in answers):
                dropped_answer += 1
                continue
            text = probe_text(probe)
            if answers_in(text, answers):
                dropped_text += 1
                continue
            records.append({"text": text})
    stats = {
        "train_half": sum(len(v) for v in train.values()),
        "dropped_answer_overlap": dropped_answer,
        "dropped_text_contains_answer": dropped_text,
    }
    return RelearnData("split", records, stats)


def _filtered_passages(texts: Sequence[str], answers: Sequence[str]) -> tuple[list[dict[str, str]], dict]:
    records: list[dict[str, str]] = []
    kept = dropped = empty = 0
    for text in texts:
        rest, k, d = remove_answer_sentences(text, answers)
        kept, dropped = kept + k, dropped + d
        # joining sentences can in principle re-form an answer across a boundary: drop the passage
        if not rest or answers_in(rest, answers):
            empty += 1
            continue
        records.append({"text": rest})
    return records, {
        "passages": len(texts),
        "sentences_kept": kept,
        "sentences_dropped": dropped,
        "passages_dropped": empty,
    }


def target_passages(rwku_data, name: str) -> list[str]:
    """The target's Wikipedia passages (the authors' ``passage`` corpus); a clear error if none."""
    try:
        rows = rwku_data.load_corpus("passage", name)
    except DataError as err:
        raise DataError(f"{name}: no Wikipedia passages in this data copy ({err})") from None
    texts = [r["text"] for r in rows if r.get("text", "").strip()]
    if not texts:
        raise DataError(f"{name}: the passage corpus is empty; the related and in-context attacks need it")
    return texts


def build_related(rwku_data, name: str, answers: Sequence[str]) -> RelearnData:
    records, stats = _filtered_passages(target_passages(rwku_data, name), answers)
    return RelearnData("related", records, stats)


def build_unrelated(rwku_data, name: str, answers: Sequence[str], n: int = UNRELATED_PASSAGES) -> RelearnData:
    targets = rwku_data.targets()
    names = [t.name for t in targets]
    start = names.index(name) + 1 if name in names else 0
    texts: list[str] = []
    sources: list[str] = []
    for other in names[start:] + names[:start]:
        if len(texts) >= n:
            break
        if other == name:
            continue
        try:
            rows = rwku_data.load_corpus("passage", other)
        except DataError:
            continue
        if rows and rows[0].get("text", "").strip():
            texts.append(rows[0]["text"])
            sources.append(other)
    records, stats = _filtered_passages(texts, answers)
    if not records:
        raise DataError("unrelated relearning data: no passages of other targets in this data copy")
    return RelearnData("unrelated", records, {**stats, "targets": sources})


def build_relearn_data(
    kind: str, rwku_data, data: TargetData, train: dict[str, list[Probe]], evaluated: dict[str, list[Probe]]
) -> RelearnData:
    """The relearning text of one kind for one target, checked to exclude the evaluated answers.

    The records may be empty (every training probe of a target can overlap an evaluated
    answer); the attack then records that kind as not measurable instead of failing the run.
    """
    answers = evaluated_answers(evaluated)
    if kind == "split":
        out = build_split(train, answers)
    elif kind == "related":
        out = build_related(rwku_data, data.target.name, answers)
    elif kind == "unrelated":
        out = build_unrelated(rwku_data, data.target.name, answers)
    else:
        raise ConfigError(f"unknown relearning data kind {kind!r}; choose from: {', '.join(DATA_KINDS)}")
    check_excludes(out.records, answers, kind)
    return out
