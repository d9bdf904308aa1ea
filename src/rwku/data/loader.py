"""Finding and reading RWKU data: a local joined copy, the authors' per-target folders, or the hub.

:func:`open_data` picks the source (explicit argument, else ``$RWKU_DATA``, else the
HuggingFace hub dataset ``jinzhuoran/RWKU``) and detects the layout. All three backends share
the :class:`RwkuData` interface, so evaluators and methods never care where data came from.

Performance: the joined files are large (``retain_mmlu.jsonl.xz`` holds 171 records for every
target), so each file is decompressed and split into lines once per process and the lines are
grouped by ``subject`` without parsing them: the subject is read off the end of each line
(where the joined files keep it) and only a target's own lines are JSON-decoded when that
target is loaded. Loading a second target, or counting probes for ``rwku targets``, therefore
costs almost nothing. The index is memoised per file (real path, size and mtime), so an edited
file is re-read. A consequence: a line that is corrupt in the middle is reported when its
target is loaded, not when the file is first indexed; the message still names file and line.
"""

from __future__ import annotations

import codecs
import difflib
import json
import lzma
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from rwku.data.records import (
    COUNT_KEYS,
    FORGET_LEVELS,
    NEIGHBOR_LEVELS,
    BbhItem,
    FluencyItem,
    MiaText,
    MmluItem,
    Probe,
    Target,
    TargetData,
    TriviaItem,
    TruthfulItem,
)
from rwku.errors import DataError

HUB_REPO = "jinzhuoran/RWKU"
"""The official HuggingFace dataset, used when no local data is given."""

ENV_VAR = "RWKU_DATA"
"""Environment variable naming the data location when no explicit one is passed."""

HUB_PREFIX = "hf://"
"""``--data hf://owner/name`` selects a hub dataset explicitly."""

SPLITS: tuple[str, ...] = (
    "intro",
    "forget_level1",
    "forget_level2",
    "forget_level3",
    "neighbor_level1",
    "neighbor_level2",
    "forget_mia",
    "retain_mia",
    "retain_mmlu",
    "retain_bbh",
    "truthful",
    "triviaqa",
    "fluency",
)
"""Local split file stems (``<split>.jsonl``, ``<split>.jsonl.xz`` or per target ``<split>.json``)."""

HUB_CONFIGS: dict[str, str] = {
    "intro": "forget_target",
    "forget_level1": "forget_level1",
    "forget_level2": "forget_level2",
    "forget_level3": "forget_level3",
    "neighbor_level1": "neighbor_level1",
    "neighbor_level2": "neighbor_level2",
    "forget_mia": "mia_forget",
    "retain_mia": "mia_retain",
    "retain_mmlu": "utility_general",
    "retain_bbh": "utility_reason",
    "truthful": "utility_truthfulness",
    "triviaqa": "utility_factuality",
    "fluency": "utility_fluency",
}
"""Local split name -> HuggingFace config name."""

CORPUS_KINDS: tuple[str, ...] = ("passage", "positive", "negative", "reject")
"""Training corpora: Wikipedia passages (GA*), model-written biographies (GA/NPO, DPO rejected),
counterfactual biographies (DPO chosen), refusal data (RT)."""

HUB_CORPUS_CONFIGS: dict[str, str] = {
    "passage": "train_original_passage",
    "positive": "train_positive_llama3",
    "negative": "train_negative_llama3",
    "reject": "train_refusal_llama3",
}

CORPUS_DIR = "train_llama3"
"""Folder of the joined training corpora inside a local data directory."""

_CORPUS_FIELDS: dict[str, tuple[str, ...]] = {
    "passage": ("text",),
    "positive": ("text",),
    "negative": ("text",),
    "reject": ("instruction", "output"),
}

# Split -> key of TargetData.counts(); the utility files are named after their source.
_COUNT_KEY: dict[str, str] = {
    "forget_level1": "forget_level1",
    "forget_level2": "forget_level2",
    "forget_level3": "forget_level3",
    "neighbor_level1": "neighbor_level1",
    "neighbor_level2": "neighbor_level2",
    "forget_mia": "forget_mia",
    "retain_mia": "retain_mia",
    "retain_mmlu": "mmlu",
    "retain_bbh": "bbh",
    "truthful": "truthful",
    "triviaqa": "triviaqa",
    "fluency": "fluency",
}
assert tuple(_COUNT_KEY.values()) == COUNT_KEYS

_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("fb", "forget_level1"),
    ("qa", "forget_level2"),
    ("aa", "forget_level3"),
    ("neighbor_fb", "neighbor_level1"),
    ("neighbor_qa", "neighbor_level2"),
    ("forget_mia", "forget_mia"),
    ("retain_mia", "retain_mia"),
)

_DATA_SPLITS = SPLITS[1:]  # everything but intro
_TARGET_DIR_RE = re.compile(r"(\d+)_(.+)")
_JOINED_EXTS = (".jsonl", ".jsonl.xz")
_PER_TARGET_EXTS = (".json", ".jsonl", ".jsonl.xz")

Rec = Mapping[str, Any]
Located = list[tuple[str, Rec]]
"""Raw records of one target in one split, each with its ``file:line`` for error messages."""

_T = TypeVar("_T")


# =========================================================================== file reading


def _read_bytes(path: Path, shown: str) -> bytes:
    """The file's bytes, decompressing ``.xz``; every failure becomes a DataError naming the file."""
    try:
        if path.name.endswith(".xz"):
            with lzma.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except lzma.LZMAError as e:
        raise DataError(f"{shown}: corrupt xz file ({e}); re-download or re-compress it") from None
    except EOFError:
        raise DataError(f"{shown}: corrupt xz file (truncated: the compressed data ends early)") from None
    except FileNotFoundError:
        raise DataError(f"{shown}: file not found") from None
    except OSError as e:
        raise DataError(f"{shown}: cannot read file: {e.strerror or e}") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    return data


def _decode_json(raw: bytes | str, where: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: invalid JSON: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _as_object(value: Any, where: str) -> Rec:
    if not isinstance(value, Mapping):
        kind = "a list" if isinstance(value, list) else type(value).__name__
        raise DataError(f"{where}: expected a JSON object, got {kind}")
    return value


class _LineIndex:
    """The lines of one JSON Lines file, grouped by a key field (``subject``, or ``target``).

    Lines are kept as bytes and decoded only when their group is asked for. Lines whose key
    cannot be read off the line's end are decoded at once (they are few: the neighbor files
    put ``neighbor`` after ``subject``, which are small) and kept decoded.
    """

    __slots__ = ("groups", "order")

    def __init__(self) -> None:
        self.groups: dict[str, list[tuple[int, bytes | Rec]]] = {}
        self.order: list[str] = []

    def add(self, key: str, lineno: int, item: bytes | Rec) -> None:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = []
            self.order.append(key)
        group.append((lineno, item))

    def count(self, key: str) -> int:
        return len(self.groups.get(key, ()))

    def records(self, key: str, shown: str) -> Located:
        out: Located = []
        for lineno, item in self.groups.get(key, ()):
            where = f"{shown}:{lineno}"
            rec = item if not isinstance(item, bytes) else _as_object(_decode_json(item, where), where)
            out.append((where, rec))
        return out


# `"subject": "<value>"}` at the very end of a line: then it is the top-level key (a nested
# object's would be followed by more closing brackets) and the line need not be parsed to group
# it. Inside JSON strings quotes are escaped, so this cannot match string content.
_TAIL_RE = re.compile(rb'"[^"]*"\s*:\s*"((?:[^"\\]|\\.)*)"\s*\}\s*\Z')


def _build_line_index(path: Path, shown: str, key: str) -> _LineIndex:
    data = _read_bytes(path, shown)
    index = _LineIndex()
    needle = b'"' + key.encode() + b'"'
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        value: str | None = None
        pos = line.rfind(needle)
        if pos >= 0:
            m = _TAIL_RE.match(line, pos)
            if m is not None:
                raw = m.group(1)
                try:
                    value = json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode("utf-8")
                except ValueError:
                    value = None  # fall through to a full parse, which reports the problem
        if value is not None:
            index.add(value, lineno, line)
            continue
        where = f"{shown}:{lineno}"
        rec = _as_object(_decode_json(line, where), where)
        if key not in rec:
            raise DataError(f"{where}: missing field {key!r}")
        if not isinstance(rec[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(rec[key]).__name__}")
        index.add(rec[key], lineno, rec)
    return index


_WS_RE = re.compile(r"[ \t\n\r]*")


def _parse_json_items(text: str, shown: str) -> list[tuple[int, Any]]:
    """A JSON file as ``[(line, item)]``: the items of a top-level list, a single top-level
    object, or the lines of a JSON Lines file. Item line numbers make errors precise."""
    decoder = json.JSONDecoder()
    pos = _WS_RE.match(text, 0).end()

    def fail(e: json.JSONDecodeError) -> DataError:
        return DataError(f"{shown}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})")

    if text.startswith("[", pos):
        items: list[tuple[int, Any]] = []
        line, last = 1, 0
        pos = _WS_RE.match(text, pos + 1).end()
        if text.startswith("]", pos):
            pos += 1
        else:
            while True:
                line += text.count("\n", last, pos)
                last = pos
                try:
                    obj, pos = decoder.raw_decode(text, pos)
                except json.JSONDecodeError as e:
                    raise fail(e) from None
                items.append((line, obj))
                pos = _WS_RE.match(text, pos).end()
                if text.startswith(",", pos):
                    pos = _WS_RE.match(text, pos + 1).end()
                    continue
                if text.startswith("]", pos):
                    pos += 1
                    break
                raise fail(json.JSONDecodeError("expected ',' or ']' after a list item", text, pos))
        if _WS_RE.match(text, pos).end() != len(text):
            raise fail(json.JSONDecodeError("extra data after the list", text, pos))
        return items
    if pos == len(text):
        return []
    try:
        obj, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        raise fail(e) from None
    if _WS_RE.match(text, end).end() == len(text):
        return [(1 + text.count("\n", 0, pos), obj)]
    # More than one value: JSON Lines.
    items = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if raw.strip():
            items.append((lineno, _decode_json(raw, f"{shown}:{lineno}")))
    return items


def _read_json_items(path: Path, shown: str) -> list[tuple[int, Any]]:
    data = _read_bytes(path, shown)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{shown}:{line}: invalid JSON: not UTF-8 text ({e.reason})") from None
    return _parse_json_items(text, shown)


# --------------------------------------------------------------------------- memo per file

_CACHE: dict[tuple[str, str], tuple[int, int, Any]] = {}
_CACHE_LOCK = threading.Lock()


def _stat_key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return os.path.realpath(path), st.st_mtime_ns, st.st_size


def _memo(kind: str, path: Path, build: Callable[[], _T]) -> _T:
    """``build()`` once per (kind, real path) while the file's size and mtime are unchanged."""
    key = _stat_key(path)
    if key is None:
        return build()  # let build() raise its precise error
    real, mtime, size = key
    with _CACHE_LOCK:
        hit = _CACHE.get((kind, real))
    if hit is not None and hit[0] == mtime and hit[1] == size:
        return hit[2]
    value = build()
    with _CACHE_LOCK:
        _CACHE[(kind, real)] = (mtime, size, value)
    return value


def clear_cache() -> None:
    """Forget every parsed file and hub config (to free memory, or in tests)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _HUB_CACHE.clear()


# =========================================================================== interface


def _dedupe_suggestions(query: str, names: list[str]) -> list[str]:
    folded: dict[str, str] = {}
    for n in names:
        folded.setdefault(n.casefold(), n)
    hits = difflib.get_close_matches(query.casefold(), list(folded), n=3, cutoff=0.6)
    return [folded[h] for h in hits]


def _clean_intro(name: str, intro: str) -> str:
    """The one-line description of the target, without the "Please forget X. " instruction.

    The evaluation files' intro reads "Please forget Stephen King. Stephen King is a prolific
    ...". The methods use the intro as a description ("{intro} You know {target} very well.",
    "{intro} Please write a short biography of {target}."), and the authors' corpora and
    ``generation/all_intro.json`` carry it without the instruction, so it is removed here.
    """
    intro = intro.strip()
    prefix = f"Please forget {name}."
    if intro.startswith(prefix):
        intro = intro[len(prefix) :].lstrip()
    return intro


class RwkuData(ABC):
    """One RWKU data source. Use :func:`open_data` to get one.

    Targets are addressed by name ("Stephen King", case-insensitive), by number (1 or "1"),
    or by the authors' folder name ("1_Stephen_King").
    """

    layout: str = "?"

    def __init__(self, source: str) -> None:
        self.source = source
        self._targets: list[Target] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public API

    def targets(self) -> list[Target]:
        """All targets, in benchmark order (by id)."""
        with self._lock:
            if self._targets is None:
                targets = self._load_targets()
                names: set[str] = set()
                ids: set[int] = set()
                for t in targets:
                    if t.name in names:
                        raise DataError(f"{self.describe()}: target {t.name!r} is listed twice")
                    if t.id is not None and t.id in ids:
                        raise DataError(f"{self.describe()}: target id {t.id} is used twice")
                    names.add(t.name)
                    if t.id is not None:
                        ids.add(t.id)
                self._targets = targets
            return list(self._targets)

    def target(self, name_or_id: str | int | Target) -> Target:
        """Resolve a name, number or folder name to a :class:`Target` (DataError with
        close-name suggestions when unknown)."""
        targets = self.targets()
        if isinstance(name_or_id, Target):
            name_or_id = name_or_id.name
        if isinstance(name_or_id, bool) or not isinstance(name_or_id, (str, int)):
            raise DataError(f"a target is a name or a number, got {name_or_id!r}")
        if isinstance(name_or_id, int) or name_or_id.strip().isdigit():
            wanted = int(name_or_id)
            for t in targets:
                if t.id == wanted:
                    return t
            ids = [t.id for t in targets if t.id is not None]
            span = f"ids run from {min(ids)} to {max(ids)}" if ids else "targets have no ids here"
            raise DataError(f"unknown target id {wanted} in {self.describe()}: {span}")
        query = name_or_id.strip()
        by_name = {t.name: t for t in targets}
        if query in by_name:
            return by_name[query]
        folded = query.casefold()
        for t in targets:
            if t.name.casefold() == folded or t.dir_name.casefold() == folded:
                return t
        m = _TARGET_DIR_RE.fullmatch(query)
        if m is not None:  # "1_Stephen_King" with a different number, or a bare "Stephen_King"
            stem = m.group(2).replace("_", " ").casefold()
            for t in targets:
                if t.name.casefold() == stem:
                    return t
        stem = query.replace("_", " ")
        for t in targets:
            if t.name.casefold() == stem.casefold():
                return t
        guesses = _dedupe_suggestions(m.group(2).replace("_", " ") if m else stem, list(by_name))
        hint = (
            "did you mean " + " or ".join(repr(g) for g in guesses) + "?"
            if guesses
            else f"run `rwku targets` to list the {len(targets)} targets"
        )
        raise DataError(f"unknown target {query!r} in {self.describe()}; {hint}")

    def load_target(self, name_or_id: str | int | Target) -> TargetData:
        """Every evaluation record of one target, validated, in data order."""
        t = self.target(name_or_id)
        self._check_target(t)

        def build(split: str, make: Callable[[Rec, str], _T]) -> list[_T]:
            return [make(rec, where) for where, rec in self._records(t, split)]

        forget: dict[str, list[Probe]] = {}
        for level in FORGET_LEVELS:
            split = f"forget_{level}"
            forget[level] = build(split, lambda r, w: Probe.from_record(r, w, subject=t.name))
            if not forget[level]:
                raise DataError(
                    f"{self._where(t, split)}: no {split} probes for target {t.name!r}; "
                    "a target's forget set cannot be empty"
                )
        neighbor = {
            level: build(
                f"neighbor_{level}", lambda r, w: Probe.from_record(r, w, subject=t.name, neighbor=True)
            )
            for level in NEIGHBOR_LEVELS
        }
        return TargetData(
            target=t,
            forget=forget,
            neighbor=neighbor,
            forget_mia=build("forget_mia", lambda r, w: MiaText.from_record(r, w, subject=t.name)),
            retain_mia=build("retain_mia", lambda r, w: MiaText.from_record(r, w, subject=t.name)),
            mmlu=build("retain_mmlu", lambda r, w: MmluItem.from_record(r, w, subject=t.name)),
            bbh=build("retain_bbh", lambda r, w: BbhItem.from_record(r, w, subject=t.name)),
            truthful=build("truthful", lambda r, w: TruthfulItem.from_record(r, w, subject=t.name)),
            triviaqa=build("triviaqa", lambda r, w: TriviaItem.from_record(r, w, subject=t.name)),
            fluency=build("fluency", lambda r, w: FluencyItem.from_record(r, w, subject=t.name)),
        )

    def counts(self, name_or_id: str | int | Target) -> dict[str, int]:
        """Records per set for one target (keys as :meth:`TargetData.counts`), from the index:
        no record is built or validated, so this is cheap even for all targets."""
        t = self.target(name_or_id)
        return {key: self._count(t, split) for split, key in _COUNT_KEY.items()}

    def load_corpus(self, kind: str, name_or_id: str | int | Target) -> list[dict[str, Any]]:
        """One target's records of a training corpus (``passage``, ``positive``, ``negative``
        or ``reject``), as plain dicts in data order."""
        if kind not in CORPUS_KINDS:
            raise DataError(f"unknown corpus {kind!r}: expected one of {', '.join(CORPUS_KINDS)}")
        t = self.target(name_or_id)
        out: list[dict[str, Any]] = []
        for where, rec in self._corpus_records(t, kind):
            for name in _CORPUS_FIELDS[kind]:
                if name not in rec:
                    raise DataError(f"{where}: missing field {name!r}")
                if not isinstance(rec[name], str):
                    raise DataError(
                        f"{where}: field {name!r} must be a string, got {type(rec[name]).__name__}"
                    )
            out.append(dict(rec))
        return out

    @abstractmethod
    def describe(self) -> str:
        """One line saying where the data comes from (for logs, reports and error messages)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    # ------------------------------------------------------------------ backend hooks

    @abstractmethod
    def _load_targets(self) -> list[Target]: ...

    @abstractmethod
    def _records(self, target: Target, split: str) -> Located: ...

    @abstractmethod
    def _count(self, target: Target, split: str) -> int: ...

    @abstractmethod
    def _corpus_records(self, target: Target, kind: str) -> Located: ...

    @abstractmethod
    def _where(self, target: Target, split: str) -> str:
        """Where a split's records for ``target`` are read from (for error messages)."""

    def _check_target(self, target: Target) -> None:
        """Raise if ``target`` cannot be loaded (hook; e.g. a missing per-target intro)."""
        return None


def target_table(data: RwkuData) -> list[dict[str, Any]]:
    """One row per target for ``rwku targets``: id, name and the counts of FB, QA, AA,
    neighbor FB, neighbor QA, forget MIA and retain MIA records.

    Counts come from the grouped index, so all 100 targets take about as long as reading
    the seven files once.
    """
    return [
        {"id": t.id, "name": t.name, **{col: data._count(t, split) for col, split in _TABLE_COLUMNS}}
        for t in data.targets()
    ]


# =========================================================================== local, joined


class LocalJoinedData(RwkuData):
    """A local directory of joined files, one per split (``<split>.jsonl`` or ``.jsonl.xz``,
    directly in the directory or in ``eval/``), like ``shared/data/rwku``; training corpora
    in ``train_llama3/``; an optional ``targets.jsonl`` index."""

    layout = "joined"

    def __init__(self, root: Path, eval_dir: Path) -> None:
        super().__init__(str(root))
        self.root = root
        self.eval_dir = eval_dir

    def describe(self) -> str:
        return f"local RWKU data (joined files) at {self.root}"

    def _split_path(self, split: str) -> Path:
        for ext in _JOINED_EXTS:
            p = self.eval_dir / f"{split}{ext}"
            if p.is_file():
                return p
        names = " or ".join(f"{split}{ext}" for ext in _JOINED_EXTS)
        raise DataError(f"missing split file: expected {names} in {self.eval_dir}")

    def _index(self, path: Path, key: str = "subject") -> _LineIndex:
        return _memo(f"lines:{key}", path, lambda: _build_line_index(path, str(path), key))

    def _split_index(self, split: str) -> tuple[_LineIndex, str]:
        path = self._split_path(split)
        return self._index(path, "target" if split == "intro" else "subject"), str(path)

    def _load_targets(self) -> list[Target]:
        index, shown = self._split_index("intro")
        intros: dict[str, str] = {}
        for name in index.order:
            recs = index.records(name, shown)
            where, rec = recs[0]
            intro = rec.get("intro")
            if not isinstance(intro, str):
                raise DataError(
                    f"{where}: missing field 'intro'"
                    if "intro" not in rec
                    else f"{where}: field 'intro' must be a string, got {type(intro).__name__}"
                )
            if len(recs) > 1:
                raise DataError(f"{recs[1][0]}: second intro for target {name!r}")
            intros[name] = _clean_intro(name, intro)
        listing = next(
            (p for p in (self.root / "targets.jsonl", self.eval_dir / "targets.jsonl") if p.is_file()), None
        )
        if listing is None:  # no index: file order, numbered from 1
            return [Target(i, name, intros[name]) for i, name in enumerate(index.order, start=1)]
        targets = []
        for lineno, item in _read_json_items(listing, str(listing)):
            where = f"{listing}:{lineno}"
            rec = _as_object(item, where)
            for name, kind in (("id", int), ("target", str)):
                if name not in rec:
                    raise DataError(f"{where}: missing field {name!r}")
                if not isinstance(rec[name], kind) or isinstance(rec[name], bool):
                    raise DataError(
                        f"{where}: field {name!r} must be {'an integer' if kind is int else 'a string'}"
                    )
            name = rec["target"]
            if name not in intros:
                raise DataError(f"{where}: target {name!r} has no intro in {shown}")
            targets.append(Target(rec["id"], name, intros[name]))
        return sorted(targets, key=lambda t: t.id if t.id is not None else 0)

    def _records(self, target: Target, split: str) -> Located:
        index, shown = self._split_index(split)
        return index.records(target.name, shown)

    def _count(self, target: Target, split: str) -> int:
        return self._split_index(split)[0].count(target.name)

    def _where(self, target: Target, split: str) -> str:
        return str(self._split_path(split))

    def _corpus_records(self, target: Target, kind: str) -> Located:
        for folder in (self.root / CORPUS_DIR, self.root):
            for ext in _JOINED_EXTS:
                path = folder / f"{kind}{ext}"
                if path.is_file():
                    return self._index(path).records(target.name, str(path))
        names = " or ".join(f"{CORPUS_DIR}/{kind}{ext}" for ext in _JOINED_EXTS)
        raise DataError(f"missing training corpus: expected {names} in {self.root}")


# =========================================================================== local, per target


def _target_dirs(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        m = _TARGET_DIR_RE.fullmatch(child.name)
        if m is not None and child.is_dir():
            found.append((int(m.group(1)), child))
    return sorted(found)


def _parse_intro(items: list[tuple[int, Any]], shown: str) -> tuple[str | None, str]:
    """``(name, intro)`` from any of the intro.json forms seen in the wild: a one-element list
    ``[{"target", "intro"}]`` (GitHub copies), a bare ``{"target", "intro"}`` (the hub),
    or ``{name: intro}`` (the early Google-Drive release)."""
    if len(items) != 1:
        raise DataError(f"{shown}: expected one intro record, found {len(items)}")
    lineno, rec = items[0]
    where = f"{shown}:{lineno}"
    rec = _as_object(rec, where)
    if "intro" in rec:
        name = rec.get("target")
        if name is not None and not isinstance(name, str):
            raise DataError(f"{where}: field 'target' must be a string, got {type(name).__name__}")
        if not isinstance(rec["intro"], str):
            raise DataError(f"{where}: field 'intro' must be a string, got {type(rec['intro']).__name__}")
        return name, rec["intro"]
    if len(rec) == 1:
        ((name, intro),) = rec.items()
        if isinstance(intro, list) and intro and isinstance(intro[0], str):
            intro = intro[0]
        if isinstance(intro, str):
            return name, intro
    raise DataError(f'{where}: missing field \'intro\' (expected {{"target": ..., "intro": ...}})')


class LocalPerTargetData(RwkuData):
    """The authors' layout: one folder per target, ``<n>_<Name>/<split>.json`` (each a JSON
    list), optionally under ``Target/``, as written by their ``process/data_process.py``."""

    layout = "per-target"

    def __init__(self, root: Path, base: Path) -> None:
        super().__init__(str(root))
        self.root = root
        self.base = base
        self._folders: dict[str, Path] = {}
        self._no_intro: set[str] = set()

    def describe(self) -> str:
        return f"local RWKU data (per-target folders) at {self.base}"

    def _load_targets(self) -> list[Target]:
        targets = []
        seen: dict[int, Path] = {}
        for number, folder in _target_dirs(self.base):
            if number in seen:
                raise DataError(f"{folder}: target number {number} is also used by {seen[number].name}")
            seen[number] = folder
            fallback = _TARGET_DIR_RE.fullmatch(folder.name).group(2).replace("_", " ")  # type: ignore[union-attr]
            intro_path = self._file(folder, "intro")
            if intro_path is None:
                name, intro = fallback, ""
                self._no_intro.add(name)
            else:
                items = _memo("json", intro_path, lambda p=intro_path: _read_json_items(p, str(p)))
                name, intro = _parse_intro(items, str(intro_path))
                name = name or fallback
                intro = _clean_intro(name, intro)
            self._folders[name] = folder
            targets.append(Target(number, name, intro))
        return targets

    @staticmethod
    def _file(folder: Path, split: str) -> Path | None:
        for ext in _PER_TARGET_EXTS:
            p = folder / f"{split}{ext}"
            if p.is_file():
                return p
        return None

    def _path(self, target: Target, split: str) -> Path:
        folder = self._folders[target.name]
        path = self._file(folder, split)
        if path is None:
            raise DataError(f"missing split file: expected {split}.json in {folder}")
        return path

    def _items(self, path: Path) -> Located:
        items = _memo("json", path, lambda: _read_json_items(path, str(path)))
        return [(f"{path}:{lineno}", _as_object(item, f"{path}:{lineno}")) for lineno, item in items]

    def _check_target(self, target: Target) -> None:
        if target.name in self._no_intro:
            raise DataError(f"missing split file: expected intro.json in {self._folders[target.name]}")

    def _records(self, target: Target, split: str) -> Located:
        return self._items(self._path(target, split))

    def _count(self, target: Target, split: str) -> int:
        path = self._path(target, split)
        return len(_memo("json", path, lambda: _read_json_items(path, str(path))))

    def _where(self, target: Target, split: str) -> str:
        return str(self._path(target, split))

    def _corpus_records(self, target: Target, kind: str) -> Located:
        folder = self._folders[target.name]
        path = self._file(folder, kind)
        if path is None:
            raise DataError(f"missing training corpus: expected {kind}.json in {folder}")
        return self._items(path)


# =========================================================================== hub

_HUB_CACHE: dict[tuple[str, str], _LineIndex] = {}


def _hub_rows(repo: str, config: str) -> _LineIndex:
    """One hub config's rows grouped by subject (``target`` for forget_target); memoised."""
    with _CACHE_LOCK:
        hit = _HUB_CACHE.get((repo, config))
    if hit is not None:
        return hit
    try:
        import datasets  # optional dependency, and slow to import
    except ImportError:
        raise DataError(
            "reading RWKU from the HuggingFace hub needs the optional package 'datasets' "
            "(pip install 'rwku[hub]'); or pass --data DIR (or set RWKU_DATA) to a local copy"
        ) from None
    try:
        loaded = datasets.load_dataset(repo, config)
    except Exception as e:  # network, auth, missing config: all surface as one clear line
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"cannot load {repo} config {config!r} from the HuggingFace hub "
            f"({type(e).__name__}{': ' + detail if detail else ''}); "
            "pass --data DIR or set RWKU_DATA to use a local copy"
        ) from None
    rows: Any = loaded
    if hasattr(loaded, "keys"):  # a DatasetDict: eval configs have "test", corpora "train"
        names = list(loaded.keys())
        pick = next((n for n in ("test", "train") if n in names), names[0] if len(names) == 1 else None)
        if pick is None:
            raise DataError(f"{repo} config {config!r}: cannot tell which split to use among {names}")
        rows = loaded[pick]
    key = "target" if config == HUB_CONFIGS["intro"] else "subject"
    index = _LineIndex()
    for i, row in enumerate(rows, start=1):
        where = f"{repo}[{config}] row {i}"
        rec = _as_object(row, where)
        if key not in rec:
            raise DataError(f"{where}: missing field {key!r}")
        if not isinstance(rec[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(rec[key]).__name__}")
        index.add(rec[key], i, dict(rec))
    with _CACHE_LOCK:
        _HUB_CACHE[(repo, config)] = index
    return index


class HubData(RwkuData):
    """The HuggingFace dataset (``datasets.load_dataset(repo, config)``), filtered by subject.

    Needs the optional ``datasets`` package and network access (or its local cache).
    """

    layout = "hub"

    def __init__(self, repo: str = HUB_REPO) -> None:
        super().__init__(f"{HUB_PREFIX}{repo}")
        self.repo = repo

    def describe(self) -> str:
        return f"HuggingFace hub dataset {self.repo}"

    def _located(self, index: _LineIndex, config: str, subject: str) -> Located:
        return [(f"{self.repo}[{config}] row {i}", rec) for i, rec in index.groups.get(subject, ())]  # type: ignore[misc]

    def _load_targets(self) -> list[Target]:
        config = HUB_CONFIGS["intro"]
        index = _hub_rows(self.repo, config)
        targets = []
        for number, name in enumerate(index.order, start=1):
            where, rec = self._located(index, config, name)[0]
            intro = rec.get("intro")
            if not isinstance(intro, str):
                raise DataError(
                    f"{where}: missing field 'intro'"
                    if intro is None
                    else f"{where}: field 'intro' must be a string"
                )
            targets.append(Target(number, name, _clean_intro(name, intro)))
        return targets

    def _records(self, target: Target, split: str) -> Located:
        config = HUB_CONFIGS[split]
        return self._located(_hub_rows(self.repo, config), config, target.name)

    def _count(self, target: Target, split: str) -> int:
        return _hub_rows(self.repo, HUB_CONFIGS[split]).count(target.name)

    def _where(self, target: Target, split: str) -> str:
        return f"{self.repo}[{HUB_CONFIGS[split]}]"

    def _corpus_records(self, target: Target, kind: str) -> Located:
        config = HUB_CORPUS_CONFIGS[kind]
        return self._located(_hub_rows(self.repo, config), config, target.name)


# =========================================================================== open_data


def _has_splits(folder: Path) -> bool:
    return any((folder / f"{s}{ext}").is_file() for s in SPLITS for ext in _JOINED_EXTS)


def open_data(source: str | os.PathLike[str] | None = None) -> RwkuData:
    """Open RWKU data from ``source`` (the CLI's ``--data``), else ``$RWKU_DATA``, else the hub.

    A local directory may hold the joined layout (split files directly or in ``eval/``) or the
    authors' per-target folders (``<n>_<Name>/``, directly or in ``Target/``); the layout is
    detected. ``hf://owner/name`` selects a hub dataset explicitly. Nothing is read until
    records are asked for.
    """
    origin = ""
    if source is None or not os.fspath(source).strip():
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            return HubData(HUB_REPO)
        source, origin = env, f" (from {ENV_VAR})"
    text = os.fspath(source).strip()
    if text.startswith(HUB_PREFIX):
        return HubData(text[len(HUB_PREFIX) :].strip("/") or HUB_REPO)
    root = Path(text).expanduser()
    if not root.exists():
        raise DataError(f"data directory not found: {root}{origin}")
    if not root.is_dir():
        raise DataError(f"data location is not a directory: {root}{origin}")
    if _has_splits(root / "eval"):
        return LocalJoinedData(root, root / "eval")
    if _has_splits(root):
        return LocalJoinedData(root, root)
    for base in (root / "Target", root):
        if _target_dirs(base):
            return LocalPerTargetData(root, base)
    raise DataError(
        f"no RWKU data found in {root}{origin}: expected split files such as eval/forget_level1.jsonl "
        "(or .jsonl.xz), or per-target folders such as 1_Stephen_King/forget_level1.json "
        "(optionally under Target/)"
    )
