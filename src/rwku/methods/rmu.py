"""RMU, representation misdirection (Li et al. 2024, WMDP, arXiv 2403.03218).

Push the layer-ℓ activations of forget text towards a fixed random direction c·u while keeping
those of retain text where the original model had them:
L = mean‖h_ℓ(x_f) − c·u‖² + α·mean‖h_ℓ(x_r) − h_ℓ^frozen(x_r)‖².
The frozen retain activations are computed once by ``precompute``. Defaults are WMDP's for
Zephyr-7B (layer 7 of 32 → ``layer_fraction`` 7/32, c = 6.5, α = 1200); activation scales
differ between models, so c and α need tuning. WMDP trains only layers ℓ−2..ℓ: see
:meth:`RMU.trainable_layers` for the trainer's partial-layer mode. Not in the RWKU paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from rwku.methods.base import Batch, UnlearningMethod, decoder_layers, layer_output, need, register
from rwku.methods.losses import rmu_loss


@register("rmu")
class RMU(UnlearningMethod):
    description: ClassVar[str] = (
        "RMU: steer forget activations at one layer to a random vector, keep retain ones."
    )
    corpus: ClassVar[str | None] = "passages"
    needs_reference: ClassVar[bool] = True
    needs_retain: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "layer": None,  # an explicit 0-based layer index overrides layer_fraction
        "layer_fraction": 7 / 32,
        "steering_coeff": 6.5,
        "alpha": 1200.0,
        "seed": 0,
    }

    def layer_index(self, num_layers: int) -> int:
        if self.option("layer") is not None:
            return int(self.option("layer")) % num_layers
        return min(num_layers - 1, round(float(self.option("layer_fraction")) * num_layers))

    def trainable_layers(self, num_layers: int) -> tuple[int, int]:
        """WMDP's trainable block range [ℓ−2, ℓ+1) for a partial-layer trainer."""
        layer = self.layer_index(num_layers)
        return max(0, layer - 2), layer + 1

    def control_vec(self, hidden: int) -> torch.Tensor:
        """u: uniform [0, 1) noise, normalised to unit length, fixed by ``seed`` (as in WMDP)."""
        gen = torch.Generator().manual_seed(int(self.option("seed")))
        u = torch.rand(hidden, generator=gen)
        return u / u.norm()

    @torch.no_grad()
    def precompute(self, model, batch: Batch, retain_batch: Batch | None = None) -> dict[str, Any]:
        if retain_batch is None:
            raise ValueError("rmu: precompute needs the retain batch paired with this forget batch")
        layer = self.layer_index(len(decoder_layers(model)))
        return {"frozen_retain_acts": layer_output(model, retain_batch, layer).detach()}

    def loss(self, model, batch: Batch, ctx: Mapping[str, Any]) -> torch.Tensor:
        layer = self.layer_index(len(decoder_layers(model)))
        retain_batch = need(ctx, "retain_batch", self.name)
        frozen = need(ctx, "frozen_retain_acts", self.name)
        forget_acts = layer_output(model, batch, layer)
        retain_acts = layer_output(model, retain_batch, layer)
        return rmu_loss(
            forget_acts,
            retain_acts,
            frozen,
            self.control_vec(forget_acts.shape[-1]),
            float(self.option("steering_coeff")),
            float(self.option("alpha")),
            forget_mask=batch["attention_mask"],
            retain_mask=retain_batch["attention_mask"],
        )
