"""NPO, negative preference optimization (Zhang et al. 2024, arXiv 2404.05868).

Treats the forget passages as dispreferred responses with no preferred one:
L = −(2/β)·mean log σ(β·(NLL_θ − NLL_ref)), NLL summed per sequence, β = 0.2 (RWKU scripts).
The reference NLL is the original model's on the same rows, computed once by ``precompute``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from rwku.methods.base import Batch, Hyperparameters, UnlearningMethod, forward_logits, need, register
from rwku.methods.losses import npo_loss, sequence_nll


@register("npo")
class NegativePreferenceOptimization(UnlearningMethod):
    description: ClassVar[str] = (
        "NPO: push the forget passages' likelihood below the original model's, bounded."
    )
    corpus: ClassVar[str | None] = "passages"
    needs_reference: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"beta": 0.2}
    paper_presets: ClassVar[dict[str, Hyperparameters]] = {
        "full": Hyperparameters(lr=2e-6, batch_size=16, epochs=3, extra={"beta": 0.2}),
        "lora": Hyperparameters(lr=5e-5, batch_size=8, epochs=3, grad_accum=2, extra={"beta": 0.2}),
        "batch_full": Hyperparameters(lr=1e-6, batch_size=8, epochs=2, grad_accum=2, extra={"beta": 0.2}),
    }

    @torch.no_grad()
    def precompute(self, model, batch: Batch, retain_batch: Batch | None = None) -> dict[str, Any]:
        return {"ref_nll": sequence_nll(forward_logits(model, batch), batch["labels"]).detach()}

    def loss(self, model, batch: Batch, ctx: Mapping[str, Any]) -> torch.Tensor:
        policy = sequence_nll(forward_logits(model, batch), batch["labels"])
        ref = need(ctx, "ref_nll", self.name).to(policy.device)
        return npo_loss(policy, ref, float(self.option("beta")))
