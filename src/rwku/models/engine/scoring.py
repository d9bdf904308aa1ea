"""Scoring: log-probabilities of given tokens, per batch of rows.

Owns what the scoring requests compute from a batch's logits: the log-probs of each
request's continuation (:meth:`Scoring._score_batch`), of candidate next tokens
(:meth:`Scoring._next_token_batch`), the membership-inference statistics of whole texts
(:meth:`Scoring._token_stats_batch`, with :func:`_vocab_stats`), and the log-probs of a gold
answer read from a generation batch's prompt cache right after its prompt pass
(:meth:`Scoring._score_after_prompt`), so that prompt is run once for both.
"""

from __future__ import annotations

import numpy as np
import torch

from rwku.models.backend import ContinuationScore, TokenStats
from rwku.models.engine.planning import _Row
from rwku.models.kvcache import RowKV

#: Membership-inference statistics run over this many positions at a time: each pass over the
#: [positions, vocabulary] log-probs then stays in the CPU cache (16 × 49k floats = 3 MB);
#: every position is computed alone, so the values are bit for bit those of one big pass.
STATS_CHUNK = 16
#: Positions per full-vocabulary softmax of the MIA statistics (~400 MB at a 50k vocabulary).
MIA_TOKENS = 2048


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


class Scoring:
    """The scoring part of :class:`rwku.models.hf.HFLanguageModel` (a mixin)."""

    def _score_batch(
        self, batch: list[_Row], kvs: dict, *, starts: list[int], results: list[ContinuationScore]
    ) -> None:
        """``results[i]``: log-probs of row ``i``'s tokens from ``starts[i]`` on."""
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

    def _next_token_batch(
        self, batch: list[_Row], kvs: dict, *, candidates: torch.Tensor, out: np.ndarray
    ) -> None:
        """``out[i]``: log-probs of the ``candidates`` token ids right after row ``i``."""
        logits = self._logits(batch, kvs, keep=1)
        logprobs = torch.log_softmax(logits[:, -1], dim=-1)[:, candidates.to(logits.device)]
        for b, row in enumerate(batch):
            out[row.index] = logprobs[b].cpu().numpy()

    def _token_stats_batch(self, batch: list[_Row], kvs: dict, *, results: list[TokenStats]) -> None:
        """``results[i]``: per position of row ``i`` (no prefix), the log-prob of the next token
        and the mean and variance of log p over the vocabulary; ``MIA_TOKENS`` positions per pass."""
        keep = max(len(r.ids) for r in batch)
        per = max(1, MIA_TOKENS // keep)
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
