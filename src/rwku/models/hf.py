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
on transformers' own cache and masks, without prefix sharing or speculation.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from rwku.models.backend import ContinuationScore, GenerationRequest, ScoreRequest, TokenStats
from rwku.models.drafting import PromptLookup
from rwku.models.kvcache import RowKV, supports_rows_attention, use_rows_attention
from rwku.models.packed import packed_linears

#: Below this many shared tokens a prefix is not worth a separate forward pass.
MIN_SHARED_PREFIX = 16
#: Cost model in milliseconds, measured on a 2-core CPU with SmolLM2-135M (only ratios
#: matter). Prefill is compute-bound: ~1.2 ms per token, growing with the attended context.
#: A decoding step is bound by reading the weights (~60 ms whatever the batch) plus, per row,
#: its share of compute and of reading its own cached tokens; a shared prefix is read once
#: per step for all its rows.
PREFILL_MS_PER_TOKEN = 1.2
PREFILL_CONTEXT_SCALE = 3000
CALL_MS = 30.0
DECODE_STEP_MS = 60.0
DECODE_ROW_MS = 1.5
DECODE_CONTEXT_MS = 0.0022
#: A decoding worker shares its rows with an idle one only while some row may still take at
#: least this many tokens (copying the rows' cache must be paid back).
MIN_SHARED_STEPS = 16
#: Membership-inference statistics run over this many positions at a time: each pass over the
#: [positions, vocabulary] log-probs then stays in the CPU cache (16 × 49k floats = 3 MB);
#: every position is computed alone, so the values are bit for bit those of one big pass.
STATS_CHUNK = 16
#: Speculative decoding: most draft tokens checked per row and step.
MAX_DRAFT = 10
#: A pass over this few tokens costs about what a pass over one does (its matrix products
#: are bound by reading the weights; measured flat from 1 to 8 rows on the 2-core CPU), so
#: small batches draft for free up to it.
FREE_TOKENS = 8


def _cost(
    rows: int, prefix: int, suffix: int, steps: int = 0, prefixes: int = 1, tokens: int | None = None
) -> float:
    """Estimated milliseconds of a batch: one padded forward over the suffixes, then ``steps``
    decode steps. Every row is padded to the batch's longest suffix; each distinct prefix is
    read once per step. A generation batch (``steps`` > 0) runs its prompts in length-sorted
    chunks (:meth:`HFLanguageModel._prefill_merged`): with ``tokens`` (its rows' suffix tokens)
    its prefill costs about those tokens and a second call, not the padded rectangle."""
    context = prefix + suffix
    padded = rows * suffix if tokens is None or steps == 0 else min(rows * suffix, tokens)
    calls = 1 if padded == rows * suffix else 2
    prefill = calls * CALL_MS + padded * PREFILL_MS_PER_TOKEN * (1 + context / PREFILL_CONTEXT_SCALE)
    per_step = (
        DECODE_STEP_MS
        + rows * (DECODE_ROW_MS + DECODE_CONTEXT_MS * (suffix + steps / 2))
        + prefixes * DECODE_CONTEXT_MS * prefix
    )
    return prefill + steps * per_step


@dataclass
class _Row:
    """One sequence to run: its token ids and how many leading tokens come from a shared prefix."""

    index: int
    ids: list[int]
    group: Hashable | None
    cap: int  # the prefix may cover at most this many tokens
    prefix_len: int = 0

    @property
    def prefix(self) -> tuple[int, ...]:
        return tuple(self.ids[: self.prefix_len])

    @property
    def suffix_len(self) -> int:
        return len(self.ids) - self.prefix_len


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _vocab_stats(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per position: log p of the target, and the mean and variance of log p over the vocabulary
    (``mu = E[log p]``, ``sigma2 = E[(log p)^2] - mu^2``, with one temporary).

    Not :func:`rwku.evaluation.metrics.token_stats_from_logits`, which computes ``softmax``
    separately as the reference does: that costs a third pass (measured 276 vs 199 ms for 400
    positions) for differences below 3e-5, and conformance holds MIA to 1e-4 with this form."""
    logp = torch.log_softmax(logits, dim=-1)
    token_logprobs = logp.gather(-1, targets[:, None]).squeeze(-1)
    plogp = logp.exp().mul_(logp)
    mu = plogp.sum(-1)
    return token_logprobs, mu, torch.linalg.vecdot(plogp, logp) - mu.square()


def _row_cache(batch: list[_Row], kvs: dict, capacity: int) -> RowKV:
    """An empty :class:`RowKV` for ``batch``: each distinct prefix of its rows once."""
    keys = list(dict.fromkeys(r.prefix for r in batch if r.prefix_len))
    slot = {k: i for i, k in enumerate(keys)}
    return RowKV(
        len(batch),
        [kvs[k] for k in keys],
        [slot[r.prefix] if r.prefix_len else -1 for r in batch],
        capacity=capacity,
    )


def _segments(ordered: list[_Row], cut_at: list[int]) -> list[list[_Row]]:
    """The contiguous pieces of ``ordered`` that a cut dynamic program chose: the last piece
    of the first ``j`` rows starts at ``cut_at[j]``."""
    pieces: list[list[_Row]] = []
    j = len(ordered)
    while j > 0:
        pieces.append(ordered[cut_at[j] : j])
        j = cut_at[j]
    return pieces[::-1]


def _expected_accepted(k: int, p: float) -> float:
    """Expected accepted draft tokens when each is right with probability ``p`` given the last."""
    if k <= 0 or p <= 0:
        return 0.0
    if p >= 1:
        return float(k)
    return p * (1 - p**k) / (1 - p)


class _StepTimer:
    """Online fit of a decoding pass's time as ``base + per_token × tokens`` (least squares).

    Whether checking draft tokens pays depends on the machine: on this 2-core CPU a pass costs
    ~60 ms of weight reading plus ~3 ms per token (one thread), on an accelerator almost
    nothing per token. The engine times its own passes, so speculation adapts to the device,
    the thread count and the load of the machine. Older passes fade (weight 0.98 per new one,
    a memory of ~50 passes) so the fit follows the workload at hand (BBH's long prompts cost
    more per token than fluency's); two fixed prior points keep the fit sane when the recent
    passes all had the same size.
    """

    FORGET = 0.98

    def __init__(self, base_ms: float = 60.0, per_token_ms: float = 2.5) -> None:
        self._lock = threading.Lock()
        self.prior = [0.0] * 5
        for tokens in (8.0, 64.0):
            self._add(self.prior, tokens, base_ms + per_token_ms * tokens)
        self.recent = [0.0] * 5

    @staticmethod
    def _add(sums: list[float], tokens: float, ms: float) -> None:
        for i, v in enumerate((1.0, tokens, ms, tokens * tokens, tokens * ms)):
            sums[i] += v

    def observe(self, tokens: int, seconds: float) -> None:
        with self._lock:
            self.recent = [v * self.FORGET for v in self.recent]
            self._add(self.recent, float(tokens), seconds * 1000.0)

    def estimate(self) -> tuple[float, float]:
        """(base ms, ms per token), both kept positive."""
        with self._lock:
            n, sx, sy, sxx, sxy = (a + b for a, b in zip(self.prior, self.recent))
        var = n * sxx - sx * sx
        slope = max((n * sxy - sx * sy) / var, 0.01) if var > 0 else 2.5
        return max((sy - slope * sx) / n, 1.0), slope


class _Prefixes:
    """Shared-prefix KV caches of one call: computed on first use, dropped after last use.

    A group prefix that starts with the call's root prefix (the part every group shares) is
    computed on top of the root's cache, so the root runs once per call. Worker threads may
    ask for the same prefix at once: it is computed by one of them, under that prefix's lock.
    """

    def __init__(self, engine: HFLanguageModel, root: tuple[int, ...]) -> None:
        self.engine = engine
        self.root = root
        self.kv: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.uses: dict[tuple[int, ...], int] = defaultdict(int)
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[int, ...], threading.Lock] = defaultdict(threading.Lock)

    def get(self, key: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        base: tuple[int, ...] = ()
        if self.root and len(key) > len(self.root) and key[: len(self.root)] == self.root:
            base = self.root
        with self._lock:
            key_lock = self._key_locks[key]
        with key_lock:
            if key not in self.kv:
                base_kv = self._compute(base, None) if base else None
                own = self.engine._prefix_kv(list(key[len(base) :]), base_kv)
                if base_kv:
                    own = [
                        (torch.cat([bk, k], dim=2), torch.cat([bv, v], dim=2))
                        for (bk, bv), (k, v) in zip(base_kv, own)
                    ]
                self.kv[key] = own
            return self.kv[key]

    def _compute(self, key: tuple[int, ...], base_kv) -> list[tuple[torch.Tensor, torch.Tensor]]:
        with self._lock:
            key_lock = self._key_locks[key]
        with key_lock:
            if key not in self.kv:
                self.kv[key] = self.engine._prefix_kv(list(key), base_kv)
            return self.kv[key]

    def release(self, key: tuple[int, ...]) -> None:
        with self._lock:
            self.uses[key] -= 1
            if self.uses[key] <= 0:
                self.kv.pop(key, None)


class _Helpers:
    """Decoding work handed between the worker threads of one call (work sharing).

    Output lengths are unknown when batches are planned, so one worker may still be decoding
    its longest outputs while the other has nothing left. A worker without work waits here; a
    worker that is decoding gives half of its live rows (with their cache rows) to a waiting
    one, so both cores decode until the end. Every task is given to a worker that is already
    waiting for one (``waiting`` counts them), so none is left behind in the queue.
    """

    def __init__(self, workers: int) -> None:
        self.cond = threading.Condition()
        self.tasks: deque[tuple[Callable[[], None], threading.Event]] = deque()
        self.waiting = 0
        self.busy = workers

    def wanted(self) -> bool:
        """Whether a worker waits for work (read without the lock: a hint, rechecked by give)."""
        return self.waiting > len(self.tasks)

    def give(self, task: Callable[[], None]) -> threading.Event | None:
        """Queue ``task`` for a waiting worker; the event is set when it has run (or failed)."""
        with self.cond:
            if self.waiting <= len(self.tasks):
                return None
            done = threading.Event()
            self.tasks.append((task, done))
            self.cond.notify_all()
            return done

    def wait(self, until: Callable[[], bool], final: bool = False) -> None:
        """Run given tasks until ``until()`` holds; ``final``: the caller then has no work left."""
        with self.cond:
            self.busy -= 1
            self.waiting += 1
            self.cond.notify_all()
            try:
                while not until():
                    if not self.tasks:
                        self.cond.wait()
                        continue
                    task, done = self.tasks.popleft()
                    self.waiting -= 1
                    self.busy += 1
                    self.cond.release()
                    try:
                        task()
                    finally:
                        self.cond.acquire()
                        self.busy -= 1
                        self.waiting += 1
                        done.set()
                        self.cond.notify_all()
            finally:
                self.waiting -= 1
                if not final:
                    self.busy += 1

    def finished(self) -> bool:
        """Nothing runs and nothing is queued (call with the lock held, as ``wait`` does)."""
        return self.busy == 0 and not self.tasks


class HFLanguageModel:
    """A transformers causal LM with the tokenizer set up as the reference sets it."""

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
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        self.tokens_processed = 0  # prefill + decode tokens, for throughput reports

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

    # ------------------------------------------------------------------ planning
    def _assign_prefixes(self, rows: list[_Row]) -> tuple[int, ...]:
        """Give every row of a group the group's common prefix; return the call's root prefix."""
        if not self.shared_cache:
            return ()
        by_group: dict[Hashable, list[_Row]] = defaultdict(list)
        for row in rows:
            if row.group is not None:
                by_group[row.group].append(row)
        for members in by_group.values():
            if len(members) > 1:
                shared = min(_common_prefix_len(members[0].ids, m.ids) for m in members[1:])
                shared = min([shared] + [m.cap for m in members])
                if shared >= MIN_SHARED_PREFIX:
                    for m in members:
                        m.prefix_len = shared
        prefixes = list({r.prefix for r in rows if r.prefix_len})
        if len(prefixes) < 2:
            return ()
        root = min(_common_prefix_len(prefixes[0], p) for p in prefixes[1:])
        # The root must leave every group something of its own to compute.
        root = min([root] + [len(p) - 1 for p in prefixes])
        return tuple(prefixes[0][:root]) if root >= MIN_SHARED_PREFIX else ()

    def _plan(
        self, rows: list[_Row], extra: int = 0, parts: int = 1, max_rows: int | None = None
    ) -> list[list[_Row]]:
        """Cut the rows into length-sorted batches of least estimated cost.

        A batch is capped three ways: ``batch_size`` rows, ``max_batch_tokens`` suffix tokens
        in its one forward pass (activation memory), and ``max_kv_tokens`` cached tokens of its
        own rows counting ``extra`` tokens still to generate (KV memory). Two sort orders are
        tried and the plan with the smaller cost is kept. With ``parts`` workers, no batch holds
        more than its share of the rows, so that every worker has work.
        """
        limit = min(self.batch_size, max_rows or self.batch_size, max(1, math.ceil(len(rows) / parts)))
        plans = [
            self._cut(sorted(rows, key=lambda r: (r.prefix_len, r.prefix, r.suffix_len)), extra, limit),
            self._cut(sorted(rows, key=lambda r: (r.suffix_len, r.prefix_len)), extra, limit),
        ]
        return min(plans, key=lambda batches: sum(self._batch_cost(b, extra) for b in batches))

    @staticmethod
    def _batch_cost(batch: list[_Row], extra: int) -> float:
        return _cost(
            len(batch),
            max(r.prefix_len for r in batch),
            max(r.suffix_len for r in batch),
            extra,
            len({r.prefix for r in batch if r.prefix_len}),
            sum(r.suffix_len for r in batch),
        )

    def _cut(self, ordered: list[_Row], extra: int, limit: int) -> list[list[_Row]]:
        """Split sorted rows into contiguous batches of least total cost (dynamic programming).

        ``best[j]`` is the cheapest way to run the first ``j`` rows; the last batch is
        ``ordered[i:j]`` for some ``i`` within ``limit`` rows and the memory caps.
        """
        n = len(ordered)
        best = [0.0] + [math.inf] * n
        cut_at = [0] * (n + 1)
        for j in range(1, n + 1):
            suffix = prefix = tokens = 0
            keys: set = set()
            for i in range(j - 1, max(-1, j - 1 - limit), -1):
                row = ordered[i]
                suffix = max(suffix, row.suffix_len)
                prefix = max(prefix, row.prefix_len)
                tokens += row.suffix_len
                if row.prefix_len:
                    keys.add(row.prefix)
                rows = j - i
                # A generation batch's prompts run in chunks that keep to max_batch_tokens.
                one_pass = rows * suffix if extra == 0 or not self.shared_cache else 0
                if rows > 1 and (
                    one_pass > self.max_batch_tokens or rows * (suffix + extra) > self.max_kv_tokens
                ):
                    break
                cost = best[i] + _cost(
                    rows, prefix, suffix, extra, len(keys), tokens if self.shared_cache else None
                )
                if cost < best[j]:
                    best[j], cut_at[j] = cost, i
        return _segments(ordered, cut_at)

    def _run(
        self, rows: list[_Row], desc: str, step: Callable, extra: int = 0, max_rows: int | None = None
    ) -> None:
        """Plan, then call ``step(batch, prefix_kvs)`` per batch with its prefixes computed.

        With ``workers`` > 1 (the CPU default: one per torch thread), batches run in that many
        Python threads, each with one torch thread. PyTorch releases the GIL inside its
        kernels, so two single-threaded forward passes on two cores run at ~1.95x one, with no
        OpenMP barrier in between to stall when another process holds a core. Shared prefixes
        are computed first (see :meth:`_precompute`), so no worker waits for another's prefix.
        """
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

    @staticmethod
    def _parallel(workers: int, fn: Callable, items: Sequence) -> None:
        """``fn(item)`` for every item on ``workers`` threads of one torch thread each."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rwku-engine") as pool:
                for future in [pool.submit(fn, item) for item in items]:
                    future.result()
        finally:
            torch.set_num_threads(threads)

    def _run_workers(self, workers: int, fn: Callable, items: Sequence) -> None:
        """``fn(item)`` for every item on ``workers`` threads of one torch thread each; a thread
        whose items are done helps the others decode (:class:`_Helpers`) until all are done."""
        queue = deque(items)
        lock = threading.Lock()
        helpers = _Helpers(workers)
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                while True:
                    with lock:
                        item = queue.popleft() if queue else None
                    if item is None:
                        break
                    fn(item)
            except BaseException as error:  # re-raised in the calling thread
                errors.append(error)
                with lock:
                    queue.clear()
            try:
                helpers.wait(helpers.finished, final=True)
            except BaseException as error:
                errors.append(error)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self._helpers = helpers
        try:
            pool = [threading.Thread(target=worker, name=f"rwku-engine_{i}") for i in range(workers)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
        finally:
            self._helpers = None
            torch.set_num_threads(threads)
        if errors:
            raise errors[0]

    def _precompute(self, prefixes: _Prefixes, rows: list[_Row], workers: int) -> None:
        """Compute the call's shared prefixes before its batches, with every core busy.

        A single sequence (the root prefix, or a call's only prefix) runs with ``workers``
        OpenMP threads (oneDNN's prepacked kernels scale ~1.8x on two cores for prompt-sized
        passes); many prefixes are spread over the workers. Skipped when holding all of them at
        once would take more than ``prefix_memory`` bytes; they are then made on first use.
        """
        keys = sorted({r.prefix for r in rows if r.prefix_len}, key=len, reverse=True)
        if not keys:
            return
        config = self.model.config
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        per_token = 2 * text.num_hidden_layers * getattr(text, "num_key_value_heads", 1) * head_dim * 4
        if sum(len(k) for k in keys) * per_token > self.prefix_memory:
            return

        def make(key: tuple[int, ...]) -> None:
            with torch.inference_mode():
                prefixes.get(key)

        with torch.inference_mode():
            if prefixes.root:
                prefixes._compute(prefixes.root, None)
            if len(keys) == 1:
                prefixes.get(keys[0])
                return
        self._parallel(workers, make, keys)

    # ------------------------------------------------------------------ forward passes
    @torch.no_grad()
    def _prefix_kv(self, ids: list[int], base: list | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of ``ids`` (continuing ``base``'s prefix when given), per layer."""
        prefix_len = base[0][0].shape[2] if base else 0
        cache = RowKV(1, [base] if base else [], [0] if base else [-1], capacity=len(ids))
        self._model_forward(cache, torch.tensor([ids]), torch.tensor([prefix_len]), keep=1)
        self._count(len(ids))
        cache.commit()
        return list(zip(cache.keys, cache.values))

    def _model_forward(self, cache: RowKV, input_ids: torch.Tensor, prefix_lengths: torch.Tensor, keep: int):
        """One pass of ``input_ids`` [B, Q] written after each row's cached tokens; logits of the
        last ``keep`` positions as float32."""
        q_len = input_ids.shape[1]
        device = self.device
        cache.prepare(q_len, device)
        positions = cache.positions(prefix_lengths)[:, None] + torch.arange(q_len)
        positions = positions.clamp(min=0)
        out = self.model(
            input_ids=input_ids.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        return out.logits.float()

    @torch.no_grad()
    def _prefill(self, batch: list[_Row], kvs: dict, keep: int, capacity: int, right_pad: bool = False):
        """Run a batch's suffixes (left-padded) after their prefixes.

        Returns ``(logits [B, keep, V], cache, prefix_lengths)``; the cache holds every row's
        own tokens and has room for ``capacity`` more per row. ``right_pad`` (rows without a
        prefix, every position kept) pads at the end instead: the pass is then plain causal
        attention, without a mask, and row ``b``'s logits are its first ``len(ids)`` positions.
        """
        s_max = max(r.suffix_len for r in batch)
        cache = _row_cache(batch, kvs, capacity=s_max + capacity)
        input_ids = torch.full((len(batch), s_max), self.pad_id, dtype=torch.long)
        pads = torch.zeros(len(batch), dtype=torch.long)
        for b, row in enumerate(batch):
            suffix = row.ids[row.prefix_len :]
            if right_pad:
                input_ids[b, : len(suffix)] = torch.tensor(suffix)
            else:
                pads[b] = s_max - len(suffix)
                input_ids[b, s_max - len(suffix) :] = torch.tensor(suffix)
        cache.set_start(pads)
        # Positions count real tokens only: a row's first suffix token sits right after its prefix.
        prefix_lengths = torch.tensor([r.prefix_len for r in batch], dtype=torch.long)
        logits = self._model_forward(cache, input_ids, prefix_lengths, keep)
        cache.commit()
        self._count(sum(r.suffix_len for r in batch))
        return logits, cache, prefix_lengths

    @torch.no_grad()
    def _plain_forward(self, batch: list[_Row], keep: int) -> torch.Tensor:
        """Fallback for models the shared cache does not support: a left-padded full pass."""
        s_max = max(len(r.ids) for r in batch)
        input_ids = torch.full((len(batch), s_max), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), s_max, dtype=torch.long)
        for b, row in enumerate(batch):
            input_ids[b, s_max - len(row.ids) :] = torch.tensor(row.ids)
            mask[b, s_max - len(row.ids) :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=position_ids.to(self.device),
            logits_to_keep=keep,
        )
        self._count(int(mask.sum()))
        return out.logits.float()

    def _prefill_chunks(self, batch: list[_Row]) -> list[list[_Row]]:
        """Cut a batch, sorted by suffix length, into prompt passes of least estimated cost.

        A generation batch is decoded together (one weight read per step for all its rows), but
        its prompts need not be run together: one pass pads every row to the longest prompt.
        Passes over rows of similar length cost a call each and pad little; ``best[j]`` is the
        cheapest way to run the ``j`` shortest suffixes. A pass holds at most
        ``max_batch_tokens`` tokens (activation memory), or a single row."""
        ordered = sorted(batch, key=lambda r: r.suffix_len)
        n = len(ordered)
        best = [0.0] + [math.inf] * n
        cut_at = [0] * (n + 1)
        for j in range(1, n + 1):
            row = ordered[j - 1]
            context = row.prefix_len + row.suffix_len
            per_row = row.suffix_len * PREFILL_MS_PER_TOKEN * (1 + context / PREFILL_CONTEXT_SCALE)
            for i in range(j - 1, -1, -1):
                if j - i > 1 and (j - i) * row.suffix_len > self.max_batch_tokens:
                    break
                cost = best[i] + CALL_MS + (j - i) * per_row
                if cost < best[j]:
                    best[j], cut_at[j] = cost, i
        return _segments(ordered, cut_at)

    def _prefill_merged(self, batch: list[_Row], kvs: dict, capacity: int):
        """:meth:`_prefill` of a generation batch (last position's logits), its prompts run in
        length-sorted chunks (:meth:`_prefill_chunks`) and their caches merged into one.

        Each chunk is left-padded to its own longest suffix; in the merged cache every row is
        left-padded to the batch's longest, which is the layout one pass over the whole batch
        would have left (row ``b``'s tokens end at the same slot for all rows), so decoding
        proceeds exactly as after a single pass. ``batch`` is reordered in place to the merged
        row order. Returns ``(logits [B, 1, V], cache, prefix_lengths)``.
        """
        chunks = self._prefill_chunks(batch)
        if len(chunks) == 1:
            batch[:] = chunks[0]
            return self._prefill(batch, kvs, keep=1, capacity=capacity)
        batch[:] = [row for chunk in chunks for row in chunk]
        s_max = batch[-1].suffix_len
        merged = _row_cache(batch, kvs, capacity=s_max + capacity)
        logits, row0 = [], 0
        for chunk in chunks:
            chunk_logits, cache, _ = self._prefill(chunk, kvs, keep=1, capacity=0)
            logits.append(chunk_logits)
            width = int(cache.length.max())
            rows = slice(row0, row0 + len(chunk))
            for layer, (k, v) in enumerate(zip(cache.keys, cache.values)):
                if layer == len(merged.keys):
                    shape = (len(batch), k.shape[1], merged.capacity, k.shape[3])
                    merged.keys.append(k.new_zeros(shape))
                    merged.values.append(v.new_zeros(shape[:3] + (v.shape[3],)))
                merged.keys[layer][rows, :, s_max - width : s_max] = k[:, :, :width]
                merged.values[layer][rows, :, s_max - width : s_max] = v[:, :, :width]
            row0 += len(chunk)
            del cache
        merged.set_start(torch.tensor([s_max - r.suffix_len for r in batch], dtype=torch.long))
        merged.length = torch.full((len(batch),), s_max, dtype=torch.long)
        prefix_lengths = torch.tensor([r.prefix_len for r in batch], dtype=torch.long)
        return torch.cat(logits, dim=0), merged, prefix_lengths

    def _logits(self, batch: list[_Row], kvs: dict, keep: int) -> torch.Tensor:
        if self.shared_cache:
            return self._prefill(batch, kvs, keep, capacity=0)[0]
        return self._plain_forward(batch, keep)

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
            extra_scores = self.score(
                [ScoreRequest(requests[i].prompt, continuations[i]) for i in separate],
                desc=f"{desc} (scores)",
            )
            for i, s in zip(separate, extra_scores):
                scores[i] = s
        return list(zip(texts, scores))

    def _score_after_prompt(self, batch, cache: RowKV, prefix_lengths, last_logits, cont_ids, scores) -> None:
        """Log-probs of each row's continuation, from the prompt's cache; the cache is left as it was."""
        conts = [cont_ids[r.index] or [] for r in batch]
        first = torch.log_softmax(last_logits, dim=-1)
        width = max(len(c) for c in conts) - 1
        rest = None
        if width > 0:
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            for b, c in enumerate(conts):
                if len(c) > 1:
                    input_ids[b, : len(c) - 1] = torch.tensor(c[:-1])
            rest = torch.log_softmax(
                self._model_forward(cache, input_ids, prefix_lengths, keep=width), dim=-1
            )
            self._count(sum(max(0, len(c) - 1) for c in conts))
        for b, (row, c) in enumerate(zip(batch, conts)):
            if not c:
                continue
            values = [float(first[b, c[0]])]
            if len(c) > 1:
                targets = torch.tensor(c[1:], device=rest.device)
                values += rest[b, : len(c) - 1].gather(-1, targets[:, None]).squeeze(-1).tolist()
            scores[row.index] = ContinuationScore(values)
        # The continuation's keys were written after the prompt but not committed: the next
        # pass overwrites them.

    def _decode(self, batch, requests, cache: RowKV, prefix_lengths, last_logits, stop: set[int]):
        """Greedy decoding of a prefilled batch, with prompt-lookup speculation."""
        n = len(batch)
        generated: list[list[int]] = [[] for _ in batch]
        live = [True] * n
        lookups = [PromptLookup(row.ids) for row in batch] if self.speculative else None
        accept_rate = [0.5] * n

        def take(b: int, tokens: list[int]) -> list[int]:
            """Append greedy tokens to row b until it is done; return those appended."""
            request = requests[batch[b].index]
            taken = []
            for tok in tokens:
                if tok in stop:
                    live[b] = False
                    break
                generated[b].append(tok)
                taken.append(tok)
                if len(generated[b]) >= request.max_new_tokens or (
                    request.stop_when is not None
                    and request.stop_when(self.tokenizer.decode(generated[b], skip_special_tokens=True))
                ):
                    live[b] = False
                    break
            return taken

        for b, tok in enumerate(last_logits.argmax(-1).tolist()):
            taken = take(b, [tok])
            if lookups is not None and taken:
                lookups[b].extend(taken)

        def budget_left(b: int) -> int:
            return requests[batch[b].index].max_new_tokens - len(generated[b])

        def loop(cache: RowKV, prefix_lengths: torch.Tensor, slots: list[int]) -> None:
            """Decode the rows ``slots`` (``slots[k]``: the batch row in cache row k) to the end.

            A finished row stays in the cache (its inputs are padding, its compute wasted) until
            a tenth of the rows are finished: compacting copies the whole cache, which a few
            steps of that waste pay for. When another worker waits for work, half of the live
            rows (whole prefix groups first) move to it with their cache rows; each row is
            decoded by one worker at a time, so the per-row lists above need no lock."""
            given: list[threading.Event] = []
            given_rows: list[int] = []
            while any(live[b] for b in slots):
                helpers = self._helpers
                alive = [k for k, b in enumerate(slots) if live[b]]
                if (
                    helpers is not None
                    and len(alive) >= 2
                    and helpers.wanted()
                    and max(budget_left(slots[k]) for k in alive) >= MIN_SHARED_STEPS
                ):
                    alive.sort(key=lambda k: (cache.row_prefix[k], k))
                    away = alive[len(alive) // 2 :]
                    part = (cache.copy_rows(away), prefix_lengths[away], [slots[k] for k in away])

                    def task(part=part) -> None:
                        with torch.inference_mode():  # grad mode is per thread
                            loop(*part)

                    done = helpers.give(task)
                    if done is not None:
                        given.append(done)
                        given_rows += part[2]
                        away_set = set(away)
                        keep = [k for k in alive if k not in away_set]
                        keep.sort()
                        cache.select_rows(keep)
                        prefix_lengths = prefix_lengths[keep]
                        slots = [slots[k] for k in keep]
                        continue
                if sum(live[b] for b in slots) <= 0.9 * len(slots):
                    keep = [k for k, b in enumerate(slots) if live[b]]
                    cache.select_rows(keep)
                    prefix_lengths = prefix_lengths[keep]
                    slots = [slots[k] for k in keep]
                drafts = [
                    lookups[b].draft(MAX_DRAFT) if lookups is not None and live[b] else [] for b in slots
                ]
                width = self._draft_width(
                    drafts, [accept_rate[b] for b in slots], [live[b] for b in slots], *self._timer.estimate()
                )
                input_ids = torch.full((len(slots), width), self.pad_id, dtype=torch.long)
                for k, b in enumerate(slots):
                    if live[b]:
                        row_input = [generated[b][-1]] + drafts[k][: width - 1]
                        input_ids[k, : len(row_input)] = torch.tensor(row_input)
                started = time.perf_counter()
                logits = self._model_forward(cache, input_ids, prefix_lengths, keep=width)
                predicted = logits.argmax(-1).tolist()
                self._timer.observe(max(len(slots) * width, FREE_TOKENS), time.perf_counter() - started)
                self._count(width * sum(live[b] for b in slots))
                new_length = cache.length.clone()
                for k, b in enumerate(slots):
                    if not live[b]:
                        continue
                    draft = drafts[k][: width - 1]
                    accepted = 0
                    while accepted < len(draft) and draft[accepted] == predicted[k][accepted]:
                        accepted += 1
                    if draft:
                        accept_rate[b] = 0.5 * accept_rate[b] + 0.5 * (accepted / len(draft))
                    new_length[k] += 1 + accepted  # the fed token and the accepted drafts are cached
                    taken = take(b, draft[:accepted] + [predicted[k][accepted]])
                    if lookups is not None:
                        lookups[b].extend(taken)
                cache.commit(new_length)
            if given:
                # Help with whatever is queued (possibly these very rows) until they are done.
                self._helpers.wait(lambda: all(done.is_set() for done in given))
                missing = [b for b in given_rows if live[b]]
                if missing:  # another worker failed; its error is raised by _run_workers
                    raise RuntimeError(f"decoding of batch rows {missing} did not finish")

        loop(cache, prefix_lengths, list(range(n)))
        return generated

    @staticmethod
    def _draft_width(drafts, rates, live, base_ms: float, token_ms: float) -> int:
        """Tokens per row in the next pass (1 + draft length) that maximise expected tokens/ms.

        Every row of the pass pays for the full width (finished rows still in the cache too);
        a row gains 1 + the expected number of its draft tokens that greedy decoding confirms.
        """
        longest = max((len(d) for d, alive in zip(drafts, live) if alive), default=0)
        if longest == 0:
            return 1
        rows = len(drafts)
        n_live = sum(live)
        best_width, best_rate = 1, -1.0
        for width in range(1, longest + 2):
            gain = n_live + sum(
                _expected_accepted(min(width - 1, len(d)), p)
                for d, p, alive in zip(drafts, rates, live)
                if alive
            )
            cost = base_ms + max(rows * width, FREE_TOKENS) * token_ms
            if gain / cost > best_rate:
                best_width, best_rate = width, gain / cost
        return best_width

    def _generate_plain(self, batch: list[_Row], requests, stop: set[int]) -> list[list[int]]:
        """Fallback generation with transformers' ``generate`` (no sharing, no speculation)."""
        s_max = max(len(r.ids) for r in batch)
        input_ids = torch.full((len(batch), s_max), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), s_max, dtype=torch.long)
        for b, row in enumerate(batch):
            input_ids[b, s_max - len(row.ids) :] = torch.tensor(row.ids)
            mask[b, s_max - len(row.ids) :] = 1
        budget = max(requests[r.index].max_new_tokens for r in batch)
        out = self.model.generate(
            input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=budget,
            do_sample=False,
            eos_token_id=sorted(stop),
            pad_token_id=self.pad_id,
        )
        results = []
        for b, row in enumerate(batch):
            request = requests[row.index]
            tokens: list[int] = []
            for tok in out[b, s_max:].tolist():
                if tok in stop or len(tokens) >= request.max_new_tokens:
                    break
                tokens.append(tok)
                if request.stop_when is not None and request.stop_when(
                    self.tokenizer.decode(tokens, skip_special_tokens=True)
                ):
                    break
            results.append(tokens)
        self._count(int(mask.sum()) + sum(len(t) for t in results))
        return results

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

        def step(batch: list[_Row], kvs: dict) -> None:
            lengths = [len(row.ids) - starts[row.index] for row in batch]
            keep = max(lengths) + 1
            logprobs = torch.log_softmax(self._logits(batch, kvs, keep), dim=-1)
            for b, row in enumerate(batch):
                m = lengths[b]
                if m <= 0:
                    continue
                targets = torch.tensor(row.ids[-m:], device=logprobs.device)
                picked = logprobs[b, keep - m - 1 : keep - 1].gather(-1, targets[:, None]).squeeze(-1)
                results[row.index] = ContinuationScore(picked.cpu().tolist())

        self._run(rows, desc, step)
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

        def step(batch: list[_Row], kvs: dict) -> None:
            logits = self._logits(batch, kvs, keep=1)
            logprobs = torch.log_softmax(logits[:, -1], dim=-1)[:, candidates.to(logits.device)]
            for b, row in enumerate(batch):
                out[row.index] = logprobs[b].cpu().numpy()

        self._run(rows, desc, step)
        return out

    @torch.no_grad()
    def token_stats(self, texts: Sequence[str], *, desc: str = "token stats") -> list[TokenStats]:
        rows = [_Row(i, self._tokenize(t), None, cap=0) for i, t in enumerate(texts)]
        results: list[TokenStats] = [None] * len(rows)  # type: ignore[list-item]
        mia_tokens = 2048  # positions per full-vocabulary softmax (~400 MB at a 50k vocabulary)

        def step(batch: list[_Row], kvs: dict) -> None:
            keep = max(len(r.ids) for r in batch)
            per = max(1, mia_tokens // keep)
            for start in range(0, len(batch), per):
                sub = batch[start : start + per]
                sub_keep = max(len(r.ids) for r in sub)
                if self.shared_cache:
                    logits = self._prefill(sub, {}, keep=sub_keep, capacity=0, right_pad=True)[0]
                    first = [0] * len(sub)
                else:
                    logits = self._plain_forward(sub, keep=sub_keep)
                    first = [sub_keep - len(r.ids) for r in sub]
                for b, row in enumerate(sub):
                    n = len(row.ids)
                    if n < 2:
                        empty = np.zeros(0, dtype=np.float32)
                        results[row.index] = TokenStats(empty, empty, empty, n)
                        continue
                    targets = torch.tensor(row.ids[1:], device=logits.device)
                    parts = [
                        _vocab_stats(
                            logits[b, first[b] + i : first[b] + min(i + STATS_CHUNK, n - 1)],
                            targets[i : i + STATS_CHUNK],
                        )
                        for i in range(0, n - 1, STATS_CHUNK)
                    ]
                    token_logprobs, mu, sigma2 = (torch.cat(x).cpu().numpy() for x in zip(*parts))
                    results[row.index] = TokenStats(token_logprobs, mu, sigma2, n)

        self._run(rows, desc, step)
        return results


def reference_stop_ids(lm, strings: Sequence[str] = ("<|eot_id|>", " \n", "\n")) -> list[int]:
    """The stop ids the reference asks for: eos plus ``convert_tokens_to_ids`` of literal strings.

    In byte-level BPE vocabularies the newline strings are not tokens, so the lookup returns the
    unknown-token id (or None) and, in practice, never fires. Reproduced on purpose: it is what
    makes the reference's outputs run on past newlines.
    """
    ids = [lm.convert_tokens_to_ids(s) for s in strings]
    return [int(i) for i in ids if i is not None and not (isinstance(i, float) and math.isnan(i))]
