"""The transformers engine behind :class:`rwku.models.backend.LanguageModel`.

Why it is fast without changing the numbers
-------------------------------------------
The reference evaluates prompts one batch at a time with ``model.generate`` and recomputes
every prompt in full. On a CPU the cost is prefill (the 5-shot MMLU header, the 3-shot BBH
chain of thought, the TruthfulQA primer once per answer choice) and, for BBH and fluency,
decoding that is bound by memory traffic. This engine:

* **shares prefixes**: requests with the same ``group`` key have their longest common token
  prefix run once, and the prefixes of all groups of a call their own common prefix (the chat
  header, the TruthfulQA primer) once again. A prefix's keys and values are stored once and
  read once per step for all rows that use it (:mod:`rwku.models.kvcache`);
* **sorts by length** and chooses batches with a cost model (dynamic programming over
  length-sorted rows), so little is padding;
* **runs a generation batch's prompts in length-sorted chunks** and merges their caches, so a
  batch decodes together (one weight read per step for all rows) without padding every prompt
  to the longest;
* **stops each sequence when it is done** (a stop token, its own token budget, or a rule such
  as "BBH's answer regex has matched") and drops it from the batch;
* **shares work between its threads**: a worker with nothing left takes over half of the live
  rows of a batch that another worker is still decoding (output lengths are unknown when
  batches are planned);
* **decodes speculatively from the prompt** (:mod:`rwku.models.drafting`): when the last tokens
  occurred before, the tokens that followed them are checked in the same forward pass, and
  exactly the greedy tokens are kept. A cost model decides per step how far to look ahead;
* **scores a gold answer right after its prompt** (:meth:`HFLanguageModel.generate_scored`):
  the prompt is run once for both the free generation and the answer's likelihood;
* **computes logits only where they are read** (``logits_to_keep``).

Greedy decoding is a plain argmax, as ``generate(do_sample=False)`` does with no logits
processors. Floating-point sums differ with batch shapes and attention blocking, so a rare
near-tie can flip a token against the reference's run; the conformance tests measure how
rarely. Models whose attention the shared-prefix cache does not model (sliding windows) run
on the stock transformers cache and SDPA instead, with the same requests and results
(:func:`rwku.models.kvcache.supports_rows_attention`).

Where each part lives
---------------------
This module holds :class:`HFLanguageModel`, the public requests and the one loop they all
share (:meth:`HFLanguageModel._run`); the parts it composes are in :mod:`rwku.models.engine`:

* :mod:`~rwku.models.engine.planning`: the cost model, the shared prefixes of a call, the
  dynamic programs that cut rows into batches and a batch's prompts into passes;
* :mod:`~rwku.models.engine.workers`: worker threads and the work sharing between them;
* :mod:`~rwku.models.engine.prefill`: the prefix store, the forward passes over prompts,
  chunked prompt passes and their merged cache;
* :mod:`~rwku.models.engine.decoding`: the decode loop, speculation and the fallback
  ``generate``;
* :mod:`~rwku.models.engine.scoring`: log-probs and membership-inference statistics of a batch.

A request reads top to bottom here: its rows are built (:class:`_Row`: tokens, group, how much
of them a shared prefix may cover), :meth:`HFLanguageModel._run` plans them into batches,
computes their shared prefixes and runs one ``step`` per batch on the worker threads, and the
step prefills the batch and decodes or scores it.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from rwku.models.backend import ContinuationScore, GenerationRequest, ScoreRequest, TokenStats
from rwku.models.engine.decoding import FREE_TOKENS, MAX_DRAFT, Decoding, _expected_accepted, _StepTimer
from rwku.models.engine.hooks import RowHook
from rwku.models.engine.planning import MIN_SHARED_PREFIX, Planning, _cost, _Row
from rwku.models.engine.prefill import Prefill, _Prefixes
from rwku.models.engine.scoring import STATS_CHUNK, Scoring, _vocab_stats
from rwku.models.engine.workers import MIN_SHARED_STEPS, Workers, _Helpers
from rwku.models.kvcache import cache_keyword, supports_rows_attention, use_rows_attention
from rwku.models.packed import packed_linears

__all__ = [
    # public
    "HFLanguageModel",
    "reference_stop_ids",
    # the engine's parts, importable from here as before the split (tests, scripts)
    "FREE_TOKENS",
    "MAX_DRAFT",
    "MIN_SHARED_PREFIX",
    "MIN_SHARED_STEPS",
    "STATS_CHUNK",
    "_Helpers",
    "_Prefixes",
    "_Row",
    "_StepTimer",
    "_cost",
    "_expected_accepted",
    "_vocab_stats",
]


class HFLanguageModel(Planning, Workers, Prefill, Decoding, Scoring):
    """A transformers causal LM with the tokenizer set up as the reference sets it.

    The public requests (``generate``, ``generate_scored``, ``score``, ``next_token_logprobs``,
    ``token_stats``) build their rows and hand :meth:`_run` a ``step`` for one batch; the
    planning, worker, prefill, decoding and scoring parts are the mixins it is made of.
    """

    def __init__(
        self,
        model,
        tokenizer,
        info: dict | None = None,
        *,
        batch_size: int = 64,
        max_batch_tokens: int = 8192,
        max_kv_tokens: int = 65536,
        speculative: bool = True,
        workers: int | None = None,
        packed: bool = True,
        prefix_memory: int = 2 << 30,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = dict(info or {})
        self.name = self.info.get("name", getattr(model.config, "_name_or_path", "model"))
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_kv_tokens = max_kv_tokens
        self.speculative = speculative
        #: parallel batch threads; default: one per torch thread on a CPU, one on an accelerator
        self.workers = workers or (torch.get_num_threads() if self.device.type == "cpu" else 1)
        #: run linear layers on prepacked oneDNN weights (CPU float32; see rwku.models.packed)
        self.packed = packed
        #: most bytes of shared-prefix KV computed ahead of a call's batches (else on first use)
        self.prefix_memory = prefix_memory
        self.progress = progress
        self._count_lock = threading.Lock()
        self._timer = _StepTimer()
        self._helpers: _Helpers | None = None  # set while batches run on worker threads
        #: the keyword under which model.forward takes a cache (``cache`` in current transformers)
        self._cache_keyword = cache_keyword(model)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        self.tokens_processed = 0  # prefill + decode tokens, for throughput reports
        #: per-request hooks of the next calls, by request index (see :meth:`hooked`)
        self.row_hooks: dict[int, RowHook] | None = None

    @contextlib.contextmanager
    def hooked(self, hooks: dict[int, RowHook] | None):
        """Run the calls inside with ``hooks[i]`` changing request ``i`` (one call's requests;
        :mod:`rwku.models.engine.hooks`); requests without a hook run as without the context."""
        saved, self.row_hooks = self.row_hooks, hooks or None
        try:
            yield self
        finally:
            self.row_hooks = saved

    def _count(self, tokens: int) -> None:
        with self._count_lock:
            self.tokens_processed += int(tokens)

    # ------------------------------------------------------------------ text helpers
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def shared_cache(self) -> bool:
        """Whether this model runs on the shared-prefix cache (see :mod:`rwku.models.kvcache`)."""
        return supports_rows_attention(self.model)

    def chat_prompt(self, user: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.tokenizer.convert_tokens_to_ids(token)

    def _tokenize(self, text: str) -> list[int]:
        """Tokenise a model input as the reference does (``tokenizer(prompts)``: special tokens on)."""
        return self.tokenizer(text, add_special_tokens=True).input_ids

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self, requests: Sequence[GenerationRequest], *, stop_token_ids: Sequence[int], desc: str = "generate"
    ) -> list[str]:
        return [text for text, _ in self.generate_scored(requests, stop_token_ids=stop_token_ids, desc=desc)]

    @torch.no_grad()
    def generate_scored(
        self,
        requests: Sequence[GenerationRequest],
        *,
        stop_token_ids: Sequence[int],
        continuations: Sequence[str | None] | None = None,
        desc: str = "generate",
    ) -> list[tuple[str, ContinuationScore | None]]:
        """Greedy completions, and the log-probs of ``continuations[i]`` after prompt ``i``.

        The continuation is scored exactly as :meth:`score` scores ``ScoreRequest(prompt,
        continuation)`` — but from the prompt's pass that generation needs anyway, whenever
        the prompt's tokens are a prefix of the joint tokenisation (otherwise it is scored
        separately).
        """
        stop = {int(t) for t in stop_token_ids if t is not None}
        if self.tokenizer.eos_token_id is not None:
            stop.add(int(self.tokenizer.eos_token_id))
        rows = [_Row(i, self._tokenize(r.prompt), r.group, cap=0) for i, r in enumerate(requests)]
        for row in rows:
            row.cap = len(row.ids) - 1
        texts: list[str] = [""] * len(rows)
        scores: list[ContinuationScore | None] = [None] * len(rows)
        cont_ids: list[list[int] | None] = [None] * len(rows)
        separate: list[int] = []
        if continuations is not None:
            for row, cont in zip(rows, continuations):
                if cont is None:
                    continue
                full = self._tokenize(requests[row.index].prompt + cont)
                if self.shared_cache and len(full) > len(row.ids) and full[: len(row.ids)] == row.ids:
                    cont_ids[row.index] = full[len(row.ids) :]
                else:
                    separate.append(row.index)

        def finish(b_row: _Row, generated: list[int]) -> None:
            # Decode prompt+generation and cut the decoded prompt off, as the reference does.
            full = self.tokenizer.decode(b_row.ids + generated, skip_special_tokens=True)
            prompt = self.tokenizer.decode(b_row.ids, skip_special_tokens=True)
            texts[b_row.index] = full[len(prompt) :]

        def step(batch: list[_Row], kvs: dict) -> None:
            if not self.shared_cache:
                for b_row, generated in zip(batch, self._generate_plain(batch, requests, stop)):
                    finish(b_row, generated)
                return
            budget = max(requests[r.index].max_new_tokens for r in batch)
            longest_cont = max((len(cont_ids[r.index] or ()) for r in batch), default=0)
            batch = list(batch)
            logits, cache, prefix_lengths = self._prefill_merged(
                batch, kvs, capacity=max(budget + MAX_DRAFT + 1, longest_cont)
            )
            last = logits[:, -1]
            if longest_cont:
                self._score_after_prompt(batch, cache, prefix_lengths, last, cont_ids, scores)
            for b_row, generated in zip(
                batch, self._decode(batch, requests, cache, prefix_lengths, last, stop)
            ):
                finish(b_row, generated)

        self._run(rows, desc, step, extra=max((r.max_new_tokens for r in requests), default=0))
        if separate:
            hooks = self.row_hooks or {}
            moved = {k: hooks[i] for k, i in enumerate(separate) if i in hooks}
            with self.hooked(moved):
                extra_scores = self.score(
                    [ScoreRequest(requests[i].prompt, continuations[i]) for i in separate],
                    desc=f"{desc} (scores)",
                )
            for i, s in zip(separate, extra_scores):
                scores[i] = s
        return list(zip(texts, scores))

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, requests: Sequence[ScoreRequest], *, desc: str = "score") -> list[ContinuationScore]:
        rows, starts = [], []
        for i, r in enumerate(requests):
            context_ids = self._tokenize(r.context)
            full_ids = self._tokenize(r.context + r.continuation)
            start = max(1, min(len(context_ids), len(full_ids)))
            rows.append(_Row(i, full_ids, r.group, cap=start - 1))
            starts.append(start)
        results: list[ContinuationScore] = [ContinuationScore([]) for _ in rows]
        self._run(rows, desc, partial(self._score_batch, starts=starts, results=results))
        return results

    @torch.no_grad()
    def next_token_logprobs(
        self,
        prompts: Sequence[str],
        candidate_token_ids: Sequence[int],
        *,
        groups: Sequence | None = None,
        desc: str = "next token",
    ) -> np.ndarray:
        rows = []
        for i, p in enumerate(prompts):
            ids = self._tokenize(p)
            rows.append(_Row(i, ids, None if groups is None else groups[i], cap=len(ids) - 1))
        out = np.zeros((len(rows), len(candidate_token_ids)), dtype=np.float64)
        candidates = torch.tensor(list(candidate_token_ids))
        self._run(rows, desc, partial(self._next_token_batch, candidates=candidates, out=out))
        return out

    @torch.no_grad()
    def token_stats(self, texts: Sequence[str], *, desc: str = "token stats") -> list[TokenStats]:
        rows = [_Row(i, self._tokenize(t), None, cap=0) for i, t in enumerate(texts)]
        results: list[TokenStats] = [None] * len(rows)  # type: ignore[list-item]
        self._run(rows, desc, partial(self._token_stats_batch, results=results))
        return results

    # ------------------------------------------------------------------ one call, batch by batch
    def _run(
        self, rows: list[_Row], desc: str, step: Callable, extra: int = 0, max_rows: int | None = None
    ) -> None:
        """Plan, then call ``step(batch, prefix_kvs)`` per batch with its prefixes computed.

        With ``workers`` > 1 (the CPU default: one per torch thread), batches run in that many
        Python threads of one torch thread each (:mod:`rwku.models.engine.workers`). Shared
        prefixes are computed first (see :meth:`_precompute`), so no worker waits for another's
        prefix.
        """
        for row in rows:  # a shared prefix never covers a position a hook edits
            row.hook = (self.row_hooks or {}).get(row.index)
            if row.hook is not None and row.hook.first_edit is not None:
                row.cap = min(row.cap, row.hook.first_edit)
        root = self._assign_prefixes(rows)
        workers = max(1, min(self.workers, len(rows)))
        batches = self._plan(rows, extra, parts=workers, max_rows=max_rows)
        prefixes = _Prefixes(self, root)
        for row in rows:
            if row.prefix_len:
                prefixes.uses[row.prefix] += 1
        bar = tqdm(total=len(rows), desc=desc, disable=not self.progress, leave=False)

        def run_batch(batch: list[_Row]) -> None:
            # Grad mode is per thread: a worker must turn autograd off itself, or every cached
            # key would carry its graph and memory would grow without bound.
            with torch.inference_mode():
                kvs = {row.prefix: prefixes.get(row.prefix) for row in batch if row.prefix_len}
                step(batch, kvs)
                del kvs
            for row in batch:
                if row.prefix_len:
                    prefixes.release(row.prefix)
            bar.update(len(batch))

        with contextlib.ExitStack() as context:
            if self.shared_cache:
                context.enter_context(use_rows_attention(self.model))
            if self.packed:
                context.enter_context(packed_linears(self.model))
            if workers == 1 or len(batches) == 1:
                for batch in batches:
                    run_batch(batch)
            else:
                self._precompute(prefixes, [b for batch in batches for b in batch], workers)
                # Longest batches first, so the workers finish together.
                order = sorted(batches, key=lambda b: -self._batch_cost(b, extra))
                self._run_workers(workers, run_batch, order)
        bar.close()


def reference_stop_ids(lm, strings: Sequence[str] = ("<|eot_id|>", " \n", "\n")) -> list[int]:
    """The stop ids the reference asks for: eos plus ``convert_tokens_to_ids`` of literal strings.

    In byte-level BPE vocabularies the newline strings are not tokens, so the lookup returns the
    unknown-token id (or None) and, in practice, never fires. Reproduced on purpose: it is what
    makes the reference's outputs run on past newlines.
    """
    ids = [lm.convert_tokens_to_ids(s) for s in strings]
    return [int(i) for i in ids if i is not None and not (isinstance(i, float) and math.isnan(i))]
