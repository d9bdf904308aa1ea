"""Training modes: which parameters an unlearning run may change, and how the result is saved.

The RWKU paper trains three ways, and the shared trainer (:mod:`rwku.methods.trainer`) asks
this module to set the model up for one of them:

* ``full`` — every parameter trains (the paper's main rows).
* ``lora`` — LoRA adapters on ``q_proj`` and ``v_proj``, rank 8, α 16, dropout 0 (the paper's
  LoRA rows); the base weights stay frozen and bit-identical. PEFT initialises ``lora_B`` to
  zero, so before the first update the wrapped model computes exactly what the original did:
  that is what lets the trainer precompute reference outputs on the wrapped model itself.
* ``partial`` — only the parameters of decoder layers ``[a, b)`` train (the paper's layer
  study, "e.g. 0–4"); embeddings, the final norm and the LM head stay frozen. SmolLM2 (and the
  tiny test model) tie the LM head to the input embeddings, so freezing one freezes both.
* ``expert`` — mixture-of-experts models only (UOE/SEUF, docs/moe.md): only the selected
  routed experts and their layers' routers train. ``expert`` / ``expert:N`` takes the N
  (layer, expert) pairs of highest attribution on the forget corpus
  (:func:`rwku.models.moe.attribute`), ``expert:L.E,L.E`` names them, ``expert:random`` draws
  one (seeded). transformers stores a layer's experts fused in 3-D tensors ``[E, ...]``, so
  the whole tensor has ``requires_grad``; a gradient hook zeroes the other experts' slices
  and, after every optimiser step, :attr:`PreparedModel.after_step` puts those slices back
  bit for bit (AdamW's decoupled weight decay would otherwise shrink them with a zero
  gradient).

Layer ranges are **half-open**: ``"0-4"`` (also ``"0:4"`` or ``(0, 4)``) means layers 0, 1, 2
and 3, like a Python slice, so that adjacent ranges (``"0-4"``, ``"4-8"``) never overlap. A
single number ``"5"`` means layer 5 alone.

Saving: a LoRA run saves only its adapter (``adapter_model.safetensors`` and
``adapter_config.json``, a few hundred kB instead of the whole model); full and partial runs
save the whole model as safetensors. Both save the tokenizer too, so the folder can be loaded
on its own. :func:`merge_lora` folds an adapter into its base weights for evaluation code that
expects a plain ``PreTrainedModel``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rwku.errors import ConfigError

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "MODES",
    "PreparedModel",
    "TrainingMode",
    "changed_parameters",
    "check_experts",
    "count_parameters",
    "count_trainable",
    "is_peft_model",
    "load_trained",
    "merge_lora",
    "parse_experts",
    "parse_layer_range",
    "parse_mode",
    "prepare_model",
    "quiet_peft",
    "save_trained",
    "select_experts",
    "snapshot",
]

MODES = ("full", "lora", "partial", "expert")
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "v_proj")
"""The paper's LoRA targets (attention query and value projections)."""

_RANGE_RE = re.compile(r"^\s*(\d+)\s*(?:[-:]\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class TrainingMode:
    """A training mode with its options; ``parse_mode("partial:0-4")`` builds one from text."""

    kind: str = "full"
    #: half-open decoder-layer range for ``partial``: "a-b", "a:b" or (a, b)
    layers: str | tuple[int, int] | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    #: for ``expert``: "N" (top-N by attribution), "L.E,L.E" (named) or "random"
    experts: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in MODES:
            raise ConfigError(f"unknown training mode {self.kind!r}; choose one of {', '.join(MODES)}")
        if self.kind != "partial" and self.layers is not None:
            raise ConfigError(f"a layer range only applies to mode 'partial', not {self.kind!r}")
        if self.kind != "expert" and self.experts is not None:
            raise ConfigError(f"an expert selection only applies to mode 'expert', not {self.kind!r}")
        if self.kind == "expert":
            parse_experts(self.experts or "1")


@dataclass
class PreparedModel:
    """What :func:`prepare_model` returns: the module to optimise and what it is."""

    model: Any
    mode: TrainingMode
    description: str
    trainable_params: int
    total_params: int
    #: the resolved half-open layer range for ``partial`` runs
    layers: tuple[int, int] | None = None
    #: names of the parameters that train (full names on ``model``)
    trainable_names: list[str] = field(default_factory=list, repr=False)
    #: ``expert`` mode: the trained (layer, expert) pairs, best-attributed first
    experts: list[tuple[int, int]] = field(default_factory=list)
    #: ``expert`` mode: the attribution the selection came from (None when named or random)
    attribution: Any = field(default=None, repr=False)
    #: called after every optimiser step (``expert``: restores the frozen experts' slices)
    after_step: Any = field(default=None, repr=False)
    #: undoes what preparing installed (``expert``: removes the gradient hooks)
    release: Any = field(default=None, repr=False)


def parse_mode(mode: str | TrainingMode) -> TrainingMode:
    """``"full"``, ``"lora"``, ``"partial:0-4"`` (or a :class:`TrainingMode`) → :class:`TrainingMode`.

    A text form so that a command line or a YAML sweep can name a mode in one token.
    """
    if isinstance(mode, TrainingMode):
        return mode
    text = str(mode).strip().lower()
    kind, _, rest = text.partition(":")
    if kind == "partial":
        return TrainingMode(kind="partial", layers=rest or None)
    if kind == "expert":
        return TrainingMode(kind="expert", experts=rest or None)
    if rest:
        raise ConfigError(f"training mode {mode!r}: only 'partial' takes a layer range (partial:0-4)")
    return TrainingMode(kind=kind)


_PAIR_RE = re.compile(r"^\s*(\d+)\s*\.\s*(\d+)\s*$")


def parse_experts(spec: str | int) -> int | str | list[tuple[int, int]]:
    """``"2"`` → 2 (top-N), ``"random"``, or ``"3.5,4.1"`` → [(3, 5), (4, 1)] (layer.expert)."""
    text = str(spec).strip().lower()
    if text == "random":
        return "random"
    if text.isdigit():
        if int(text) < 1:
            raise ConfigError("--experts must name at least one expert (N >= 1)")
        return int(text)
    pairs = []
    for part in text.split(","):
        m = _PAIR_RE.match(part)
        if m is None:
            raise ConfigError(
                f"bad expert selection {spec!r}: write N (the N best-attributed experts), random, "
                "or layer.expert pairs such as 3.5,4.1"
            )
        pairs.append((int(m.group(1)), int(m.group(2))))
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"expert selection {spec!r} names an expert twice")
    return pairs


def check_experts(model: torch.nn.Module, spec: str | int | None) -> tuple[Any, list[Any]]:
    """The parsed selection and the model's sparse layers, or a :class:`ConfigError`: a dense
    model or an unrecognised router, a layer without routed experts, an expert index out of
    range, more experts asked for than the model has. Loads nothing, trains nothing."""
    from rwku.models.moe import require_moe

    layers = require_moe(model, "mode 'expert'")
    by_index = {ly.index: ly for ly in layers}
    choice = parse_experts(spec if spec is not None else "1")
    if isinstance(choice, list):
        for layer, expert in choice:
            if layer not in by_index:
                raise ConfigError(
                    f"expert {layer}.{expert}: layer {layer} has no routed experts; sparse layers: "
                    f"{_ranges(sorted(by_index))}"
                )
            n = by_index[layer].num_experts
            if not 0 <= expert < n:
                raise ConfigError(f"expert {layer}.{expert}: layer {layer} has experts 0..{n - 1}")
    elif isinstance(choice, int):
        total = sum(ly.num_experts for ly in layers)
        if choice > total:
            raise ConfigError(f"--experts {choice}: the model has only {total} routed experts")
    return choice, layers


def select_experts(
    model: torch.nn.Module, spec: str | int | None, batches: Sequence[Any] | None, seed: int = 0
) -> tuple[list[tuple[int, int]], Any]:
    """The (layer, expert) pairs expert mode trains, and the attribution behind them.

    Checks named pairs against the model (layer without routed experts, expert index out of
    range: :class:`ConfigError`). ``random`` draws one pair uniformly with ``seed`` (the
    paper's random-expert control); top-N needs ``batches`` of the forget corpus.
    """
    from rwku.models.moe import attribute

    choice, layers = check_experts(model, spec)
    if choice == "random":
        gen = torch.Generator().manual_seed(seed)
        pool = [(ly.index, e) for ly in layers for e in range(ly.num_experts)]
        return [pool[int(torch.randint(len(pool), (1,), generator=gen))]], None
    if isinstance(choice, list):
        return choice, None
    assert isinstance(choice, int)
    if not batches:
        raise ConfigError("mode 'expert' needs the forget corpus to attribute experts")
    att = attribute(model, batches, layers)
    return [(layer, e) for layer, e, _ in att.ranked()[:choice]], att


def _ranges(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values) if len(values) < 8 else f"{values[0]}..{values[-1]}"


def _prepare_experts(
    model: torch.nn.Module, chosen: Sequence[tuple[int, int]]
) -> tuple[list[str], int, Any, Any]:
    """Freeze everything but the chosen experts and their routers (module doc, ``expert``).

    Returns the trained parameter names, the number of trained values (slices of fused
    tensors counted as slices), the after-step restore function and the hook remover.
    """
    from rwku.models.moe import moe_layers

    by_index = {ly.index: ly for ly in moe_layers(model)}
    for p in model.parameters():
        p.requires_grad_(False)
    slices: dict[int, tuple[torch.nn.Parameter, list[int]]] = {}  # id → (fused param, experts)
    whole: dict[int, torch.nn.Parameter] = {}
    for layer, expert in chosen:
        ly = by_index[layer]
        whole[id(ly.router.weight)] = ly.router.weight
        for _name, p, index in ly.expert_parameters(expert):
            if index is None:
                whole[id(p)] = p
            else:
                slices.setdefault(id(p), (p, []))[1].append(index)
    handles = []
    saved: list[tuple[torch.nn.Parameter, torch.Tensor, list[int]]] = []
    count = sum(p.numel() for p in whole.values())
    for p in whole.values():
        p.requires_grad_(True)
    for p, experts in slices.values():
        p.requires_grad_(True)
        keep = torch.zeros(p.shape[0], *([1] * (p.ndim - 1)), dtype=p.dtype, device=p.device)
        keep[experts] = 1
        handles.append(p.register_hook(lambda g, keep=keep: g * keep))
        saved.append((p, p.detach().clone(), experts))
        count += p[0].numel() * len(experts)

    @torch.no_grad()
    def restore() -> None:
        for p, original, experts in saved:
            trained = p[experts].clone()
            p.copy_(original)
            p[experts] = trained

    def release() -> None:
        for h in handles:
            h.remove()
        handles.clear()

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return names, count, restore, release


def parse_layer_range(spec: str | Sequence[int], num_layers: int) -> tuple[int, int]:
    """The half-open range ``[a, b)`` named by ``"a-b"``, ``"a:b"``, ``"a"`` or ``(a, b)``.

    Half-open like a Python slice (see the module docstring), checked against the model's
    ``num_layers`` so a typo fails before any training rather than silently training nothing.
    """
    if isinstance(spec, str):
        m = _RANGE_RE.match(spec)
        if m is None:
            raise ConfigError(
                f"bad layer range {spec!r}: write a-b for layers a..b-1 (half-open, e.g. 0-4 = layers 0,1,2,3)"
            )
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a + 1
    else:
        try:
            a, b = (int(x) for x in spec)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad layer range {spec!r}: expected two integers (a, b)") from exc
    if not 0 <= a < b <= num_layers:
        raise ConfigError(
            f"layer range [{a}, {b}) is empty or outside the model's {num_layers} layers "
            f"(half-open: a-b trains layers a..b-1, with 0 <= a < b <= {num_layers})"
        )
    return a, b


def count_parameters(model: torch.nn.Module) -> int:
    """All parameters, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters())


def count_trainable(model: torch.nn.Module) -> int:
    """Parameters with ``requires_grad``, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every named parameter, for :func:`changed_parameters`.

    Costs one model's worth of memory: for tests and small models, not for training runs.
    """
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()}


def changed_parameters(before_state: Mapping[str, torch.Tensor], after_model: torch.nn.Module) -> list[str]:
    """Names of the parameters of ``after_model`` whose values differ from ``before_state``.

    Exact (bit-for-bit) comparison, because "frozen" must mean untouched, not "nearly equal".
    Names absent from ``before_state`` (e.g. LoRA weights added after the snapshot) are
    reported as changed, since they did not exist before.
    """
    changed = []
    for name, p in after_model.named_parameters():
        before = before_state.get(name)
        if before is None or not torch.equal(before, p.detach().to(before.device)):
            changed.append(name)
    return sorted(changed)


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _num_layers(model: torch.nn.Module) -> int:
    from rwku.methods.base import decoder_layers

    try:
        return len(decoder_layers(model))
    except ValueError as exc:
        raise ConfigError(f"mode 'partial': {exc}") from exc


def _layer_param_names(model: torch.nn.Module, lo: int, hi: int) -> set[str]:
    """Full names of the parameters inside decoder layers ``lo..hi-1``."""
    from rwku.methods.base import decoder_layers

    layers = decoder_layers(model)
    wanted = {id(p) for i in range(lo, hi) for p in layers[i].parameters()}
    return {name for name, p in model.named_parameters() if id(p) in wanted}


def prepare_model(
    model: torch.nn.Module,
    mode: str | TrainingMode = "full",
    *,
    layers: str | Sequence[int] | None = None,
    expert_batches: Sequence[Any] | None = None,
    seed: int = 0,
) -> PreparedModel:
    """Set ``requires_grad`` for ``mode`` (wrapping the model in LoRA adapters for ``lora``).

    Works in place: for ``lora`` the returned model is a ``PeftModel`` around the very same
    base module (PEFT injects its layers into it; nothing is copied), so no second copy of the
    weights is ever made. ``layers`` overrides a ``partial`` mode's range. ``expert`` mode
    attributes experts on ``expert_batches`` (the forget corpus) and draws a random one with
    ``seed``; the returned :class:`PreparedModel` then carries ``after_step`` and ``release``,
    which the caller must call (the trainer does).
    """
    tm = parse_mode(mode)
    if layers is not None:
        if tm.kind != "partial":
            raise ConfigError(f"a layer range only applies to mode 'partial', not {tm.kind!r}")
        tm = TrainingMode(kind="partial", layers=layers if isinstance(layers, str) else tuple(layers))

    if tm.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        trained = model
        desc = "full fine-tuning: every parameter trains"
        rng = None
    elif tm.kind == "partial":
        if tm.layers is None:
            raise ConfigError("mode 'partial' needs a layer range, e.g. partial:0-4 (layers 0..3, half-open)")
        rng = parse_layer_range(tm.layers, _num_layers(model))
        names = _layer_param_names(model, *rng)
        for name, p in model.named_parameters():
            p.requires_grad_(name in names)
        trained = model
        shown = f"layer {rng[0]}" if rng[1] - rng[0] == 1 else f"layers {rng[0]}..{rng[1] - 1}"
        desc = f"partial: only decoder {shown} train ([{rng[0]}, {rng[1]})); embeddings, norm and head frozen"
    elif tm.kind == "expert":
        if is_peft_model(model):
            raise ConfigError("mode 'expert' trains a plain MoE model, not one carrying LoRA adapters")
        chosen, attribution = select_experts(model, tm.experts, expert_batches, seed)
        names, count, restore, release = _prepare_experts(model, chosen)
        shown = ", ".join(f"{layer}.{e}" for layer, e in chosen)
        desc = f"expert: only routed expert(s) {shown} (layer.expert) and their routers train"
        total = count_parameters(model)
        desc += f" ({count:,} of {total:,} parameters trainable)"
        return PreparedModel(
            model, tm, desc, count, total, None, names, chosen, attribution, restore, release
        )
    else:  # lora
        if is_peft_model(model):
            raise ConfigError("the model already carries LoRA adapters; load the base model for a new run")
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=tm.lora_r,
            lora_alpha=tm.lora_alpha,
            lora_dropout=tm.lora_dropout,
            target_modules=list(tm.lora_targets),
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            with quiet_peft():
                trained = get_peft_model(model, config)
        except ValueError as exc:  # e.g. target modules not found in this architecture
            raise ConfigError(f"mode 'lora': {exc}") from exc
        rng = None
        desc = (
            f"LoRA r={tm.lora_r} alpha={tm.lora_alpha} dropout={tm.lora_dropout} on "
            f"{', '.join(tm.lora_targets)}; base weights frozen"
        )

    trainable = count_trainable(trained)
    total = count_parameters(trained)
    if trainable == 0:
        raise ConfigError(f"training mode {tm.kind!r} leaves no trainable parameter")
    names = [n for n, p in trained.named_parameters() if p.requires_grad]
    desc += f" ({trainable:,} of {total:,} parameters trainable)"
    return PreparedModel(trained, tm, desc, trainable, total, rng, names)


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


def save_trained(
    model: Any, tokenizer: Any, out_dir: str | os.PathLike[str], state_dict: dict[str, Any] | None = None
) -> Path:
    """Save a trained model and its tokenizer to ``out_dir`` (safetensors only).

    A ``PeftModel`` saves just its adapter; anything else saves the full weights. Writing to a
    fresh folder and renaming it into place is the caller's job (the trainer does that), so
    that a half-written folder never looks like a result. ``state_dict`` replaces the model's
    own (the weights gathered from DeepSpeed/FSDP shards, whose module holds only a shard).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(out, safe_serialization=True, **extra)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load_trained(path: str | os.PathLike[str], base_model: Any | None = None) -> Any:
    """Load what :func:`save_trained` wrote: an adapter onto ``base_model``, or a full model.

    For an adapter folder ``base_model`` must be the same base model the run started from
    (the adapter's ``base_model_name_or_path`` records which); the result is a ``PeftModel``.
    """
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        if base_model is None:
            raise ConfigError(f"{path} holds a LoRA adapter; pass the base model it was trained on")
        from peft import PeftModel

        with quiet_peft():
            return PeftModel.from_pretrained(base_model, path)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps a
    model: a FutureWarning on every LoRA run that is not the user's to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def remove_lora(model: torch.nn.Module, requires_grad: dict[str, bool] | None = None) -> None:
    """Take the LoRA layers that ``get_peft_model`` injected back out of ``model``, in place.

    LoRA trains only its own matrices, so the base model (``model`` itself: peft wraps it
    without copying) is bit for bit what it was once its original modules are back — this is
    peft's ``unload()`` without the ``PeftModel`` handle, so it also works after a training run
    that raised. ``requires_grad`` (``{name: flag}`` taken before) restores what peft froze.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(parent, name, child.get_base_layer())
    model.__dict__.pop("peft_config", None)
    if requires_grad is not None:
        for name, param in model.named_parameters():
            param.requires_grad_(requires_grad.get(name, param.requires_grad))


def merge_lora(model: Any, *, inplace: bool = False) -> Any:
    """A plain model with the LoRA adapter folded into its weights, for evaluation.

    ``inplace=False`` (default) merges a deep copy, leaving the ``PeftModel`` usable (and its
    base weights untouched) — costs one extra model in memory. ``inplace=True`` merges into the
    wrapped base model itself and returns it, which is cheaper but ends the ``PeftModel``.
    Evaluating the ``PeftModel`` directly gives the same outputs up to float rounding, with no
    merge at all. A model without adapters is returned as is.
    """
    if not is_peft_model(model):
        return model
    target = model if inplace else copy.deepcopy(model)
    return target.merge_and_unload()
