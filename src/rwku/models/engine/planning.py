"""Planning: which rows run together, and how a batch's prompts are cut into passes.

Owns the engine's cost model (estimated milliseconds of a forward pass and of decoding
steps, measured on a 2-core CPU; only ratios matter), the rows of a call (:class:`_Row`: the
tokens of one request and how many of them come from a shared prefix), the choice of those
shared prefixes (:meth:`Planning._assign_prefixes`), and the two dynamic programs over
length-sorted rows that the cost model drives: batches of a call (:meth:`Planning._plan`)
and the prompt passes of one generation batch (:meth:`Planning._prefill_chunks`, merged by
:mod:`rwku.models.engine.prefill`). Nothing here runs the model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

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


def _cost(
    rows: int, prefix: int, suffix: int, steps: int = 0, prefixes: int = 1, tokens: int | None = None
) -> float:
    """Estimated milliseconds of a batch: one padded forward over the suffixes, then ``steps``
    decode steps. Every row is padded to the batch's longest suffix; each distinct prefix is
    read once per step. A generation batch (``steps`` > 0) runs its prompts in length-sorted
    chunks (:meth:`rwku.models.engine.prefill.Prefill._prefill_merged`): with ``tokens`` (its rows' suffix tokens)
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
    hook: Any = None  # a RowHook (rwku.models.engine.hooks) of this row, if any

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


def _segments(ordered: list[_Row], cut_at: list[int]) -> list[list[_Row]]:
    """The contiguous pieces of ``ordered`` that a cut dynamic program chose: the last piece
    of the first ``j`` rows starts at ``cut_at[j]``."""
    pieces: list[list[_Row]] = []
    j = len(ordered)
    while j > 0:
        pieces.append(ordered[cut_at[j] : j])
        j = cut_at[j]
    return pieces[::-1]


class Planning:
    """The planning part of :class:`rwku.models.hf.HFLanguageModel` (a mixin): reads the
    engine's limits (``batch_size``, ``max_batch_tokens``, ``max_kv_tokens``) and whether it
    runs on the shared-prefix cache (``shared_cache``)."""

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
