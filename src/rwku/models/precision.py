"""Opt-in faster precision for CPU evaluation: dynamic int8 linear layers.

The reference evaluates in float32 and every number ``rwku`` reports by default is float32, so
that greedy outputs equal the reference's. On a CPU the linear layers are most of the time,
and ``torch.ao``'s dynamically quantized ``Linear`` (int8 weights quantized once per tensor,
activations quantized per call, fbgemm's int8 GEMM) runs them about 3x faster than
the engine's prepacked float32 oneDNN layers on the project's 2-core machine (SmolLM2-135M
MLP shapes, one thread, a one-off timing loop not kept as a script: 28 rows 0.92 -> 0.29 ms,
512 rows 16.5 -> 5.2 ms). The outputs are no
longer the reference's: ``scripts/precision_agreement.py`` measures how many greedy outputs per
suite stay equal and how far each score moves (docs/speed.md). Measured on the default model
and Stephen King: 1.75x on the full evaluation, but only 91 of 509 greedy outputs equal to
float32's and fluency collapsing, so not usable for RWKU numbers on a 135M model. Never the
default; evaluation only (a quantized model cannot be trained), CPU only.
"""

from __future__ import annotations

import warnings

from torch import nn

from rwku.errors import ModelError

#: ``--dtype`` values that load the weights in float32 and then quantize the linear layers.
INT8_NAMES = ("int8", "qint8", "int8-dynamic")
INT8 = "int8-dynamic"


def is_int8(dtype: object) -> bool:
    return isinstance(dtype, str) and dtype.lower() in INT8_NAMES


def check_int8_device(device: object) -> None:
    """Fail before the weights load: the int8 kernels are CPU kernels."""
    if str(device) != "cpu":
        raise ModelError(
            f"--dtype int8 is for CPU evaluation only (dynamic int8 linear layers); got device {device}"
        )


def quantize_linears_int8(model: nn.Module, device: object) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (the output projection included) by a
    dynamically quantized int8 one, in place; returns the model.

    The embedding stays float32 (a lookup, not a product), so a tied output projection gets its
    own int8 copy and the embedding keeps its values.
    """
    import torch

    check_int8_device(device)
    engines = torch.backends.quantized.supported_engines
    if "fbgemm" in engines or "x86" in engines:
        torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"
    else:  # pragma: no cover - a torch build without int8 CPU kernels
        raise ModelError(f"this torch build has no int8 CPU kernels (quantized engines: {engines})")
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model
