"""Decoding: greedy generation of a prefilled batch, with speculation from the prompt.

Owns the decode loop (:meth:`Decoding._decode`): every row stops on its own (a stop token,
its token budget, or its request's ``stop_when`` rule) and leaves the batch; when another
worker waits for work, half of the live rows move to it with their cache rows (see
:mod:`rwku.models.engine.workers`). Each step may check draft tokens from
:class:`rwku.models.drafting.PromptLookup` in the same pass and keeps exactly the greedy
ones; how far to look ahead is chosen per step (:meth:`Decoding._draft_width`) from the
engine's own timing of its passes (:class:`_StepTimer`). Models without the row cache
decode with transformers' ``generate`` instead (:meth:`Decoding._generate_plain`).
"""

from __future__ import annotations

import threading
import time

import torch

from rwku.models.drafting import PromptLookup
from rwku.models.engine.hooks import guided_argmax
from rwku.models.engine.planning import _Row
from rwku.models.engine.prefill import _left_padded, _no_hooks
from rwku.models.engine.workers import MIN_SHARED_STEPS
from rwku.models.kvcache import RowKV

#: Speculative decoding: most draft tokens checked per row and step.
MAX_DRAFT = 10
#: A pass over this few tokens costs about what a pass over one does (its matrix products
#: are bound by reading the weights; measured flat from 1 to 8 rows on the 2-core CPU), so
#: small batches draft for free up to it.
FREE_TOKENS = 8


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


class Decoding:
    """The decoding part of :class:`rwku.models.hf.HFLanguageModel` (a mixin); its step
    timer is ``self._timer``."""

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

        processors = [getattr(row.hook, "processor", None) for row in batch]
        first = last_logits.argmax(-1).tolist()
        for b, proc in enumerate(processors):
            if proc is not None:
                first[b] = int(proc([], last_logits[b]).argmax())
        for b, tok in enumerate(first):
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
                    if processors[b] is not None:
                        predicted[k] = guided_argmax(processors[b], generated[b], draft, logits[k])
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
        _no_hooks(batch)
        input_ids, mask = _left_padded(batch, self.pad_id)
        s_max = input_ids.shape[1]
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
