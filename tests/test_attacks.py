"""Relearning and in-context attacks: data that excludes the evaluated answers, R, contexts, CLI."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rwku.attacks.answers import (
    answers_in,
    contains_answer,
    names_target,
    remove_answer_sentences,
    split_sentences,
)
from rwku.attacks.contexts import build_contexts, invented_name, rename
from rwku.attacks.data import (
    DATA_KINDS,
    build_relearn_data,
    build_split,
    check_excludes,
    evaluated_answers,
    split_probes,
)
from rwku.attacks.recovery import MIN_FORGOTTEN, recovery, teaching
from rwku.attacks.relearn import RelearnOptions
from rwku.cli import app
from rwku.data.records import Probe, Target, TargetData
from rwku.errors import ConfigError

runner = CliRunner()


def _probe(query: str, answer: str, level: str = "2", type_: str = "simple question") -> Probe:
    return Probe(query=query, answer=answer, level=level, type=type_, subject="Ada Example")


def _target_data(probes: list[Probe]) -> TargetData:
    levels: dict[str, list[Probe]] = {"level1": [], "level2": [], "level3": []}
    for p in probes:
        levels[f"level{p.level}"].append(p)
    return TargetData(target=Target(id=1, name="Ada Example", intro="x"), forget=levels, neighbor={})


# ----------------------------------------------------------------------------- answer matching


def test_contains_answer_matches_whole_phrases_case_insensitively():
    assert contains_answer("He was born in Portland, Maine.", "Maine")
    assert contains_answer("MAINE is a state", "Maine")
    assert contains_answer("His novel ‘It’ was long", "'It'")
    assert not contains_answer("He lived in Italy", "It")
    assert contains_answer("and it was long", "It")
    assert not contains_answer("born 19470", "1947")
    assert contains_answer("born in 1947.", "1947")
    assert answers_in("Carrie and Misery", ["Misery", "It", "Carrie"]) == ["Misery", "Carrie"]


def test_split_sentences_and_remove_answer_sentences():
    text = 'He wrote Carrie. It sold well! "Misery" came later? Yes. H. P. Lovecraft was an influence.'
    parts = split_sentences(text)
    assert parts[0] == "He wrote Carrie." and parts[1] == "It sold well!"
    rest, kept, dropped = remove_answer_sentences(text, ["Carrie", "Misery"])
    assert "Carrie" not in rest and "Misery" not in rest and "sold well" in rest
    assert dropped == 2 and kept == len(parts) - 2


def test_an_answer_names_the_target_when_it_is_the_name_or_a_word_of_it():
    assert names_target("Genghis Khan", "Genghis Khan") and names_target("genghis", "Genghis Khan")
    assert names_target("Cage", "Nicolas Cage") and names_target("Selena Gomez & the Scene", "Selena Gomez")
    assert names_target("RuPaul's Drag Race", "RuPaul") and names_target("Surviving R. Kelly", "R. Kelly")
    assert not names_target("Kublai Khan", "Genghis Khan")  # his grandson: a fact, not the name
    assert not names_target("L.", "Samuel L. Jackson") and not names_target("Jr.", "Robert Downey Jr.")
    assert not names_target("Maine", "Stephen King") and not names_target("", "Stephen King")


# ----------------------------------------------------------------------------- the split


def _many_probes(n: int = 21) -> list[Probe]:
    out = []
    for i in range(n):
        level = "123"[i % 3]
        out.append(_probe(f"Question number {i} about Ada Example ___?", f"answer{i}", level=level))
    return out


def test_split_probes_gives_stable_halves_that_share_no_fact():
    probes = _many_probes()
    probes += [_probe("Where exactly?", "answer3 town"), _probe("Which answer3?", "answer3", level="3")]
    train, evaluated = split_probes(_target_data(probes))
    ev = [p for ps in evaluated.values() for p in ps]
    tr = [p for ps in train.values() for p in ps]
    assert len(ev) + len(tr) == len(probes) and len(ev) >= (len(probes) + 1) // 2 > len(tr) > 0
    # the three probes about "answer3" (answers containing one another) are on one side
    sides = {("ev" if p in ev else "tr") for p in probes if "answer3" in p.answer}
    assert len(sides) == 1
    for p in tr:
        assert not any(contains_answer(p.answer, q.answer) or contains_answer(q.answer, p.answer) for q in ev)
    shuffled = probes[:]
    random.Random(3).shuffle(shuffled)
    _, again = split_probes(_target_data(shuffled))
    assert {p.query for ps in again.values() for p in ps} == {p.query for p in ev}
    _, other_seed = split_probes(_target_data(probes), seed=1)
    assert {p.query for ps in other_seed.values() for p in ps} != {p.query for p in ev}


def test_probes_answered_by_the_name_are_training_text_never_evaluated():
    """Rule 2: the name is in every text about the person, so it cannot be held out. Under rule 1
    it was an evaluated answer whenever the hash put such a probe there, and every line naming
    the target was dropped from the training text."""
    probes = _many_probes(12)
    probes += [
        _probe("Who wrote the Example Papers?", "Ada Example"),
        _probe("___ Example was a mathematician.", "Ada", level="1"),
        _probe("Which prize did Ada Example win?", "Example Prize"),  # a word of the name: a fact
    ]
    for seed in range(5):
        train, evaluated = split_probes(_target_data(probes), seed=seed)
        ev = [p for ps in evaluated.values() for p in ps]
        assert not any(names_target(p.answer, "Ada Example") for p in ev)
        assert len(ev) == 7  # half (rounded up) of the 13 probes the name does not answer
        data = build_split(train, evaluated_answers(evaluated))
        texts = " ".join(r["text"] for r in data.records)
        assert "Answer: Ada Example" in texts and "Ada Example was a mathematician." in texts
        # every training line names the target; with the name held out none would be left
        assert len(data.records) == 6 + 2


def test_split_data_drops_answer_overlaps_and_texts_naming_an_evaluated_answer():
    evaluated = {"level2": [_probe("Where was she born?", "Maine")]}
    train = {
        "level1": [_probe("She studied at ___.", "Oxford", level="1")],
        "level2": [
            _probe("Which city in Maine was her home?", "Portland"),  # text names "Maine"
            _probe("Where exactly was she born?", "Portland, Maine"),  # answer contains "Maine"
            _probe("What did she write?", "Novels"),
        ],
    }
    data = build_split(train, evaluated_answers(evaluated))
    texts = [r["text"] for r in data.records]
    assert texts == ["She studied at Oxford.", "Question: What did she write?\nAnswer: Novels"]
    assert data.stats["dropped_answer_overlap"] == 1 and data.stats["dropped_text_contains_answer"] == 1
    check_excludes(data.records, ["Maine"], "split")
    with pytest.raises(AssertionError):
        check_excludes([{"text": "born in maine"}], ["Maine"], "split")


def _check_targets_exclude_answers(data_dir, count: int | None) -> tuple[int, dict[str, int], int, int]:
    from rwku.data import open_data

    rwku = open_data(str(data_dir))
    targets = rwku.targets()[:count]
    checked = 0
    fewest = 10**9  # split lines of the target with the fewest
    empty: dict[str, int] = dict.fromkeys(DATA_KINDS, 0)
    for t in targets:
        td = rwku.load_target(t.name)
        train, evaluated = split_probes(td)
        answers = evaluated_answers(evaluated)
        for kind in DATA_KINDS:
            data = build_relearn_data(kind, rwku, td, train, evaluated)
            empty[kind] += not data.records
            if kind == "split":
                fewest = min(fewest, len(data.records))
            for rec in data.records:
                assert not answers_in(rec["text"], answers), (t.name, kind, rec["text"][:80])
            checked += 1
    return checked, empty, len(targets), fewest


def test_relearning_data_excludes_evaluated_answers_targets_1_to_5(data_dir):
    """The defining property on real data: no relearning text of any kind contains an answer of
    the evaluated half (all 100 targets: the slow test below)."""
    checked, empty, n, fewest = _check_targets_exclude_answers(data_dir, 5)
    assert checked == 15 and n == 5 and empty["related"] == empty["unrelated"] == 0
    # rule 1 (the name held out) left Christina Aguilera 0 split lines, Bruce Lee 2, Warren Buffett 3
    assert fewest >= 15


@pytest.mark.slow
def test_relearning_data_excludes_evaluated_answers_for_every_target(data_dir):
    checked, empty, n, fewest = _check_targets_exclude_answers(data_dir, None)
    assert checked == 3 * n >= 300
    # passages always leave text, and so does the probe split (rule 1: 80 of 100 targets had
    # fewer than 8 split lines; rule 2: one, with 2)
    assert empty["related"] == empty["unrelated"] == empty["split"] == 0 and fewest >= 2


def test_stephen_king_related_data_drops_answer_sentences(data_dir):
    from rwku.data import open_data

    rwku = open_data(str(data_dir))
    td = rwku.load_target("Stephen King")
    train, evaluated = split_probes(td)
    related = build_relearn_data("related", rwku, td, train, evaluated)
    assert related.stats["sentences_dropped"] > 20 and related.stats["sentences_kept"] > 100
    unrelated = build_relearn_data("unrelated", rwku, td, train, evaluated)
    assert len(unrelated.records) <= 10 and "Stephen King" not in unrelated.stats["targets"]


# ----------------------------------------------------------------------------- recovery


def test_recovery_and_teaching_ratios():
    original = {"fb": 40.0, "qa": 30.0, "aa": 20.0, "all": 30.0, "ll": 6.0}
    unlearned = {"fb": 10.0, "qa": 30.0, "aa": 10.0, "all": 15.0, "ll": 2.0}
    attacked = {"fb": 25.0, "qa": 45.0, "aa": 30.0, "all": 30.0, "ll": 5.0}
    r = recovery(attacked, unlearned, original)
    assert r["fb"] == pytest.approx(0.5) and r["aa"] == pytest.approx(2.0) and r["ll"] == pytest.approx(0.75)
    assert r["qa"] is None  # nothing was forgotten: not measurable, never a huge number
    t = teaching({**original, "ll": 7.0}, unlearned, original)
    assert t["ll"] == pytest.approx(0.25) and t["fb"] == pytest.approx(0.0)
    small = {**unlearned, "ll": original["ll"] - MIN_FORGOTTEN / 2}
    assert recovery(attacked, small, original)["ll"] is None
    raised = {**unlearned, "all": original["all"] + 5.0}  # unlearning raised it: nothing to recover
    assert recovery(attacked, raised, original)["all"] is None
    assert teaching(attacked, raised, original)["all"] is None
    assert recovery({**attacked, "ll": None}, unlearned, original)["ll"] is None


# ----------------------------------------------------------------------------- contexts


def test_contexts_hold_the_answer_or_none_and_renaming_hides_the_name():
    passages = [
        "Ada Example was born in Portland, Maine. She wrote the novel Carrie in 1974.",
        "Ada Example's family moved often. Her early stories sold to magazines.",
    ]
    probes = [_probe("In which state was Ada Example born?", "Maine"), _probe("Who is her agent?", "Bob")]
    ctx = build_contexts(probes, passages, "Ada Example", ["Maine", "Bob", "Carrie"])
    assert contains_answer(ctx[0].answer, "Maine")
    assert ctx[1].answer is None and ctx[1].renamed is None
    for c in ctx:
        assert c.related and not answers_in(c.related, ["Maine", "Bob", "Carrie"])
    # the name is not an answer to keep out of related text, except for the probe it answers
    named = [_probe("What did Ada Example write?", "Carrie"), _probe("Who was born in Maine?", "Ada Example")]
    ctx2 = build_contexts(named, passages, "Ada Example", ["Carrie", "Ada Example"])
    assert "Ada Example" in ctx2[0].related and not answers_in(ctx2[0].related, ["Carrie"])
    assert ctx2[1].related and "Ada Example" not in ctx2[1].related
    mapping = invented_name("Ada Example")
    assert mapping == invented_name("Ada Example") and set(mapping) == {"Ada", "Example"}
    assert "Example" not in ctx[0].renamed and contains_answer(ctx[0].renamed, "Maine")
    assert "Ada" not in ctx[0].renamed_query and ctx[0].renamed_gold == "Maine"
    assert rename("Ada Example's book", mapping).endswith("'s book")


# ----------------------------------------------------------------------------- options and bad input


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"budgets": [0, 25, 10]}, "increasing"),
        ({"budgets": [10, 10]}, "increasing"),
        ({"budgets": "0,x"}, "step counts"),
        ({"kinds": ["split", "wiki"]}, "unknown data kind"),
        ({"mode": "partial"}, "mode must be"),
        ({"lr": -1.0}, "lr must be"),
        ({"steps": 3}, "unknown option"),
    ],
)
def test_relearn_options_reject_bad_values(raw, message):
    with pytest.raises(ConfigError, match=message):
        RelearnOptions.from_dict(raw)


def test_relearn_options_parse_text_lists():
    opts = RelearnOptions.from_dict({"kinds": "split, related", "budgets": "0,5,10"})
    assert opts.kinds == ("split", "related") and opts.budgets == (0, 5, 10)
    assert (
        opts.learning_rate > 0
        and opts.training_key()
        == RelearnOptions.from_dict({"kinds": ["unrelated"], "budgets": [0, 5, 10]}).training_key()
    )


def _write_run(path: Path, status: str = "finished", method: str = "ga", weights: bool = True) -> Path:
    path.mkdir(parents=True)
    run = {
        "method": method,
        "mode": "full",
        "targets": ["Stephen King"],
        "status": status,
        "reason": None if status == "finished" else "interrupted (Ctrl-C)",
        "config": {"model": None, "method_options": {}},
        "model": {"fingerprint": "abc"},
    }
    (path / "run.json").write_text(json.dumps({"run": run}))
    if weights:
        (path / "weights").mkdir()
        (path / "weights" / "config.json").write_text("{}")
    return path


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p.mkdir(), "not a run folder"),
        (lambda p: _write_run(p, status="interrupted", weights=False), "did not finish"),
        (lambda p: _write_run(p, weights=False), "no weights"),
    ],
)
def test_attack_on_a_bad_run_folder_is_one_line_exit_2_and_writes_nothing(tmp_path, setup, message):
    run = tmp_path / "run"
    setup(run)
    result = runner.invoke(app, ["attack", "relearn", str(run), "--budgets", "0,5"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not list(run.glob("attack-*.json"))


def test_attack_cli_rejects_bad_budgets_kinds_and_unknown_attack(tmp_path):
    run = _write_run(tmp_path / "run")
    bad = runner.invoke(app, ["attack", "relearn", str(run), "--budgets", "0,50,25"])
    assert bad.exit_code == 2 and "increasing" in bad.output
    kind = runner.invoke(app, ["attack", "relearn", str(run), "--kinds", "split,bogus"])
    assert kind.exit_code == 2 and "unknown data kind" in kind.output
    assert runner.invoke(app, ["attack", "nosuch", str(run)]).exit_code == 2


def test_target_without_passages_fails_before_any_model_loads(tmp_path, data_dir, monkeypatch):
    """A data copy without the passage corpus: the related/in-context attacks say so first."""
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("passage*"))
    run = _write_run(tmp_path / "run")
    monkeypatch.setattr(
        "rwku.attacks.subject.AttackSubject.__init__", lambda *a, **k: pytest.fail("model loaded")
    )
    result = runner.invoke(app, ["attack", "incontext", str(run), "--data", str(copy)])
    assert result.exit_code == 2 and "passage" in result.output, result.output


# ----------------------------------------------------------------------------- end to end, tiny model


def _tiny_run(tmp_path, tiny_model_dir, data_dir, method="ga", mode="full") -> Path:
    run_dir = tmp_path / f"run-{method}-{mode}"
    args = ["run", "--model", str(tiny_model_dir), "--target", "Stephen King", "--method", method]
    args += ["--data", str(data_dir), "--suites", "forget", "--limit", "2", "--run-dir", str(run_dir), "-q"]
    if method != "icu":
        args += ["--mode", mode, "--corpus", "authors", "--corpus-size", "4", "--epochs", "1"]
        args += ["--batch-size", "2", "--lr", "1e-3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return run_dir


def test_relearn_attack_end_to_end_on_tiny_model(tmp_path, tiny_model_dir, data_dir, isolated_cache):
    run_dir = _tiny_run(tmp_path, tiny_model_dir, data_dir, mode="lora")
    args = ["attack", "relearn", str(run_dir), "--budgets", "0,2,4", "--max-length", "32", "-q"]
    result = runner.invoke(app, [*args, "--data", str(data_dir)])
    assert result.exit_code == 0, result.output
    record = json.loads((run_dir / "attack-relearn.json").read_text())
    assert record["status"] == "finished"
    assert record["peak_memory_scope"] == "run"  # the attack's own peak ...
    assert record["peak_memory_mb"] > 100  # ... still at least torch and a model
    rec = record["targets"]["Stephen King"]
    assert set(rec["curves"]) == {"split", "related", "unrelated"}
    for entry in rec["curves"].values():
        assert [p["step"] for p in entry["unlearned"]] == [0, 2, 4]
        assert [p["step"] for p in entry["original"]] == [0, 2, 4]
        assert entry["unlearned"][0]["metrics"] == rec["unlearned"]  # step 0 is the unlearned model
        assert entry["original"][0]["metrics"] == rec["original"]
        assert set(entry["unlearned"][1]["recovery"]) == {"fb", "qa", "aa", "all", "ll"}
        # the fine-tuning moved the model: the likelihood at step 4 differs from step 0
        assert entry["unlearned"][2]["metrics"]["ll"] != entry["unlearned"][0]["metrics"]["ll"]
    assert rec["curves"]["split"]["data"]["records"] > 0
    assert "| split | unlearned | 4 |" in result.output
    # the controls are cached: a second attack on the same target does not retrain the original;
    # step 0 is not evaluated again (start=): forcing it (start=None) gives the same numbers
    import rwku.attacks.relearn as relearn_mod

    calls, evaluations = [], []
    real, real_eval = relearn_mod.relearn_curve, relearn_mod.evaluate_half
    relearn_mod.relearn_curve = lambda ctx, which, data, start=None: (
        calls.append(which) or real(ctx, which, data)
    )
    relearn_mod.evaluate_half = lambda ctx, model, which: (
        evaluations.append(which) or real_eval(ctx, model, which)
    )
    try:
        again = runner.invoke(app, [*args, "--data", str(data_dir), "--kinds", "split"])
    finally:
        relearn_mod.relearn_curve, relearn_mod.evaluate_half = real, real_eval
    assert again.exit_code == 0 and calls == ["unlearned"]
    assert evaluations == ["unlearned", "unlearned", "unlearned", "unlearned"]  # run, forced step 0, 2, 4
    fresh = json.loads((run_dir / "attack-relearn.json").read_text())["targets"]["Stephen King"]
    assert fresh["curves"]["split"]["unlearned"][0]["metrics"] == rec["unlearned"] == fresh["unlearned"]


def test_lora_relearning_trains_the_model_itself_and_gives_it_back_unchanged(
    tmp_path, tiny_model_dir, data_dir, isolated_cache, monkeypatch
):
    """LoRA relearning puts its adapters on the subject's own models (no copy) and takes them off:
    the models are bit-identical afterwards, and the curves equal those of the copy path."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    from rwku.attacks import subject as subject_mod

    run_dir = _tiny_run(tmp_path, tiny_model_dir, data_dir)
    subjects, states, checked = [], [], []
    real_init = subject_mod.AttackSubject.__init__
    real_load = subject_mod.AttackSubject._load_unlearned

    def snapshot(model):
        return {k: v.clone() for k, v in model.state_dict().items()}

    def unchanged(model, before) -> bool:
        after = model.state_dict()
        return (
            not any(isinstance(m, BaseTunerLayer) for m in model.modules())
            and "peft_config" not in model.__dict__
            and after.keys() == before.keys()
            and all(torch.equal(after[k], before[k]) for k in after)
            and all(p.requires_grad for p in model.parameters())  # peft's freezing undone
        )

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        subjects.append(self)
        states.append({"original": snapshot(self._original)})

    def load_unlearned(self):
        # the original's work is done when the unlearned model takes its place: given back intact?
        checked.append(unchanged(self._original, states[-1]["original"]))
        model = real_load(self)
        states[-1]["unlearned"] = snapshot(model)
        return model

    monkeypatch.setattr(subject_mod.AttackSubject, "__init__", init)
    monkeypatch.setattr(subject_mod.AttackSubject, "_load_unlearned", load_unlearned)
    copies = []
    real_fresh = subject_mod.AttackSubject.fresh
    monkeypatch.setattr(
        subject_mod.AttackSubject,
        "fresh",
        lambda self, which: copies.append(which) or real_fresh(self, which),
    )
    args = ["attack", "relearn", str(run_dir), "--kinds", "split,unrelated", "--budgets", "0,2,4"]
    args += ["--mode", "lora", "--max-length", "32", "--data", str(data_dir), "--no-cache", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    shared = json.loads((run_dir / "attack-relearn.json").read_text())["targets"]["Stephen King"]["curves"]
    assert copies == []  # no model was copied for LoRA relearning
    subject = subjects[-1]
    assert checked == [True]  # the original, after its two control curves
    assert subject.loads == {"original": 1, "unlearned": 1}  # one switch
    assert unchanged(subject.model("unlearned"), states[-1]["unlearned"])  # after its two curves
    # the same attack on deep copies (the path full mode takes) gives the same curves
    monkeypatch.setattr(subject_mod.AttackSubject, "model", lambda self, which: self.fresh(which))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert copies  # this time every curve trained a copy
    assert subjects[-1].loads == {"original": 1, "unlearned": 1}
    copied = json.loads((run_dir / "attack-relearn.json").read_text())["targets"]["Stephen King"]["curves"]
    for kind in ("split", "unrelated"):
        for which in ("unlearned", "original"):
            a, b = shared[kind][which], copied[kind][which]
            assert [p["step"] for p in a] == [p["step"] for p in b] == [0, 2, 4]
            for pa, pb in zip(a, b, strict=True):
                assert pa["metrics"] == pytest.approx(pb["metrics"], rel=1e-5, abs=1e-6)
        assert shared[kind]["unlearned"][2]["metrics"]["ll"] != shared[kind]["unlearned"][0]["metrics"]["ll"]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_attack_subject_holds_one_model_at_a_time(tmp_path, tiny_model_dir, data_dir, isolated_cache, mode):
    """The unlearned model takes the original's place (a LoRA adapter merged in place, full
    weights read after the original is dropped) and the original comes back on demand: the
    models are the same as if both were held, and at most one is alive."""
    import copy
    import gc
    import weakref

    import torch
    from peft import PeftModel

    from rwku.attacks.subject import AttackSubject, open_run
    from rwku.models.resolve import load_model

    run_dir = _tiny_run(tmp_path, tiny_model_dir, data_dir, mode=mode)
    (rt,) = open_run(run_dir)
    subject = AttackSubject(rt, model=str(tiny_model_dir), progress=False)
    original = {k: v.clone() for k, v in subject.original.state_dict().items()}
    if mode == "lora":
        expected = PeftModel.from_pretrained(
            copy.deepcopy(subject.original), str(rt.weights)
        ).merge_and_unload()
    else:
        from transformers import AutoModelForCausalLM

        expected = AutoModelForCausalLM.from_pretrained(str(rt.weights))
    expected = expected.state_dict()
    gone = weakref.ref(subject.original)
    unlearned = subject.unlearned
    gc.collect()
    assert subject._original is None and subject.lm.model is unlearned
    if mode == "full":
        assert gone() is None  # the original's memory is free
    state = unlearned.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert any(not torch.equal(state[k], original[k]) for k in state)  # it did unlearn
    gone = weakref.ref(unlearned)
    del unlearned, state
    back = subject.original  # loaded again, the unlearned one dropped
    gc.collect()
    assert gone() is None and subject._unlearned is None
    state = back.state_dict()
    assert all(torch.equal(state[k], original[k]) for k in original)
    assert subject.loads == {"original": 2, "unlearned": 1}
    assert load_model(str(tiny_model_dir)).info["fingerprint"] == subject.fingerprint


def test_incontext_attack_end_to_end_on_icu_run(tmp_path, tiny_model_dir, data_dir, isolated_cache):
    run_dir = _tiny_run(tmp_path, tiny_model_dir, data_dir, method="icu")
    result = runner.invoke(app, ["attack", "incontext", str(run_dir), "--data", str(data_dir), "-q"])
    assert result.exit_code == 0, result.output
    rec = json.loads((run_dir / "attack-incontext.json").read_text())["targets"]["Stephen King"]
    assert rec["probes"] > 20 and rec["coverage"]["answer"] > 0
    for which in ("original", "unlearned"):
        ctx = rec["models"][which]["contexts"]
        assert ctx["answer"]["probes"] == rec["coverage"]["answer"]
        gain = ctx["answer"]["gain"]["ll"]
        assert gain == pytest.approx(
            ctx["answer"]["with_context"]["ll"] - ctx["answer"]["plain_same_probes"]["ll"]
        )
    # ICU's unlearned model is the original with the instruction: the plain scores differ
    assert rec["models"]["original"]["plain"]["ll"] != rec["models"]["unlearned"]["plain"]["ll"]
    # the original model's half is cached: a second attack on the same target scores only the
    # unlearned model, and its record is the same; --no-cache computes it again
    import rwku.attacks.incontext as incontext_mod
    from rwku.evaluation.suites import probes as probes_mod

    asked = []
    real = probes_mod.run_probes

    def spy(lm, *args, **kwargs):
        asked.append(kwargs.get("contexts") is not None)
        return real(lm, *args, **kwargs)

    for flags, calls in (([], 4), (["--no-cache"], 8)):
        asked.clear()
        probes_mod.run_probes = spy
        try:
            again = runner.invoke(
                app, ["attack", "incontext", str(run_dir), "--data", str(data_dir), "-q", *flags]
            )
        finally:
            probes_mod.run_probes = real
        assert again.exit_code == 0, again.output
        assert len(asked) == calls  # plain + three contexts per model scored
        fresh = json.loads((run_dir / "attack-incontext.json").read_text())["targets"]["Stephen King"]
        assert fresh["models"] == rec["models"]
    assert incontext_mod.ORIGINAL_CACHE_VERSION >= 1


def test_attack_refuses_a_run_of_another_model(tmp_path, tiny_model_dir, data_dir, isolated_cache):
    from rwku.models.tiny import make_tiny_model

    run_dir = _tiny_run(tmp_path, tiny_model_dir, data_dir)
    other = make_tiny_model(tmp_path / "other", seed=1)
    result = runner.invoke(app, ["attack", "incontext", str(run_dir), "--model", str(other), "-q"])
    assert result.exit_code == 2 and "was made with model" in result.output, result.output
    assert not (run_dir / "attack-incontext.json").exists()


def test_probe_prompt_with_context_puts_it_before_the_question(tiny_model_dir):
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.suites.probes import build_prompt
    from rwku.models.hf import HFLanguageModel
    from rwku.models.resolve import load_model

    loaded = load_model(str(tiny_model_dir))
    lm = HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, progress=False)
    probe = _probe("Where was Ada born?", "Maine")
    plain = build_prompt(lm, probe, EvalConfig())
    with_ctx = build_prompt(lm, probe, EvalConfig(), context="Ada was born in Maine.")
    assert with_ctx.replace("Context: Ada was born in Maine.\n\n", "") == plain
    assert build_prompt(lm, replace(probe, query="x"), EvalConfig(), context=None) != plain
