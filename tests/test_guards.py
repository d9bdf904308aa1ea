"""Inference-time guards (ECO, GUARD): the engine's per-row hooks change exactly the hooked rows,
as a plain transformers ``generate`` with the same embedding edit and logits processor does;
the prompt classifier, the methods' options and their bad-input errors."""

from __future__ import annotations

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
