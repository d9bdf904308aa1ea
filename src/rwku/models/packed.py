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

Packed weights are a second copy of every weight, so they are kept for **one idle model at a
time**: entering :func:`packed_linears` for a model drops those of every other model packed
before it that is not inside its own context. A process that evaluates an original and an
unlearned model (the attacks, a sweep) then holds one packed copy, not one per model. On the
1.5B model a copy is ~6 GB in float32 (1.54B weights × 4 bytes): two models with a packed copy
each would need ~25 GB, more than the 24 GB machine has; a repack costs
seconds.

Mixture-of-experts blocks keep their experts as 3-D parameters (``gate_up_proj`` [E, 2I, H],
``down_proj`` [E, H, I]) that transformers' eager loop slices per expert and feeds to
``F.linear`` — the same re-packing on every call, for two matrices per expert and layer. Where
a block's eager forward is transformers' standard one (Mixtral, Qwen2/3-MoE, OLMoE,
DeepSeek-V3, ... share it token for token; checked on the bytecode, so a family that changes
it is left alone), :func:`packed_linears` runs the same loop on prepacked expert matrices.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import weakref
from collections.abc import Iterator

import torch
from torch import nn

_LOCK = threading.Lock()
_PACK_ROWS_HINT = 64
#: the models whose packed weights are cached (one idle one at most; module doc)
_PACKED: weakref.WeakSet = weakref.WeakSet()


def _available() -> bool:
    return hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _packed_forward(layer: nn.Linear):
    weight = layer.weight
    key = (weight.data_ptr(), weight._version)
    cached = layer.__dict__.get("_rwku_packed")
    if cached is None or cached[0] != key:
        packed = _pack(weight)
        layer.__dict__["_rwku_packed"] = cached = (key, packed)
    packed = cached[1]
    bias = layer.bias.detach() if layer.bias is not None else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous():
            x = x.contiguous()
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), _PACK_ROWS_HINT)


def _standard_experts_code() -> object | None:
    """The bytecode of transformers' standard eager experts loop (Mixtral's), or None."""
    try:
        from transformers.models.mixtral.modeling_mixtral import MixtralExperts
    except ImportError:  # pragma: no cover - transformers without Mixtral
        return None
    return inspect.unwrap(MixtralExperts.forward).__code__


def _same_code(a: object, b: object) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in ("co_code", "co_consts", "co_names", "co_varnames"))


def _eligible_experts(module: nn.Module, standard: object | None) -> bool:
    """An experts block whose eager forward is the standard loop over 3-D float32 CPU weights."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if standard is None or not isinstance(gate_up, nn.Parameter) or not isinstance(down, nn.Parameter):
        return False
    config = getattr(module, "config", None)
    flags_ok = (
        getattr(module, "has_gate", False)
        and getattr(module, "is_concatenated", False)
        and not getattr(module, "has_bias", True)
        and not getattr(module, "is_transposed", True)
        and not getattr(module, "has_post_expert_norm", True)
        and getattr(config, "_experts_implementation", None) == "eager"
    )
    if not flags_ok or gate_up.dim() != 3 or down.dim() != 3:
        return False
    if any(w.device.type != "cpu" or w.dtype != torch.float32 for w in (gate_up, down)):
        return False
    return _same_code(inspect.unwrap(type(module).forward).__code__, standard)


def _packed_experts_forward(module: nn.Module):
    """transformers' eager experts loop, step for step, on prepacked per-expert matrices."""
    gate_up, down = module.gate_up_proj, module.down_proj
    key = (gate_up.data_ptr(), gate_up._version, down.data_ptr(), down._version)
    cached = module.__dict__.get("_rwku_packed")
    if cached is None or cached[0] != key:
        packs = ([_pack(w) for w in gate_up], [_pack(w) for w in down])
        module.__dict__["_rwku_packed"] = cached = (key, packs)
    packed_gate_up, packed_down = cached[1]
    num_experts, act_fn = len(packed_gate_up), module.act_fn
    linear = torch.ops.mkldnn._linear_pointwise

    def forward(
        hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        mask = torch.nn.functional.one_hot(top_k_index, num_classes=num_experts + 1).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist()
        for expert in hit:
            if expert == num_experts:
                continue
            top_k_pos, token_idx = torch.where(mask[expert])
            gate, up = linear(
                hidden_states[token_idx].contiguous(), packed_gate_up[expert], None, "none", [], ""
            ).chunk(2, dim=-1)
            current = linear((act_fn(gate) * up).contiguous(), packed_down[expert], None, "none", [], "")
            current = current * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, current.to(final.dtype))
        return final

    return forward


def _eligible(module: nn.Module) -> bool:
    return (
        type(module) is nn.Linear
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
    )


@contextlib.contextmanager
def packed_linears(model: nn.Module) -> Iterator[None]:
    """Run ``model``'s float32 CPU linear layers (and standard experts blocks) on prepacked
    oneDNN weights for the duration.

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
            _keep_only(model)
            standard = _standard_experts_code()
            linears = [m for m in model.modules() if _eligible(m)]
            experts = [m for m in model.modules() if _eligible_experts(m, standard)]
            layers = linears + experts
            try:
                for layer in linears:
                    layer.forward = _packed_forward(layer)
                for layer in experts:
                    layer.forward = _packed_experts_forward(layer)
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


def _keep_only(model: nn.Module) -> None:
    """Drop the packed weights of every other model packed before ``model`` that is not in use
    now (inside its own :func:`packed_linears`). Called with the lock held."""
    for other in list(_PACKED):
        if other is not model and other.__dict__.get("_rwku_packed_state", {}).get("depth", 0) == 0:
            _drop(other)
            _PACKED.discard(other)
    _PACKED.add(model)


def _drop(model: nn.Module) -> None:
    for module in model.modules():
        module.__dict__.pop("_rwku_packed", None)


def release_packed(model: nn.Module) -> None:
    """Drop the packed weights cached on ``model``'s layers (they cannot be deep-copied, and
    hold a second copy of every weight); the next :func:`packed_linears` packs again."""
    with _LOCK:
        _drop(model)
