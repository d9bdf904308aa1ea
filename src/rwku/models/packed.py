"""Linear layers on prepacked oneDNN weights while the engine runs (CPU, inference only).

``nn.Linear`` calls MKL's sgemm, which re-packs the weight matrix on every call; on AMD CPUs it
also takes an AVX2 code path. oneDNN with the weight reordered once into its blocked layout
(what ``torch.compile`` does for frozen CPU models) was measured on the project's 2-core EPYC
machine, one thread, SmolLM2-135M shapes:

=========  ===================  ===================
rows (M)   nn.Linear (GFLOP/s)  prepacked (GFLOP/s)
=========  ===================  ===================
8          39                   76
48         65                   92
1024       90                   109
=========  ===================  ===================

and the vocabulary projection gains 25-120% as well. Decoding (a few dozen rows per pass) is
where it matters most. Results differ from MKL's only by float32 summation order (~1e-6
relative).

:func:`packed_linears` swaps the ``forward`` of every float32 CPU ``nn.Linear`` of a model for
the packed one and restores it on exit. Packed weights are cached per layer and rebuilt when
the weight changes (its in-place version counter moves, e.g. after an optimiser step), so an
unlearned model is repacked once (~0.1 s for 135M parameters) before it is evaluated. Writes
that bypass the counter must move it themselves: the fused AdamW kernel does not, so the
trainer bumps the counters after every step (``rwku.methods.trainer._mark_updated``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import nn

_LOCK = threading.Lock()
_PACK_ROWS_HINT = 64


def _available() -> bool:
    return hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _packed_forward(layer: nn.Linear):
    weight = layer.weight
    key = (weight.data_ptr(), weight._version)
    cached = layer.__dict__.get("_rwku_packed")
    if cached is None or cached[0] != key:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_ROWS_HINT)
        layer.__dict__["_rwku_packed"] = cached = (key, packed)
    packed = cached[1]
    bias = layer.bias.detach() if layer.bias is not None else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous():
            x = x.contiguous()
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward


def _eligible(module: nn.Module) -> bool:
    return (
        type(module) is nn.Linear
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
    )


@contextlib.contextmanager
def packed_linears(model: nn.Module) -> Iterator[None]:
    """Run ``model``'s float32 CPU linear layers on prepacked oneDNN weights for the duration.

    Re-entrant and thread-safe (the engine's worker threads share the model): the first caller
    patches, the last one restores. Does nothing where oneDNN is unavailable or under autograd
    needs (callers use it only in inference mode).
    """
    if not _available():
        yield
        return
    with _LOCK:
        state = model.__dict__.setdefault("_rwku_packed_state", {"depth": 0, "layers": []})
        if state["depth"] == 0:
            layers = [m for m in model.modules() if _eligible(m)]
            try:
                for layer in layers:
                    layer.forward = _packed_forward(layer)
            except RuntimeError:  # pragma: no cover - a oneDNN build without this reorder
                for layer in layers:
                    layer.__dict__.pop("forward", None)
                layers = []
            state["layers"] = layers
        state["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            state["depth"] -= 1
            if state["depth"] == 0:
                for layer in state["layers"]:
                    layer.__dict__.pop("forward", None)
                state["layers"] = []


def release_packed(model: nn.Module) -> None:
    """Drop the packed weights cached on ``model``'s layers (they cannot be deep-copied, and
    hold a second copy of every weight); the next :func:`packed_linears` packs again."""
    with _LOCK:
        for module in model.modules():
            module.__dict__.pop("_rwku_packed", None)
