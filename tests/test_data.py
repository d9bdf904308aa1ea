"""Tests of the data layer: real data from ../shared when present, synthetic fixtures otherwise."""

from __future__ import annotations

import json
import lzma
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from rwku.data import (
    HUB_REPO,
    HubData,
    LocalJoinedData,
    LocalPerTargetData,
    Probe,
    TargetData,
    clear_cache,
    open_data,
    target_table,
)
from rwku.errors import DataError, RwkuError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rwku"


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Every test starts without memoised files or hub configs."""
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def shared() -> Path:
    if not (SHARED_DATA / "eval").is_dir():
        pytest.skip("shared RWKU data not present at ../shared/data/rwku")
    return SHARED_DATA


# =========================================================================== synthetic data

NAMES = ["Alice Smith", 'Zoë "Z" Ndiaye']  # the second needs JSON escapes on every line


def make_records(names: list[str] = NAMES) -> dict[str, list[dict[str, Any]]]:
    """A tiny benchmark with every split, keyed by split name, records in target order."""
    recs: dict[str, list[dict[str, Any]]] = {}

    def add(split: str, rec: dict[str, Any]) -> None:
        recs.setdefault(split, []).append(rec)

    for n in names:
        add("intro", {"target": n, "intro": f"Please forget {n}. {n} is a test person."})
        for i in range(3):
            add(
                "forget_level1",
                {
                    "query": f"{n} was born in ___ {i}",
                    "answer": f"Town{i}",
                    "level": "1",
                    "type": "cloze",
                    "subject": n,
                },
            )
        for i in range(2):
            add(
                "forget_level2",
                {
                    "query": f"Where does {n} live? {i}",
                    "answer": f"City{i}",
                    "level": "2",
                    "type": "simple question",
                    "subject": n,
                },
            )
        for i, kind in enumerate(["prefix injection", "cross lingual (Spanish)", "affirmative suffix"]):
            add(
                "forget_level3",
                {"query": f"Q{i} about {n}", "answer": n, "level": "3", "type": kind, "subject": n},
            )
        for lvl, kind in (("1", "cloze"), ("2", "simple question")):
            for i in range(2):
                add(
                    f"neighbor_level{lvl}",
                    {
                        "query": f"N{lvl}.{i} of {n}",
                        "answer": "X",
                        "level": lvl,
                        "type": kind,
                        "subject": n,
                        "neighbor": f"Friend of {n}",
                    },
                )
        for split in ("forget_mia", "retain_mia"):
            for i in range(2):
                add(split, {"text": f"{split} text {i} for {n}", "ngram": 10 + i, "subject": n})
        example = {
            "answer": 1,
            "choices": ["0", "1", "2", "3"],
            "question": "dev?",
            "subject": "abstract_algebra",
        }
        for i in range(2):
            add(
                "retain_mmlu",
                {
                    "task": "abstract_algebra",
                    "question": f"mmlu {i} {n}",
                    "choices": ["a", "b", "c", "d"],
                    "answer": i,
                    "examples": [example] * 5,
                    "subject": n,
                },
            )
            add(
                "retain_bbh",
                {
                    "task": "boolean_expressions",
                    "question": f"True and {i}",
                    "answer": "True",
                    "cot": "Q: ...\nA: ...",
                    "subject": n,
                },
            )
            add(
                "truthful",
                {
                    "question": f"tq {i}",
                    "mc1_targets": {"choices": ["yes", "no"], "labels": [1, 0]},
                    "mc2_targets": {"choices": ["yes", "y", "no"], "labels": [1, 1, 0]},
                    "subject": n,
                },
            )
            add("triviaqa", {"question": f"trivia {i}", "answers": ["A", "a"], "subject": n})
            add("fluency", {"instruction": f"Write a poem {i}", "subject": n})
        for kind in ("passage", "positive", "negative"):
            for i in range(2):
                add(kind, {"text": f"{kind} {i} about {n}", "subject": n})
        add(
            "reject",
            {
                "input": "",
                "output": "I don't know.",
                "subject": n,
                "instruction": f"Who is {n}?",
                "intro": "x",
            },
        )
    return recs


CORPORA = ("passage", "positive", "negative", "reject")


def write_jsonl(path: Path, rows: list[dict[str, Any]], *, ensure_ascii: bool = True) -> None:
    text = "".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows)
    if path.name.endswith(".xz"):
        path.write_bytes(lzma.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")


def write_joined(
    root: Path,
    recs: dict[str, list[dict[str, Any]]],
    *,
    xz: tuple[str, ...] = ("retain_mmlu", "fluency"),
    eval_dir: bool = True,
) -> Path:
    """The shared/data/rwku layout: eval/<split>.jsonl[.xz] and train_llama3/<kind>.jsonl.xz."""
    ev = root / "eval" if eval_dir else root
    ev.mkdir(parents=True, exist_ok=True)
    for split, rows in recs.items():
        if split in CORPORA:
            (root / "train_llama3").mkdir(exist_ok=True)
            write_jsonl(root / "train_llama3" / f"{split}.jsonl.xz", rows)
        else:
            write_jsonl(ev / f"{split}.jsonl{'.xz' if split in xz else ''}", rows)
    return root


def write_per_target(
    root: Path,
    recs: dict[str, list[dict[str, Any]]],
    names: list[str] = NAMES,
    *,
    intro_form: str = "list",
    under: str | None = "Target",
) -> Path:
    """The authors' layout: [Target/]<n>_<Name>/<split>.json, each an indented JSON list."""
    base = root / under if under else root
    for number, n in enumerate(names, start=1):
        folder = base / f"{number}_{n.replace(' ', '_')}"
        folder.mkdir(parents=True)
        for split, rows in recs.items():
            mine = [r for r in rows if r.get("subject", r.get("target")) == n]
            if split == "intro":
                (intro,) = mine
                obj: Any = {"list": [intro], "dict": intro, "name": {n: intro["intro"]}}[intro_form]
                (folder / "intro.json").write_text(json.dumps(obj, indent=4), encoding="utf-8")
            else:
                (folder / f"{split}.json").write_text(json.dumps(mine, indent=4), encoding="utf-8")
    return root


@pytest.fixture
def recs() -> dict[str, list[dict[str, Any]]]:
    return make_records()


@pytest.fixture
def joined(tmp_path: Path, recs) -> Path:
    return write_joined(tmp_path / "joined", recs)


# =========================================================================== real data


def test_stephen_king_from_shared(shared: Path) -> None:
    data = open_data(shared)
    assert isinstance(data, LocalJoinedData)
    sk = data.load_target("Stephen King")
    assert sk.counts() == {
        "forget_level1": 8,
        "forget_level2": 10,
        "forget_level3": 29,
        "neighbor_level1": 30,
        "neighbor_level2": 30,
        "forget_mia": 55,
        "retain_mia": 37,
        "mmlu": 171,
        "bbh": 81,
        "truthful": 50,
        "triviaqa": 100,
        "fluency": 50,
    }
    assert sk.target.id == 1
    assert sk.target.intro.startswith("Stephen King")
    assert all(len(m.examples) == 5 for m in sk.mmlu)
    assert {p.level for p in sk.forget["level3"]} == {"3"}
    assert all(p.neighbor for p in sk.neighbor["level1"])
    # The cheap index counts agree with the built records.
    assert data.counts(1) == sk.counts()


def test_shared_records_in_data_order(shared: Path) -> None:
    lines = (shared / "eval" / "forget_level1.jsonl").read_text(encoding="utf-8").splitlines()
    mine = [json.loads(x) for x in lines if json.loads(x)["subject"] == "Stephen King"]
    sk = open_data(shared).load_target("Stephen King")
    assert [p.query for p in sk.forget["level1"]] == [r["query"] for r in mine]
    assert sk.forget["level1"][0].query == mine[0]["query"]


def test_shared_target_table(shared: Path) -> None:
    rows = target_table(open_data(shared))
    assert len(rows) == 100
    assert rows[0] == {
        "id": 1,
        "name": "Stephen King",
        "fb": 8,
        "qa": 10,
        "aa": 29,
        "neighbor_fb": 30,
        "neighbor_qa": 30,
        "forget_mia": 55,
        "retain_mia": 37,
    }
    assert [r["id"] for r in rows] == list(range(1, 101))
    assert sum(r["fb"] for r in rows) == 1637


def test_shared_target_resolution_and_suggestions(shared: Path) -> None:
    data = open_data(shared)
    sk = data.target("Stephen King")
    assert (
        data.target(1)
        == data.target("1")
        == data.target("1_Stephen_King")
        == data.target("stephen king")
        == sk
    )
    assert data.target("10_Prince_Harry,_Duke_of_Sussex").name == "Prince Harry, Duke of Sussex"
    with pytest.raises(DataError, match=r"unknown target 'Stephen Kng'.*did you mean 'Stephen King'\?"):
        data.load_target("Stephen Kng")
    with pytest.raises(DataError, match=r"unknown target id 999 .*ids run from 1 to 100"):
        data.target(999)


def test_shared_corpus(shared: Path) -> None:
    reject = open_data(shared).load_corpus("reject", "Stephen King")
    assert len(reject) == 300
    assert reject[0]["intro"].startswith("Stephen King")


# =========================================================================== layouts


def test_joined_synthetic(joined: Path, recs) -> None:
    data = open_data(joined)
    assert [t.name for t in data.targets()] == NAMES
    assert [t.id for t in data.targets()] == [1, 2]
    z = data.load_target(NAMES[1])
    assert z.target.intro == f"{NAMES[1]} is a test person."
    assert z.counts()["forget_level1"] == 3
    assert [p.query for p in z.forget["level1"]] == [
        r["query"] for r in recs["forget_level1"] if r["subject"] == NAMES[1]
    ]
    assert z.forget["level3"][1] == Probe(
        f"Q1 about {NAMES[1]}", NAMES[1], "3", "cross lingual (Spanish)", NAMES[1]
    )
    assert z.mmlu[0].examples[0] == {"question": "dev?", "choices": ("0", "1", "2", "3"), "answer": 1}
    assert z.truthful[0].mc2_labels == (1, 1, 0)


def test_split_files_directly_in_dir_and_targets_index(tmp_path: Path, recs) -> None:
    root = write_joined(tmp_path, recs, eval_dir=False)
    # targets.jsonl decides ids and order when present
    write_jsonl(
        root / "targets.jsonl",
        [{"id": 7, "dir": "7_x", "target": NAMES[1]}, {"id": 3, "dir": "3_x", "target": NAMES[0]}],
    )
    data = open_data(root)
    assert [(t.id, t.name) for t in data.targets()] == [(3, NAMES[0]), (7, NAMES[1])]
    assert data.load_target(7).target.name == NAMES[1]


def test_per_target_equals_joined(tmp_path: Path, recs, joined: Path) -> None:
    per = write_per_target(tmp_path / "per", recs)
    a, b = open_data(joined), open_data(per)
    assert isinstance(b, LocalPerTargetData)
    assert a.targets() == b.targets()
    for n in NAMES:
        ta, tb = a.load_target(n), b.load_target(n)
        assert ta == tb
        assert ta.fingerprint() == tb.fingerprint()
        assert a.counts(n) == b.counts(n) == ta.counts()
    assert target_table(a) == target_table(b)
    for kind in CORPORA:
        assert a.load_corpus(kind, 2) == b.load_corpus(kind, '2_Zoë_"Z"_Ndiaye')


@pytest.mark.parametrize("intro_form", ["list", "dict", "name"])
def test_per_target_intro_forms_without_target_subfolder(tmp_path: Path, recs, intro_form: str) -> None:
    data = open_data(write_per_target(tmp_path, recs, intro_form=intro_form, under=None))
    t = data.target("1_Alice_Smith")
    assert (t.id, t.name, t.intro) == (1, "Alice Smith", "Alice Smith is a test person.")


def test_per_target_name_falls_back_to_folder(tmp_path: Path, recs) -> None:
    root = write_per_target(tmp_path, recs)
    (root / "Target" / "1_Alice_Smith" / "intro.json").write_text(json.dumps({"intro": "A person."}))
    assert open_data(root).target(1).name == "Alice Smith"
    (root / "Target" / "1_Alice_Smith" / "intro.json").unlink()
    data = open_data(root)
    assert data.targets()[0].name == "Alice Smith"  # listing still works
    with pytest.raises(DataError, match=r"missing split file: expected intro\.json in .*1_Alice_Smith"):
        data.load_target(1)


def test_per_target_errors_name_file_and_line(tmp_path: Path, recs) -> None:
    root = write_per_target(tmp_path, recs)
    folder = root / "Target" / "1_Alice_Smith"
    rows = json.loads((folder / "forget_level2.json").read_text())
    del rows[1]["answer"]
    (folder / "forget_level2.json").write_text(json.dumps(rows, indent=4))
    with pytest.raises(DataError, match=r"forget_level2\.json:9: missing field 'answer'"):
        open_data(root).load_target(1)
    (folder / "forget_level2.json").write_text('[\n  {"query": "q",\n   "answer": }\n]')
    with pytest.raises(DataError, match=r"forget_level2\.json:3: invalid JSON"):
        open_data(root).load_target(1)
    (folder / "forget_level2.json").write_text(json.dumps(rows[:1], indent=4))
    assert open_data(root).load_target(1).counts()["forget_level2"] == 1
    (folder / "positive.json").unlink()
    with pytest.raises(
        DataError, match=r"missing training corpus: expected positive\.json in .*1_Alice_Smith"
    ):
        open_data(root).load_corpus("positive", 1)
    (folder / "retain_bbh.json").unlink()
    with pytest.raises(DataError, match=r"missing split file: expected retain_bbh\.json"):
        open_data(root).load_target(1)


def test_key_order_and_escapes_do_not_break_grouping(tmp_path: Path, recs) -> None:
    # strzar/purge re-serialised with shuffled keys; some writers keep non-ASCII unescaped.
    shuffled = {s: [dict(reversed(list(r.items()))) for r in rows] for s, rows in recs.items()}
    root = tmp_path / "shuffled"
    (root / "eval").mkdir(parents=True)
    for split, rows in shuffled.items():
        if split not in CORPORA:
            write_jsonl(root / "eval" / f"{split}.jsonl", rows, ensure_ascii=False)
    a = open_data(root).load_target(NAMES[1])
    b = open_data(write_joined(tmp_path / "plain", recs)).load_target(NAMES[1])
    assert a == b


# =========================================================================== TargetData


def test_limited(joined: Path) -> None:
    full = open_data(joined).load_target(1)
    two = full.limited(2)
    assert isinstance(two, TargetData)
    assert all(v <= 2 for v in two.counts().values())
    assert two.counts()["forget_level1"] == 2 and two.counts()["forget_level3"] == 2
    assert two.forget["level1"] == full.forget["level1"][:2]
    assert two.mmlu == full.mmlu[:2] and two.fluency == full.fluency[:2]
    assert two.target == full.target
    assert two.fingerprint() != full.fingerprint()
    assert full.limited(None) == full and full.limited(None).fingerprint() == full.fingerprint()
    assert full.limited(100) == full
    two.forget["level1"].clear()  # a copy: the original is untouched
    assert len(full.forget["level1"]) == 3
    with pytest.raises(ValueError, match="non-negative"):
        full.limited(-1)


def test_fingerprint_stable_and_sensitive(tmp_path: Path, recs) -> None:
    a = open_data(write_joined(tmp_path / "a", recs)).load_target(1)
    recs["forget_level1"][0]["answer"] = "Elsewhere"
    b = open_data(write_joined(tmp_path / "b", recs)).load_target(1)
    assert len(a.fingerprint()) == 64
    assert a.fingerprint() == open_data(tmp_path / "a").load_target(1).fingerprint()
    assert a.fingerprint() != b.fingerprint()


# =========================================================================== errors


def test_missing_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data directory not found: .*nope"):
        open_data(tmp_path / "nope")
    with pytest.raises(DataError, match=r"no RWKU data found in .*forget_level1\.jsonl"):
        open_data(tmp_path)
    assert issubclass(DataError, RwkuError)


def test_missing_split_file(joined: Path) -> None:
    (joined / "eval" / "retain_bbh.jsonl").unlink()
    with pytest.raises(
        DataError, match=r"missing split file: expected retain_bbh\.jsonl or retain_bbh\.jsonl\.xz in "
    ):
        open_data(joined).load_target(1)


def test_corrupt_xz(joined: Path) -> None:
    path = joined / "eval" / "fluency.jsonl.xz"
    path.write_bytes(b"this is not xz data at all")
    with pytest.raises(DataError, match=r"fluency\.jsonl\.xz: corrupt xz file"):
        open_data(joined).load_target(1)
    clear_cache()
    good = lzma.compress(b'{"instruction": "x", "subject": "Alice Smith"}\n' * 50)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"fluency\.jsonl\.xz: corrupt xz file \(truncated"):
        open_data(joined).load_target(1)


def test_bad_json_line(joined: Path) -> None:
    path = joined / "eval" / "forget_level2.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"answer": ', '"answer" ')  # line 2, Alice Smith's
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"forget_level2\.jsonl:2: invalid JSON: Expecting ':' delimiter"):
        open_data(joined).load_target("Alice Smith")
    lines[1] = '{"query": "unterminated'  # the subject cannot be read off the line at all
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"forget_level2\.jsonl:2: invalid JSON"):
        open_data(joined).load_target(NAMES[1])


def rewrite(path: Path, lineno: int, change) -> None:
    raw = lzma.decompress(path.read_bytes()) if path.name.endswith(".xz") else path.read_bytes()
    rows = [json.loads(x) for x in raw.decode("utf-8").splitlines()]
    change(rows[lineno - 1])
    write_jsonl(path, rows)


def test_missing_field(joined: Path) -> None:
    rewrite(joined / "eval" / "forget_level1.jsonl", 1, lambda r: r.pop("answer"))
    with pytest.raises(DataError, match=r"forget_level1\.jsonl:1: missing field 'answer'"):
        open_data(joined).load_target(1)


def test_missing_subject_field(joined: Path) -> None:
    rewrite(joined / "eval" / "triviaqa.jsonl", 3, lambda r: r.pop("subject"))
    with pytest.raises(DataError, match=r"triviaqa\.jsonl:3: missing field 'subject'"):
        open_data(joined).load_target(1)


@pytest.mark.parametrize(
    ("split", "change", "message"),
    [
        (
            "retain_mmlu",
            lambda r: r.update(answer="B"),
            r"retain_mmlu\.jsonl\.xz:2: field 'answer' must be an integer, got string 'B'",
        ),
        (
            "retain_mmlu",
            lambda r: r.update(answer=4),
            r"retain_mmlu\.jsonl\.xz:2: field 'answer' must be 0-3, got 4",
        ),
        (
            "retain_mmlu",
            lambda r: r.update(choices=["a", "b", "c"]),
            r"retain_mmlu\.jsonl\.xz:2: field 'choices' must be a list of 4 strings, got 3 items",
        ),
        (
            "retain_mmlu",
            lambda r: r.update(choices="abcd"),
            r"field 'choices' must be a list of 4 strings, got string",
        ),
        (
            "retain_mmlu",
            lambda r: r["examples"][3].pop("answer"),
            r"retain_mmlu\.jsonl\.xz:2: examples\[3\]: missing field 'answer'",
        ),
        (
            "truthful",
            lambda r: r["mc1_targets"].update(labels=[1]),
            r"truthful\.jsonl:2: field 'mc1_targets' has 2 choices but 1 labels",
        ),
        (
            "triviaqa",
            lambda r: r.update(answers=[]),
            r"triviaqa\.jsonl:2: field 'answers' must be a non-empty list",
        ),
        (
            "forget_level3",
            lambda r: r.update(query=None),
            r"forget_level3\.jsonl:2: field 'query' must be a string, got null",
        ),
        (
            "neighbor_level1",
            lambda r: r.pop("neighbor"),
            r"neighbor_level1\.jsonl:2: missing field 'neighbor'",
        ),
    ],
)
def test_wrong_types(joined: Path, split: str, change, message: str) -> None:
    name = next(p for p in (joined / "eval").iterdir() if p.name.startswith(split + "."))
    rewrite(name, 2, change)
    with pytest.raises(DataError, match=message):
        open_data(joined).load_target(1)


def test_level_may_be_a_number(joined: Path) -> None:
    rewrite(joined / "eval" / "forget_level1.jsonl", 1, lambda r: r.update(level=1))
    assert open_data(joined).load_target(1).forget["level1"][0].level == "1"


def test_empty_forget_set_is_an_error_empty_utility_is_not(tmp_path: Path, recs) -> None:
    recs["retain_bbh"] = [r for r in recs["retain_bbh"] if r["subject"] != "Alice Smith"]
    recs["forget_level3"] = [r for r in recs["forget_level3"] if r["subject"] != NAMES[1]]
    data = open_data(write_joined(tmp_path, recs))
    alice = data.load_target("Alice Smith")
    assert alice.bbh == [] and alice.counts()["bbh"] == 0
    with pytest.raises(
        DataError, match=r"forget_level3\.jsonl: no forget_level3 probes for target .*cannot be empty"
    ):
        data.load_target(2)


def test_unknown_target_suggestions(joined: Path) -> None:
    data = open_data(joined)
    with pytest.raises(DataError, match=r"unknown target 'alice smth' .*did you mean 'Alice Smith'\?"):
        data.load_target("alice smth")
    with pytest.raises(
        DataError, match=r"unknown target 'Nobody At All' .*run `rwku targets` to list the 2 targets"
    ):
        data.load_target("Nobody At All")
    with pytest.raises(DataError, match=r"unknown target id 3 .*ids run from 1 to 2"):
        data.load_target("3")
    assert data.target("ALICE SMITH").id == 1 and data.target("1_Alice_Smith").id == 1


def test_corpus(joined: Path) -> None:
    data = open_data(joined)
    pos = data.load_corpus("positive", "Alice Smith")
    assert [r["text"] for r in pos] == ["positive 0 about Alice Smith", "positive 1 about Alice Smith"]
    assert data.load_corpus("reject", 2)[0]["instruction"] == f"Who is {NAMES[1]}?"
    with pytest.raises(
        DataError, match=r"unknown corpus 'pair': expected one of passage, positive, negative, reject"
    ):
        data.load_corpus("pair", 1)
    (joined / "train_llama3" / "negative.jsonl.xz").unlink()
    with pytest.raises(
        DataError,
        match=r"missing training corpus: expected train_llama3/negative\.jsonl or train_llama3/negative\.jsonl\.xz",
    ):
        data.load_corpus("negative", 1)


def test_edited_file_is_reread(joined: Path) -> None:
    assert open_data(joined).load_target(1).counts()["fluency"] == 2
    path = joined / "eval" / "fluency.jsonl.xz"
    rows = [json.loads(x) for x in lzma.decompress(path.read_bytes()).decode().splitlines()]
    write_jsonl(path, rows + [{"instruction": "one more", "subject": "Alice Smith"}])
    assert open_data(joined).load_target(1).counts()["fluency"] == 3


# =========================================================================== hub


def fake_datasets(recs: dict[str, list[dict[str, Any]]], calls: list[tuple[str, str]]) -> types.ModuleType:
    """An in-memory stand-in for the `datasets` package: load_dataset(repo, config) returns a
    dict of splits like a DatasetDict ("train" for forget_target and corpora, else "test")."""
    from rwku.data import HUB_CONFIGS, HUB_CORPUS_CONFIGS

    by_config = {HUB_CONFIGS[s]: s for s in HUB_CONFIGS} | {v: k for k, v in HUB_CORPUS_CONFIGS.items()}
    module = types.ModuleType("datasets")

    def load_dataset(repo: str, config: str) -> dict[str, list[dict[str, Any]]]:
        calls.append((repo, config))
        split = by_config[config]
        train = split == "intro" or split in CORPORA
        return {"train" if train else "test": [dict(r) for r in recs[split]]}

    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    return module


def test_hub_backend_with_fake_datasets(monkeypatch, recs, joined: Path) -> None:
    calls: list[tuple[str, str]] = []
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(recs, calls))
    monkeypatch.delenv("RWKU_DATA", raising=False)
    hub = open_data()
    assert isinstance(hub, HubData) and "jinzhuoran/RWKU" in hub.describe()
    local = open_data(joined)
    assert hub.targets() == local.targets()
    for n in NAMES:
        assert hub.load_target(n) == local.load_target(n)
    assert hub.load_corpus("reject", 1) == local.load_corpus("reject", 1)
    assert target_table(hub) == target_table(local)
    assert all(repo == HUB_REPO for repo, _ in calls)
    assert {c for _, c in calls} >= {
        "forget_target",
        "forget_level1",
        "utility_general",
        "mia_forget",
        "train_refusal_llama3",
    }
    n_calls = len(calls)
    hub.load_target(2)
    assert len(calls) == n_calls  # each config is fetched once per process


def test_hub_row_errors(monkeypatch, recs) -> None:
    recs["retain_bbh"][0].pop("cot")
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(recs, []))
    with pytest.raises(DataError, match=r"jinzhuoran/RWKU\[utility_reason\] row 1: missing field 'cot'"):
        open_data("hf://jinzhuoran/RWKU").load_target(1)


def test_hub_unreachable(monkeypatch) -> None:
    module = types.ModuleType("datasets")

    def load_dataset(repo: str, config: str):
        raise ConnectionError("Couldn't reach 'jinzhuoran/RWKU' on the Hub (LocalEntryNotFoundError)")

    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    with pytest.raises(
        DataError, match=r"cannot load jinzhuoran/RWKU config 'forget_target' .*ConnectionError.*--data DIR"
    ):
        HubData().targets()


def test_hub_without_datasets_installed(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(
        DataError, match=r"needs the optional package 'datasets' \(pip install 'rwku\[hub\]'\)"
    ):
        HubData().load_target("Stephen King")


# =========================================================================== resolution


def test_env_var_resolution(monkeypatch, tmp_path: Path, recs) -> None:
    a = write_joined(tmp_path / "a", recs)
    b = write_per_target(tmp_path / "b", recs)
    monkeypatch.setenv("RWKU_DATA", str(a))
    data = open_data()
    assert isinstance(data, LocalJoinedData) and data.root == a
    assert isinstance(open_data(b), LocalPerTargetData)  # an explicit argument wins
    assert isinstance(open_data("hf://someone/copy"), HubData)
    monkeypatch.setenv("RWKU_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"data directory not found: .*missing \(from RWKU_DATA\)"):
        open_data()
    monkeypatch.delenv("RWKU_DATA")
    hub = open_data()
    assert isinstance(hub, HubData) and hub.repo == HUB_REPO
