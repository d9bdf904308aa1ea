"""An optional vLLM engine behind :class:`rwku.models.backend.LanguageModel`, for GPUs.

The forget, neighbor and utility suites are generation-heavy (probe answers, BBH chains of
thought, TriviaQA, fluency): on GPUs vLLM's continuous batching and paged KV cache generate
many times faster than a transformers loop. ``rwku eval --backend vllm`` swaps it in; the
suites do not change, because they only ever call the four methods of the interface.

How each call maps onto vLLM, so that the numbers mean what they mean with transformers:

* ``generate``: greedy (temperature 0) from the *same token ids* the transformers engine
  feeds (the prompt tokenised with special tokens, as the reference does); the generation is
  cut at the first stop id (vLLM may or may not return it), at ``max_new_tokens``, and where
  a request's ``stop_when`` rule first matches; the text is decoded exactly as the transformers
  engine decodes it (prompt + generation, special tokens skipped, minus the decoded prompt).
* ``score`` and ``next_token_logprobs``: vLLM's ``prompt_logprobs`` (log-probability of each
  prompt token given the ones before), read at the continuation's tokens, or at a candidate
  token appended to the prompt; prefix caching makes the shared prompt cost one prefill.
* ``token_stats`` (membership inference) needs the mean and variance of log p over the whole
  vocabulary at every position, which vLLM does not return; it is delegated to a transformers
  ``scorer`` on the same weights, loaded on first use (leave it GPU memory: the engine takes
  ``gpu_memory_utilization=0.7`` by default).

Numbers are not bit-identical to the transformers engine (other kernels, other batch shapes,
often bf16), so results carry a different fingerprint (``<weights fingerprint>+vllm``) and
never share result-cache entries with the transformers engine.

vllm is imported only when an engine is built; without it the error says how to install it
(``pip install 'rwku[vllm]'``, CUDA GPUs only). The adapter logic here is tested on the CPU
with an in-process engine speaking the same :class:`Engine` contract (tests/test_backends.py);
:class:`VLLMEngine` is the thin glue to ``vllm.LLM``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rwku.errors import ModelError
from rwku.models.backend import ContinuationScore, GenerationRequest, LanguageModel, ScoreRequest, TokenStats

NO_VLLM = (
    "--backend vllm needs the vllm package and a CUDA GPU: pip install 'rwku[vllm]'; "
    "use --backend hf (the default) elsewhere"
)


@dataclass
class EngineOutput:
    """What the adapter needs from one engine request.

    ``token_ids``: the generated tokens (possibly ending in a stop id); ``prompt_logprobs``:
    for each prompt position i, log p(prompt[i] | prompt[:i]), ``None`` at position 0 (or
    ``None`` altogether when not requested).
    """

    token_ids: list[int]
    prompt_logprobs: list[float | None] | None = None


class Engine(Protocol):
    """Greedy generation and prompt log-probabilities over token-id prompts."""

    def run(self, prompts: Sequence[Sequence[int]], options: Sequence[dict[str, Any]]) -> list[EngineOutput]:
        """One output per prompt. Options: ``max_tokens``, ``stop_token_ids`` (generation) or
        ``prompt_logprobs: True`` (scoring, with ``max_tokens`` 1)."""


class VLLMEngine:
    """:class:`Engine` over ``vllm.LLM`` (imported here, and only here)."""

    def __init__(self, model: str, *, progress: bool = False, **engine_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError:
            raise ModelError(NO_VLLM) from None
        self._vllm = vllm
        kwargs = {"enable_prefix_caching": True, "gpu_memory_utilization": 0.7, "seed": 0, **engine_kwargs}
        self.llm = vllm.LLM(model=model, **kwargs)
        self.progress = progress

    def run(self, prompts: Sequence[Sequence[int]], options: Sequence[dict[str, Any]]) -> list[EngineOutput]:
        params = []
        for opt in options:
            params.append(
                self._vllm.SamplingParams(
                    temperature=0.0,
                    max_tokens=int(opt.get("max_tokens", 1)),
                    stop_token_ids=list(opt.get("stop_token_ids", [])),
                    prompt_logprobs=0 if opt.get("prompt_logprobs") else None,
                    skip_special_tokens=True,
                    detokenize=False,
                )
            )
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=self.progress
        )
        results = []
        for prompt, out in zip(prompts, outputs):
            logprobs = None
            if out.prompt_logprobs is not None:
                logprobs = [
                    None if entry is None else float(entry[tok].logprob)
                    for tok, entry in zip(prompt, out.prompt_logprobs)
                ]
            results.append(EngineOutput(list(out.outputs[0].token_ids), logprobs))
        return results


class VLLMLanguageModel:
    """:class:`LanguageModel` over an :class:`Engine` (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        info: dict | None = None,
        *,
        scorer: LanguageModel | Callable[[], LanguageModel] | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.info = dict(info or {})
        self.name = self.info.get("name", "model")
        self._scorer = scorer
        self.tokens_processed = 0

    # ------------------------------------------------------------------ text helpers
    def chat_prompt(self, user: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.tokenizer.convert_tokens_to_ids(token)

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True).input_ids

    # ------------------------------------------------------------------ the interface
    def generate(
        self, requests: Sequence[GenerationRequest], *, stop_token_ids: Sequence[int], desc: str = "generate"
    ) -> list[str]:
        stop = {int(t) for t in stop_token_ids if t is not None}
        if self.tokenizer.eos_token_id is not None:
            stop.add(int(self.tokenizer.eos_token_id))
        prompts = [self._tokenize(r.prompt) for r in requests]
        options = [{"max_tokens": r.max_new_tokens, "stop_token_ids": sorted(stop)} for r in requests]
        outputs = self.engine.run(prompts, options)
        texts = []
        for request, ids, out in zip(requests, prompts, outputs):
            generated = cut_generation(
                out.token_ids, stop, request.max_new_tokens, request.stop_when, self.tokenizer
            )
            self.tokens_processed += len(ids) + len(generated)
            full = self.tokenizer.decode(ids + generated, skip_special_tokens=True)
            prompt = self.tokenizer.decode(ids, skip_special_tokens=True)
            texts.append(full[len(prompt) :])
        return texts

    def score(self, requests: Sequence[ScoreRequest], *, desc: str = "score") -> list[ContinuationScore]:
        prompts, starts = [], []
        for r in requests:
            context_ids = self._tokenize(r.context)
            full_ids = self._tokenize(r.context + r.continuation)
            prompts.append(full_ids)
            starts.append(max(1, min(len(context_ids), len(full_ids))))
        outputs = self._prompt_logprobs(prompts)
        return [ContinuationScore([float(x) for x in lp[start:]]) for lp, start in zip(outputs, starts)]

    def next_token_logprobs(
        self,
        prompts: Sequence[str],
        candidate_token_ids: Sequence[int],
        *,
        groups: Sequence | None = None,
        desc: str = "next token",
    ) -> np.ndarray:
        candidates = [int(c) for c in candidate_token_ids]
        rows = [self._tokenize(p) for p in prompts]
        flat = [ids + [c] for ids in rows for c in candidates]
        logprobs = self._prompt_logprobs(flat)
        out = np.array([lp[-1] for lp in logprobs], dtype=np.float64)
        return out.reshape(len(rows), len(candidates))

    def token_stats(self, texts: Sequence[str], *, desc: str = "token stats") -> list[TokenStats]:
        if self._scorer is None:
            raise ModelError(
                "token_stats (the MIA suite) needs full-vocabulary statistics that vLLM does not return: "
                "give VLLMLanguageModel a transformers scorer, or evaluate mia with --backend hf"
            )
        if callable(self._scorer) and not isinstance(self._scorer, LanguageModel):
            self._scorer = self._scorer()
        return self._scorer.token_stats(texts, desc=desc)

    def _prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        outputs = self.engine.run(prompts, [{"max_tokens": 1, "prompt_logprobs": True}] * len(prompts))
        self.tokens_processed += sum(len(p) for p in prompts)
        result = []
        for out in outputs:
            if out.prompt_logprobs is None:
                raise ModelError("the vLLM engine returned no prompt log-probabilities")
            result.append([float("nan") if x is None else float(x) for x in out.prompt_logprobs])
        return result


def cut_generation(
    token_ids: Sequence[int],
    stop: set[int],
    max_new_tokens: int,
    stop_when: Callable[[str], bool] | None,
    tokenizer: Any,
) -> list[int]:
    """The tokens the transformers engine would have kept: up to (not including) the first stop
    id, at most ``max_new_tokens``, and up to and including the token after which
    ``stop_when(decoded text so far)`` first holds."""
    kept: list[int] = []
    for tok in token_ids:
        if tok in stop:
            break
        kept.append(int(tok))
        if len(kept) >= max_new_tokens:
            break
        if stop_when is not None and stop_when(tokenizer.decode(kept, skip_special_tokens=True)):
            break
    return kept


def open_vllm(
    model: str | None,
    *,
    dtype: str = "bfloat16",
    device: str = "cuda",
    trust_remote_code: bool = False,
    batch_size: int = 64,
    progress: bool = True,
    **engine_kwargs: Any,
) -> VLLMLanguageModel:
    """Resolve and load ``model`` the usual way (tokenizer, fingerprint, GGUF conversion), then
    start a vLLM engine on its safetensors weights; the loaded transformers model becomes the
    lazily used ``token_stats`` scorer."""
    import importlib.util

    from rwku.models.hf import HFLanguageModel
    from rwku.models.resolve import load_model, resolve_model

    if importlib.util.find_spec("vllm") is None:  # fail before loading any weights
        raise ModelError(NO_VLLM)
    spec = resolve_model(model)
    loaded = load_model(spec, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code)
    weights = loaded.info.get("converted_path") or spec.path
    if spec.kind == "gguf" and not loaded.info.get("converted_path"):
        raise ModelError(
            f"cannot serve {spec.name!r} with vLLM: its GGUF conversion cache could not be written"
        )
    engine_kwargs.setdefault("dtype", dtype)
    engine_kwargs.setdefault("trust_remote_code", trust_remote_code)
    if spec.revision:
        engine_kwargs.setdefault("revision", spec.revision)
    engine = VLLMEngine(str(weights), progress=progress, **engine_kwargs)
    info = dict(loaded.info)
    info["backend"] = "vllm"
    if info.get("fingerprint"):
        info["fingerprint"] = f"{info['fingerprint']}+vllm"

    def scorer() -> LanguageModel:
        loaded.model.to(device)
        return HFLanguageModel(
            loaded.model, loaded.tokenizer, loaded.info, batch_size=batch_size, progress=progress
        )

    return VLLMLanguageModel(engine, loaded.tokenizer, info, scorer=scorer)
