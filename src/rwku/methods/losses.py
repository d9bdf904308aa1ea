"""The unlearning losses, as pure functions on tensors.

Everything here is a formula: no model, no tokenizer. The method files call a forward pass and
hand the logits (or activations) to these functions, so that every formula can be tested on
hand-made tensors against the equation in its paper.

Conventions: ``labels`` are the causal-LM labels of a batch (a copy of the input ids with
``-100`` wherever a token is not a target). As in Hugging Face causal LMs, the logits at
position ``t`` predict the label at ``t + 1`` ("shifted"). Per-sequence quantities are *summed*
over the labelled tokens, because NPO, DPO and SimNPO are defined on log π(y|x) = Σ_t log π(y_t|·).
Log-softmaxes are taken in float32 so that fp16/bf16 training does not lose the small
differences these losses are made of.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits[:, :-1, :], labels[:, 1:]


def token_nll(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token NLL [B, T-1] of the shifted labels; 0 where the label is ``-100``.

    ``mask`` ([B, T], optional, e.g. an attention mask) drops further positions: a label at
    ``t`` counts only where ``mask[:, t]`` is non-zero.
    """
    lg, lb = _shifted(logits, labels)
    if mask is not None:
        lb = lb.masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
    return F.cross_entropy(lg.float().transpose(1, 2), lb, ignore_index=IGNORE_INDEX, reduction="none")


def label_counts(labels: torch.Tensor) -> torch.Tensor:
    """Number of labelled (shifted) tokens of each row, Tensor[B] — |y| in SimNPO."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def sequence_nll(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Summed token NLL of each sequence, Tensor[B]: −log π(y|x) = −Σ_t log π(y_t | y_<t, x).

    The per-sequence quantity NPO (Zhang et al. 2024) and DPO (Rafailov et al. 2023) are
    defined on; the RWKU reference's NPO trainer computes exactly this (cross-entropy with
    ``reduction="none"`` summed over the sequence).
    """
    return token_nll(logits, labels, mask).sum(dim=1)


def token_nll_mean(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The standard LM loss: NLL averaged over all labelled tokens of the batch (a scalar).

    This is what a Hugging Face causal LM returns as ``loss`` and so what the reference's GA
    and RT (SFT) trainers optimise: every token weighs the same, whatever its row.
    """
    nll = token_nll(logits, labels, mask)
    lb = labels[:, 1:] if mask is None else labels[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
    count = (lb != IGNORE_INDEX).sum().clamp(min=1)
    return nll.sum() / count


def ga_loss(nll_mean: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: L = −(mean LM loss) on the forget text (Jang et al. 2023; RWKU's GA).

    Minimising it raises the forget text's NLL. It is unbounded below, which is why GA can
    collapse the model (RWKU's batch setting shows this from about 30 targets).
    """
    return -nll_mean


def npo_loss(policy_nll: torch.Tensor, ref_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative Preference Optimization (Zhang et al. 2024, arXiv 2404.05868).

    L = −(2/β) · E[log σ(−β · log(π_θ(y|x) / π_ref(y|x)))]
      = −(2/β) · mean log σ(β · (NLL_θ − NLL_ref))          (log π = −NLL, summed per sequence)
      =  (2/β) · mean log(1 + (π_θ/π_ref)^β).

    At θ = ref it equals (2/β)·log 2; as π_θ(y|x) → 0 it falls to 0, so unlike GA it is bounded
    below. Identical to the RWKU reference trainer (``-logsigmoid(beta * (nll - nll_ref))``).
    """
    return -(2.0 / beta) * F.logsigmoid(beta * (policy_nll - ref_nll)).mean()


def dpo_loss(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Direct Preference Optimization, sigmoid loss (Rafailov et al. 2023, arXiv 2305.18290).

    L = −mean log σ(β · [(log π_θ(y_c|x) − log π_ref(y_c|x)) − (log π_θ(y_r|x) − log π_ref(y_r|x))])

    with log-probs summed over the response tokens only. In RWKU y_c is the counterfactual
    biography and y_r the factual one; the reference is the original model, whose log-probs are
    precomputed. At θ = ref the loss is log 2.
    """
    margin = (policy_chosen_logp - ref_chosen_logp) - (policy_rejected_logp - ref_rejected_logp)
    return -F.logsigmoid(beta * margin).mean()


def simnpo_loss(
    policy_nll: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float = 0.0
) -> torch.Tensor:
    """SimNPO (Fan et al. 2024, "Simplicity Prevails", arXiv 2410.07163): NPO without a reference.

    L = −(2/β) · E[log σ(−(β/|y|) · log π_θ(y|x) − γ)]
      = −(2/β) · mean log σ(β · NLL_θ/|y| − γ)              (log π = −NLL summed, |y| = tokens)

    The length normalisation replaces NPO's reference model, whose bias the paper argues
    misallocates the unlearning effort across easy and hard examples.
    """
    norm = policy_nll / lengths.to(policy_nll.dtype).clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(beta * norm - gamma).mean()


def reference_topk(logits: torch.Tensor, k: int = 32) -> dict[str, torch.Tensor]:
    """What :func:`kl_retain_loss` needs from the original model, compressed to top-k.

    For each shifted position: the reference's k largest log-probs [B, T-1, k], their token ids
    [B, T-1, k] (int32, to halve the storage) and the log of the remaining probability mass
    [B, T-1] (−inf when k ≥ vocab).
    Storing the whole distribution would cost B·T·V floats per retain batch (a 49k vocabulary at
    512 tokens is ~100 MB per row); k = 32 costs about 0.13 % of that. With k ≥ V the full
    distribution is stored and the KL is exact.
    """
    logp = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
    k = min(k, logp.shape[-1])
    top_lp, top_ids = logp.topk(k, dim=-1)
    if k < logp.shape[-1]:
        rest = logp.scatter(-1, top_ids, float("-inf")).logsumexp(dim=-1)
    else:
        rest = torch.full(logp.shape[:-1], float("-inf"), device=logp.device)
    return {"topk_logprobs": top_lp, "topk_ids": top_ids.to(torch.int32), "rest_logmass": rest}


def kl_retain_loss(
    policy_logits: torch.Tensor,
    labels: torch.Tensor,
    topk_logprobs: torch.Tensor,
    topk_ids: torch.Tensor,
    rest_logmass: torch.Tensor,
) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) on the retain tokens, from precomputed top-k reference log-probs.

    The KL regulariser of the TOFU "KL" baseline (Maini et al. 2024): keep the next-token
    distribution on retain text where the original model had it. The reference model is never
    held in memory; :func:`reference_topk` stored its k most likely tokens and their remaining
    mass R. Both distributions are coarse-grained to k + 1 outcomes (the k tokens, "anything
    else") and the KL is computed exactly on those:

        KL = Σ_{i∈top-k} p_i (log p_i − log q_i) + R (log R − log q_rest),   q_rest = 1 − Σ_{i∈top-k} q_i

    By the data-processing inequality this is a lower bound on the full KL; it is 0 when the
    policy equals the reference, exact when k ≥ vocabulary (R = 0), and it still penalises any
    mass the policy moves onto or away from the reference's likely tokens. Averaged over the
    labelled (shifted) positions.
    """
    logq = torch.log_softmax(policy_logits[:, :-1, :].float(), dim=-1)
    ids = topk_ids.to(logq.device).long()
    ref_lp = topk_logprobs.to(logq.device, torch.float32)
    kl = (ref_lp.exp() * (ref_lp - logq.gather(-1, ids))).sum(dim=-1)
    if ids.shape[-1] < logq.shape[-1]:  # with the full vocabulary stored there is no rest bucket
        ref_rest = rest_logmass.to(logq.device, torch.float32)
        mass = ref_rest.exp()
        q_rest = logq.scatter(-1, ids, float("-inf")).logsumexp(dim=-1)
        safe_ref_rest = torch.where(mass > 0, ref_rest, torch.zeros_like(ref_rest))
        kl = kl + mass * (safe_ref_rest - q_rest)
    keep = (labels[:, 1:] != IGNORE_INDEX).to(kl.device)
    return (kl * keep).sum() / keep.sum().clamp(min=1)


def rmu_loss(
    forget_acts: torch.Tensor,
    retain_acts: torch.Tensor,
    frozen_retain_acts: torch.Tensor,
    control_vec: torch.Tensor,
    steering_coeff: float,
    alpha: float,
    forget_mask: torch.Tensor | None = None,
    retain_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Representation Misdirection for Unlearning (Li et al. 2024, WMDP, arXiv 2403.03218).

    L = mean ‖h_ℓ(x_f) − c·u‖² + α · mean ‖h_ℓ(x_r) − h_ℓ^frozen(x_r)‖²

    h_ℓ are layer-ℓ activations [B, T, H], u a fixed random unit vector, c the steering
    coefficient; the frozen retain activations come from the original model, precomputed. As in
    the WMDP code the squared error is averaged over the hidden dimension and the tokens
    (``F.mse_loss``); the masks ([B, T], optional) leave padding out of the token average.
    """

    def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        per_token = (a.float() - b.float()).pow(2).mean(dim=-1)
        if mask is None:
            return per_token.mean()
        m = mask.to(per_token.device, per_token.dtype)
        return (per_token * m).sum() / m.sum().clamp(min=1)

    target = (steering_coeff * control_vec).to(forget_acts.device)
    forget_term = masked_mse(forget_acts, target.expand_as(forget_acts), forget_mask)
    retain_term = masked_mse(retain_acts, frozen_retain_acts.to(retain_acts.device), retain_mask)
    return forget_term + alpha * retain_term
