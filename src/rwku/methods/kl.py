"""KL: GA on the forget passages plus KL to the original model on retain text (TOFU's "KL").

L = −NLL_forget + w·KL(π_ref ‖ π_θ) averaged over retain tokens. The reference's next-token
distributions on each retain batch are stored once by ``precompute`` as top-k log-probs plus
the remaining mass (k = 32 by default; see :func:`rwku.methods.losses.kl_retain_loss` for the
approximation, exact when k ≥ vocabulary), so no reference model is held during training.
Not in the RWKU paper; no paper presets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from rwku.methods.base import Batch, UnlearningMethod, forward_logits, need, register
from rwku.methods.losses import ga_loss, kl_retain_loss, reference_topk, token_nll_mean


@register("kl")
class KLMinimization(UnlearningMethod):
    description: ClassVar[str] = "GA on the forget passages plus KL to the original model on retain text."
    corpus: ClassVar[str | None] = "passages"
    needs_reference: ClassVar[bool] = True
    needs_retain: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"retain_weight": 1.0, "top_k": 32}

    @torch.no_grad()
    def precompute(self, model, batch: Batch, retain_batch: Batch | None = None) -> dict[str, Any]:
        if retain_batch is None:
            raise ValueError("kl: precompute needs the retain batch paired with this forget batch")
        ref = reference_topk(forward_logits(model, retain_batch), int(self.option("top_k")))
        return {"ref_retain": {k: v.detach() for k, v in ref.items()}}

    def loss(self, model, batch: Batch, ctx: Mapping[str, Any]) -> torch.Tensor:
        forget = ga_loss(token_nll_mean(forward_logits(model, batch), batch["labels"]))
        retain_batch = need(ctx, "retain_batch", self.name)
        ref = need(ctx, "ref_retain", self.name)
        kl = kl_retain_loss(forward_logits(model, retain_batch), retain_batch["labels"], **ref)
        return forget + float(self.option("retain_weight")) * kl
