"""SimNPO (Fan et al. 2024, "Simplicity Prevails", arXiv 2410.07163): NPO without a reference.

L = −(2/β)·mean log σ(β·NLL_θ/|y| − γ): NPO's reference log-likelihood is replaced by length
normalisation, so no precompute is needed. The defaults β = 2.5, γ = 0 are a starting point
within the range the paper tunes over (it picks β and γ per benchmark); tune them for the model.
The paper's optional retain regulariser is left out, like every retain term in RWKU.
Not in the RWKU paper; no paper presets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from rwku.methods.base import Batch, UnlearningMethod, forward_logits, register
from rwku.methods.losses import label_counts, sequence_nll, simnpo_loss


@register("simnpo")
class SimpleNPO(UnlearningMethod):
    description: ClassVar[str] = "SimNPO: reference-free, length-normalised NPO on the forget passages."
    corpus: ClassVar[str | None] = "passages"
    defaults: ClassVar[dict[str, Any]] = {"beta": 2.5, "gamma": 0.0}

    def loss(self, model, batch: Batch, ctx: Mapping[str, Any]) -> torch.Tensor:
        labels = batch["labels"]
        nll = sequence_nll(forward_logits(model, batch), labels)
        lengths = label_counts(labels).to(nll.device)
        return simnpo_loss(nll, lengths, float(self.option("beta")), float(self.option("gamma")))
