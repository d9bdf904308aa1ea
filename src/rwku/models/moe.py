"""Sparse mixture-of-experts (MoE) models: find their routers and experts, read the routing.

transformers (5.x) ships its MoE families with one shape: each decoder layer's ``mlp`` is a
sparse block holding a router ``gate`` (a weight ``[E, H]``; its forward returns
``(router_logits, top_k_weights, top_k_indices)`` for the flattened tokens) and ``experts``,
the routed experts **fused** into 3-D parameters whose first dimension is the expert
(``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``). Some families add shared experts that
every token uses (Qwen2-MoE ``shared_expert``, DeepSeek-V3 ``shared_experts``); those are not
routed and never count as "an expert" here. Recognised: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE
and DeepSeek-V3 (and any other family built the same way); older checkpoints whose experts are
an ``nn.ModuleList`` are recognised too.

What the rest of rwku uses:

* :func:`moe_layers` — one :class:`MoELayer` per sparse decoder layer (index, router,
  experts, number of experts, top-k, scoring function); :func:`require_moe` is the same but
  raises one clear :class:`~rwku.errors.ConfigError` for a dense model or an unrecognised
  router.
* :class:`RouterCapture` — forward hooks on the routers: the router probabilities ``g`` of
  every real (non-pad) token, per layer, and the top-k experts each token was sent to.
* :func:`router_probs` — ``g`` from router logits: the softmax over experts (Mixtral, Qwen,
  OLMoE), or for sigmoid routers (DeepSeek-V3) the sigmoid affinities normalised to sum to 1,
  so that ``g`` is a distribution over experts for every family.
* :func:`attribute` — the UOE/SEUF expert attribution (Zhuang et al., arXiv 2411.18797, Eq. 2):
  ``s_i^(l) = (1/Z) Σ_j (1/L_j) Σ_t g_{i,t}^(l)``, the mean over sequences of the mean over
  tokens of ``g``, for every (layer, expert).
* :func:`anchor_loss` — the router anchor (Eqs. 3–4): ``‖g^(l) − onehot(i)‖²`` per token,
  averaged over the real tokens (see its docstring for how the released code differs).
* :func:`selection_stats` / :func:`selection_shift` — the routing diagnostics: how often each
  expert is selected, and how much that changes between two models.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rwku.errors import ConfigError

__all__ = [
    "MoELayer",
    "RouterCapture",
    "anchor_loss",
    "attribute",
    "is_moe",
    "moe_layers",
    "require_moe",
    "router_probs",
    "selection_shift",
    "selection_stats",
    "text_view",
    "use_eager_experts",
]

#: config attributes that say "this model has routed experts" even when the router is unknown
_EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


@dataclass
class MoELayer:
    """One sparse decoder layer."""

    #: decoder layer index (0-based)
    index: int
    #: the sparse block (``layer.mlp``), its router and its routed experts
    block: torch.nn.Module = field(repr=False)
    router: torch.nn.Module = field(repr=False)
    experts: torch.nn.Module = field(repr=False)
    num_experts: int
    top_k: int
    #: "softmax" or "sigmoid" (DeepSeek-V3): how the router turns logits into affinities
    scoring: str
    #: the block's name on the model (``model.layers.3.mlp``)
    name: str = ""

    def expert_parameters(self, expert: int) -> list[tuple[str, torch.nn.Parameter, int | None]]:
        """``(name, parameter, slice)`` of expert ``expert``: ``slice`` is the index on the
        first dimension of a fused 3-D parameter, None for a parameter of its own."""
        if isinstance(self.experts, torch.nn.ModuleList):
            return [(n, p, None) for n, p in self.experts[expert].named_parameters()]
        return [(n, p, expert) for n, p in self.experts.named_parameters()]


def _unwrap(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _num_experts(router: torch.nn.Module, experts: torch.nn.Module) -> int | None:
    n = getattr(router, "num_experts", None) or getattr(experts, "num_experts", None)
    if n is None and isinstance(experts, torch.nn.ModuleList):
        n = len(experts)
    weight = getattr(router, "weight", None)
    if n is None and isinstance(weight, torch.Tensor) and weight.ndim == 2:
        n = weight.shape[0]
    return int(n) if n else None


def _block_of(layer: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """The child of a decoder layer that holds a router ``gate`` and routed ``experts``."""
    for name, child in layer.named_children():
        if isinstance(getattr(child, "gate", None), torch.nn.Module) and isinstance(
            getattr(child, "experts", None), torch.nn.Module
        ):
            return name, child
    return None


def moe_layers(model: Any) -> list[MoELayer]:
    """Every sparse decoder layer of ``model`` (empty for a dense model); see the module doc."""
    from rwku.methods.base import decoder_layers

    base = _unwrap(model)
    try:
        layers = decoder_layers(base)
    except ValueError:
        return []
    prefix = next((n for n, m in base.named_modules() if m is layers), "layers")
    config = getattr(base, "config", None)
    out = []
    for i, layer in enumerate(layers):
        found = _block_of(layer)
        if found is None:
            continue
        child_name, block = found
        router, experts = block.gate, block.experts
        n = _num_experts(router, experts)
        weight = getattr(router, "weight", None)
        if n is None or not isinstance(weight, torch.Tensor) or weight.shape[0] != n:
            continue
        top_k = getattr(router, "top_k", None) or getattr(block, "top_k", None)
        top_k = top_k or getattr(config, "num_experts_per_tok", None)
        if not top_k:
            continue
        sigmoid = (
            hasattr(router, "e_score_correction_bias") or getattr(config, "scoring_func", "") == "sigmoid"
        )
        out.append(
            MoELayer(
                index=i,
                block=block,
                router=router,
                experts=experts,
                num_experts=n,
                top_k=int(top_k),
                scoring="sigmoid" if sigmoid else "softmax",
                name=f"{prefix}.{i}.{child_name}",
            )
        )
    return out


def _declares_experts(model: Any) -> bool:
    config = getattr(_unwrap(model), "config", None)
    config = getattr(config, "text_config", None) or config
    return any(getattr(config, k, None) for k in _EXPERT_COUNT_KEYS)


def is_moe(model: Any) -> bool:
    """Whether ``model`` has at least one sparse layer this module recognises."""
    return bool(moe_layers(model))


def require_moe(model: Any, what: str = "this") -> list[MoELayer]:
    """:func:`moe_layers`, or a :class:`ConfigError` saying why there is nothing to route."""
    layers = moe_layers(model)
    if layers:
        return layers
    name = type(_unwrap(model)).__name__
    if _declares_experts(model):
        raise ConfigError(
            f"{what} needs a mixture-of-experts model whose router rwku recognises; {name} declares "
            "experts, but no decoder layer holds a router 'gate' with routed 'experts' as transformers' "
            "Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE and DeepSeek-V3 blocks do"
        )
    raise ConfigError(
        f"{what} needs a mixture-of-experts model, and {name} is dense (no routed experts); "
        "build the local MoE testbed with `rwku moe-testbed` (alias smollm2-135m-moe)"
    )


def use_eager_experts(model: Any) -> bool:
    """Switch a transformers MoE model to its eager (per-expert loop) experts implementation.

    transformers 5 defaults to ``grouped_mm``, whose CPU path is a slow fallback; the eager
    loop computes the same (up to float rounding order) and is what rwku uses on the CPU.
    Returns whether anything was switched.
    """
    base = _unwrap(model)
    setter = getattr(base, "set_experts_implementation", None)
    config = getattr(base, "config", None)
    if setter is None or getattr(config, "_experts_implementation", None) in (None, "eager"):
        return False
    try:
        setter("eager")
    except (ValueError, AttributeError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# Router probabilities and their capture
# --------------------------------------------------------------------------------------------


def router_probs(logits: torch.Tensor, scoring: str = "softmax") -> torch.Tensor:
    """Router probabilities ``g`` [N, E] (float32) from router logits (module doc)."""
    logits = logits.float()
    if scoring == "sigmoid":
        s = logits.sigmoid()
        return s / s.sum(-1, keepdim=True).clamp_min(1e-20)
    return logits.softmax(-1)


class RouterCapture:
    """Forward hooks on the routers of ``layers`` that keep what each forward pass routed.

    Use as a context manager around forward passes; then ``probs[l]`` is a list (one entry per
    forward) of ``[N, E]`` router probabilities and ``topk[l]`` of ``[N, k]`` selected experts,
    N the flattened tokens of that forward (batch × length). ``grad=True`` keeps the autograd
    graph of the probabilities (the anchor loss); otherwise they are detached. ``stop_after``
    (a layer index) ends the forward pass right after that layer's router has run, by raising
    an exception the context manager swallows — the anchor needs nothing above it.
    """

    def __init__(
        self, layers: Sequence[MoELayer], *, grad: bool = False, stop_after: int | None = None
    ) -> None:
        self.layers = list(layers)
        self.grad = grad
        self.stop_after = stop_after
        self.probs: dict[int, list[torch.Tensor]] = {ly.index: [] for ly in self.layers}
        self.topk: dict[int, list[torch.Tensor]] = {ly.index: [] for ly in self.layers}
        self._handles: list[Any] = []

    def _hook(self, layer: MoELayer):
        def hook(_module, _inputs, output):
            logits, indices = output[0], output[-1]
            probs = router_probs(logits, layer.scoring)
            self.probs[layer.index].append(probs if self.grad else probs.detach())
            self.topk[layer.index].append(indices.detach())
            if self.stop_after == layer.index:
                raise _RouterReached

        return hook

    def __enter__(self) -> RouterCapture:
        self._handles = [ly.router.register_forward_hook(self._hook(ly)) for ly in self.layers]
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for h in self._handles:
            h.remove()
        self._handles = []
        return exc_type is _RouterReached

    def clear(self) -> None:
        for d in (self.probs, self.topk):
            for v in d.values():
                v.clear()


class _RouterReached(Exception):
    """Internal: the forward pass has reached the router it was run for."""


def text_view(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of a training batch: the plain ones, or for a
    preference batch (DPO) the rejected side, which holds the text to forget."""
    for prefix in ("", "rejected_", "chosen_"):
        if prefix + "input_ids" in batch:
            return {
                "input_ids": batch[prefix + "input_ids"],
                "attention_mask": batch[prefix + "attention_mask"],
            }
    raise KeyError("the batch has no input_ids")


def _real_tokens(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1).bool()


@torch.no_grad()
def _routed_batches(
    model: Any, layers: Sequence[MoELayer], batches: Iterable[Mapping[str, torch.Tensor]]
) -> Iterator[tuple[Mapping[str, torch.Tensor], RouterCapture]]:
    """Run ``model`` on each batch under a :class:`RouterCapture`; yield (batch, capture)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            view = text_view(batch)
            ids = view["input_ids"].to(device)
            mask = view["attention_mask"].to(device)
            with RouterCapture(layers) as cap:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            yield {"input_ids": ids, "attention_mask": mask}, cap
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Attribution (UOE/SEUF Eq. 2) and the router anchor (Eqs. 3-4)
# --------------------------------------------------------------------------------------------


@dataclass
class Attribution:
    """Expert affinities ``scores[l][e]`` (layer position in ``layers``) over a corpus."""

    layers: list[int]
    num_experts: list[int]
    top_k: list[int]
    #: s_i^(l) per layer (list of floats over experts)
    scores: list[list[float]]
    sequences: int
    tokens: int

    def ranked(self) -> list[tuple[int, int, float]]:
        """``(layer, expert, s)`` for every (layer, expert), highest affinity first.

        Ties keep (layer, expert) order, so the ranking is deterministic. Affinities are
        compared as they are (the paper ranks raw s); for layers with different numbers of
        experts, :meth:`ratio` is the comparable number.
        """
        rows = [
            (layer, e, s) for layer, scores in zip(self.layers, self.scores) for e, s in enumerate(scores)
        ]
        return sorted(rows, key=lambda r: -r[2])

    def ratio(self, layer: int, expert: int) -> float:
        """Affinity relative to uniform routing (1/E): 1.0 = no preference."""
        pos = self.layers.index(layer)
        return self.scores[pos][expert] * self.num_experts[pos]


def attribute(
    model: Any, batches: Iterable[Mapping[str, torch.Tensor]], layers: Sequence[MoELayer] | None = None
) -> Attribution:
    """Expert attribution over ``batches`` (dicts with ``input_ids`` and ``attention_mask``).

    ``s_i^(l) = (1/Z) Σ_j (1/L_j) Σ_t g_{i,t}^(l)``: for every sequence j the mean router
    probability of expert i over its L_j real tokens (padding excluded), then the mean over the
    Z sequences — every passage counts once, however long.
    """
    layers = list(layers) if layers is not None else require_moe(model, "expert attribution")
    sums = [torch.zeros(ly.num_experts, dtype=torch.float64) for ly in layers]
    n_seq = n_tok = 0
    for batch, cap in _routed_batches(model, layers, batches):
        mask = batch["attention_mask"].bool()
        lengths = mask.sum(1).clamp_min(1)
        n_seq += int((mask.sum(1) > 0).sum())
        n_tok += int(mask.sum())
        for pos, ly in enumerate(layers):
            g = cap.probs[ly.index][0].reshape(*mask.shape, -1)
            per_seq = (g * mask[..., None]).sum(1) / lengths[:, None]
            sums[pos] += per_seq[mask.sum(1) > 0].double().sum(0).cpu()
    z = max(n_seq, 1)
    return Attribution(
        layers=[ly.index for ly in layers],
        num_experts=[ly.num_experts for ly in layers],
        top_k=[ly.top_k for ly in layers],
        scores=[(s / z).tolist() for s in sums],
        sequences=n_seq,
        tokens=n_tok,
    )


def anchor_loss(probs: torch.Tensor, expert: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The router anchor ``‖g − onehot(expert)‖²`` per token, averaged over real tokens.

    ``probs`` [N, E] (or [B, T, E]) router probabilities, ``mask`` the matching attention mask
    (1 = real token; None = all real). The squared distance is **summed** over the experts, as
    the paper's Eq. 3 writes it. The released SEUF code computes
    ``F.mse_loss(one_hot, scores)``, the mean over tokens *and* experts over every position
    (padding included): for unpadded text that is exactly this value divided by E, i.e. the
    same loss with its weight α scaled by 1/E.
    """
    probs = probs.reshape(-1, probs.shape[-1]).float()
    target = torch.zeros_like(probs)
    target[:, expert] = 1.0
    per_token = ((probs - target) ** 2).sum(-1)
    if mask is None:
        return per_token.mean()
    keep = _real_tokens(mask).to(per_token.device)
    return per_token[keep].sum() / keep.sum().clamp_min(1)


def router_anchor(
    model: Any, anchors: Sequence[tuple[MoELayer, int]], batch: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The sum of :func:`anchor_loss` over ``anchors`` ((layer, expert) pairs, one per layer)
    on ``batch``, with the autograd graph kept.

    One forward pass of the batch that stops right after the deepest anchored layer's router
    (nothing above it is computed); the model's training/eval state is left as it is. Each
    anchored router carries the full weight α of the caller, as it would alone: the paper
    anchors one expert (Eq. 4), and a run that trains several experts in different layers
    anchors every one of those layers to its expert.
    """
    layers = [layer for layer, _ in anchors]
    if not layers or len({ly.index for ly in layers}) != len(layers):
        raise ValueError("router_anchor needs at least one (layer, expert) pair and one per layer")
    view = text_view(batch)
    deepest = max(ly.index for ly in layers)
    with RouterCapture(layers, grad=True, stop_after=deepest) as cap:
        model(input_ids=view["input_ids"], attention_mask=view["attention_mask"], use_cache=False)
    missing = [ly.index for ly in layers if not cap.probs[ly.index]]
    if missing:
        raise RuntimeError(f"the router of layer(s) {missing} did not run")
    return sum(anchor_loss(cap.probs[ly.index][0], e, view["attention_mask"]) for ly, e in anchors)


# --------------------------------------------------------------------------------------------
# Routing diagnostics
# --------------------------------------------------------------------------------------------


@dataclass
class Routing:
    """What a model routed on one corpus: per layer, each real token's top-k experts."""

    layers: list[int]
    num_experts: list[int]
    #: per layer, [tokens, k] selected experts (real tokens only, in corpus order)
    selections: list[torch.Tensor] = field(repr=False)

    def distribution(self) -> list[list[float]]:
        """Per layer, the share of top-k selections each expert received."""
        out = []
        for n, sel in zip(self.num_experts, self.selections):
            counts = torch.bincount(sel.reshape(-1), minlength=n)[:n].double()
            out.append((counts / counts.sum().clamp_min(1)).tolist())
        return out


def routing(
    model: Any, batches: Iterable[Mapping[str, torch.Tensor]], layers: Sequence[MoELayer] | None = None
) -> Routing:
    """The top-k experts of every real token of ``batches`` at every sparse layer."""
    layers = list(layers) if layers is not None else require_moe(model, "routing diagnostics")
    parts: list[list[torch.Tensor]] = [[] for _ in layers]
    for batch, cap in _routed_batches(model, layers, batches):
        keep = _real_tokens(batch["attention_mask"])
        for pos, ly in enumerate(layers):
            parts[pos].append(cap.topk[ly.index][0][keep].cpu())
    return Routing(
        layers=[ly.index for ly in layers],
        num_experts=[ly.num_experts for ly in layers],
        selections=[
            torch.cat(p) if p else torch.zeros(0, ly.top_k, dtype=torch.long) for p, ly in zip(parts, layers)
        ],
    )


def selection_stats(r: Routing) -> dict[str, Any]:
    """JSON-ready: the selection distribution per layer (keyed by layer index)."""
    return {
        "tokens": int(r.selections[0].shape[0]) if r.selections else 0,
        "distribution": {
            str(layer): [round(x, 6) for x in d] for layer, d in zip(r.layers, r.distribution())
        },
    }


def selection_shift(before: Routing, after: Routing) -> dict[str, Any]:
    """How routing changed on the same text (the paper's pilot-study measure, made exact).

    Per layer: ``tv`` — the total variation distance ½ Σ_e |p_e − q_e| between the selection
    distributions; ``changed_tokens`` — the share of tokens whose top-k *set* changed;
    ``changed_slots`` — the share of top-k slots whose expert is no longer selected
    (1 − |overlap| / k, averaged over tokens). ``mean`` averages each over the layers.
    """
    if before.layers != after.layers:
        raise ValueError("routing of different layers cannot be compared")
    per_layer: dict[str, dict[str, float]] = {}
    for layer, p, q, a, b in zip(
        before.layers, before.distribution(), after.distribution(), before.selections, after.selections
    ):
        if a.shape != b.shape:
            raise ValueError(f"layer {layer}: routing of different text cannot be compared")
        tv = 0.5 * sum(abs(x - y) for x, y in zip(p, q))
        k = a.shape[1] if a.ndim == 2 and a.shape[0] else 1
        if a.numel():
            a_sorted, b_sorted = a.sort(-1).values, b.sort(-1).values
            changed = (a_sorted != b_sorted).any(-1).double().mean().item()
            overlap = (a[:, :, None] == b[:, None, :]).any(-1).sum(-1).double()
            slots = (1 - overlap / k).mean().item()
        else:
            changed = slots = 0.0
        per_layer[str(layer)] = {
            "tv": round(tv, 6),
            "changed_tokens": round(changed, 6),
            "changed_slots": round(slots, 6),
        }
    keys = ("tv", "changed_tokens", "changed_slots")
    n = max(len(per_layer), 1)
    mean = {k: round(sum(v[k] for v in per_layer.values()) / n, 6) for k in keys}
    return {"mean": mean, "per_layer": per_layer}
