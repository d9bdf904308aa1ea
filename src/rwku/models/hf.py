"""The transformers engine behind :class:`rwku.models.backend.LanguageModel`.

Why it is fast without changing the numbers
-------------------------------------------
The reference evaluates prompts one batch at a time with ``model.generate`` and recomputes
every prompt in full. On a CPU the cost is almost all prefill (the 5-shot MMLU header, the
3-shot BBH chain of thought, the TruthfulQA primer once per answer choice), so this engine:

* **shares prefixes**: requests with the same ``group`` key have their longest common token
  prefix run once; its KV cache is then placed in front of every member's suffix. Rows of one
  batch may come from different groups: prefixes are left-padded to a common length and the
  suffixes left-padded after them, so a row reads ``[pad][prefix][pad][suffix]``. Position
  ids come from the attention mask's cumulative sum, exactly as ``generate`` computes them
  for left padding, so every real token sees the positions and context it would see alone;
* **sorts by length** inside each group and caps tokens per batch, so little is padding;
* **stops each sequence when it is done** (a stop token, its own token budget, or a rule such
  as "BBH's answer regex has matched") and drops it from the batch, instead of decoding the
  whole batch until its longest member ends;
* **computes logits only where they are read** (``logits_to_keep``).

Greedy decoding is a plain argmax, as ``generate(do_sample=False)`` does with no logits
processors. Floating-point sums differ with batch shapes, so a rare near-tie can flip a token
against the reference's run; the conformance tests measure how rarely.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from rwku.models.backend import ContinuationScore, GenerationRequest, ScoreRequest, TokenStats

#: Below this many shared tokens a prefix is not worth a separate forward pass.
MIN_SHARED_PREFIX = 16
#: Cost model in milliseconds, measured on a 2-core CPU with SmolLM2-135M (only ratios
#: matter, for choosing batches). Prefill is compute-bound: ~1.5 ms per token, growing with
#: the attended context. A decoding step is bound by reading the weights (~65 ms whatever the
#: batch) plus ~3.1 ms per row and ~2.2 µs per row per cached token.
PREFILL_MS_PER_TOKEN = 1.5
PREFILL_CONTEXT_SCALE = 3000
CALL_MS = 30.0
DECODE_STEP_MS = 65.0
DECODE_ROW_MS = 3.1
DECODE_CONTEXT_MS = 0.0022


def _cost(rows: int, prefix: int, suffix: int, steps: int = 0) -> float:
    """Estimated milliseconds of a batch: one padded forward over the suffixes, then ``steps``
    decode steps. Every row is padded to the batch's longest prefix and longest suffix."""
    context = prefix + suffix
    prefill = CALL_MS + rows * suffix * PREFILL_MS_PER_TOKEN * (1 + context / PREFILL_CONTEXT_SCALE)
    decode = steps * (DECODE_STEP_MS + rows * (DECODE_ROW_MS + DECODE_CONTEXT_MS * (context + steps / 2)))
    return prefill + decode


def _padded_cost(batch: list[_Row], steps: int = 0) -> float:
    suffix = max(len(r.ids) - r.prefix_len for r in batch)
    return _cost(len(batch), max(r.prefix_len for r in batch), suffix, steps)


@dataclass
class _Row:
    """One sequence to run: its full token ids and how many leading tokens come from a cache."""

    index: int
    ids: list[int]
    group: Hashable | None
    cap: int  # the prefix may cover at most this many tokens
    prefix_len: int = 0


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _growing_cache(reserve: int):
    """A DynamicCache whose layers append into preallocated buffers (None if unsupported).

    transformers' DynamicLayer re-concatenates the whole cache at every decoding step; on a CPU
    that costs more than the attention itself once prompts are long (a 1,500-token BBH prompt ×
    64 rows: 2.1 s per step, against 0.44 s with a buffer that grows geometrically and takes one
    column per step).
    """
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - very old transformers
        return None

    class GrowingLayer(DynamicLayer):
        def preload(self, kbuf: torch.Tensor, vbuf: torch.Tensor, length: int) -> None:
            """Adopt buffers whose first ``length`` columns already hold the cached prefix."""
            self.dtype, self.device = kbuf.dtype, kbuf.device
            self.is_initialized = True
            self._kbuf, self._vbuf, self._len = kbuf, vbuf, length
            self.keys, self.values = kbuf[:, :, :length], vbuf[:, :, :length]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._kbuf = self._vbuf = None
                self._len = 0
            need = self._len + key_states.shape[-2]
            if self._kbuf is None or need > self._kbuf.shape[-2]:
                old = 0 if self._kbuf is None else self._kbuf.shape[-2]
                cap = max(need + reserve, 2 * old)
                b, h, _, d = key_states.shape
                kbuf = key_states.new_empty(b, h, cap, d)
                vbuf = value_states.new_empty(b, h, cap, value_states.shape[-1])
                if self._len:
                    kbuf[:, :, : self._len] = self._kbuf[:, :, : self._len]
                    vbuf[:, :, : self._len] = self._vbuf[:, :, : self._len]
                self._kbuf, self._vbuf = kbuf, vbuf
            self._kbuf[:, :, self._len : need] = key_states
            self._vbuf[:, :, self._len : need] = value_states
            self._len = need
            self.keys, self.values = self._kbuf[:, :, :need], self._vbuf[:, :, :need]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self._kbuf, self._vbuf = self._kbuf[indices], self._vbuf[indices]
                self.keys, self.values = self._kbuf[:, :, : self._len], self._vbuf[:, :, : self._len]

    try:
        cache = DynamicCache(layer_class_to_replicate=GrowingLayer)
    except TypeError:  # pragma: no cover - transformers < 5
        return None
    cache.growing_layer = GrowingLayer
    return cache


def _layer_kv(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of one layer, across transformers versions."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]  # transformers < 4.56


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
        progress: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = dict(info or {})
        self.name = self.info.get("name", getattr(model.config, "_name_or_path", "model"))
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_kv_tokens = max_kv_tokens
        self.progress = progress
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        self.tokens_processed = 0  # prefill + decode tokens, for throughput reports

    # ------------------------------------------------------------------ text helpers
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

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

    # ------------------------------------------------------------------ batching core
    def _plan(self, rows: list[_Row], extra: int = 0) -> list[list[_Row]]:
        """Choose shared prefixes per group and cut the rows into length-sorted batches.

        A batch is capped three ways: ``batch_size`` rows, ``max_batch_tokens`` suffix tokens
        in its one forward pass (activation memory), and ``max_kv_tokens`` cache entries
        counting prefix, suffix and ``extra`` tokens still to generate (KV memory).
        """
        by_group: dict[Hashable, list[_Row]] = defaultdict(list)
        for row in rows:
            by_group[("__solo__", row.index) if row.group is None else row.group].append(row)
        for members in by_group.values():
            if len(members) > 1:
                shared = min(_common_prefix_len(members[0].ids, m.ids) for m in members[1:])
                shared = min([shared] + [m.cap for m in members])
                if shared >= MIN_SHARED_PREFIX:
                    for m in members:
                        m.prefix_len = shared
        # Batch rows of similar shape: a batch pads every row to its longest suffix and its
        # longest prefix, so mixing a 40-token suffix with a 700-token one, or a 300-token
        # cached prefix with a 2,500-token one, multiplies the work. Two sort orders are
        # tried and the plan with the smaller padded cost is kept.
        plans = [
            self._cut(sorted(rows, key=lambda r: (r.prefix_len, len(r.ids) - r.prefix_len)), extra),
            self._cut(sorted(rows, key=lambda r: (len(r.ids) - r.prefix_len, r.prefix_len)), extra),
        ]
        return min(plans, key=lambda batches: sum(_padded_cost(b, extra) for b in batches))

    def _cut(self, ordered: list[_Row], extra: int) -> list[list[_Row]]:
        """Split sorted rows into contiguous batches of least total cost (dynamic programming).

        ``best[j]`` is the cheapest way to run the first ``j`` rows; the last batch is
        ``ordered[i:j]`` for some ``i`` within ``batch_size`` rows and the memory caps.
        """
        n = len(ordered)
        best = [0.0] + [math.inf] * n
        cut_at = [0] * (n + 1)
        for j in range(1, n + 1):
            suffix = prefix = 0
            for i in range(j - 1, max(-1, j - 1 - self.batch_size), -1):
                row = ordered[i]
                suffix = max(suffix, len(row.ids) - row.prefix_len)
                prefix = max(prefix, row.prefix_len)
                rows = j - i
                if rows > 1 and (
                    rows * suffix > self.max_batch_tokens
                    or rows * (prefix + suffix + extra) > self.max_kv_tokens
                ):
                    break
                cost = best[i] + _cost(rows, prefix, suffix, extra)
                if cost < best[j]:
                    best[j], cut_at[j] = cost, i
        batches: list[list[_Row]] = []
        j = n
        while j > 0:
            batches.append(ordered[cut_at[j] : j])
            j = cut_at[j]
        return batches[::-1]

    @torch.no_grad()
    def _prefix_kv(self, ids: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = self.model(
            input_ids=torch.tensor([list(ids)], device=self.device), use_cache=True, logits_to_keep=1
        )
        self.tokens_processed += len(ids)
        cache = out.past_key_values
        return [_layer_kv(cache, i) for i in range(len(cache))]

    @torch.no_grad()
    def _forward(self, batch: list[_Row], prefixes: dict, keep: int, use_cache: bool, reserve: int = 0):
        """Run one batch: cached prefixes in front, left-padded suffixes after them."""
        from transformers import DynamicCache

        device = self.device
        p_max = max(r.prefix_len for r in batch)
        s_max = max(len(r.ids) - r.prefix_len for r in batch)
        bsz = len(batch)
        mask = torch.zeros(bsz, p_max + s_max, dtype=torch.long)
        input_ids = torch.full((bsz, s_max), self.pad_id, dtype=torch.long)
        for b, row in enumerate(batch):
            suffix = row.ids[row.prefix_len :]
            mask[b, p_max - row.prefix_len : p_max] = 1
            mask[b, p_max + s_max - len(suffix) :] = 1
            input_ids[b, s_max - len(suffix) :] = torch.tensor(suffix)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, p_max:]
        cache = _growing_cache(reserve + s_max)
        if cache is None:  # pragma: no cover - transformers < 5: plain cache, same numbers
            cache = DynamicCache(config=self.model.config)
        if p_max > 0:
            # Copy each row's prefix KV once, left-padded, into buffers with room for the rest.
            sample = next(iter(prefixes.values()))
            for layer, (ref_k, ref_v) in enumerate(sample):
                width = p_max + s_max + reserve
                kbuf = ref_k.new_zeros(bsz, ref_k.shape[1], width, ref_k.shape[3])
                vbuf = ref_v.new_zeros(bsz, ref_v.shape[1], width, ref_v.shape[3])
                for b, row in enumerate(batch):
                    if row.prefix_len:
                        k, v = prefixes[tuple(row.ids[: row.prefix_len])][layer]
                        kbuf[b, :, p_max - row.prefix_len : p_max] = k[0]
                        vbuf[b, :, p_max - row.prefix_len : p_max] = v[0]
                if hasattr(cache, "growing_layer"):
                    cache.layers.append(cache.growing_layer())
                    cache.layers[layer].preload(kbuf, vbuf, p_max)
                else:  # pragma: no cover
                    cache.update(kbuf[:, :, :p_max], vbuf[:, :, :p_max], layer)
        out = self.model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=position_ids.to(device),
            past_key_values=cache,
            use_cache=use_cache,
            logits_to_keep=keep,
        )
        self.tokens_processed += int(mask[:, p_max:].sum())
        return out.logits.float(), out.past_key_values, mask, position_ids[:, -1]

    def _run(self, rows: list[_Row], desc: str, step, extra: int = 0):
        """Plan, compute each group's prefix once, and call ``step(batch, prefixes)`` per batch."""
        batches = self._plan(rows, extra)
        remaining: dict[tuple, int] = defaultdict(int)
        for batch in batches:
            for row in batch:
                if row.prefix_len:
                    remaining[tuple(row.ids[: row.prefix_len])] += 1
        prefixes: dict[tuple, list] = {}
        bar = tqdm(total=len(rows), desc=desc, disable=not self.progress, leave=False)
        for batch in batches:
            for row in batch:
                key = tuple(row.ids[: row.prefix_len])
                if row.prefix_len and key not in prefixes:
                    prefixes[key] = self._prefix_kv(key)
            step(batch, prefixes)
            for row in batch:
                if row.prefix_len:
                    key = tuple(row.ids[: row.prefix_len])
                    remaining[key] -= 1
                    if remaining[key] == 0:
                        del prefixes[key]
            bar.update(len(batch))
        bar.close()

    # ------------------------------------------------------------------ public calls
    @torch.no_grad()
    def generate(
        self, requests: Sequence[GenerationRequest], *, stop_token_ids: Sequence[int], desc: str = "generate"
    ) -> list[str]:
        stop = {int(t) for t in stop_token_ids if t is not None}
        if self.tokenizer.eos_token_id is not None:
            stop.add(int(self.tokenizer.eos_token_id))
        rows = [_Row(i, self._tokenize(r.prompt), r.group, cap=0) for i, r in enumerate(requests)]
        for row in rows:
            row.cap = len(row.ids) - 1
        results: list[str] = [""] * len(rows)

        def step(batch: list[_Row], prefixes: dict) -> None:
            reserve = max(requests[r.index].max_new_tokens for r in batch)
            logits, cache, mask, last_pos = self._forward(
                batch, prefixes, keep=1, use_cache=True, reserve=reserve
            )
            # ``slots[k]`` is the batch row held in cache row k; ``live`` marks rows still decoding.
            # A finished row stays in the cache (its tokens are ignored) until a quarter of the
            # rows are finished: compacting the cache copies all of it, so it is done rarely.
            slots = list(range(len(batch)))
            live = [True] * len(batch)
            generated: list[list[int]] = [[] for _ in batch]
            next_tokens = logits[:, -1].argmax(-1).tolist()
            while True:
                for k, b in enumerate(slots):
                    if not live[b]:
                        continue
                    tok = next_tokens[k]
                    request = requests[batch[b].index]
                    if tok in stop:
                        live[b] = False
                        continue
                    generated[b].append(tok)
                    if len(generated[b]) >= request.max_new_tokens or (
                        request.stop_when is not None
                        and request.stop_when(self.tokenizer.decode(generated[b], skip_special_tokens=True))
                    ):
                        live[b] = False
                n_live = sum(live[b] for b in slots)
                if n_live == 0:
                    break
                if n_live <= 0.75 * len(slots):
                    keep = [k for k, b in enumerate(slots) if live[b]]
                    cache.batch_select_indices(torch.tensor(keep, device=self.device))
                    mask, last_pos = mask[keep], last_pos[keep]
                    next_tokens = [next_tokens[k] for k in keep]
                    slots = [slots[k] for k in keep]
                mask = torch.cat([mask, mask.new_ones(len(slots), 1)], dim=1)
                last_pos = last_pos + 1
                out = self.model(
                    input_ids=torch.tensor(next_tokens, device=self.device)[:, None],
                    attention_mask=mask.to(self.device),
                    position_ids=last_pos[:, None].to(self.device),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                self.tokens_processed += len(slots)
                cache = out.past_key_values
                next_tokens = out.logits[:, -1].float().argmax(-1).tolist()
            for b, row in enumerate(batch):
                # Decode prompt+generation and cut the decoded prompt off, as the reference does.
                full = self.tokenizer.decode(row.ids + generated[b], skip_special_tokens=True)
                prompt = self.tokenizer.decode(row.ids, skip_special_tokens=True)
                results[row.index] = full[len(prompt) :]

        self._run(rows, desc, step, extra=max((r.max_new_tokens for r in requests), default=0))
        return results

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

        def step(batch: list[_Row], prefixes: dict) -> None:
            lengths = [len(row.ids) - starts[row.index] for row in batch]
            keep = max(lengths) + 1
            logits, *_ = self._forward(batch, prefixes, keep=keep, use_cache=False)
            logprobs = torch.log_softmax(logits, dim=-1)
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

        def step(batch: list[_Row], prefixes: dict) -> None:
            logits, *_ = self._forward(batch, prefixes, keep=1, use_cache=False)
            logprobs = torch.log_softmax(logits[:, -1], dim=-1)[:, candidates.to(logits.device)]
            for b, row in enumerate(batch):
                out[row.index] = logprobs[b].cpu().numpy()

        self._run(rows, desc, step)
        return out

    @torch.no_grad()
    def token_stats(self, texts: Sequence[str], *, desc: str = "token stats") -> list[TokenStats]:
        rows = [_Row(i, self._tokenize(t), None, cap=0) for i, t in enumerate(texts)]
        results: list[TokenStats] = [None] * len(rows)  # type: ignore[list-item]
        mia_tokens = 2048  # positions per full-vocabulary softmax (~1 GB at a 50k vocabulary)

        def step(batch: list[_Row], prefixes: dict) -> None:
            keep = max(len(r.ids) for r in batch)
            # Full-vocabulary log-softmax over every position is large: run sub-batches.
            per = max(1, mia_tokens // keep)
            for start in range(0, len(batch), per):
                sub = batch[start : start + per]
                sub_keep = max(len(r.ids) for r in sub)
                logits, *_ = self._forward(sub, prefixes, keep=sub_keep, use_cache=False)
                for b, row in enumerate(sub):
                    n = len(row.ids)
                    if n < 2:
                        empty = np.zeros(0, dtype=np.float32)
                        results[row.index] = TokenStats(empty, empty, empty, n)
                        continue
                    row_logits = logits[b, sub_keep - n : sub_keep - 1]
                    logp = torch.log_softmax(row_logits, dim=-1)
                    p = logp.exp()
                    targets = torch.tensor(row.ids[1:], device=logp.device)
                    token_logprobs = logp.gather(-1, targets[:, None]).squeeze(-1)
                    mu = (p * logp).sum(-1)
                    sigma2 = (p * logp.square()).sum(-1) - mu.square()
                    results[row.index] = TokenStats(
                        token_logprobs.cpu().numpy(), mu.cpu().numpy(), sigma2.cpu().numpy(), n
                    )

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
