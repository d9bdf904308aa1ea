"""The training step under ``accelerate launch``: DeepSpeed ZeRO-3 or FSDP over several GPUs.

Full fine-tuning of an 8B model does not fit one GPU: weights, gradients and AdamW's two
moments take about 16 bytes per parameter (130 GB) before activations. ZeRO-3 and FSDP shard
all four across the GPUs. :func:`rwku.methods.trainer.train` takes an optional
:class:`accelerate.Accelerator` and then lets it prepare the model and optimiser, run the
backward pass, clip and gather the weights for saving; everything else (batches, the
precomputed reference outputs, the step plan, the guard rails) is the same code as on one
device, so the loss trajectory is the same (the CPU test checks it step by step).

What is sharded is memory, not data: every process runs the same micro-batches in the same
order. The unlearning corpora are small (hundreds of passages), so the time a run takes is
dominated by the model's size, not the number of batches; identical data on every rank keeps
the trainer's fixed batch composition (what the precomputed reference outputs are aligned
with) and gives the single-device result, where splitting batches across ranks would change
it with the number of GPUs. The gradients are averaged over identical copies, which is exact.

Gradient accumulation stays the trainer's own (the paper's last-group-of-an-epoch semantics):
``accelerator.sync_gradients`` is False for every micro-batch of a step but the last, which
tells DeepSpeed where its accumulation boundary is (ship ``gradient_accumulation_steps: 1`` in
its config, as ``configs/accelerate/deepspeed_zero3.yaml`` does) and keeps accelerate's
optimiser wrapper from stepping early. Launch::

    accelerate launch --config_file configs/accelerate/fsdp.yaml -m rwku.cli unlearn \\
        --model meta-llama/Meta-Llama-3-8B-Instruct --target "Stephen King" --method npo --mode full

docs/scale.md has the details and what is not covered (evaluation runs on one process).
"""

from __future__ import annotations

import os
from typing import Any

#: Environment variables ``accelerate launch`` sets in every process it starts.
LAUNCH_MARKERS = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")


def launched_with_accelerate() -> bool:
    """True inside ``accelerate launch`` (or torchrun with several processes), or when
    ``RWKU_ACCELERATE=1`` asks for the Accelerator path explicitly."""
    if os.environ.get("RWKU_ACCELERATE", "").strip() in ("1", "true", "yes"):
        return True
    if any(k in os.environ for k in LAUNCH_MARKERS):
        return True
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def accelerator_from_env() -> Any | None:
    """An :class:`accelerate.Accelerator` configured by the launcher, or None when not launched."""
    if not launched_with_accelerate():
        return None
    from accelerate import Accelerator

    return Accelerator()


def is_main_process(accelerator: Any | None) -> bool:
    return accelerator is None or bool(accelerator.is_main_process)


def prepare(accelerator: Any, model: Any, optimizer: Any) -> tuple[Any, Any]:
    """Wrap model and optimiser together (DeepSpeed and FSDP need both in one call).

    The LR scheduler is *not* prepared: accelerate's wrapper would step it once per process,
    while here every process runs the same steps and the schedule must advance once per step.
    """
    return accelerator.prepare(model, optimizer)


def backward(accelerator: Any, loss: Any, last_micro_batch: bool) -> None:
    """``accelerator.backward`` with the trainer's accumulation boundary (see the module doc)."""
    accelerator.sync_gradients = last_micro_batch
    accelerator.backward(loss)


def clip(accelerator: Any, model: Any, max_norm: float) -> float | None:
    """Clip the gradients of the prepared model and return their norm.

    FSDP clips through the wrapped module (its flat parameters); DeepSpeed clips inside its
    own step (``gradient_clipping`` in its config) and reports the norm it saw, or nothing,
    in which case this returns None and the trainer's divergence check relies on the loss.
    """
    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    return None if norm is None else float(norm)


def unwrap(accelerator: Any, model: Any) -> Any:
    return accelerator.unwrap_model(model)


def gather_for_save(accelerator: Any, model: Any) -> tuple[Any, dict[str, Any] | None]:
    """The unwrapped model and, for sharded runs, its full state dict (a collective: every
    process must call it; only the main process then writes)."""
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(model) if accelerator.num_processes > 1 else None
    return accelerator.unwrap_model(model), state
