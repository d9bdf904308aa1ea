"""RT, rejection tuning: supervised fine-tuning on refusals (RWKU's RT baseline).

The corpus pairs questions the model wrote about the target with refusal lines ("I'm not
certain about that."); the loss is the ordinary SFT loss — mean token NLL on the answer tokens
only — as the reference's ``sft``-stage trainer computes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from rwku.methods.base import Batch, Hyperparameters, UnlearningMethod, forward_logits, register
from rwku.methods.losses import token_nll_mean


@register("rt")
class RejectionTuning(UnlearningMethod):
    description: ClassVar[str] = "Rejection tuning: fine-tune the model to refuse questions about the target."
    corpus: ClassVar[str | None] = "refusals"
    paper_presets: ClassVar[dict[str, Hyperparameters]] = {
        "full": Hyperparameters(lr=4e-7, batch_size=8, epochs=3),
        "lora": Hyperparameters(lr=3e-5, batch_size=8, epochs=3),
        "batch_full": Hyperparameters(lr=1e-7, batch_size=8, epochs=1),
    }

    def loss(self, model, batch: Batch, ctx: Mapping[str, Any]) -> torch.Tensor:
        return token_nll_mean(forward_logits(model, batch), batch["labels"])
