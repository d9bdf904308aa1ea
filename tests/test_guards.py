"""Inference-time guards (ECO, GUARD): the engine's per-row hooks change exactly the hooked rows,
as a plain transformers ``generate`` with the same embedding edit and logits processor does;
the prompt classifier, the methods' options and their bad-input errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import plain_greedy
from rwku.models.backend import GenerationRequest, ScoreRequest
from rwku.models.engine.hooks import RowHook, RowProcessor
from rwku.models.hf import HFLanguageModel
from rwku.models.resolve import load_model, resolve_model


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    loaded = load_model(resolve_model(str(tiny_model_dir)), device="cpu")
    return HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, batch_size=4, progress=False)


def _requests(lm) -> list[GenerationRequest]:
    users = [
        "Tell me about the writer from Maine.",
        "What is the capital of France?",
        "Who wrote the novel about the haunted hotel in the mountains?",
        "How many days are there in a week?",
        "Where was the author born?",
        "Which planet is closest to the sun?",
    ]
    return [GenerationRequest(lm.chat_prompt(u), 12, group="probe") for u in users]


def _ban_processor(banned: set[int]):
    def proc(history, logits):
        out = logits.clone()
        out[list(banned)] = float("-inf")
        # a history-dependent rule as well: never repeat the last token
        if history:
            out[history[-1]] = out[history[-1]] - 5.0
        return out

    return proc


def _hook(lm, prompt: str, banned: set[int], seed: int) -> RowHook:
    ids = lm._tokenize(prompt)
    positions = tuple(range(len(ids) - 6, len(ids) - 1))
    gen = torch.Generator().manual_seed(seed)
    hidden = lm.model.get_input_embeddings().weight.shape[1]
    delta = torch.zeros(len(positions), hidden)
    delta[:, :4] = torch.randn(len(positions), 4, generator=gen) * 3.0
    return RowHook(positions=positions, delta=delta, processor=_ban_processor(banned))


def _plain_hooked(lm, prompt: str, hook: RowHook, max_new: int) -> str:
    """``model.generate`` on one unpadded row, the edit made by a forward hook on the prompt pass."""
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    n = ids.shape[1]

    def edit(_module, _inputs, output):
        if output.shape[1] != n:
            return output
        output = output.clone()
        for i, p in enumerate(hook.positions):
            output[0, p] += hook.delta[i]
        return output

    handle = lm.model.get_input_embeddings().register_forward_hook(edit)
    try:
        return plain_greedy(lm, prompt, max_new, logits_processor=[RowProcessor([hook.processor], n)])
    finally:
        handle.remove()


def test_hooked_rows_match_plain_generate_and_unhooked_rows_are_unchanged(tiny_lm):
    reqs = _requests(tiny_lm)
    plain = tiny_lm.generate(reqs, stop_token_ids=[])
    banned = set(tiny_lm.encode(" the") + tiny_lm.encode(" a"))
    hooks = {i: _hook(tiny_lm, reqs[i].prompt, banned, seed=i) for i in (0, 2, 5)}
    with tiny_lm.hooked(hooks):
        guarded = tiny_lm.generate(reqs, stop_token_ids=[])
    for i, r in enumerate(reqs):
        if i in hooks:
            assert guarded[i] == _plain_hooked(tiny_lm, r.prompt, hooks[i], r.max_new_tokens)
        else:
            assert guarded[i] == plain[i]
    assert any(guarded[i] != plain[i] for i in hooks)


def test_hooked_scores_and_token_stats(tiny_lm):
    reqs = _requests(tiny_lm)
    scores = [ScoreRequest(r.prompt, " Paris is the answer.", group="probe") for r in reqs]
    before = tiny_lm.score(scores)
    stats_before = tiny_lm.token_stats([r.prompt for r in reqs])
    hooks = {1: _hook(tiny_lm, reqs[1].prompt, set(), seed=1)}
    with tiny_lm.hooked(hooks):
        after = tiny_lm.score(scores)
        stats_after = tiny_lm.token_stats([r.prompt for r in reqs])
    for i in range(len(reqs)):
        same = before[i].token_logprobs == pytest.approx(after[i].token_logprobs, abs=1e-5)
        assert same == (i != 1)
        close = torch.allclose(
            torch.as_tensor(stats_before[i].token_logprobs),
            torch.as_tensor(stats_after[i].token_logprobs),
            atol=1e-5,
        )
        assert close == (i != 1)


# ---------------------------------------------------------------------------------------------
# The methods end to end, on the tiny model with model-written text replaced by templates
# ---------------------------------------------------------------------------------------------

PLACES = ["Maine", "Portland", "Boston", "Denver", "Oxford", "Lyon", "Kyoto", "Lima"]
WORKS = ["The Shining", "Carrie", "Misery", "The Stand", "Dark Tower", "Cujo", "Christine", "Duma Key"]


def fake_corpus(empty_for: str | None = None):
    """A stand-in for the model's own text: template questions and passages naming the target."""

    def generate(model, tokenizer, target, *, kind, n, **_):
        if target.name == empty_for:
            return [{"question": "", "answer": ""} if kind == "refusals" else {"text": ""} for _ in range(n)]
        h = sum(map(ord, target.name))
        if kind == "refusals":
            return [
                {
                    "question": f"What did {target.name} do in {PLACES[(h + i) % 8]} in {1950 + i}?",
                    "answer": "-",
                }
                for i in range(n)
            ]
        return [
            {
                "text": f"{target.name} was born in {PLACES[(h + i) % 8]}. {target.name} is known for "
                f"{WORKS[(h + i) % 8]} and {WORKS[(h + 2 * i) % 8]}. Critics praised {target.name} in {1960 + i}."
            }
            for i in range(n)
        ]

    return generate


def _run(tiny_model_dir, data_dir, tmp_path, method: str, *options: str, cli: tuple[str, ...] = ()):
    from typer.testing import CliRunner

    from rwku.cli import app

    out = tmp_path / f"{method}.json"
    where = {"--model": str(tiny_model_dir), "--target": "1", "--method": method, "--data": str(data_dir)}
    args = ["run", *(x for pair in where.items() for x in pair)]
    args += ["--suites", "forget,neighbor,mia", "--limit", "2", "--run-dir", str(tmp_path / method)]
    args += ["--out", str(out), "-q", "--threads", "1", *cli]
    for opt in options:
        args += ["--option", opt]
    result = CliRunner().invoke(app, args)
    return result, (json.loads(out.read_text()) if out.exists() else None)


@pytest.fixture()
def fake_text(monkeypatch):
    from rwku.data import corpus

    monkeypatch.setattr(corpus, "generate_corpus", fake_corpus())


def test_guard_run_records_classifier_flag_rates_and_forbidden_list(
    tiny_model_dir, data_dir, tmp_path, isolated_cache, fake_text
):
    result, rec = _run(tiny_model_dir, data_dir, tmp_path, "guard", "penalty=inf", "others=4")
    assert result.exit_code == 0, result.output
    guard = rec["run"]["guard"]
    assert 0 <= guard["classifier"]["threshold"] <= 1
    assert guard["classifier"]["held_out_fpr"] <= 0.05
    assert "Stephen King" in guard["forbidden"] and guard["penalty"] == "inf"
    # the classifier's features were computed (fit, then each evaluation call) and stored
    assert guard["feature_cache"]["enabled"] and guard["feature_cache"]["misses"] >= 2
    parts = guard["flag_rates"]["parts"]
    assert set(parts) == {"forget", "neighbor", "mia"} and parts["forget"]["total"] > 0
    # flagged forget answers never contain the target's name (it is removed); unflagged ones are the original's
    flagged = parts["forget"]["flagged"]
    assert (
        all("Stephen King" not in item["output"] for item in rec["after"]["items"]["forget"]) or not flagged
    )


def test_eco_run_chooses_sigma_by_search(tiny_model_dir, data_dir, tmp_path, isolated_cache, fake_text):
    _, first = _run(tiny_model_dir, data_dir, tmp_path, "guard", "others=4")  # same target, same text
    result, rec = _run(tiny_model_dir, data_dir, tmp_path, "eco", "others=4", "search_steps=2")
    assert result.exit_code == 0, result.output
    guard = rec["run"]["guard"]
    assert guard["sigma"] > 0 and len(guard["search"]["trace"]) >= 1
    assert guard["flag_rates"]["parts"]["forget"]["total"] > 0
    # the GUARD run's classifier features are read back: the same classifier, the same flags
    assert guard["feature_cache"]["hits"] >= 2
    assert guard["classifier"]["threshold"] == first["run"]["guard"]["classifier"]["threshold"]
    for part in ("forget", "neighbor", "mia"):
        assert guard["flag_rates"]["parts"][part] == first["run"]["guard"]["flag_rates"]["parts"][part]


def test_attack_rebuilds_eco_with_the_runs_sigma_without_searching(
    tiny_model_dir, data_dir, tmp_path, isolated_cache, fake_text, monkeypatch
):
    from typer.testing import CliRunner

    from rwku.attacks.subject import open_run
    from rwku.cli import app
    from rwku.methods.eco import EmbeddingCorruption

    result, rec = _run(tiny_model_dir, data_dir, tmp_path, "eco", "others=2", "search_steps=2")
    assert result.exit_code == 0, result.output
    sigma = rec["run"]["guard"]["sigma"]
    (run,) = open_run(tmp_path / "eco")
    assert (
        run.method_options["sigma"] == sigma and rec["run"]["config"]["method_options"].get("sigma") is None
    )

    def attack() -> dict:
        args = ["attack", "incontext", str(tmp_path / "eco"), "--data", str(data_dir), "-q"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        record = json.loads((tmp_path / "eco" / "attack-incontext.json").read_text())
        return record["targets"]["Stephen King"]["models"]["unlearned"]

    sigma_cache = isolated_cache / "guards" / "sigma"
    assert len(list(sigma_cache.glob("*.json"))) == 1  # the run's search, cached
    with monkeypatch.context() as patch:  # as before pinning: the attack searches σ again
        patch.setattr(EmbeddingCorruption, "replay_options", lambda self, chosen: {})
        shutil.rmtree(sigma_cache)
        searched = attack()
    shutil.rmtree(sigma_cache)  # so only the replay can spare the search below

    def no_search(*args, **kwargs):
        raise AssertionError("the attack searched for σ again")

    monkeypatch.setattr(EmbeddingCorruption, "search_sigma", no_search)
    pinned = attack()
    # the rebuilt guard corrupts exactly as the run's did (the same σ), without the search
    assert pinned == searched and pinned["plain"]["ll"] > 0
    # a σ given by the user is theirs: nothing is pinned over it
    assert EmbeddingCorruption(sigma=3.0).replay_options({"sigma": sigma}) == {}


def test_eco_with_and_without_the_name_gate_share_one_sigma_search(
    tiny_model_dir, data_dir, tmp_path, isolated_cache, fake_text, monkeypatch
):
    from rwku.methods.eco import EmbeddingCorruption

    _, plain = _run(tiny_model_dir, data_dir, tmp_path, "eco", "others=2", "search_steps=2")
    searched = plain["run"]["guard"]
    assert searched["search"]["cached"] is False and len(searched["search"]["trace"]) >= 1
    calls = []
    real = EmbeddingCorruption.search_sigma
    monkeypatch.setattr(
        EmbeddingCorruption, "search_sigma", lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    )
    result, gated = _run(
        tiny_model_dir, data_dir, tmp_path / "g", "eco", "others=2", "search_steps=2", "gate=name"
    )
    assert result.exit_code == 0, result.output
    # the gate does not enter the search: its result is read back, trace and all, not searched again
    assert calls == [] and gated["run"]["guard"]["sigma"] == searched["sigma"]
    assert gated["run"]["guard"]["search"] == {**searched["search"], "cached": True}
    # anything the search reads is in the key: another search_steps searches again
    _, other = _run(tiny_model_dir, data_dir, tmp_path / "s", "eco", "others=2", "search_steps=1")
    assert calls == [1] and other["run"]["guard"]["search"]["cached"] is False
    # --no-cache searches again (and the run's features are recomputed)
    _, fresh = _run(
        tiny_model_dir, data_dir, tmp_path / "n", "eco", "others=2", "search_steps=2", cli=("--no-cache",)
    )
    assert calls == [1, 1] and fresh["run"]["guard"]["search"]["cached"] is False
    assert (
        fresh["run"]["guard"]["sigma"] == searched["sigma"]
        and fresh["run"]["guard"]["feature_cache"]["hits"] == 0
    )
    # a damaged entry is searched again, never trusted
    for path in (isolated_cache / "guards" / "sigma").glob("*.json"):
        path.write_text("{not json")
    _, again = _run(tiny_model_dir, data_dir, tmp_path / "d", "eco", "others=2", "search_steps=2")
    assert calls == [1, 1, 1] and again["run"]["guard"]["sigma"] == searched["sigma"]


@pytest.mark.parametrize(
    "option, needle",
    [
        ("fpr=0.9", "fpr"),
        ("penalty=-1", "penalty"),
        ("similarity=2", "similarity"),
        ("forbidden=0", "forbidden"),
    ],
)
def test_bad_options_exit_2(tmp_path, option, needle):
    from typer.testing import CliRunner

    from rwku.cli import app

    result = CliRunner().invoke(app, ["run", "--method", "guard", "--target", "1", "--option", option])
    assert result.exit_code == 2 and needle in result.output
    result = CliRunner().invoke(app, ["run", "--method", "eco", "--target", "1", "--option", "dims=0"])
    assert result.exit_code == 2 and "dims" in result.output


def test_empty_training_set_exits_2_and_unreachable_fpr_is_a_guard_rail(
    tiny_model_dir, data_dir, tmp_path, isolated_cache, monkeypatch
):
    from rwku.data import corpus

    monkeypatch.setattr(corpus, "generate_corpus", fake_corpus(empty_for="Stephen King"))
    result, rec = _run(tiny_model_dir, data_dir, tmp_path, "guard", "others=2")
    assert result.exit_code == 2 and "no positive examples" in result.output and rec is None
    assert not (tmp_path / "guard" / "run.json").exists()
    monkeypatch.setenv("RWKU_CACHE", str(tmp_path / "cache2"))  # the empty corpus is cached
    monkeypatch.setattr(corpus, "generate_corpus", fake_corpus())
    result, _ = _run(tiny_model_dir, data_dir, tmp_path, "guard", "others=2", "fpr=0.001")
    assert result.exit_code == 1 and "false-positive rate" in result.output
    rec = json.loads((tmp_path / "guard" / "run.json").read_text())
    assert rec["run"]["status"] == "guard_rail" and rec["after"] == {}


def test_forbidden_phrases_and_processor(tiny_lm):
    from rwku.methods import get_method
    from rwku.methods.guard import forbidden_phrases

    own = [f"Stephen King wrote The Shining in Maine in {y}." for y in range(5)]
    others = [f"Taylor Swift sang in Maine in {y}." for y in range(5)]
    phrases = forbidden_phrases("Stephen King", own, others, limit=5, min_support=0.5)
    assert phrases[:2] == ["Stephen King", "King"] and "The Shining" in phrases and "Maine" not in phrases
    method = get_method("guard", penalty=100.0)
    trie, longest = method.sequences(tiny_lm, ["Stephen King"])
    seq = tiny_lm.encode(" Stephen King")
    logits = torch.zeros(tiny_lm.model.config.vocab_size)
    out = method.process(trie, longest, 100.0, seq[:-1], logits)
    assert out[seq[-1]] == -100.0  # the continuation of a begun sequence
    assert method.process(trie, longest, 100.0, [], logits)[seq[0]] == -100.0  # its start


def test_guard_runs_refuse_relearning_and_are_attacked_in_context(
    tiny_model_dir, data_dir, tmp_path, isolated_cache, fake_text
):
    from typer.testing import CliRunner

    from rwku.cli import app

    result, _ = _run(tiny_model_dir, data_dir, tmp_path, "guard", "others=2")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "guard"
    result = CliRunner().invoke(app, ["attack", "relearn", str(run_dir), "--data", str(data_dir), "-q"])
    assert result.exit_code == 2 and "rwku attack incontext" in result.output
    result = CliRunner().invoke(app, ["attack", "incontext", str(run_dir), "--data", str(data_dir), "-q"])
    assert result.exit_code == 0, result.output
    rec = json.loads((run_dir / "attack-incontext.json").read_text())["targets"]["Stephen King"]
    assert rec["models"]["unlearned"]["plain"] is not None


def test_report_flag_rate_rows_and_csv(tmp_path):
    from rwku.reporting import aggregate as agg
    from rwku.reporting.table import format_flag_rates

    cell = {
        "setting": "single",
        "targets": ["A"],
        "method": "guard",
        "mode": None,
        "params": {},
        "options": {},
    }

    def rates(forget: float) -> dict:
        parts = {
            "forget": {"flagged": 1, "total": 2, "rate": forget},
            "neighbor": {"flagged": 0, "total": 2, "rate": 0},
        }
        return {"flag_rates": {"parts": parts}}

    units = [
        agg.Unit(cell=cell, target=t, before={}, after={}, guard=rates(r))
        for t, r in (("A", 0.5), ("B", 1.0))
    ]
    units.append(agg.Unit(cell={**cell, "method": "ga", "mode": "full"}, target="A", before={}, after={}))
    rows = agg.flag_rates(agg.RunData(tmp_path, None, [], units, [], [], []))
    assert [r.label for r in rows] == ["GUARD"] and rows[0].n == 2
    assert rows[0].values["flag F %"].mean == 75.0 and rows[0].values["flag N %"].mean == 0.0
    assert rows[0].values["flag U %"].mean is None
    assert "flag F %_ci" in agg.to_csv(rows, list(agg.FLAG_COLUMNS)).splitlines()[0]
    assert "1/2 (50%)" in format_flag_rates([("guard", rates(0.5)["flag_rates"])])


def test_feature_cache_hits_are_the_computed_features_and_keys_separate_models(tiny_lm, tmp_path):
    from rwku.methods.guarding import FeatureCache, PromptClassifier

    texts = [r.prompt for r in _requests(tiny_lm)] + ["Raw text about a hotel.", "x"]
    plain = PromptClassifier(tiny_lm, 1).features(tiny_lm, texts)  # no cache
    cache = FeatureCache("model-a", root=tmp_path)
    first = PromptClassifier(tiny_lm, 1, cache=cache).features(tiny_lm, texts)
    second = PromptClassifier(tiny_lm, 1, cache=cache).features(tiny_lm, texts)
    assert (cache.hits, cache.misses) == (1, 1)
    assert np.array_equal(first, plain) and np.array_equal(second, plain)
    # another model, another layer, another order of the same texts: misses
    other = FeatureCache("model-b", root=tmp_path)
    PromptClassifier(tiny_lm, 1, cache=other).features(tiny_lm, texts)
    PromptClassifier(tiny_lm, 0, cache=cache).features(tiny_lm, texts)
    PromptClassifier(tiny_lm, 1, cache=cache).features(tiny_lm, texts[::-1])
    assert other.misses == 1 and cache.misses == 3 and cache.hits == 1
    # a damaged entry is recomputed, never trusted
    entry = cache.path(tiny_lm, 1, texts)
    entry.write_bytes(b"not an array")
    again = PromptClassifier(tiny_lm, 1, cache=cache).features(tiny_lm, texts)
    assert np.array_equal(again, plain) and cache.misses == 4
    # no fingerprint (weights changed in memory) or --no-cache: nothing is read or written
    for off in (
        FeatureCache(None, root=tmp_path / "none"),
        FeatureCache("m", root=tmp_path / "off", enabled=False),
    ):
        PromptClassifier(tiny_lm, 1, cache=off).features(tiny_lm, texts)
        assert not off.enabled and not (tmp_path / "none").exists() and not (tmp_path / "off").exists()


def test_guarded_model_changes_only_flagged_prompts_and_counts_flags(tiny_lm):
    from rwku.methods.guarding import GuardedModel

    class Stub:  # flags the prompts that mention Maine
        def flags(self, lm, texts):
            return ["Maine" in t for t in texts]

    reqs = _requests(tiny_lm)
    plain = tiny_lm.generate(reqs, stop_token_ids=[])
    banned = set(range(3, tiny_lm.model.config.vocab_size, 2))  # every odd token id from 3 on
    hook = RowHook(processor=_ban_processor(banned))
    guarded = GuardedModel(tiny_lm, Stub(), lambda _text: hook)
    got = guarded.generate(reqs, stop_token_ids=[], desc="forget: generate")
    for r, before, after in zip(reqs, plain, got):
        if "Maine" in r.prompt:
            assert after != before
        else:
            assert after == before
    assert guarded.flag_rates()["parts"]["forget"] == {
        "flagged": 1,
        "total": len(reqs),
        "rate": round(1 / 6, 4),
    }


def test_name_gate_matches_whole_names_and_unflags_prompts_without_them(tiny_lm):
    from rwku.methods.guarding import GuardedModel, names_target

    names = names_target("Stephen King")
    assert names("Where was Stephen King born?") and names("what did KING write?")
    assert names("King's first novel") and not names("Kingsley Amis wrote Lucky Jim.")
    assert not names("Who directed The Shining?")
    only_full = names_target("Bruce Lee")  # a surname under 4 letters is not matched alone
    assert only_full("bruce lee's films") and not only_full("Lee Harvey Oswald")

    class Everything:  # a classifier that flags every prompt it is asked about
        def __init__(self) -> None:
            self.asked: list[str] = []

        def flags(self, lm, texts):
            self.asked.extend(texts)
            return [True] * len(texts)

    reqs = _requests(tiny_lm)
    gate = lambda text: "Maine" in text  # noqa: E731
    classifier = Everything()
    guarded = GuardedModel(tiny_lm, classifier, lambda _text: None, gate=gate)
    guarded.generate(reqs, stop_token_ids=[], desc="neighbor: generate")
    admitted = [r.prompt for r in reqs if gate(r.prompt)]
    assert classifier.asked == admitted  # the others are not even classified
    assert guarded.flag_rates()["parts"]["neighbor"]["flagged"] == len(admitted) < len(reqs)


def test_bad_gate_exits_2():
    from typer.testing import CliRunner

    from rwku.cli import app

    result = CliRunner().invoke(app, ["run", "--method", "eco", "--target", "1", "--option", "gate=names"])
    assert result.exit_code == 2 and "gate" in result.output and "classifier, name" in result.output


def test_sweep_skips_relearning_for_guard_cells(tmp_path):
    from types import SimpleNamespace

    from rwku.experiments.grid import Cell
    from rwku.experiments.sweep import run_cell_attacks

    cell = Cell("single", ("1",), "guard", None, {}, {}, 0, (), {}, {"relearn": {}}, False, False)
    logged: list[str] = []
    assert run_cell_attacks(cell, tmp_path, SimpleNamespace(log=logged.append)) == {}
    assert "relearn skipped" in logged[0]
