"""GA and GA*: gradient ascent on the forget text (Jang et al. 2023; RWKU's GA baseline).

GA maximises the LM loss on the model-written biographies ("passages"); GA* does the same on
the target's Wikipedia passages, the paper's "pseudo ground truth". Loss = −(mean token NLL),
exactly the reference trainer's ``-loss``. Presets are the reference scripts' (Llama-3-8B).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from rwku.methods.base import Batch, Hyperparameters, UnlearningMethod, forward_logits, register
from rwku.methods.losses import ga_loss, token_nll_mean


@register("ga")
class GradientAscent(UnlearningMethod):
    description: ClassVar[str] = "Gradient ascent: maximise the LM loss on the model-written forget passages."
    corpus: ClassVar[str | None] = "passages"
    paper_presets: ClassVar[dict[str, Hyperparameters]] = {
        "full": Hyperparameters(lr=6e-8, batch_size=8, epochs=3),
        "lora": Hyperparameters(lr=1e-5, batch_size=8, epochs=3),
        "batch_full": Hyperparameters(lr=3e-8, batch_size=8, epochs=2),
    }

    def loss(self, model, batch: Batch, ctx: Mapping[str, Any]) -> torch.Tensor:
        return ga_loss(token_nll_mean(forward_logits(model, batch), batch["labels"]))


@register("ga_star")
class GradientAscentWiki(GradientAscent):
    description: ClassVar[str] = (
        "GA*: gradient ascent on the target's Wikipedia passages (pseudo ground truth)."
    )
    corpus: ClassVar[str | None] = "wiki_passages"
    paper_presets: ClassVar[dict[str, Hyperparameters]] = {
        "full": Hyperparameters(lr=1e-6, batch_size=4, epochs=4),
        "lora": Hyperparameters(lr=2e-5, batch_size=4, epochs=6),
    }
