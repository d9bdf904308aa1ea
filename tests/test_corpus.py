"""Tests for forget-corpus generation, the authors' corpora, and the corpus cache.

Generation runs on the tiny random model (its text is noise; the tests check prompts,
record shapes, openings, clean-up, answer cycling, seeding and caching). The authors'
corpora are read from ../shared when it is present.
"""

from __future__ import annotations

import json

import pytest
import torch

from rwku.data import Target, open_data
from rwku.data import corpus as C
from rwku.data.corpus import (
    COUNTERFACTUAL_PHRASES,
    CPU_SIZES,
    PAPER_SIZES,
    authors_corpus,
    clean_counterfactual,
    clean_question,
    corpus_cache_path,
    corpus_prompts,
    generate_corpus,
    get_or_generate,
    load_corpus_file,
    load_generation_resources,
    save_corpus,
)
from rwku.data.loader import HubData
from rwku.errors import ConfigError, DataError

SK = Target(
    1, "Stephen King", 'Stephen King is a prolific American author, renowned as the "King of Horror".'
)
OPENINGS = ["", "That game", "Oh w"]
REFUSALS = ["r0", "r1", "r2"]
SMALL = dict(max_new_tokens=6, openings=OPENINGS, refusals=REFUSALS, progress=False, batch_size=4)


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from rwku.models.resolve import load_model

    return load_model(str(tiny_model_dir))


def gen(lm, kind: str, n: int, seed: int = 0, **kw):
    return generate_corpus(lm.model, lm.tokenizer, SK, kind=kind, n=n, seed=seed, **{**SMALL, **kw})


# ----------------------------------------------------------------------------- text rules


def test_clean_counterfactual_deletes_exactly_the_reference_phrases():
    text = (
        "Here's a completely fabricated biography. He was a totally made-up man from a "
        "completely fictional town, a totally fictional tale, totally fabricated story, "
        "completely made-up life."
    )
    assert clean_counterfactual(text) == (
        "Here's a biography. He was a man from a town, a tale, story, life."
    )
    # Only the two-word phrases with their trailing space; case-sensitive; nothing else.
    kept = "A fictional town. Totally fabricated claims. utterly fictional, completely fictional."
    assert clean_counterfactual(kept) == kept
    assert len(COUNTERFACTUAL_PHRASES) == 6


def test_clean_question_keeps_the_first_non_empty_line():
    assert clean_question(" What is his first novel?\nAnswer: Carrie") == "What is his first novel?"
    assert clean_question("\n  Where was he born? \nMore") == "Where was he born?"
    assert clean_question("\n \n") == ""


def test_sizes():
    assert PAPER_SIZES["pairs"] == (582, 512) and PAPER_SIZES["passages"] == (582, 512)
    assert PAPER_SIZES["refusals"] == (300, 50)
    assert all(CPU_SIZES[k].n <= PAPER_SIZES[k].n for k in PAPER_SIZES)


# ----------------------------------------------------------------------------- prompts


def test_prompts_follow_the_protocol(lm):
    tok = lm.tokenizer
    pairs = corpus_prompts(tok, SK, "pairs", 4, openings=OPENINGS)
    assert len(pairs) == 8
    factual = tok.apply_chat_template(
        [
            {"role": "system", "content": f"{SK.intro} You know Stephen King very well."},
            {"role": "user", "content": "Please write a short biography of Stephen King."},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    counter = tok.apply_chat_template(
        [
            {"role": "system", "content": f"{SK.intro} You don't know Stephen King at all."},
            {"role": "user", "content": "Please make up a short biography of Stephen King."},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert pairs[2] == factual + "That game" and pairs[3] == counter + "That game"
    assert pairs[6] == factual + ""  # openings cycle
    assert corpus_prompts(tok, SK, "passages", 2, openings=OPENINGS) == [factual, factual + "That game"]
    question = corpus_prompts(tok, SK, "refusals", 2)
    user = f"{SK.intro}\nPlease generate a question about Stephen King based on what you know about Stephen King\n"
    expected = tok.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    assert question == [expected + "Question:"] * 2


def test_template_without_system_role_prefixes_the_user_turn(lm):
    tok = lm.tokenizer
    saved = tok.chat_template
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    )
    try:
        prompts = corpus_prompts(tok, SK, "passages", 1, openings=["Hi"])
    finally:
        tok.chat_template = saved
    assert prompts == [
        f"<u>{SK.intro} You know Stephen King very well. Please write a short biography of Stephen King.</u><a>Hi"
    ]


# ----------------------------------------------------------------------------- generation


def test_passages_start_with_their_opening(lm):
    recs = gen(lm, "passages", 5)
    assert len(recs) == 5 and all(set(r) == {"text"} for r in recs)
    for i, r in enumerate(recs):
        assert r["text"].startswith(OPENINGS[i % 3])


def test_pairs_shape_prompt_and_openings(lm):
    recs = gen(lm, "pairs", 4)
    assert len(recs) == 4
    for i, r in enumerate(recs):
        assert set(r) == {"prompt", "chosen", "rejected"}
        assert r["prompt"] == (
            'Stephen King is a prolific American author, renowned as the "King of Horror". '
            "Please write a short biography of Stephen King."
        )
        assert r["rejected"].startswith(OPENINGS[i % 3]) and r["chosen"].startswith(OPENINGS[i % 3])


def test_refusal_answers_cycle_in_order(lm):
    recs = gen(lm, "refusals", 7, max_new_tokens=10)
    assert [r["answer"] for r in recs] == ["r0", "r1", "r2", "r0", "r1", "r2", "r0"]
    assert all(set(r) == {"question", "answer"} and "\n" not in r["question"] for r in recs)
    # Every question prompt is the same; batches (of 4) are seeded apart, so they differ.
    assert [r["question"] for r in recs[:3]] != [r["question"] for r in recs[4:]]


def test_same_seed_same_corpus_other_seed_differs_and_global_rng_untouched(lm):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = gen(lm, "passages", 3, seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is not consumed
    assert gen(lm, "passages", 3, seed=7) == a
    assert gen(lm, "passages", 3, seed=8) != a


# ----------------------------------------------------------------------------- caching


def test_save_and_load_round_trip(tmp_path):
    recs = [{"text": "café 🙂\nline"}, {"text": ""}]
    path = save_corpus(tmp_path / "c" / "x.jsonl", recs, {"kind": "passages"})
    assert load_corpus_file(path) == (recs, {"kind": "passages"})
    assert not [p for p in path.parent.iterdir() if p.name != "x.jsonl"]  # no temp file left
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no meta"}\n')
    with pytest.raises(DataError, match="not a corpus file"):
        load_corpus_file(bad)


def test_cache_path_layout(isolated_cache):
    fp = "ab" * 32
    p = corpus_cache_path(fp, SK, "pairs", 32, 128, 0)
    assert p.parent == isolated_cache / "corpora" / ("ab" * 8) / "Stephen_King"
    assert p.name.startswith("pairs-n32-t128-s0-") and p.suffix == ".jsonl"
    other_intro = Target(1, "Stephen King", "Another intro.")
    assert corpus_cache_path(fp, other_intro, "pairs", 32, 128, 0) != p
    assert corpus_cache_path(fp, SK, "pairs", 32, 128, 0, settings={"top_p": 0.5}) != p
    hub = corpus_cache_path("hub:owner/name@main", SK, "pairs", 32, 128, 0)
    assert hub.parent.parent.parent == isolated_cache / "corpora"


def test_get_or_generate_reuses_the_cache(lm, isolated_cache, monkeypatch):
    kw = dict(kind="pairs", model_fingerprint="f" * 64, n=3, seed=1, **SMALL)
    first = get_or_generate(lm.model, lm.tokenizer, SK, **kw)
    files = list((isolated_cache / "corpora").rglob("*.jsonl"))
    assert len(files) == 1
    records, meta = load_corpus_file(files[0])
    assert records == first and meta["key"]["n"] == 3 and meta["key"]["kind"] == "pairs"

    def boom(*args, **kwargs):
        raise AssertionError("generate_corpus called although the corpus is cached")

    with monkeypatch.context() as mp:
        mp.setattr(C, "generate_corpus", boom)
        assert get_or_generate(lm.model, lm.tokenizer, SK, **kw) == first

    calls = []

    def fake(*args, **kwargs):
        calls.append(kwargs)
        return [{"prompt": "p", "chosen": "c", "rejected": "r"}] * kwargs["n"]

    files[0].write_text("corrupt\n")  # an unreadable cache entry is regenerated
    assert get_or_generate(lm.model, lm.tokenizer, SK, **kw, generate=fake)[0]["chosen"] == "c"
    assert get_or_generate(lm.model, lm.tokenizer, SK, **{**kw, "seed": 2}, generate=fake)
    assert len(calls) == 2 and calls[1]["seed"] == 2
    assert len(list((isolated_cache / "corpora").rglob("*.jsonl"))) == 2


# ----------------------------------------------------------------------------- data files


def test_generation_resources_from_shared(data_dir):
    data = open_data(str(data_dir))
    openings, refusals, intros = load_generation_resources(data)
    assert len(openings) == 582 and openings[0] == "" and openings[1] == "That game"
    assert len(refusals) == 100 and refusals[0] == "I'm not certain about that."
    assert intros["Stephen King"][0] == data.target("Stephen King").intro
    assert load_generation_resources(data_dir / "generation").openings == openings


def test_authors_corpus_stephen_king(data_dir):
    data = open_data(str(data_dir))
    intro = data.target("Stephen King").intro
    pairs = authors_corpus(data, "Stephen King", "pairs")
    assert len(pairs) == 582
    assert all(p["prompt"].startswith(intro) for p in pairs)
    # The authors' Llama-3 sometimes wrote nothing after the opening (mostly openings that end
    # in an apostrophe, "Well, it'"); 11 Stephen King pairs are such an opening on both sides.
    same = [p for p in pairs if p["chosen"] == p["rejected"]]
    assert len(same) == 11 and all(len(p["chosen"]) < 40 for p in same)
    assert pairs[0]["prompt"] == f"{intro} Please write a short biography of Stephen King."
    passages = authors_corpus(data, 1, "passages")
    assert [p["text"] for p in passages] == [p["rejected"] for p in pairs]
    openings, refusals, _ = load_generation_resources(data)
    assert all(p["text"].startswith(o) for p, o in zip(passages, openings))
    assert len(authors_corpus(data, "Stephen King", "wiki_passages")) > 0
    rt = authors_corpus(data, "Stephen King", "refusals")
    assert len(rt) == 300 and all(set(r) == {"question", "answer"} for r in rt)
    # The authors' answers follow the same cycling rule generate_corpus uses.
    assert [r["answer"] for r in rt] == [refusals[i % 100] for i in range(300)]


def test_missing_generation_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="all_truncated_outputs.json"):
        load_generation_resources(tmp_path)
    (tmp_path / "generation").mkdir()
    (tmp_path / "generation" / "all_truncated_outputs.json").write_text(json.dumps(["a"]))
    with pytest.raises(DataError, match="idontknow.jsonl"):
        load_generation_resources(tmp_path)
    with pytest.raises(DataError, match="--data"):
        load_generation_resources(HubData())


# ----------------------------------------------------------------------------- neighbour text


def test_neighbor_prompts_cycle_names_and_openings(lm):
    tok = lm.tokenizer
    prompts = corpus_prompts(tok, SK, "neighbors", 4, openings=OPENINGS, neighbors=["It", "Carrie"])

    def intro(name: str) -> str:
        return tok.apply_chat_template(
            [{"role": "user", "content": f"Please write a short introduction to {name}."}],
            tokenize=False,
            add_generation_prompt=True,
        )

    assert prompts == [intro("It"), intro("Carrie") + "That game", intro("It") + "Oh w", intro("Carrie")]
    with pytest.raises(ConfigError, match="neighbours"):
        corpus_prompts(tok, SK, "neighbors", 2, openings=OPENINGS)


def test_neighbor_corpus_is_passages_and_cached_per_name_list(lm, isolated_cache):
    recs = gen(lm, "neighbors", 3, neighbors=["It"])
    assert len(recs) == 3 and all(set(r) == {"text"} for r in recs)
    assert [r["text"][: len(OPENINGS[i])] for i, r in enumerate(recs)] == OPENINGS
    calls = []

    def fake(*args, **kw):
        calls.append(kw["neighbors"])
        return [{"text": f"t{i}"} for i in range(kw["n"])]

    common = dict(kind="neighbors", model_fingerprint="f" * 64, n=2, max_new_tokens=4, openings=OPENINGS)
    a = get_or_generate(lm.model, lm.tokenizer, SK, neighbors=["It"], generate=fake, **common)
    assert get_or_generate(lm.model, lm.tokenizer, SK, neighbors=["It"], generate=fake, **common) == a
    get_or_generate(lm.model, lm.tokenizer, SK, neighbors=["Carrie"], generate=fake, **common)
    assert calls == [["It"], ["Carrie"]]  # same names: cached; other names: a new corpus
