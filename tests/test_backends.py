"""The LanguageModel contract, checked against plain computations on the tiny model.

Every backend must mean the same thing by its four calls, or a suite's numbers would depend
on the engine. Each check recomputes the answer the slow, obvious way — one sequence at a
time, full forward passes, ``argmax`` and ``log_softmax`` — and compares:

* ``hf``: the transformers engine (shared prefixes, batching, early stopping);
* ``vllm-adapter``: :class:`rwku.models.vllm_backend.VLLMLanguageModel` over an in-process
  engine that answers the adapter's :class:`~rwku.models.vllm_backend.Engine` contract the way
  vLLM does (returns the stop token, ignores ``stop_when``, prompt log-probs with ``None``
  first), so the adapter's tokenisation, cutting, decoding and alignment are tested here;
* ``vllm``: the real vLLM engine — skipped unless vllm is installed and a GPU is present.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from rwku.models.backend import GenerationRequest, LanguageModel, ScoreRequest
from rwku.models.hf import HFLanguageModel
from rwku.models.resolve import load_model
from rwku.models.vllm_backend import EngineOutput, VLLMLanguageModel, cut_generation


class ReferenceEngine:
    """One sequence at a time, full recomputation: what vLLM returns, the slow way."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @torch.no_grad()
    def run(self, prompts: Sequence[Sequence[int]], options: Sequence[dict[str, Any]]) -> list[EngineOutput]:
        out = []
        for ids, opt in zip(prompts, options):
            if opt.get("prompt_logprobs"):
                logp = torch.log_softmax(
                    self.model(input_ids=torch.tensor([list(ids)])).logits[0].float(), -1
                )
                lps = [None] + [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
                out.append(EngineOutput([], lps))
                continue
            seq, gen = list(ids), []
            for _ in range(opt["max_tokens"]):
                tok = int(self.model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
                gen.append(tok)  # vLLM returns a (non-special) stop token in token_ids
                seq.append(tok)
                if tok in opt.get("stop_token_ids", []):
                    break
            out.append(EngineOutput(gen, None))
        return out


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.fixture(params=["hf", "vllm-adapter", "vllm"])
def lm(request, loaded, tiny_model_dir) -> LanguageModel:
    if request.param == "hf":
        return HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, batch_size=3, progress=False)
    if request.param == "vllm-adapter":
        scorer = HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, progress=False)
        return VLLMLanguageModel(ReferenceEngine(loaded.model), loaded.tokenizer, loaded.info, scorer=scorer)
    pytest.importorskip("vllm", reason="vllm is not installed (GPU machines: pip install 'rwku[vllm]')")
    if not torch.cuda.is_available():
        pytest.skip("vllm needs a CUDA GPU")
    from rwku.models.vllm_backend import open_vllm

    return open_vllm(str(tiny_model_dir), dtype="float32", enforce_eager=True, progress=False)


def _prompts(loaded) -> list[str]:
    tok = loaded.tokenizer
    chat = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in (
            "Who wrote the novel about the haunted hotel?",
            "Where was the writer born?",
            "Name a river.",
        )
    ]
    return [chat[0], chat[0] + "The answer is", chat[1], chat[2] + "Answer:"]


@torch.no_grad()
def manual_greedy(loaded, prompt: str, n: int, stop: set[int], stop_when=None) -> str:
    tok, model = loaded.tokenizer, loaded.model
    ids = tok(prompt, add_special_tokens=True).input_ids
    gen: list[int] = []
    for _ in range(n):
        nxt = int(model(input_ids=torch.tensor([ids + gen])).logits[0, -1].argmax())
        if nxt in stop:
            break
        gen.append(nxt)
        if stop_when is not None and stop_when(tok.decode(gen, skip_special_tokens=True)):
            break
    full = tok.decode(ids + gen, skip_special_tokens=True)
    return full[len(tok.decode(ids, skip_special_tokens=True)) :]


@torch.no_grad()
def manual_logprobs(loaded, text: str) -> tuple[list[int], torch.Tensor]:
    ids = loaded.tokenizer(text, add_special_tokens=True).input_ids
    return ids, torch.log_softmax(loaded.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


def test_backend_satisfies_the_protocol(lm):
    assert isinstance(lm, LanguageModel)
    assert lm.chat_prompt("hi").endswith("<|im_start|>assistant\n")
    assert lm.encode("hello world") == lm.encode("hello world", add_special_tokens=False)


def test_greedy_generate_equals_a_manual_argmax_loop(lm, loaded):
    prompts = _prompts(loaded)
    eos = {loaded.tokenizer.eos_token_id}
    want = [manual_greedy(loaded, p, 12, eos) for p in prompts]
    got = lm.generate([GenerationRequest(p, 12, group="g") for p in prompts], stop_token_ids=[])
    assert got == want
    # a stop id ends the sequence before it; a different token budget per request is kept
    first_ids = loaded.tokenizer(prompts[0], add_special_tokens=True).input_ids
    stop_tok = loaded.tokenizer(prompts[0] + want[0], add_special_tokens=True).input_ids[len(first_ids) + 2]
    want_stop = [manual_greedy(loaded, p, n, eos | {stop_tok}) for p, n in zip(prompts, (12, 5, 12, 3))]
    got_stop = lm.generate(
        [GenerationRequest(p, n) for p, n in zip(prompts, (12, 5, 12, 3))], stop_token_ids=[stop_tok]
    )
    assert got_stop == want_stop and len(got_stop[0]) < len(want[0])


def test_stop_when_ends_a_sequence_where_the_rule_first_holds(lm, loaded):
    prompts = _prompts(loaded)
    rule = lambda text: len(text) >= 6  # noqa: E731
    eos = {loaded.tokenizer.eos_token_id}
    want = [manual_greedy(loaded, p, 20, eos, rule) for p in prompts]
    got = lm.generate([GenerationRequest(p, 20, stop_when=rule) for p in prompts], stop_token_ids=[])
    assert got == want
    unruled = lm.generate([GenerationRequest(p, 20) for p in prompts], stop_token_ids=[])
    assert any(len(a) < len(b) for a, b in zip(got, unruled))  # the rule did cut


def test_score_sums_match_a_manual_log_softmax(lm, loaded):
    prompts = _prompts(loaded)
    requests = [ScoreRequest(p, " Stephen King", group="s") for p in prompts] + [
        ScoreRequest(prompts[0], "\n")
    ]
    scores = lm.score(requests)
    for r, s in zip(requests, scores):
        ctx = loaded.tokenizer(r.context, add_special_tokens=True).input_ids
        ids, logp = manual_logprobs(loaded, r.context + r.continuation)
        start = max(1, min(len(ctx), len(ids)))
        want = [float(logp[i - 1, ids[i]]) for i in range(start, len(ids))]
        assert s.token_logprobs == pytest.approx(want, abs=1e-4)
        assert s.sum == pytest.approx(sum(want), abs=1e-3)


def test_next_token_logprobs_match_a_manual_log_softmax(lm, loaded):
    prompts = _prompts(loaded)
    candidates = [loaded.tokenizer.convert_tokens_to_ids(c) for c in ("A", "B", "C", "D")]
    got = lm.next_token_logprobs(prompts, candidates, groups=["m"] * len(prompts))
    assert got.shape == (len(prompts), 4)
    for row, p in zip(got, prompts):
        _, logp = manual_logprobs(loaded, p)
        assert row == pytest.approx(logp[-1, candidates].numpy(), abs=1e-4)


def test_token_stats_match_manual_vocabulary_moments(lm, loaded):
    texts = ["The writer grew up in a small town in Maine.", "Music has been part of every culture.", "Hi"]
    stats = lm.token_stats(texts)
    for text, s in zip(texts, stats):
        ids, logp = manual_logprobs(loaded, text)
        assert s.n_tokens == len(ids)
        if len(ids) < 2:
            assert len(s.token_logprobs) == 0
            continue
        lp = logp[:-1]
        p = lp.exp()
        mu = (p * lp).sum(-1)
        assert s.token_logprobs == pytest.approx(
            [float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)], abs=1e-4
        )
        assert s.mu == pytest.approx(mu.numpy(), abs=1e-4)
        assert s.sigma2 == pytest.approx(((p * lp.square()).sum(-1) - mu.square()).numpy(), abs=1e-4)


def test_cut_generation_rules(loaded):
    tok = loaded.tokenizer
    ids = tok("hello there general", add_special_tokens=False).input_ids
    assert cut_generation(ids + [2, 5], {2}, 50, None, tok) == ids
    assert cut_generation(ids, set(), 2, None, tok) == ids[:2]
    assert tok.decode(cut_generation(ids, set(), 50, lambda t: "there" in t, tok)).endswith("there")


def test_vllm_backend_without_vllm_is_a_clear_error(monkeypatch):
    import builtins

    from rwku.errors import ModelError
    from rwku.models.vllm_backend import VLLMEngine

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(ModelError, match=r"pip install 'rwku\[vllm\]'"):
        VLLMEngine("some/model")
    adapter = VLLMLanguageModel(ReferenceEngine(None), None)
    with pytest.raises(ModelError, match="mia with --backend hf"):
        adapter.token_stats(["x"])


def test_eval_cli_backend_choice_is_checked(tiny_model_dir, data_dir):
    from typer.testing import CliRunner

    from rwku.cli import app

    args = ["eval", "--model", str(tiny_model_dir), "--target", "1", "--data", str(data_dir), "--limit", "1"]
    result = CliRunner().invoke(app, [*args, "--suites", "forget", "--backend", "tensorrt"])
    assert result.exit_code == 2 and "--backend must be hf or vllm" in result.output
    if importlib.util.find_spec("vllm") is None:
        result = CliRunner().invoke(app, [*args, "--suites", "forget", "--backend", "vllm"])
        assert result.exit_code == 2 and "pip install 'rwku[vllm]'" in result.output
        assert "Traceback" not in result.output
