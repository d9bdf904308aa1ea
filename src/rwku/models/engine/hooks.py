"""Per-row hooks: what an inference-time guard changes for some rows of a call, and not others.

The guards (:mod:`rwku.methods.eco`, :mod:`rwku.methods.guard`) decide per prompt: a prompt
the classifier flags is answered by a changed model, every other prompt by the original one.
Flagged and unflagged rows still go through one call of the engine (same planning, batches,
shared prefixes, speculation and work sharing). A :class:`RowHook` says what changes for one
row:

* ``positions`` / ``delta``: vectors added to the input embeddings of those prompt token
  positions (ECO's corruption). The engine never lets a shared prefix cover an edited position
  (the row's ``cap`` is lowered to its first edited position), so a shared prefix is always
  computed from unedited embeddings and is the same for flagged and unflagged rows; the edits
  happen in the row's own prompt pass.
* ``processor``: ``processor(history, logits) -> logits`` applied to the row's next-token
  logits before the greedy choice (GUARD's penalties); ``history`` is the row's generated
  tokens so far. With speculation, the check of draft token ``j`` uses the history extended by
  the drafts before it, which is exactly the history greedy decoding would have had.

Hooks change generation and prompt passes only: a gold answer scored after a prompt is scored
on the (possibly edited) prompt, without the processor (a processor changes the choice of
tokens, not the model's probabilities). :class:`RowProcessor` is the same processor as a
transformers ``LogitsProcessor``, so the plain ``generate`` path can be compared with the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

#: ``processor(history, logits [V]) -> logits [V]``
Processor = Callable[[Sequence[int], torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RowHook:
    """What changes for one row; an empty hook changes nothing."""

    positions: tuple[int, ...] = ()
    delta: torch.Tensor | None = None  # [len(positions), hidden]
    processor: Processor | None = None

    @property
    def first_edit(self) -> int | None:
        return min(self.positions) if self.positions else None


def edit_embeddings(
    model, input_ids: torch.Tensor, edits: Sequence[tuple[int, RowHook, int]]
) -> torch.Tensor:
    """Input embeddings of ``input_ids`` [B, S] with the hooks' deltas added.

    ``edits``: ``(b, hook, offset)``: row ``b``'s token at prompt position ``p`` sits in column
    ``p - offset``."""
    embeds = model.get_input_embeddings()(input_ids).clone()
    for b, hook, offset in edits:
        delta = hook.delta.to(embeds.device, embeds.dtype)
        for i, p in enumerate(hook.positions):
            col = p - offset
            if 0 <= col < embeds.shape[1]:
                embeds[b, col] += delta[i]
    return embeds


def guided_argmax(processor: Processor, history: Sequence[int], drafts: Sequence[int], logits: torch.Tensor):
    """Greedy tokens of positions ``0..len(logits)-1`` after ``processor``: position ``j`` sees
    the history extended by ``drafts[:j]`` (what it would have seen without speculation)."""
    history = list(history)
    out = []
    for j in range(logits.shape[0]):
        out.append(int(processor(history + list(drafts[:j]), logits[j]).argmax()))
        if j >= len(drafts) or drafts[j] != out[-1]:
            break  # later positions are never read: the draft was rejected here
    return out + [0] * (logits.shape[0] - len(out))


class RowProcessor:
    """Per-row processors as a transformers ``LogitsProcessor`` (for ``model.generate``).

    ``processors[b]`` (None: unchanged) sees row ``b``'s tokens after ``prompt_length``."""

    def __init__(self, processors: Sequence[Processor | None], prompt_length: int) -> None:
        self.processors = list(processors)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        for b, proc in enumerate(self.processors):
            if proc is not None:
                scores[b] = proc(input_ids[b, self.prompt_length :].tolist(), scores[b])
        return scores
