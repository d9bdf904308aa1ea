"""Prefill: the forward passes over prompts, and the shared-prefix store they start from.

Owns the call's shared prefixes (:class:`_Prefixes`: each computed once, on top of the call's
root prefix, and dropped after its last batch; :meth:`Prefill._precompute` makes them ahead
of the batches with every core busy), the one forward pass on the row cache that every
other pass goes through (:meth:`Prefill._model_forward`), a batch's prompt pass after its
prefixes (:meth:`Prefill._prefill`), a generation batch's prompts run in length-sorted chunks
whose caches are merged into one (:meth:`Prefill._prefill_merged`; the chunks are chosen by
:meth:`rwku.models.engine.planning.Planning._prefill_chunks`), and the plain left-padded
pass of models the row cache does not support (:meth:`Prefill._plain_forward`).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import TYPE_CHECKING

import torch

from rwku.models.engine.hooks import edit_embeddings
from rwku.models.engine.planning import _Row
from rwku.models.kvcache import RowKV

if TYPE_CHECKING:
    from rwku.models.hf import HFLanguageModel


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


def _no_hooks(batch: list[_Row]) -> None:
    if any(row.hook is not None for row in batch):
        raise ValueError("per-row hooks (inference-time guards) need a model on the shared-prefix cache")


def _left_padded(batch: list[_Row], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole rows left-padded to the longest: ``(input_ids, attention_mask)``, both [B, S]."""
    s_max = max(len(r.ids) for r in batch)
    input_ids = torch.full((len(batch), s_max), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), s_max, dtype=torch.long)
    for b, row in enumerate(batch):
        input_ids[b, s_max - len(row.ids) :] = torch.tensor(row.ids)
        mask[b, s_max - len(row.ids) :] = 1
    return input_ids, mask


class Prefill:
    """The prompt passes of :class:`rwku.models.hf.HFLanguageModel` (a mixin)."""

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

    def _model_forward(
        self, cache: RowKV, input_ids: torch.Tensor, prefix_lengths: torch.Tensor, keep: int, embeds=None
    ):
        """One pass of ``input_ids`` [B, Q] written after each row's cached tokens; logits of the
        last ``keep`` positions as float32. ``embeds``: the input embeddings to use instead (rows
        with a hook's edits, see :mod:`rwku.models.engine.hooks`)."""
        q_len = input_ids.shape[1]
        device = self.device
        cache.prepare(q_len, device)
        positions = cache.positions(prefix_lengths)[:, None] + torch.arange(q_len)
        positions = positions.clamp(min=0)
        inputs = {"input_ids": input_ids.to(device)} if embeds is None else {"inputs_embeds": embeds}
        out = self.model(
            **inputs,
            position_ids=positions.to(device),
            use_cache=True,
            logits_to_keep=keep,
            **{self._cache_keyword: cache},
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
        edits = [
            (b, row.hook, row.prefix_len - (0 if right_pad else int(pads[b])))
            for b, row in enumerate(batch)
            if row.hook is not None and row.hook.positions
        ]
        embeds = edit_embeddings(self.model, input_ids.to(self.device), edits) if edits else None
        logits = self._model_forward(cache, input_ids, prefix_lengths, keep, embeds)
        cache.commit()
        self._count(sum(r.suffix_len for r in batch))
        return logits, cache, prefix_lengths

    @torch.no_grad()
    def _plain_forward(self, batch: list[_Row], keep: int) -> torch.Tensor:
        """Fallback for models the shared cache does not support: a left-padded full pass."""
        _no_hooks(batch)
        input_ids, mask = _left_padded(batch, self.pad_id)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=position_ids.to(self.device),
            logits_to_keep=keep,
        )
        self._count(int(mask.sum()))
        return out.logits.float()

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
