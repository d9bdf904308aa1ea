"""DPO with the original model as reference (Rafailov et al. 2023; RWKU's DPO baseline).

Prompt "{intro} Please write a short biography of {target}." as a chat turn; chosen = the
counterfactual biography, rejected = the factual one, so the model learns to prefer made-up
facts about the target. Sigmoid loss with β = 0.1 (LLaMA-Factory's default ``dpo_beta``, which
the RWKU scripts keep) and no SFT term (``dpo_ftx 0``). Chosen and rejected rows share one
forward pass; the reference log-probs come from ``precompute``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from rwku.methods.base import Batch, Hyperparameters, UnlearningMethod, forward_logits, need, register
from rwku.methods.batches import concat_pair
from rwku.methods.losses import dpo_loss, sequence_nll


def pair_logps(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of the chosen and of the rejected rows, each Tensor[B]."""
    joint = concat_pair(batch)
    logp = -sequence_nll(forward_logits(model, joint), joint["labels"])
    n = batch["chosen_input_ids"].shape[0]
    return logp[:n], logp[n:]


@register("dpo")
class DirectPreferenceOptimization(UnlearningMethod):
    description: ClassVar[str] = "DPO: prefer counterfactual over factual biographies of the target."
    corpus: ClassVar[str | None] = "pairs"
    needs_reference: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"beta": 0.1}
    paper_presets: ClassVar[dict[str, Hyperparameters]] = {
        "full": Hyperparameters(lr=5e-6, batch_size=2, epochs=3, grad_accum=4, extra={"beta": 0.1}),
        "lora": Hyperparameters(lr=6e-5, batch_size=4, epochs=3, grad_accum=2, extra={"beta": 0.1}),
        "batch_full": Hyperparameters(lr=2e-6, batch_size=2, epochs=2, grad_accum=4, extra={"beta": 0.1}),
    }

    @torch.no_grad()
    def precompute(self, model, batch: Batch, retain_batch: Batch | None = None) -> dict[str, Any]:
        chosen, rejected = pair_logps(model, batch)
        return {"ref_chosen_logp": chosen.detach(), "ref_rejected_logp": rejected.detach()}

    def loss(self, model, batch: Batch, ctx: Mapping[str, Any]) -> torch.Tensor:
        chosen, rejected = pair_logps(model, batch)
        ref_c = need(ctx, "ref_chosen_logp", self.name).to(chosen.device)
        ref_r = need(ctx, "ref_rejected_logp", self.name).to(chosen.device)
        return dpo_loss(chosen, rejected, ref_c, ref_r, float(self.option("beta")))
