"""GradDiff, gradient difference (Liu et al. 2022; the TOFU "grad_diff" baseline).

GA on the forget passages plus the ordinary LM loss on retain text:
L = −NLL_forget + w·NLL_retain (both mean token NLL). Not in the RWKU paper, which has no
retain term in any method; here as a common extension, so it has no paper presets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from rwku.methods.base import Batch, UnlearningMethod, forward_logits, need, register
from rwku.methods.losses import ga_loss, token_nll_mean


@register("graddiff")
class GradientDifference(UnlearningMethod):
    description: ClassVar[str] = "Gradient difference: GA on the forget passages plus LM loss on retain text."
    corpus: ClassVar[str | None] = "passages"
    needs_retain: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"retain_weight": 1.0}

    def loss(self, model, batch: Batch, ctx: Mapping[str, Any]) -> torch.Tensor:
        forget = ga_loss(token_nll_mean(forward_logits(model, batch), batch["labels"]))
        retain_batch = need(ctx, "retain_batch", self.name)
        retain = token_nll_mean(forward_logits(model, retain_batch), retain_batch["labels"])
        return forget + float(self.option("retain_weight")) * retain
