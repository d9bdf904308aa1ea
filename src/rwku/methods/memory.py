"""Will a training step fit in memory? Estimated before the first step, refused when it does not.

A kernel OOM kill prints only "Killed" and loses the run; a 1.8B-parameter model in float32
on a 24 GB machine is killed by a paper-sized LoRA batch (8 × 512 tokens) as training starts.
So the trainer estimates, from the model's shape and the largest batch it built, what one step
adds on top of the loaded model, and stops with a :class:`~rwku.errors.ConfigError` (exit 2)
naming a batch size that fits when it does not:

* **optimizer**: 12 bytes per trained float32 parameter (its gradient and AdamW's two moments);
* **activations** kept for the backward pass, per token and decoder layer:
  ``4 × (10·hidden + 4·intermediate + heads·seq)`` bytes (norm inputs and outputs, q/k/v, the
  attention output, the MLP's gate, up, activation and product, attention softmax statistics);
* **logits**: ``3 × 4 × vocabulary`` bytes per token (the logits, their log-softmax and its
  gradient) — 1.8 MB per token for Qwen2.5's 151,936-token vocabulary;
* 0.75 GiB once (allocator and autograd overhead);
* **weights**: the trained weights' own bytes when they still lie in their file's pages. A
  model loaded from safetensors on CPU is a memory map: the kernel counts its pages as
  available (page cache) until training writes to them, when they become the process's own
  (copy-on-write). Measured on Qwen2.5-Coder-1.5B (``rwku.models.resolve.load_model``, then
  :func:`file_backed_bytes` over its parameters, VmRSS from /proc/self/status and
  :func:`free_memory_bytes`): all 6.6 GiB of parameters file-backed after loading, 0.5 GiB
  resident, and MemAvailable still 21.2 GiB of 23.5.

With gradient checkpointing (``--gradient-checkpointing``) a layer keeps its input (``4 ×
hidden`` bytes per token) and, as measured, its attention scores (``4 × heads × seq``), and one
layer's activations exist at a time while it is recomputed in the backward pass. Measured on
SmolLM2-135M, LoRA, one thread (two runs each): 1.59-1.74 GiB for 4 × 256 tokens (estimated
1.70), 4.72-5.09 GiB for 8 × 512 (estimated 5.62), against 2.57 and 8.89 GiB without.

Calibrated on SmolLM2-135M, LoRA, one thread (``scripts/memory_estimate_check.py``): measured
peak growth 2.6 GiB for 4 × 256 tokens and 8.7 GiB for 8 × 512, estimated 2.9 and 10.6 GiB: on
the safe side by up to a fifth. Every tensor of the batch with ``input_ids`` in its name counts
(DPO's chosen and rejected rows), and the retain batch for methods that have one.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rwku.errors import ConfigError

__all__ = [
    "MemoryEstimate",
    "check_training_memory",
    "estimate_step_memory",
    "file_backed_bytes",
    "free_memory_bytes",
]

GiB = 2**30
OVERHEAD = 3 * GiB // 4
"""What a first backward pass costs beyond its tensors (allocator arenas, autograd), measured."""


def free_memory_bytes(device: str) -> int | None:
    """Free memory where training state would go: the CUDA device's, or the machine's
    MemAvailable on CPU (None where neither is known, e.g. macOS or MPS)."""
    if device.startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    if device != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of files on disk (Linux; empty elsewhere).

    Shared memory (``/dev/shm``, ``/memfd:``, deleted files) is not page cache: MemAvailable
    already leaves it out, so it is not counted again."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    spans = []
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5] if len(fields) == 6 else ""
        if (
            path.startswith("/")
            and not path.startswith(("/dev/", "/memfd:"))
            and not path.endswith("(deleted)")
        ):
            start, end = fields[0].split("-")
            spans.append((int(start, 16), int(end, 16)))
    return sorted(spans)


def file_backed_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the CPU ``tensors`` whose data lie in a mapping of a file (0 where unknown).

    Such weights cost nothing now and their full size once training writes to them (see the
    module doc), so a check against MemAvailable must count them as needed."""
    spans = _file_mappings()
    if not spans:
        return 0
    starts = [a for a, _ in spans]
    total = 0
    for t in tensors:
        if getattr(getattr(t, "device", None), "type", None) != "cpu":
            continue
        ptr = t.data_ptr()
        i = bisect.bisect_right(starts, ptr) - 1
        if i >= 0 and ptr < spans[i][1]:
            total += t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training step adds to the loaded model, by kind, for ``tokens`` batch tokens."""

    optimizer: int
    activations: int
    logits: int
    tokens: int
    rows: int
    weights: int = 0
    """Trained weights still in their file's pages: they become the process's own when written."""

    @property
    def total(self) -> int:
        return self.optimizer + self.activations + self.logits + self.weights

    @property
    def per_row(self) -> float:
        """Activations and logits per batch row (what a smaller batch saves)."""
        return (self.activations + self.logits) / max(1, self.rows)

    def describe(self) -> str:
        weights = (
            f", trained weights copied out of their file {self.weights / GiB:.1f}" if self.weights else ""
        )
        return (
            f"{self.total / GiB:.1f} GiB (gradients and AdamW state {self.optimizer / GiB:.1f}, activations "
            f"{self.activations / GiB:.1f}, logits {self.logits / GiB:.1f} for {self.tokens:,} tokens{weights})"
        )


def _shape(config: Any) -> tuple[int, int, int, int, int]:
    text = getattr(config, "text_config", None) or config
    hidden = int(text.hidden_size)
    return (
        hidden,
        int(getattr(text, "intermediate_size", None) or 4 * hidden),
        int(text.num_hidden_layers),
        int(text.vocab_size),
        int(getattr(text, "num_attention_heads", None) or 1),
    )


def estimate_step_memory(
    config: Any, trained_params: int, rows: int, width: int, tokens: int, checkpointing: bool = False
) -> MemoryEstimate:
    """The estimate for ``tokens`` batch tokens in ``rows`` rows of at most ``width`` tokens."""
    hidden, inter, layers, vocab, heads = _shape(config)
    layer = 4 * (10 * hidden + 4 * inter + heads * width)  # one layer's activations, per token
    # checkpointed: every layer's input and (measured) its attention scores, and one layer recomputed
    per_token = 4 * layers * (hidden + heads * width) + layer if checkpointing else layers * layer
    return MemoryEstimate(
        optimizer=12 * trained_params,
        activations=OVERHEAD + per_token * tokens,
        logits=12 * vocab * tokens,
        tokens=tokens,
        rows=rows,
    )


def _batch_size(batch: Mapping[str, Any]) -> tuple[int, int, int]:
    """(rows, widest row, tokens) over the batch's ``*input_ids`` tensors."""
    rows = width = tokens = 0
    for key, value in batch.items():
        if "input_ids" in key and hasattr(value, "shape") and len(value.shape) == 2:
            rows += int(value.shape[0])
            width = max(width, int(value.shape[1]))
            tokens += int(value.shape[0]) * int(value.shape[1])
    return rows, width, tokens


def check_training_memory(
    config: Any,
    trained_params: int,
    batches: Iterable[Mapping[str, Any]],
    retain_batches: Iterable[Mapping[str, Any] | None],
    *,
    device: str,
    batch_size: int,
    grad_accum: int,
    free: int | None = None,
    checkpointing: bool = False,
    mapped: int = 0,
) -> MemoryEstimate | None:
    """Raise :class:`ConfigError` when the largest step would not fit in free memory.

    ``mapped``: bytes of the trained weights that still lie in their file's pages
    (:func:`file_backed_bytes`). Returns the estimate (None when the free memory or the model's
    shape is unknown, e.g. MPS or a custom model: then nothing is refused).
    """
    free = free_memory_bytes(device) if free is None else free
    forget = max((_batch_size(b) for b in batches), key=lambda t: t[2], default=(0, 0, 0))
    retain = max((_batch_size(b) for b in retain_batches if b), key=lambda t: t[2], default=(0, 0, 0))
    try:
        est = estimate_step_memory(
            config,
            trained_params,
            rows=forget[0] + retain[0],
            width=max(forget[1], retain[1]),
            tokens=forget[2] + retain[2],
            checkpointing=checkpointing,
        )
    except (AttributeError, TypeError, ValueError):
        return None
    est = replace(est, weights=mapped)
    if free is None or est.total <= free:
        return est
    room = free - est.optimizer - est.weights
    fits = int(room // est.per_row) if est.per_row > 0 and room > 0 else 0
    per_update = batch_size * grad_accum
    fits = max((d for d in range(1, min(fits, batch_size - 1) + 1) if per_update % d == 0), default=0)
    if fits >= 1:
        advice = (
            f"use --batch-size {fits} --grad-accum {per_update // fits} (still {per_update} rows per "
            "update), a shorter --max-length"
        )
    else:
        advice = "use a shorter --max-length"
    if not checkpointing and est.activations > est.logits:
        advice += ", --gradient-checkpointing"
    fixed = est.optimizer + est.weights
    advice += ", or mode lora or partial with fewer layers" if fixed > est.total / 2 else ""
    raise ConfigError(
        f"not enough memory to train: one step needs about {est.describe()} on top of the loaded model, "
        f"but only {free / GiB:.1f} GiB is free on {device}; {advice} (estimate: rwku/methods/memory.py)"
    )
