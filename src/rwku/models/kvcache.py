"""The engine's KV cache and attention: shared prefixes read once, ragged rows, nothing re-copied.

Why not transformers' ``DynamicCache`` with a padded 2-D attention mask
-------------------------------------------------------------------------
On a CPU, decoding is bound by memory traffic, and the stock cache spends it badly:

* ``DynamicCache`` concatenates the whole cache at every step (a full copy per layer per
  token); and a prefix shared by many rows (a 1,500-token BBH 3-shot prompt) must be copied
  into every row and is then re-read once per row at every decoding step;
* rows of one batch must stay aligned, so speculative decoding (several tokens checked per
  step, a different number accepted per row) cannot be expressed.

:class:`RowKV` keeps, per layer, (a) the KV of each distinct shared prefix once, shape
``[1, kv_heads, P, d]``, and (b) one preallocated buffer for the rows' own tokens,
``[B, kv_heads, capacity, d]``, in which every row has its own fill level. A forward pass
writes each row's new keys at that row's own offset; the engine then *commits* how many of
them are kept (all of them for a prompt; the accepted ones for a speculative step), and the
next pass simply overwrites the rest. Nothing is ever concatenated.

:func:`rows_attention` is registered with transformers' ``AttentionInterface`` and attends in
two parts that are merged exactly with their log-sum-exp (as flash attention merges its own
blocks): every row's queries against its group's prefix — one kernel call per prefix, the
group's rows stacked as extra queries, so the prefix is read once for all of them — and each
row's queries against its own buffer, with the causal/validity mask of that row. Grouped-query
heads are folded into the query axis for short query blocks, so keys and values are never
repeated in memory. Numbers equal plain attention up to float32 summation order.

The model code is untouched: transformers calls the cache's ``update`` (the cache is passed as
``cache``, named by :func:`cache_keyword`) and then the attention function named by
``config._attn_implementation``; :func:`use_rows_attention`
switches that name for the duration of an engine call. Called with ordinary tensors (training,
any other caller) the function is plain SDPA.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterator, Sequence

import torch
from transformers.cache_utils import Cache

ATTENTION_NAME = "rwku_rows"
#: Query blocks up to this long fold grouped-query heads into the query axis (decoding and
#: speculative checks); longer blocks (prompts) repeat the keys instead, which is cheaper
#: than a mask ``groups`` times as large.
FOLD_MAX_QUERIES = 16

_NEG_INF = float("-inf")


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    causal: bool = False,
):
    """Attention with its log-sum-exp: ``(out [B,H,Q,D], lse [B,H,Q])``, masks additive.

    On the CPU this is PyTorch's flash kernel (the one ``scaled_dot_product_attention`` uses,
    bit for bit); elsewhere the same computation written out. ``causal`` (query i sees keys
    up to i, no mask) lets the kernel skip the masked half.
    """
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=mask, scale=scale
        )
        return out, lse.to(torch.float32)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if causal:
        q_len, k_len = scores.shape[-2:]
        scores = scores.masked_fill(
            torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).triu(1), _NEG_INF
        )
    if mask is not None:
        scores = scores + mask
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)
    return out, lse


class _LayerView:
    """What ``RowKV.update`` hands to the attention function instead of key/value tensors."""

    __slots__ = ("cache", "layer")

    def __init__(self, cache: RowKV, layer: int) -> None:
        self.cache = cache
        self.layer = layer


class RowKV(Cache):
    """Shared-prefix plus per-row KV cache for one batch (see the module docstring).

    ``prefixes[i]`` is one prefix's per-layer ``(keys, values)``, each ``[1, kv_heads, P_i, d]``;
    ``row_prefix[b]`` is the prefix index of row ``b`` (``-1``: none). Per row, slots
    ``[start[b], length[b])`` of its buffer hold its own tokens; slots before ``start[b]`` are
    left padding from the first (prompt) pass and are never attended to.
    """

    def __init__(
        self,
        batch_size: int,
        prefixes: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]] = (),
        row_prefix: Sequence[int] | None = None,
        capacity: int = 64,
    ) -> None:
        super().__init__(layers=[])
        self.rows = batch_size
        self.prefixes = [list(p) for p in prefixes]
        self.row_prefix = list(row_prefix) if row_prefix is not None else [-1] * batch_size
        self.capacity = capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.start = torch.zeros(batch_size, dtype=torch.long)
        self.length = torch.zeros(batch_size, dtype=torch.long)
        self._groups: list[tuple[int, torch.Tensor]] | None = None
        self._step: dict | None = None

    # ------------------------------------------------------------------ engine side
    def prepare(self, q_len: int, device: torch.device) -> None:
        """Set up the next forward pass: ``q_len`` new tokens per row, written at ``length[b]``."""
        offsets = self.length.clone()
        width = int(offsets.max()) + q_len
        if width > self.capacity:
            self._grow(max(width, int(self.capacity * 1.5)))
        query_slots = offsets[:, None] + torch.arange(q_len)  # [B, Q]
        uniform = bool((offsets == offsets[0]).all())
        self._step = {
            # A first pass without left padding is plain causal attention: no mask needed.
            "causal": bool(uniform and int(offsets[0]) == 0 and not self.start.any()),
            "q_len": q_len,
            "width": width,
            "offset0": int(offsets[0]),
            "index": None if uniform else query_slots.to(device),
            "query_slots": query_slots,
            "device": device,
            "mask": None,
            "folded_mask": None,
        }

    def _mask(self, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [B, 1, Q, width] of this pass, built on first use.

        A query sees its row's valid slots up to itself, and always itself: padding queries of
        the prompt pass then attend to something (their outputs are never read).
        """
        step = self._step
        if step["mask"] is None or step["mask"].dtype != dtype:
            slots = torch.arange(step["width"])[None, None, :]
            query_slots = step["query_slots"][:, :, None]
            visible = (slots >= self.start[:, None, None]) & (slots <= query_slots)
            visible |= slots == query_slots
            mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, _NEG_INF)[:, None]
            step["mask"] = mask.to(step["device"])
            step["folded_mask"] = None
        return step["mask"]

    def commit(self, new_length: torch.Tensor | None = None) -> None:
        """After a pass: keep ``new_length`` slots per row (default: every token just written)."""
        if new_length is None:
            new_length = self.length + self._step["q_len"]
        self.length = new_length.to(torch.long).clone()
        self._step = None

    def set_start(self, start: torch.Tensor) -> None:
        self.start = start.to(torch.long).clone()

    def positions(self, prefix_lengths: torch.Tensor) -> torch.Tensor:
        """Position id of each row's next slot: its prefix plus its valid own tokens."""
        return prefix_lengths + self.length - self.start

    def select_rows(self, keep: Sequence[int]) -> None:
        """Drop finished rows (one copy of the row buffers, so the engine does it rarely)."""
        idx = torch.as_tensor(list(keep), dtype=torch.long)
        dev_idx = idx.to(self.keys[0].device) if self.keys else idx
        self.keys = [k.index_select(0, dev_idx) for k in self.keys]
        self.values = [v.index_select(0, dev_idx) for v in self.values]
        self.start, self.length = self.start[idx], self.length[idx]
        self.row_prefix = [self.row_prefix[i] for i in keep]
        self.rows = len(keep)
        self._groups = None

    def copy_rows(self, rows: Sequence[int]) -> RowKV:
        """A new cache holding copies of ``rows`` (same prefixes, shared, not copied)."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        dev_idx = idx.to(self.keys[0].device) if self.keys else idx
        other = RowKV(len(idx), self.prefixes, [self.row_prefix[i] for i in rows], capacity=self.capacity)
        other.keys = [k.index_select(0, dev_idx) for k in self.keys]
        other.values = [v.index_select(0, dev_idx) for v in self.values]
        other.start, other.length = self.start[idx].clone(), self.length[idx].clone()
        return other

    def _grow(self, capacity: int) -> None:
        # Zeros, not empty memory: a row's unwritten slots below the pass's width are masked,
        # but a masked NaN left in uninitialised memory would still poison the softmax.
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            nk = k.new_zeros(k.shape[0], k.shape[1], capacity, k.shape[3])
            nv = v.new_zeros(v.shape[0], v.shape[1], capacity, v.shape[3])
            nk[:, :, : self.capacity] = k
            nv[:, :, : self.capacity] = v
            self.keys[i], self.values[i] = nk, nv
        self.capacity = capacity

    def prefix_groups(self, device: torch.device) -> list[tuple[int, torch.Tensor]]:
        """(prefix index, rows that use it) for every prefix used by a row of this batch."""
        if self._groups is None:
            by_prefix: dict[int, list[int]] = {}
            for b, p in enumerate(self.row_prefix):
                if p >= 0:
                    by_prefix.setdefault(p, []).append(b)
            self._groups = [(p, torch.tensor(rows, device=device)) for p, rows in by_prefix.items()]
        return self._groups

    # ------------------------------------------------------------------ transformers side
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        step = self._step
        if step is None:
            raise RuntimeError("RowKV.prepare() must be called before each forward pass")
        if layer_idx == len(self.keys):
            b, h, _, d = key_states.shape
            self.keys.append(key_states.new_zeros(b, h, self.capacity, d))
            self.values.append(value_states.new_zeros(b, h, self.capacity, value_states.shape[-1]))
        kbuf, vbuf = self.keys[layer_idx], self.values[layer_idx]
        q = step["q_len"]
        if step["index"] is None:
            o = step["offset0"]
            kbuf[:, :, o : o + q] = key_states
            vbuf[:, :, o : o + q] = value_states
        else:
            idx = step["index"][:, None, :, None]
            kbuf.scatter_(2, idx.expand(-1, kbuf.shape[1], -1, kbuf.shape[3]), key_states)
            vbuf.scatter_(2, idx.expand(-1, vbuf.shape[1], -1, vbuf.shape[3]), value_states)
        view = _LayerView(self, layer_idx)
        return view, view

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.length.max()) if self.rows else 0

    # ------------------------------------------------------------------ attention
    def attend(self, layer: int, query: torch.Tensor, scale: float) -> torch.Tensor:
        """Attention output ``[B, Q, H, D]`` of ``query`` ``[B, H, Q, D]`` for one layer."""
        step = self._step
        bsz, n_heads, q_len, dim = query.shape
        kbuf, vbuf = self.keys[layer], self.values[layer]
        kv_heads = kbuf.shape[1]
        groups = n_heads // kv_heads
        width = step["width"]
        keys, values = kbuf[:, :, :width], vbuf[:, :, :width]
        # Part B: each row against its own tokens.
        if q_len <= FOLD_MAX_QUERIES or groups == 1:
            mask = self._mask(query.dtype)
            if step["folded_mask"] is None:
                step["folded_mask"] = mask.repeat(1, 1, groups, 1) if groups > 1 else mask
            q_b = query.reshape(bsz, kv_heads, groups * q_len, dim)
            out_b, lse_b = _attend(q_b, keys, values, step["folded_mask"], scale)
            out_b = out_b.reshape(bsz, n_heads, q_len, dim)
            lse_b = lse_b.reshape(bsz, n_heads, q_len)
        else:
            causal = step["causal"]
            out_b, lse_b = _attend(
                query,
                keys.repeat_interleave(groups, dim=1),
                values.repeat_interleave(groups, dim=1),
                None if causal else self._mask(query.dtype),
                scale,
                causal=causal,
            )
        groups_of_rows = self.prefix_groups(query.device)
        if not groups_of_rows:
            return out_b.transpose(1, 2)
        # Part A: each prefix once, its rows' queries stacked: [1, kv_heads, rows*groups*Q, D].
        out_a = torch.zeros_like(out_b)
        lse_a = torch.full_like(lse_b, _NEG_INF)
        for p, rows in groups_of_rows:
            pk, pv = self.prefixes[p][layer]
            r = rows.numel()
            q_a = query.index_select(0, rows).reshape(r, kv_heads, groups * q_len, dim)
            q_a = q_a.transpose(0, 1).reshape(1, kv_heads, r * groups * q_len, dim)
            o, lse = _attend(q_a, pk, pv, None, scale)
            o = o.reshape(kv_heads, r, groups * q_len, dim).transpose(0, 1).reshape(r, n_heads, q_len, dim)
            lse = lse.reshape(kv_heads, r, groups * q_len).transpose(0, 1).reshape(r, n_heads, q_len)
            out_a.index_copy_(0, rows, o)
            lse_a.index_copy_(0, rows, lse)
        # Exact merge of the two softmax parts (lse_b is always finite: a query sees itself).
        top = torch.maximum(lse_a, lse_b)
        w_a = torch.exp(lse_a - top)
        w_b = torch.exp(lse_b - top)
        merged = (out_a.float() * w_a[..., None] + out_b.float() * w_b[..., None]) / (w_a + w_b)[..., None]
        return merged.to(query.dtype).transpose(1, 2)


def rows_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention function: :class:`RowKV` views get the two-part attention,
    anything else is passed to the stock SDPA implementation unchanged."""
    if isinstance(key, _LayerView):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return key.cache.attend(key.layer, query, scale), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, rows_attention)


_register()


def supports_rows_attention(model) -> bool:
    """Whether ``model`` can run on :class:`RowKV`: full causal attention in every layer.

    Sliding-window or hybrid layers (Mistral v0.1, Gemma 2, ...) need masks this cache does
    not model; the engine then falls back to the stock cache and SDPA.
    """
    config = getattr(model, "config", None)
    if config is None:
        return False
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return False
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    return getattr(text, "model_type", "") in SUPPORTED_MODEL_TYPES


#: Architectures whose attention calls the cache's ``update`` then the configured attention
#: function with the cache's return values, with full causal attention (checked in tests on Llama).
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "phi3", "granite"})


def cache_keyword(model) -> str:
    """The keyword under which ``model``'s forward takes a KV cache.

    Current transformers call it ``cache`` and warn on every call that passes the old name
    (``FutureWarning: `past_key_values` is deprecated ... Use `cache` instead``); releases
    before the rename, and models written against them, take ``past_key_values``.
    """
    try:
        parameters = inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


_SWITCH_LOCK = threading.Lock()


@contextlib.contextmanager
def use_rows_attention(model) -> Iterator[None]:
    """Route the model's attention through :func:`rows_attention` for the duration.

    Re-entrant and thread-safe: the engine's worker threads share one model, so the first to
    enter switches the configs and the last to leave restores them.
    """
    with _SWITCH_LOCK:
        state = model.__dict__.setdefault("_rwku_rows_attention", {"depth": 0, "saved": {}})
        if state["depth"] == 0:
            configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
            configs[id(model.config)] = model.config
            state["saved"] = {k: (c, getattr(c, "_attn_implementation", None)) for k, c in configs.items()}
            for c, _ in state["saved"].values():
                c._attn_implementation = ATTENTION_NAME
        state["depth"] += 1
    try:
        yield
    finally:
        with _SWITCH_LOCK:
            state["depth"] -= 1
            if state["depth"] == 0:
                for c, name in state["saved"].values():
                    c._attn_implementation = name
                state["saved"] = {}
