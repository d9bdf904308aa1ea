"""The evaluation engine's speed machinery changes no result: shared prefixes (two levels),
ragged speculative decoding, scoring from the generation pass, and the fallback path all give
what a plain, unbatched transformers run gives.

``RWKU_TEST_DEVICE=cuda`` runs the model-level tests on a GPU (the row-attention path then
takes its written-out attention instead of the CPU flash kernel); the default is the CPU.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from helpers import plain_greedy
from rwku.models import hf as hf_module
from rwku.models.backend import GenerationRequest, ScoreRequest, generate_with_scores
from rwku.models.drafting import PromptLookup
from rwku.models.hf import HFLanguageModel, _expected_accepted
from rwku.models.kvcache import RowKV, supports_rows_attention
from rwku.models.resolve import load_model, resolve_model


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    device = os.environ.get("RWKU_TEST_DEVICE", "cpu")
    loaded = load_model(resolve_model(str(tiny_model_dir)), device=device)
    return HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, batch_size=4, progress=False)


def _plain_logprobs(lm: HFLanguageModel, context: str, continuation: str) -> list[float]:
    ids = lm.tokenizer(context + continuation, return_tensors="pt").input_ids.to(lm.model.device)
    n_ctx = len(lm.tokenizer(context).input_ids)
    logp = torch.log_softmax(lm.model(ids).logits[0].float(), -1)
    return [logp[i - 1, ids[0, i]].item() for i in range(n_ctx, ids.shape[1])]


def _grouped_prompts(lm: HFLanguageModel) -> list[GenerationRequest]:
    """Three groups that share a root (the common instruction) and their own task header."""
    root = "A long instruction shared by every task in this call, written out at length. " * 2
    reqs = []
    for g, task in enumerate(["arithmetic puzzles", "word games", "history questions"]):
        head = lm.chat_prompt(root + f"Task: {task}. Answer the question below with care.")
        for tail in ["Q: first", "Q: a much longer second question about the task", "Q: 3"]:
            reqs.append(GenerationRequest(head + tail, 10 + 3 * g, group=g))
    return reqs


def test_two_level_prefixes_generate_what_plain_generate_does(tiny_lm):
    reqs = _grouped_prompts(tiny_lm)
    rows = [hf_module._Row(i, tiny_lm._tokenize(r.prompt), r.group, cap=10_000) for i, r in enumerate(reqs)]
    root = tiny_lm._assign_prefixes(rows)
    assert len(root) >= hf_module.MIN_SHARED_PREFIX  # the shared instruction is run once
    assert len({r.prefix for r in rows}) == 3 and all(len(r.prefix) > len(root) for r in rows)
    got = tiny_lm.generate(reqs, stop_token_ids=[])
    assert got == [plain_greedy(tiny_lm, r.prompt, r.max_new_tokens) for r in reqs]


def test_two_level_prefixes_score_what_a_plain_forward_does(tiny_lm):
    reqs = [
        ScoreRequest(r.prompt, cont, group=r.group)
        for r in _grouped_prompts(tiny_lm)
        for cont in (" yes", " not at all")
    ]
    for req, res in zip(reqs, tiny_lm.score(reqs)):
        assert res.token_logprobs == pytest.approx(
            _plain_logprobs(tiny_lm, req.context, req.continuation), abs=1e-4
        )


def test_generate_scored_equals_generate_plus_score(tiny_lm):
    head = tiny_lm.chat_prompt("Complete the sentence about the writer. " * 3)
    reqs = [GenerationRequest(head + t, 9, group="g") for t in ["He was born in", "His first novel", "x"]]
    conts = [" Portland, Maine", " Carrie", " y"]
    texts, scores = generate_with_scores(tiny_lm, reqs, conts, stop_token_ids=[])
    assert texts == tiny_lm.generate(reqs, stop_token_ids=[])
    separate = tiny_lm.score([ScoreRequest(r.prompt, c, group="g") for r, c in zip(reqs, conts)])
    for a, b in zip(scores, separate):
        assert len(a.token_logprobs) == len(b.token_logprobs) > 0
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)


def test_speculative_decoding_changes_no_output(tiny_lm, monkeypatch):
    # Repetitive prompts give prompt lookup something to draft from.
    prompts = [
        tiny_lm.chat_prompt("one two three four five one two three four five one two three"),
        tiny_lm.chat_prompt("The cat sat on the mat. The cat sat on the mat. The cat"),
        "solo prompt without a chat template",
    ]
    reqs = [GenerationRequest(p, 24) for p in prompts]
    fast = tiny_lm.generate(reqs, stop_token_ids=[])
    monkeypatch.setattr(tiny_lm, "speculative", False)
    plain = tiny_lm.generate(reqs, stop_token_ids=[])
    assert fast == plain == [plain_greedy(tiny_lm, p, 24) for p in prompts]


def test_chunked_prompt_passes_generate_and_score_what_plain_runs_do(tiny_lm, monkeypatch):
    """A batch whose prompts differ a lot in length runs them in several passes and merges the
    caches; outputs and the gold answers' likelihoods must be what plain runs give."""
    reqs = _grouped_prompts(tiny_lm)[:3] + [
        GenerationRequest(tiny_lm.chat_prompt("short"), 12),
        GenerationRequest(tiny_lm.chat_prompt("a far longer prompt, " * 30), 12),
        GenerationRequest(tiny_lm.chat_prompt("medium length prompt " * 6), 12),
    ]
    conts = [" yes", None, " a longer gold answer", " no", " Stephen King", None]
    passes = []
    original = HFLanguageModel._prefill

    def counting(self, batch, *args, **kwargs):
        passes.append(len(batch))
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(HFLanguageModel, "_prefill", counting)
    monkeypatch.setattr(tiny_lm, "batch_size", 8)
    monkeypatch.setattr(tiny_lm, "workers", 1)
    got = tiny_lm.generate_scored(reqs, stop_token_ids=[], continuations=conts)
    assert len(passes) >= 2 and sum(passes) == len(reqs)  # one batch, several prompt passes
    assert [text for text, _ in got] == [
        plain_greedy(tiny_lm, r.prompt, 12 if i >= 3 else r.max_new_tokens) for i, r in enumerate(reqs)
    ]
    for (_, score), req, cont in zip(got, reqs, conts):
        if cont is None:
            assert score is None
        else:
            assert score.token_logprobs == pytest.approx(_plain_logprobs(tiny_lm, req.prompt, cont), abs=1e-4)


@pytest.mark.parametrize("workers", [2, 3])
def test_idle_worker_takes_over_rows_and_changes_no_output(tiny_lm, monkeypatch, workers):
    """One batch of short and one of long outputs: a worker without a batch left must get rows
    of the other's batch (their cache rows copied), with every output unchanged; with three
    workers, rows are handed on while the batch's owner is still decoding its own."""
    prompts = [tiny_lm.chat_prompt(f"prompt number {i} " * (1 + i % 3)) for i in range(8)]
    reqs = [GenerationRequest(p, 48 if i % 2 else 2) for i, p in enumerate(prompts)]
    copies = []
    original = RowKV.copy_rows

    def counting(self, rows):
        copies.append(len(rows))
        return original(self, rows)

    monkeypatch.setattr(RowKV, "copy_rows", counting)
    monkeypatch.setattr(tiny_lm, "batch_size", 4)
    monkeypatch.setattr(tiny_lm, "workers", workers)
    monkeypatch.setattr(tiny_lm, "speculative", False)
    # Plan one batch of the long outputs and one of the short ones.
    monkeypatch.setattr(
        HFLanguageModel,
        "_plan",
        lambda self, rows, extra=0, parts=1, max_rows=None: [rows[1::2], rows[0::2]],
    )
    got = tiny_lm.generate(reqs, stop_token_ids=[])
    assert copies, "the idle worker was never given rows"
    assert got == [plain_greedy(tiny_lm, r.prompt, r.max_new_tokens) for r in reqs]


def test_fallback_path_gives_the_same_results(tiny_lm, monkeypatch):
    reqs = _grouped_prompts(tiny_lm)[:4]
    fast = tiny_lm.generate(reqs, stop_token_ids=[])
    fast_scores = tiny_lm.score([ScoreRequest(r.prompt, " yes") for r in reqs])
    monkeypatch.setattr(HFLanguageModel, "shared_cache", property(lambda self: False))
    assert tiny_lm.generate(reqs, stop_token_ids=[]) == fast
    slow_scores = tiny_lm.score([ScoreRequest(r.prompt, " yes") for r in reqs])
    for a, b in zip(fast_scores, slow_scores):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)


def test_prompt_lookup_drafts_the_most_recent_continuation():
    look = PromptLookup([5, 6, 7, 8, 1, 2, 5, 6, 9, 3, 5, 6])
    # "5 6" last occurred followed by 9 3 (more recent than 7 8)
    assert look.draft(3) == [9, 3, 5]
    look.extend([9])
    # now the tail "5 6 9" matches its earlier occurrence: continuation 3 5 6 9
    assert look.draft(10) == [3, 5, 6, 9]
    assert PromptLookup([1, 2, 3]).draft(4) == []
    assert look.draft(0) == []


def test_expected_accepted_is_the_geometric_sum():
    assert _expected_accepted(3, 0.5) == pytest.approx(0.5 + 0.25 + 0.125)
    assert _expected_accepted(4, 1.0) == 4 and _expected_accepted(0, 0.9) == 0


class _CountingModel(torch.nn.Module):
    """A fake causal LM whose greedy next token is (token + 1) mod 7, through the real cache.

    It writes one key per token into the cache and reads nothing back, which is enough to
    check the engine's ragged bookkeeping: speculative drafts of a cyclic prompt are always
    right, so every step must accept its whole draft and the output must still be exact.
    """

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="llama", _attn_implementation="sdpa", _name_or_path="fake")
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[int, int]] = []

    def forward(self, input_ids, position_ids, past_key_values, use_cache, logits_to_keep):
        b, q = input_ids.shape
        past_key_values.update(torch.zeros(b, 1, q, 2), torch.zeros(b, 1, q, 2), 0)
        self.calls.append((b, q))
        logits = torch.full((b, q, 7), -10.0)
        logits.scatter_(-1, ((input_ids % 7 + 1) % 7)[..., None], 10.0)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:])


def test_speculative_bookkeeping_on_a_predictable_model():
    model = _CountingModel()

    class Tok:
        pad_token_id = 0
        eos_token_id = None

        def __call__(self, text, add_special_tokens=True):
            return SimpleNamespace(input_ids=[int(c) for c in text])

        def decode(self, ids, skip_special_tokens=True):
            return "".join(str(i) for i in ids)

    lm = HFLanguageModel(model, Tok(), {"name": "fake"}, progress=False)
    assert supports_rows_attention(model)
    prompt = "0123456012345601"  # the cycle twice: drafts are available at once
    out = lm.generate([GenerationRequest(prompt, 30)], stop_token_ids=[])[0]
    want = "".join(str((1 + 1 + i) % 7) for i in range(30))  # continues ...01 -> 2345601...
    assert out == want
    decode_steps = [q for b, q in model.calls[1:]]
    # 30 tokens in far fewer than 30 passes: each pass checks a whole draft and accepts it
    assert len(decode_steps) < 10 and max(decode_steps) > 2


def test_row_cache_keeps_rows_ragged():
    cache = RowKV(2, capacity=4)
    cache.set_start(torch.tensor([1, 0]))
    cache.prepare(3, torch.device("cpu"))
    cache.update(torch.ones(2, 1, 3, 2), torch.ones(2, 1, 3, 2), 0)
    cache.commit(torch.tensor([2, 3]))  # row 0 keeps 2 slots (1 of them padding), row 1 all 3
    assert cache.positions(torch.tensor([10, 0])).tolist() == [11, 3]
    cache.prepare(2, torch.device("cpu"))  # rows write at their own offsets: 2 and 3
    cache.update(torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 2, 2), 2.0), 0)
    assert cache.keys[0][0, 0, :4, 0].tolist() == [1, 1, 2, 2]
    assert cache.keys[0][1, 0, :5, 0].tolist() == [1, 1, 1, 2, 2]
    # row 0's first new query sees slots 1..2 (slot 0 is padding), not row 1's later slots
    visible = cache._mask(torch.float32)[0, 0] == 0
    assert visible[0].tolist() == [False, True, True, False, False]
    cache.select_rows([1])
    assert cache.rows == 1 and cache.length.tolist() == [3]


def test_step_timer_recovers_the_cost_line_and_follows_changes():
    from rwku.models.hf import _StepTimer

    timer = _StepTimer()
    for tokens in (10, 20, 40, 80) * 20:
        timer.observe(tokens, (30 + 4.0 * tokens) / 1000)
    base, per_token = timer.estimate()
    assert base == pytest.approx(30, rel=0.15) and per_token == pytest.approx(4.0, rel=0.05)
    for tokens in (10, 20, 40, 80) * 60:  # the machine got faster: the fit follows
        timer.observe(tokens, (30 + 1.0 * tokens) / 1000)
    assert timer.estimate()[1] == pytest.approx(1.0, rel=0.1)


def test_packed_linears_match_nn_linear_and_repack_after_an_update():
    from rwku.models.packed import _available, packed_linears

    if not _available():
        pytest.skip("oneDNN prepacking is not available in this torch build")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8, bias=False))
    x = torch.randn(5, 16)
    with torch.no_grad():
        plain = model(x)
        with packed_linears(model), packed_linears(model):  # re-entrant
            assert "forward" in model[0].__dict__
            packed = model(x)
        assert "forward" not in model[0].__dict__  # restored on the last exit
        assert torch.allclose(packed, plain, atol=1e-5)
        model[2].weight.mul_(2.0)  # an in-place update (as an optimiser step) moves the version
        with packed_linears(model):
            assert torch.allclose(model(x), 2 * plain, atol=1e-5)


def test_packed_weights_are_kept_for_one_model_at_a_time():
    from rwku.models.packed import _available, packed_linears

    if not _available():
        pytest.skip("oneDNN prepacking is not available in this torch build")
    torch.manual_seed(0)
    a, b = (torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)) for _ in range(2))
    x = torch.randn(3, 16)
    with torch.no_grad():
        expected = b(x)
        with packed_linears(a):
            a(x)
        assert "_rwku_packed" in a[0].__dict__  # kept while no other model is packed
        with packed_linears(b):
            assert torch.allclose(b(x), expected, atol=1e-5)
        assert "_rwku_packed" not in a[0].__dict__ and "_rwku_packed" in b[0].__dict__
        with packed_linears(b), packed_linears(a):  # b still in use: its weights stay
            a(x)
            assert "_rwku_packed" in b[0].__dict__ and "_rwku_packed" in a[0].__dict__
        with packed_linears(b):  # a was packed last and is idle now: dropped
            assert torch.allclose(b(x), expected, atol=1e-5)
        assert "_rwku_packed" not in a[0].__dict__


def test_worker_threads_run_without_autograd(tiny_lm, monkeypatch):
    seen = []
    original = HFLanguageModel._model_forward

    def spy(self, *args, **kwargs):
        seen.append(torch.is_inference_mode_enabled())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HFLanguageModel, "_model_forward", spy)
    monkeypatch.setattr(tiny_lm, "workers", 2)
    tiny_lm.generate(_grouped_prompts(tiny_lm), stop_token_ids=[])
    assert seen and all(seen)
