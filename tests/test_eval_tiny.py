"""End to end on a tiny random model: every suite runs, the JSON has the public shape, the
cache returns the same numbers, and the batched engine agrees with plain unbatched runs."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers import plain_greedy
from rwku.cli import run_evaluation
from rwku.evaluation.config import EvalConfig
from rwku.evaluation.runner import expand_suites
from rwku.models.backend import GenerationRequest, ScoreRequest
from rwku.models.hf import HFLanguageModel
from rwku.models.resolve import load_model, resolve_model


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    loaded = load_model(resolve_model(str(tiny_model_dir)))
    return HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, batch_size=4, progress=False)


def test_full_shape_on_tiny_model(tiny_model_dir, data_dir, isolated_cache):
    result = run_evaluation(
        model=str(tiny_model_dir),
        target="Stephen King",
        parts=expand_suites(None),
        cfg=EvalConfig(limit=2),
        data=str(data_dir),
        progress=False,
    )
    s = result["scores"]
    assert result["protocol"] == "rwku-2024" and result["target"] == "Stephen King"
    assert set(s) == {"forget", "neighbor", "mia", "utility"}
    assert {"fb", "qa", "aa", "all", "aa_by_type", "likelihood"} <= set(s["forget"])
    assert {"fb", "qa", "all", "likelihood"} <= set(s["neighbor"])
    assert {"loss", "zlib", "mink_20", "minkpp_20", "mink_100", "minkpp_10"} <= set(s["mia"]["fm"])
    assert set(s["mia"]["auc"]) == set(s["mia"]["fm"])
    assert set(s["utility"]) >= {"gen", "rea", "tru", "fac", "flu"}
    # --limit 2 keeps the first two items of every list, in data order (forget: FB, QA, AA)
    forget = result["items"]["forget"]
    assert [i["level"] for i in forget] == ["fb", "fb", "qa", "qa", "aa", "aa"]
    assert len(result["items"]["mmlu"]) == 2 and len(result["items"]["forget_mia"]) == 2
    # a random model assigns gold answers a small but real probability
    assert all(-30 < i["likelihood"] < 0 for i in forget)
    assert 0 < s["forget"]["likelihood"]["all"] < 100
    # MIA LOSS on the paper's scale: mean NLL × 100 of a random model over a ~500-token vocabulary
    assert 100 * math.log(50) < s["mia"]["fm"]["loss"] < 100 * math.log(5000)
    assert set(result["timings"]) >= {"forget", "neighbor", "mia", "mmlu", "bbh", "total"}
    json.dumps(result)  # serialisable as is


def test_evaluation_emits_no_future_warning(tiny_model_dir, data_dir, isolated_cache):
    """transformers' deprecation warnings (e.g. ``past_key_values`` renamed ``cache``) would
    print in the middle of every evaluation's progress bars: the engine uses the current API."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        run_evaluation(
            model=str(tiny_model_dir),
            target="1",
            parts=expand_suites(None),
            cfg=EvalConfig(limit=1),
            data=str(data_dir),
            use_cache=False,
            progress=False,
        )


def test_cache_returns_identical_scores(tiny_model_dir, data_dir, isolated_cache):
    kwargs = dict(
        model=str(tiny_model_dir),
        target="1",
        parts=["forget", "mia"],
        cfg=EvalConfig(limit=1),
        data=str(data_dir),
        progress=False,
    )
    first = run_evaluation(**kwargs)
    second = run_evaluation(**kwargs)
    assert first["cached_suites"] == [] and sorted(second["cached_suites"]) == ["forget", "mia"]
    assert second["scores"] == json.loads(json.dumps(first["scores"]))
    fresh = run_evaluation(**kwargs, use_cache=False)
    assert fresh["cached_suites"] == []


def test_a_suite_is_cached_by_its_own_items(tiny_model_dir, data_dir, isolated_cache):
    """Another utility slice, or fewer suites, finds the forget result again; a change to the
    forget items themselves does not."""
    kwargs = dict(model=str(tiny_model_dir), target="1", data=str(data_dir), progress=False)
    first = run_evaluation(**kwargs, parts=["forget", "mmlu"], cfg=EvalConfig(limit=2, utility_limit=1))
    wider = run_evaluation(**kwargs, parts=["forget", "mmlu"], cfg=EvalConfig(limit=2, utility_limit=2))
    assert first["cached_suites"] == [] and wider["cached_suites"] == ["forget"]
    assert wider["scores"]["forget"] == json.loads(json.dumps(first["scores"]["forget"]))
    assert len(first["items"]["mmlu"]) == 1 and len(wider["items"]["mmlu"]) == 2
    alone = run_evaluation(**kwargs, parts=["forget"], cfg=EvalConfig(limit=2))
    assert alone["cached_suites"] == ["forget"]
    more = run_evaluation(**kwargs, parts=["forget"], cfg=EvalConfig(limit=3))
    assert more["cached_suites"] == [] and len(more["items"]["forget"]) > len(first["items"]["forget"])
    prefixed = run_evaluation(**kwargs, parts=["forget"], cfg=EvalConfig(limit=2, prompt_prefix="Hi. "))
    assert prefixed["cached_suites"] == []  # an option that changes the prompts is in the key


def test_an_entry_under_the_old_key_is_read_and_kept_under_the_new_one(tiny_lm, data_dir, tmp_path):
    """Results cached before suites were keyed by their own items (the whole target's data and
    the limits were in the key) are adopted, not recomputed."""
    from rwku import PROTOCOL
    from rwku.data import open_data
    from rwku.evaluation.cache import ResultCache
    from rwku.evaluation.runner import PART_DATA, PARTS, evaluate

    assert set(PART_DATA) == set(PARTS)
    data = open_data(str(data_dir)).load_target("1").limited(2)
    cfg = EvalConfig(utility_limit=1)
    sliced = replace(data, mmlu=data.mmlu[:1], bbh=data.bbh[:1], truthful=data.truthful[:1],
                     triviaqa=data.triviaqa[:1], fluency=data.fluency[:1])  # fmt: skip
    cache = ResultCache(tmp_path)
    old = ResultCache.key(
        model="fp", protocol=PROTOCOL, target=data.target.name, suite="forget",
        config=cfg.legacy_key(), data=sliced.fingerprint(),
    )  # fmt: skip
    marker = {"fb": 12.5, "qa": 0.0, "aa": 0.0, "all": 4.2}
    cache.put(old, {"scores": marker, "items": {"forget": []}, "seconds": 1.0})
    result = evaluate(tiny_lm, data, suites="forget", cfg=cfg, cache=cache, model_fingerprint="fp")
    assert result["cached_suites"] == ["forget"] and result["scores"]["forget"] == marker
    new = ResultCache.key(
        model="fp", protocol=PROTOCOL, target=data.target.name, suite="forget",
        config=cfg.key(), data=data.fingerprint(PART_DATA["forget"]),
    )  # fmt: skip
    assert cache.get(new)["scores"] == marker
    (tmp_path / f"{old}.json").unlink()
    again = evaluate(tiny_lm, data, suites="forget", cfg=cfg, cache=cache, model_fingerprint="fp")
    assert again["cached_suites"] == ["forget"] and again["scores"]["forget"] == marker


def test_batched_shared_prefix_generation_matches_plain_generate(tiny_lm):
    head = tiny_lm.chat_prompt("The same long shared instruction for every question. " * 4)
    prompts = [head + tail for tail in ["Q: one", "Q: a longer second question here", "Q: 3", "x"]]
    reqs = [GenerationRequest(p, 12, group="g") for p in prompts] + [GenerationRequest("solo prompt", 7)]
    got = tiny_lm.generate(reqs, stop_token_ids=[])
    want = [plain_greedy(tiny_lm, r.prompt, r.max_new_tokens) for r in reqs]
    assert got == want


def test_stop_when_ends_a_sequence_early(tiny_lm):
    prompt = tiny_lm.chat_prompt("hello")
    full = tiny_lm.generate([GenerationRequest(prompt, 20)], stop_token_ids=[])[0]
    short = tiny_lm.generate(
        [GenerationRequest(prompt, 20, stop_when=lambda s: len(s) >= 3)], stop_token_ids=[]
    )[0]
    assert full.startswith(short) and len(short) >= 3 and len(short) < len(full)


def test_scores_match_a_plain_forward_pass(tiny_lm):
    head = tiny_lm.chat_prompt("Shared primer text that is long enough to be cached as a prefix.")
    reqs = [ScoreRequest(head + "A:", c, group=0) for c in [" yes", " no way", " perhaps not at all"]]
    got = tiny_lm.score(reqs)
    for req, res in zip(reqs, got):
        ids = tiny_lm.tokenizer(req.context + req.continuation, return_tensors="pt").input_ids
        n_ctx = len(tiny_lm.tokenizer(req.context).input_ids)
        logp = torch.log_softmax(tiny_lm.model(ids).logits[0].float(), -1)
        want = [logp[i - 1, ids[0, i]].item() for i in range(n_ctx, ids.shape[1])]
        assert res.token_logprobs == pytest.approx(want, abs=1e-4)


def test_token_stats_match_a_plain_forward_pass(tiny_lm):
    texts = ["a short text", "a somewhat longer text with more words in it to score"]
    stats = tiny_lm.token_stats(texts)
    for text, st in zip(texts, stats):
        ids = tiny_lm.tokenizer(text, return_tensors="pt").input_ids
        logp = torch.log_softmax(tiny_lm.model(ids).logits[0, :-1].float(), -1)
        want = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
        assert st.token_logprobs.tolist() == pytest.approx(want.tolist(), abs=1e-4)
        mu = (logp.exp() * logp).sum(-1)
        assert st.mu.tolist() == pytest.approx(mu.tolist(), abs=1e-4)


def _hold_lock(root: str, key: str, ready, release) -> None:
    """In another process: hold the cache lock on ``key`` until told, then write the entry."""
    from rwku.evaluation.cache import ResultCache

    cache = ResultCache(Path(root))
    with cache.lock(key):
        ready.set()
        release.wait(10)
        cache.put(key, {"written_by": "the other process"})


def test_cache_lock_makes_a_second_process_wait_and_read_the_entry(tmp_path):
    """Two sweep shards on one target: the second waits for the first's entry, never recomputes."""
    import multiprocessing as mp
    import threading
    import time

    from rwku.evaluation.cache import ResultCache

    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    key = ResultCache.key(model="m", target="t", suite="forget")
    other = ctx.Process(target=_hold_lock, args=(str(tmp_path), key, ready, release))
    other.start()
    assert ready.wait(300), "the other process never took the lock"  # spawning is slow under load
    cache = ResultCache(tmp_path)
    seen: list = []

    def reader() -> None:
        with cache.lock(key):
            seen.append(cache.get(key))

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive() and seen == []  # blocked while the other process holds the lock
    release.set()
    thread.join(30)
    other.join(30)
    assert seen == [{"written_by": "the other process"}]
    assert ResultCache(tmp_path, enabled=False).get(key) is None  # a disabled cache reads nothing


def test_cache_value_computes_once_and_a_disabled_cache_every_time(tmp_path):
    from rwku.evaluation.cache import ResultCache

    calls: list[int] = []

    def compute() -> dict:
        calls.append(1)
        return {"ll": 1.5, "n": len(calls)}

    key = ResultCache.key(model="m", target="t", suite="relearn:original")
    cache = ResultCache(tmp_path)
    assert cache.value(key, compute) == {"ll": 1.5, "n": 1}
    assert cache.value(key, compute) == {"ll": 1.5, "n": 1} and len(calls) == 1  # read back
    off = ResultCache(tmp_path, enabled=False)
    assert off.value(key, compute) == {"ll": 1.5, "n": 2} and len(calls) == 2  # recomputed...
    assert cache.value(key, compute)["n"] == 2  # ...and stored as the fresh value
