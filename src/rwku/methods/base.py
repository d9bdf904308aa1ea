"""What an unlearning method is, and the registry that makes a new method one file.

A method is either
* an **inference-time** method (ICU, RepE, ECO, GUARD): it returns an evaluation-time change —
  a prompt prefix, hooks on the model's hidden states, or a guard that changes the answers to
  the prompts its classifier flags — and trains nothing; or
* a **training** method (GA, NPO, DPO, RT, ...): it names the corpus it needs and turns a
  batch of that corpus into a loss. The shared trainer (``rwku.methods.trainer``) owns the
  optimiser, schedule, training mode (full / LoRA / partial layers), guard rails and saving.

Adding a method: write ``rwku/methods/<name>.py`` with a subclass decorated by
``@register("<name>")``, and import it in ``rwku/methods/__init__.py``.

The precompute / ctx contract (what the trainer does for every training method)
------------------------------------------------------------------------------
No second ("reference" or "frozen") copy of the model is ever held in memory. Whatever a loss
needs from the *original* model is computed once, before the first update, and stored:

1. The trainer builds its batches once with :func:`rwku.methods.batches.build_batch`
   (``method.corpus`` records → tensors). A method with ``needs_retain`` also gets a retain
   batch (raw text, built with ``build_batch("passages", ...)``) paired with each forget batch.
   The composition of each batch and its pairing with a retain batch stay fixed for the whole
   run (the order of batches may be shuffled between epochs), because what ``precompute``
   returns is aligned with the batch's rows and padded length.
2. Before any update, on the ORIGINAL model, for every batch:
   ``extras = method.precompute(model, batch, retain_batch)``. It runs under
   ``torch.no_grad()`` and returns detached tensors; the trainer stores them (on CPU if it
   likes — losses move them to the right device).
3. At every step: ``ctx = {**extras, "retain_batch": retain_batch}`` (``retain_batch`` only for
   ``needs_retain`` methods) and ``loss = method.loss(model, batch, ctx)``; then
   ``loss.backward()``.

Keys a method reads from ``ctx`` (all filled by its own ``precompute`` except ``retain_batch``):

* ``ref_nll`` — Tensor[B], the original model's summed NLL of each row (NPO);
* ``ref_chosen_logp`` / ``ref_rejected_logp`` — Tensor[B], summed response log-probs (DPO);
* ``retain_batch`` — dict(input_ids, attention_mask, labels) (GradDiff, KL, RMU);
* ``ref_retain`` — dict(topk_logprobs, topk_ids, rest_logmass) on the retain batch (KL);
* ``frozen_retain_acts`` — Tensor[B, T, H], the original model's layer-ℓ output (RMU).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

#: Options every training method takes besides its own (stored in ``options`` only when given):
#: ``anchor`` — the weight α of the UOE/SEUF router anchor, added to the loss in mode
#: ``expert`` (:func:`rwku.models.moe.anchor_loss`; docs/moe.md).
SHARED_TRAINING_OPTIONS: dict[str, Any] = {"anchor": 0.0}

#: Corpus kinds a training method can ask for (see ``rwku.data.corpus``).
CORPUS_KINDS = ("passages", "wiki_passages", "pairs", "refusals")

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Hyperparameters:
    """One preset: the paper's for an 8B model, or this project's for the 135M default model."""

    lr: float
    batch_size: int
    epochs: float
    grad_accum: int = 1
    warmup_steps: int = 20
    max_length: int = 512
    weight_decay: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific (beta, alpha, ...)


class UnlearningMethod:
    """Base class. Subclasses set the class attributes and override what they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: "inference" or "training"
    kind: ClassVar[str] = "training"
    #: corpus kind a training method reads (one of CORPUS_KINDS), None for inference methods
    corpus: ClassVar[str | None] = None
    #: whether the loss needs the original model's outputs (precomputed once, see module doc)
    needs_reference: ClassVar[bool] = False
    #: whether the loss uses a retain batch (GradDiff, KL, RMU)
    needs_retain: ClassVar[bool] = False
    #: presets: {"full": Hyperparameters, "lora": ..., "batch_full": ...} for the paper's 8B runs
    paper_presets: ClassVar[dict[str, Hyperparameters]] = {}
    #: an inference-time guard (ECO, GUARD): ``guard`` wraps the evaluation model
    guards: ClassVar[bool] = False
    #: the options a method accepts, with their defaults (beta, alpha, layers, ...)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        shared = set(SHARED_TRAINING_OPTIONS) if self.kind == "training" else set()
        unknown = sorted(set(options) - set(self.defaults) - shared)
        if unknown:
            from rwku.errors import ConfigError

            known = ", ".join(sorted(set(self.defaults) | shared)) or "none"
            raise ConfigError(f"method {self.name!r} has no option {', '.join(unknown)}; options: {known}")
        self.options: dict[str, Any] = {**self.defaults, **options}
        anchor = self.options.get("anchor", 0.0)
        if "anchor" in options and (
            isinstance(anchor, bool) or not isinstance(anchor, (int, float)) or anchor < 0
        ):
            from rwku.errors import ConfigError

            raise ConfigError(
                f"option anchor must be a number >= 0 (the router anchor's weight), got {anchor!r}"
            )

    def option(self, key: str) -> Any:
        return self.options[key]

    @property
    def anchor(self) -> float:
        """The router anchor's weight α (mode ``expert`` only; 0 = no anchor)."""
        return float(self.options.get("anchor", 0.0))

    # ---- training methods
    def precompute(self, model, batch: Batch, retain_batch: Batch | None = None) -> dict[str, Any]:
        """What the loss needs from the ORIGINAL model for this batch (see the module doc).

        Called once per batch before any update; the default needs nothing.
        """
        return {}

    def loss(self, model, batch: Batch, ctx: Mapping[str, Any]) -> torch.Tensor:
        """The loss to *minimise* on one batch. ``ctx`` carries what ``precompute`` returned."""
        raise NotImplementedError

    # ---- inference-time methods
    def prompt_prefix(self) -> str | None:
        """An instruction prepended to every user message at evaluation time (ICU)."""
        return None

    def install(self, model, tokenizer, target) -> Callable[[], None] | None:
        """Change the model at inference time (e.g. RepE hooks); return a function that undoes it."""
        return None

    def guard(self, lm, data, target, *, fingerprint: str, seed: int, progress: bool, log, generate=None):
        """An inference-time guard (ECO, GUARD): the evaluation model wrapped so that the prompts a
        classifier flags are answered by a changed model (:class:`rwku.methods.guarding.GuardedModel`),
        with what it chose in ``self.record``; None for every other method."""
        return None


def need(ctx: Mapping[str, Any], key: str, method: str) -> Any:
    """``ctx[key]``, or an error that says which contract step was skipped."""
    if key not in ctx:
        raise KeyError(
            f"method {method!r} needs ctx[{key!r}]: call method.precompute(model, batch, retain_batch) on the "
            "original model before training and pass its result (plus 'retain_batch') as ctx"
        )
    return ctx[key]


# --------------------------------------------------------------------------------------------
# Model plumbing shared by the methods
# --------------------------------------------------------------------------------------------


def forward_logits(model, batch: Mapping[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
    """Logits of ``batch[prefix + "input_ids"]``; no KV cache, since training never decodes."""
    out = model(
        input_ids=batch[prefix + "input_ids"],
        attention_mask=batch[prefix + "attention_mask"],
        use_cache=False,
    )
    return out.logits


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks, found by shape so that PEFT-wrapped models work too."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for mod_name, module in model.named_modules():
        if (
            isinstance(module, torch.nn.ModuleList)
            and mod_name.rsplit(".", 1)[-1] in ("layers", "h", "blocks")
            and (n is None or len(module) == n)
        ):
            return module
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def layer_hidden(output: Any) -> torch.Tensor:
    """The hidden states in a decoder layer's output (a tensor, or a tuple led by one)."""
    return output[0] if isinstance(output, tuple) else output


class _StopForward(Exception):
    pass


def layer_output(model, batch: Mapping[str, torch.Tensor], layer: int, prefix: str = "") -> torch.Tensor:
    """Output hidden states [B, T, H] of decoder layer ``layer`` (0-based).

    The forward pass stops right after that layer: RMU needs nothing above it, and skipping
    the upper layers and the LM head saves most of the compute and the [B, T, V] logits.
    """
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(layer_hidden(output))
        raise _StopForward

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        forward_logits(model, batch, prefix)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"decoder layer {layer} did not run")
    return captured[0]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[UnlearningMethod]] = {}


def register(name: str) -> Callable[[type[UnlearningMethod]], type[UnlearningMethod]]:
    def deco(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_method(name: str, **options: Any) -> UnlearningMethod:
    """An instance of the method called ``name`` (case-insensitive; ``GA*`` = ``ga_star``)."""
    from rwku.errors import ConfigError

    key = name.strip().lower().replace("-", "_").replace("*", "_star")
    if key not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key](**options)


def list_methods() -> dict[str, type[UnlearningMethod]]:
    return dict(sorted(_REGISTRY.items()))
