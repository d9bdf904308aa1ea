"""The one trainer every training method shares: batches, reference outputs, optimiser, guards.

A method (:mod:`rwku.methods.base`) only turns a batch into a loss. Everything else a run
needs lives here, once, so that GA, NPO, DPO, RT and the rest differ only in their formula:

* **Batches** are built once with :func:`rwku.methods.batches.build_batch` from the records in
  the order given (``hp.batch_size`` rows each, the last one possibly shorter). Their rows
  never change; only the *order* of batches is shuffled each epoch, with a generator seeded by
  ``seed``. This is what makes precomputation possible: a reference output belongs to a fixed
  batch. Methods with ``needs_retain`` get retain batch ``i mod R`` paired with forget batch
  ``i`` for the whole run. In the batch setting, :func:`mix_targets` interleaves the targets'
  records so that every batch holds several targets instead of one target after another.
* **No reference model.** Before the first update, on the original model, the trainer calls
  ``method.precompute(model, batch, retain_batch)`` for every batch and keeps the results
  (on the CPU). NPO's and DPO's reference log-likelihoods, KL's reference distributions and
  RMU's frozen activations therefore cost a few numbers per row instead of a second copy of
  the model — the memory a reference model would take is never allocated. For LoRA the
  precompute runs with the adapter disabled, which is exactly the original model.
* **Optimisation** as the reference's Hugging Face Trainer does it: AdamW (fused kernel on CPU and
  CUDA; weight decay on
  matrices only, not on norms and biases), cosine schedule with linear warm-up, gradient
  accumulation (``hp.grad_accum`` micro-batches per step, the last step of an epoch may have
  fewer), gradient clipping at 1.0, float32 on CPU and optional bf16/fp16 autocast on CUDA.
  The paper's 20 warm-up steps assume thousands of steps; a CPU-sized run may have ten, and
  20 warm-up steps would then never reach the learning rate at all. Warm-up is therefore
  capped at ``warmup_cap`` (default 10%) of the run's total steps; the report records the
  number actually used.
* **Memory**: before anything runs, the largest step's memory (optimizer state, activations,
  logits; :mod:`rwku.methods.memory`) is compared with the free memory, and a step that would
  not fit stops the run with a :class:`~rwku.errors.ConfigError` naming a batch size that fits,
  instead of a kernel OOM kill.
* **Guard rails** (see :class:`GuardRails`). A NaN or infinite loss (or gradient norm) stops
  the run with :class:`TrainingError`, status ``"diverged"``. A collapse — the model's greedy
  continuation of a fixed prompt turns into one token repeated, or a gradient-ascent-type loss
  runs away — stops it with status ``"collapsed"`` and the reason. Ctrl-C stops it with status
  ``"interrupted"``; the ``KeyboardInterrupt`` is re-raised after the run record is written.
* **Run record** (``run_dir``, optional): ``status.json`` is written atomically when the run
  starts (``"running"``) and when it ends, with ``train_report.json`` beside it. Weights are
  saved into a temporary folder and renamed to ``weights/`` only when complete, and only then
  is ``"finished"`` written: a folder whose status is not ``"finished"`` holds no result.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from rwku.errors import ConfigError, RwkuError
from rwku.io import atomic_write_json
from rwku.methods import distributed
from rwku.methods.base import Batch, Hyperparameters, UnlearningMethod, decoder_layers
from rwku.methods.batches import build_batch
from rwku.methods.memory import check_training_memory, file_backed_bytes
from rwku.methods.modes import TrainingMode, is_peft_model, parse_mode, prepare_model, save_trained
from rwku.models.packed import release_packed

__all__ = [
    "COLLAPSE_PROMPT",
    "GA_TYPE_METHODS",
    "GuardRails",
    "TrainReport",
    "TrainingError",
    "make_batches",
    "mix_targets",
    "plan_steps",
    "repetition",
    "train",
    "warmup_steps_for",
]

log = logging.getLogger(__name__)

COLLAPSE_PROMPT = "The capital of France is Paris. The largest ocean on Earth is"
"""Raw text (no chat template) whose greedy continuation the collapse check watches: general
knowledge no unlearning target is about, so a healthy unlearned model keeps continuing it."""

GA_TYPE_METHODS = frozenset({"ga", "ga_star", "graddiff", "kl"})
"""Methods whose loss contains −NLL and so has no lower bound: the ones that can run away.
A method class may say so itself with a ``unbounded_loss = True`` attribute."""

STATUS_FILE = "status.json"
REPORT_FILE = "train_report.json"
WEIGHTS_DIR = "weights"


class TrainingError(RwkuError):
    """Training stopped because it went wrong (NaN/inf loss); ``report`` says how far it got.

    Exit code 1 on the command line, like a collapsed run: the input was valid, the run failed.
    """

    exit_code = 1

    def __init__(self, message: str, report: TrainReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class GuardRails:
    """When to stop a run that has gone wrong.

    ``collapse_every`` steps (and after the last step) the model greedily continues
    ``collapse_prompt`` for ``collapse_tokens`` tokens; if one token makes up at least
    ``repeat_threshold`` of them, and the original model did not produce that very loop
    (a random or tiny model may loop from the start, which is not a collapse), the run has
    collapsed. ``None`` turns the check off. For GA-type methods the mean NLL of the forget
    text is ``−loss``; past ``explode_factor × ln(vocabulary)`` (three times the NLL of a
    uniform guess) the model is confidently predicting wrong tokens everywhere, which is
    collapse, not forgetting. ``stop_on_collapse=False`` keeps training and only records the
    reason (the paper reports collapsed batch-setting GA models, so one may want them).
    """

    collapse_every: int | None = 10
    collapse_prompt: str = COLLAPSE_PROMPT
    collapse_tokens: int = 16
    repeat_threshold: float = 0.9
    explode_factor: float | None = 3.0
    stop_on_collapse: bool = True


@dataclass
class TrainReport:
    """What happened in one run. ``status`` is one of running, finished, diverged, collapsed,
    interrupted, failed; only ``finished`` means the weights are a result."""

    status: str
    method: str = ""
    #: "full", "lora", "partial" or "expert"
    mode: str = ""
    mode_description: str = ""
    steps: int = 0
    total_steps: int = 0
    epochs: float = 0.0
    #: one value per optimiser step: the mean loss over its micro-batches
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    precompute_seconds: float = 0.0
    #: the process's peak resident memory so far (ru_maxrss): includes loading the model
    peak_rss_mb: float = 0.0
    #: torch.cuda.max_memory_allocated during the run, on CUDA
    peak_cuda_mb: float | None = None
    trainable_params: int = 0
    total_params: int = 0
    #: mode ``expert``: the trained experts, their attribution and the router anchor's weight
    experts: dict[str, Any] | None = None
    #: mixture-of-experts models: expert selection before/after on forget and retain text
    routing: dict[str, Any] | None = None
    warmup_steps: int = 0
    lr: float = 0.0
    reason: str | None = None
    #: collapse reasons seen when ``stop_on_collapse`` is off
    warnings: list[str] = field(default_factory=list)
    weights_dir: str | None = None
    #: the trained module (a PeftModel for LoRA); not serialised
    model: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, without the model (``dataclasses.asdict`` would deep-copy it)."""
        return {
            f.name: list(getattr(self, f.name)) if f.name in ("losses", "warnings") else getattr(self, f.name)
            for f in fields(self)
            if f.name != "model"
        }


class _Stop(Exception):
    """Internal: a guard rail fired."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Batches and the step plan
# --------------------------------------------------------------------------------------------


def mix_targets(corpora: Mapping[str, Sequence[Any]]) -> list[Any]:
    """Interleave several targets' records round-robin: a1, b1, c1, a2, b2, c2, ...

    The trainer batches records in the order given, so concatenating targets would make each
    batch about a single target and the model would unlearn them one after another. Round-robin
    makes every batch mix targets, as a shuffled joint corpus would, while staying deterministic.
    Targets with fewer records simply drop out of the rotation when they run out.
    """
    lists = [list(v) for v in corpora.values()]
    out: list[Any] = []
    for i in range(max((len(v) for v in lists), default=0)):
        out.extend(v[i] for v in lists if i < len(v))
    return out


def make_batches(
    corpus: str, records: Sequence[Mapping[str, Any]], tokenizer: Any, batch_size: int, max_length: int
) -> list[Batch]:
    """Consecutive chunks of ``batch_size`` records, each built once into tensors."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
    return [
        build_batch(corpus, records[i : i + batch_size], tokenizer, max_length)
        for i in range(0, len(records), batch_size)
    ]


def plan_steps(n_batches: int, epochs: float, grad_accum: int, seed: int) -> list[list[int]]:
    """The batch indices of every optimiser step: a seeded shuffle of the batches per epoch.

    ``epochs`` may be fractional (2.5 = two full epochs and half of a third); each epoch's
    batches are grouped ``grad_accum`` at a time, the last group of an epoch possibly smaller,
    as the Hugging Face Trainer steps at every epoch end.
    """
    if n_batches < 1:
        raise ConfigError("no training batches: the forget corpus is empty")
    if epochs <= 0 or grad_accum < 1:
        raise ConfigError(f"epochs must be > 0 and grad_accum >= 1 (got {epochs}, {grad_accum})")
    gen = torch.Generator().manual_seed(seed)
    remaining = max(1, round(epochs * n_batches))
    steps: list[list[int]] = []
    while remaining > 0:
        order = torch.randperm(n_batches, generator=gen).tolist()[: min(n_batches, remaining)]
        remaining -= len(order)
        steps.extend(order[i : i + grad_accum] for i in range(0, len(order), grad_accum))
    return steps


def warmup_steps_for(total_steps: int, requested: int, cap: float = 0.1) -> int:
    """``requested`` warm-up steps, but at most ``cap × total_steps`` (see the module doc)."""
    return max(0, min(int(requested), int(cap * total_steps)))


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _to(obj: Any, device: torch.device | str) -> Any:
    """Move tensors (inside dicts, lists and tuples too) to ``device``; detach nothing else."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def _detached_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, Mapping):
        return {k: _detached_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detached_cpu(v) for v in obj)
    return obj


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` in MiB (Linux); None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB, since it started or since the last
    :func:`reset_peak_rss` (Linux: ``VmHWM``; elsewhere ``ru_maxrss``, the whole lifetime —
    KiB on Linux, bytes on macOS)."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rss_mb() -> float | None:
    """Resident set size of this process now, in MiB (Linux ``VmRSS``; None elsewhere)."""
    return _proc_status_mb("VmRSS")


def reset_peak_rss() -> str:
    """Start a new peak for :func:`peak_rss_mb`; returns the scope later peaks have: ``"run"``
    when reset, ``"process"`` where the platform cannot (then a sweep process's later cells
    report the peak of any earlier cell as well).

    Why: a sweep runs many cells in one process, and the lifetime peak made every cell after a
    full fine-tuning report that fine-tuning's memory. Linux (≥ 4.0) resets the high-water mark
    when "5" is written to ``/proc/self/clear_refs``.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return "run"
    except OSError:
        return "process"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _original_model(model: Any) -> Iterator[None]:
    """The original model's function: LoRA adapters disabled (a plain model is the original)."""
    if is_peft_model(model):
        with model.disable_adapter():
            yield
    else:
        yield


def repetition(tokens: Sequence[int]) -> tuple[int | None, float]:
    """The most frequent token and its share of ``tokens`` ((None, 0.0) when empty)."""
    if not tokens:
        return None, 0.0
    token, count = Counter(tokens).most_common(1)[0]
    return token, count / len(tokens)


@torch.no_grad()
def greedy_tokens(model: Any, tokenizer: Any, prompt: str, n: int, precision: str = "fp32") -> list[int]:
    """``n`` greedy next tokens after ``prompt`` (raw text), without stopping at eos.

    A plain loop rather than ``generate``: it works the same on PEFT-wrapped models, ignores
    generation configs, and always yields ``n`` tokens, so the repetition share is comparable.
    """
    device = _device_of(model)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False).input_ids], device=device)
    out: list[int] = []
    was_training = model.training
    model.eval()
    try:
        with _autocast(device, precision):
            for _ in range(n):
                logits = model(input_ids=ids, use_cache=False).logits[0, -1]
                nxt = int(logits.float().argmax())
                out.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]], device=device)], dim=1)
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------------------------
# Run record
# --------------------------------------------------------------------------------------------


class _RunRecord:
    """``status.json``, ``train_report.json`` and the weights folder of one run (or nothing)."""

    def __init__(self, run_dir: str | os.PathLike[str] | None, header: dict[str, Any]) -> None:
        self.dir = Path(run_dir) if run_dir is not None else None
        self.header = header
        self.tmp: Path | None = None
        self.saved: Path | None = None

    def start(self) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        # A rerun replaces the previous result: stale weights must never sit beside a new status.
        for stale in [self.dir / WEIGHTS_DIR, *self.dir.glob(f".{WEIGHTS_DIR}.tmp-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        (self.dir / REPORT_FILE).unlink(missing_ok=True)
        self.status("running", None)

    def status(self, status: str, reason: str | None, **more: Any) -> None:
        if self.dir is not None:
            atomic_write_json(
                self.dir / STATUS_FILE,
                {"status": status, "reason": reason, **self.header, **more, "time": _now()},
            )

    def save(self, model: Any, tokenizer: Any, state_dict: dict[str, Any] | None = None) -> Path | None:
        """Save into a temporary folder, then rename it to ``weights/`` in one step."""
        if self.dir is None:
            return None
        self.tmp = self.dir / f".{WEIGHTS_DIR}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        save_trained(model, tokenizer, self.tmp, state_dict=state_dict)
        final = self.dir / WEIGHTS_DIR
        shutil.rmtree(final, ignore_errors=True)
        os.replace(self.tmp, final)
        self.tmp, self.saved = None, final
        return final

    def discard(self) -> None:
        """Remove whatever this run saved: an unfinished run leaves no weights behind."""
        for path in (self.tmp, self.saved):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        self.tmp = self.saved = None

    def finish(self, report: TrainReport) -> None:
        if self.dir is None:
            return
        if report.status != "finished":
            self.discard()
            report.weights_dir = None
        atomic_write_json(self.dir / REPORT_FILE, report.to_dict())
        self.status(report.status, report.reason, steps=report.steps, total_steps=report.total_steps)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _is_ga_type(method: UnlearningMethod) -> bool:
    flag = getattr(method, "unbounded_loss", None)
    return bool(flag) if flag is not None else method.name in GA_TYPE_METHODS


def _resolve_mode(mode: str | TrainingMode, method: UnlearningMethod, model: torch.nn.Module) -> TrainingMode:
    """A ``partial`` mode without a range takes the method's own (RMU's ``trainable_layers``)."""
    tm = parse_mode(mode)
    if tm.kind == "partial" and tm.layers is None and hasattr(method, "trainable_layers"):
        lo, hi = method.trainable_layers(len(decoder_layers(model)))
        tm = TrainingMode(kind="partial", layers=(lo, hi))
    return tm


def _anchored(experts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (layer, expert) pairs the router anchor pulls toward: per trained layer, its
    best-ranked trained expert (``experts`` is best-attributed first)."""
    seen: dict[int, int] = {}
    for layer, expert in experts:
        seen.setdefault(layer, expert)
    return list(seen.items())


def _anchor_for(prepared: Any, method: UnlearningMethod) -> Callable[[Any, Batch], torch.Tensor] | None:
    """``α × L_anchor`` on a forget batch (or None without an anchor).

    The router anchor (UOE/SEUF Eq. 3) pulls a layer's routing of the forget text toward the
    trained expert. The paper trains one expert; with several, every trained layer is anchored
    to its best-ranked trained expert, each with weight α (two experts of one layer cannot both
    be the one-hot target: the lower-ranked one is trained, not anchored). Its value comes
    from one forward pass of the batch that stops at the deepest anchored router.
    """
    alpha = method.anchor
    if not alpha or not prepared.experts:
        return None
    from rwku.models.moe import moe_layers, router_anchor

    by_index = {ly.index: ly for ly in moe_layers(prepared.model)}
    anchors = [(by_index[layer], expert) for layer, expert in _anchored(prepared.experts)]
    return lambda model, batch: alpha * router_anchor(model, anchors, batch)


def _experts_record(prepared: Any, method: UnlearningMethod) -> dict[str, Any] | None:
    """The report's ``experts`` entry for mode ``expert`` (None otherwise)."""
    if prepared.mode.kind != "expert":
        return None
    out: dict[str, Any] = {
        "selection": prepared.mode.experts or "1",
        "trained": [f"{layer}.{e}" for layer, e in prepared.experts],
        "anchor": method.anchor,
    }
    if method.anchor:
        out["anchored"] = [f"{layer}.{e}" for layer, e in _anchored(prepared.experts)]
    att = prepared.attribution
    if att is not None:
        out["attribution"] = [
            {"expert": f"{layer}.{e}", "affinity": round(s, 6), "ratio": round(att.ratio(layer, e), 4)}
            for layer, e, s in att.ranked()[:10]
        ]
        out["attribution_tokens"] = att.tokens
    return out


class MoEWatch:
    """Routing diagnostics of a mixture-of-experts run: the expert selection on the forget
    batches and on retain/probe batches before training, again after, and the shift."""

    def __init__(self, model: Any, forget: list[Batch], probes: list[Batch], device: torch.device) -> None:
        from rwku.models.moe import moe_layers, routing

        self.layers = moe_layers(model)
        self.sets = {"forget": [_to(b, device) for b in forget], "retain": [_to(b, device) for b in probes]}
        self.sets = {k: v for k, v in self.sets.items() if v}
        self.before = {k: routing(model, v, self.layers) for k, v in self.sets.items()}

    @classmethod
    def start(
        cls, model: Any, forget: list[Batch], probes: list[Batch], device: torch.device
    ) -> MoEWatch | None:
        from rwku.models.moe import is_moe

        return cls(model, forget, probes, device) if is_moe(model) else None

    def finish(self, model: Any) -> dict[str, Any]:
        from rwku.models.moe import moe_layers, routing, selection_shift, selection_stats

        layers = moe_layers(model)  # the same modules (expert mode never wraps the model)
        out: dict[str, Any] = {}
        for name, batches in self.sets.items():
            after = routing(model, batches, layers)
            out[name] = {
                "before": selection_stats(self.before[name]),
                "after": selection_stats(after),
                "shift": selection_shift(self.before[name], after),
            }
        return out


def _vocab_size(model: Any, tokenizer: Any) -> int:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if size else len(tokenizer)


def _enable_checkpointing(model: Any) -> None:
    """Turn on transformers' gradient checkpointing (non-reentrant: LoRA's frozen inputs need no
    ``requires_grad`` trick), or say clearly that the model cannot."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(base).__name__} does not support gradient checkpointing")
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _checkpointing(model: Any) -> bool:
    if hasattr(model, "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def _disable_checkpointing(model: Any) -> None:
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def _mark_updated(params: Sequence[torch.Tensor]) -> None:
    """Bump the in-place version counter of every trained parameter after an optimizer step.

    The fused AdamW kernel writes the parameters without moving their version counters, and
    the evaluation engine keys its prepacked weights (:mod:`rwku.models.packed`) on them: a
    model evaluated before training (``rwku run``'s before, the relearning attack's budgets)
    was then evaluated after training on its *old* weights. Bumping the counters is free and
    restores the contract every version-keyed cache relies on."""
    for p in params:
        torch.autograd.graph.increment_version(p)


def train(
    model: torch.nn.Module,
    tokenizer: Any,
    method: UnlearningMethod,
    records: Sequence[Mapping[str, Any]],
    *,
    hp: Hyperparameters,
    mode: str | TrainingMode = "full",
    retain_records: Sequence[Mapping[str, Any]] | None = None,
    probe_records: Sequence[Mapping[str, Any]] | None = None,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[float, Any], None] | None = None,
    on_checkpoint: Callable[[int, Any], None] | None = None,
    checkpoint_steps: Collection[int] = (),
    run_dir: str | os.PathLike[str] | None = None,
    guards: GuardRails | None = None,
    precision: str = "fp32",
    warmup_cap: float = 0.1,
    max_grad_norm: float = 1.0,
    accelerator: Any | None = None,
    gradient_checkpointing: bool = False,
) -> TrainReport:
    """Unlearn with ``method`` on ``records`` and return a :class:`TrainReport`.

    ``model`` is trained in place (for ``lora`` it is wrapped; the wrapper is
    ``report.model``). ``mode`` is ``"full"``, ``"lora"``, ``"partial:a-b"`` (half-open layer
    range) or a :class:`~rwku.methods.modes.TrainingMode`. ``records`` are the method's corpus
    records (several targets' records may be mixed; see :func:`mix_targets`);
    ``retain_records`` are raw-text passages for methods that need retain data;
    ``probe_records`` (raw-text passages) are text the routing diagnostics of a
    mixture-of-experts model also read when the method has no retain data. ``on_step`` is
    called as ``on_step(step, loss)`` after every optimiser step (1-based). ``on_epoch`` is
    called as ``on_epoch(epochs_done, model)`` with the model in eval mode at the end of every
    epoch (and after a fractional last one): one run then yields a whole trade-off curve across
    epochs, instead of one run per epoch count with a different schedule. ``on_checkpoint``
    is called the same way, as ``on_checkpoint(step, model)``, after each of
    ``checkpoint_steps`` (a relearning attack evaluates its step budgets along one run).
    ``precision`` is
    ``fp32``, or ``bf16``/``fp16`` autocast on CUDA only. ``accelerator`` (an
    ``accelerate.Accelerator``) runs the updates through it, for ``accelerate launch`` with
    DeepSpeed ZeRO-3 or FSDP (:mod:`rwku.methods.distributed`); mixed precision then comes
    from the launcher's config. ``gradient_checkpointing`` recomputes each decoder layer's
    activations in the backward pass (transformers' non-reentrant checkpointing, on for the
    training steps only): the same updates in less memory, for one more forward pass per step.

    Returns normally with status ``finished`` or (a guard rail fired) ``collapsed``; raises
    :class:`TrainingError` for ``diverged`` and re-raises ``KeyboardInterrupt`` (``interrupted``)
    and any other exception (``failed``) after ``run_dir`` records the outcome.
    """
    guards = guards or GuardRails()
    if method.kind != "training" or method.corpus is None:
        raise ConfigError(f"method {method.name!r} does not train (it is applied at evaluation time)")
    if not records:
        raise ConfigError(f"method {method.name!r}: the forget corpus is empty")
    if method.needs_retain and not retain_records:
        raise ConfigError(f"method {method.name!r} needs retain passages (retain_records)")
    device = accelerator.device if accelerator is not None else _device_of(model)
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
    if precision != "fp32" and device.type != "cuda":
        raise ConfigError(f"{precision} autocast is only supported on CUDA; train in fp32 on {device.type}")
    tm = _resolve_mode(mode, method, model)
    if method.anchor and tm.kind != "expert":
        raise ConfigError("option anchor (the router anchor) only applies to mode 'expert'")
    if (
        tm.kind == "expert"
        and accelerator is not None
        and accelerator.distributed_type in ("DEEPSPEED", "FSDP")
    ):
        raise ConfigError(
            "mode 'expert' masks slices of fused expert tensors, which DeepSpeed/FSDP shard; use DDP"
        )

    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    report = TrainReport(status="running", method=method.name, mode=tm.kind, lr=hp.lr)
    record = _RunRecord(run_dir, {"method": method.name, "mode": tm.kind, "seed": seed})
    record.start()
    bar = None
    was_training = model.training
    trained: Any = model
    prepared = None
    try:
        # The engine's packed copy of the weights (from an evaluation before training) is stale
        # once they change, and a whole second model in memory while training: drop it.
        release_packed(model)
        batches = make_batches(method.corpus, records, tokenizer, hp.batch_size, hp.max_length)
        retains: list[Batch | None] = [None]
        if method.needs_retain:
            assert retain_records is not None
            retains = list(make_batches("passages", retain_records, tokenizer, hp.batch_size, hp.max_length))
        probes = [r for r in retains if r is not None]
        if not probes and probe_records:
            probes = make_batches("passages", probe_records, tokenizer, hp.batch_size, hp.max_length)
        moe = MoEWatch.start(model, batches, probes, device)

        # LoRA's A matrices are drawn at random: seed them without touching the caller's RNG.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            on_device = [_to(b, device) for b in batches] if tm.kind == "expert" else None
            prepared = prepare_model(model, tm, expert_batches=on_device, seed=seed)
        trained = report.model = prepared.model
        report.mode_description = prepared.description
        report.trainable_params, report.total_params = prepared.trainable_params, prepared.total_params
        if gradient_checkpointing:
            _enable_checkpointing(trained)
        anchor = _anchor_for(prepared, method)
        report.experts = _experts_record(prepared, method)
        log.info("%s: %s", method.name, prepared.description)

        def retain_for(i: int) -> Batch | None:
            return retains[i % len(retains)]

        if accelerator is None:  # refuse a step that cannot fit rather than be killed (memory.py)
            check_training_memory(
                getattr(model, "config", None),
                prepared.trainable_params,
                batches,
                retains,
                device=str(device),
                batch_size=hp.batch_size,
                grad_accum=hp.grad_accum,
                checkpointing=gradient_checkpointing,
                mapped=file_backed_bytes(p for p in trained.parameters() if p.requires_grad),
            )

        # What the loss needs from the original model, computed before any update (module doc).
        trained.eval()
        extras: list[dict[str, Any]] = []
        with torch.no_grad(), _original_model(trained), _autocast(device, precision):
            for i, batch in enumerate(batches):
                retain = retain_for(i)
                pre = method.precompute(trained, _to(batch, device), _to(retain, device))
                extras.append(_detached_cpu(pre))
        report.precompute_seconds = time.perf_counter() - t0

        plan = plan_steps(len(batches), hp.epochs, hp.grad_accum, seed)
        report.total_steps = len(plan)
        report.warmup_steps = warmup_steps_for(len(plan), hp.warmup_steps, warmup_cap)

        from transformers import get_cosine_schedule_with_warmup

        params = [p for p in trained.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": hp.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        # The fused kernel: one pass over parameters and both moments instead of a loop of
        # elementwise ops (measured on this project's 2-core CPU, 132M float32 parameters, one
        # thread, scripts/bench_optimizer.py: 1.95 s → 0.30 s per step, most of a full-mode step
        # on the default model; values differ only by float rounding order). Not under DeepSpeed or FSDP, whose
        # sharded parameters bring their own optimizer handling.
        sharded = accelerator is not None and accelerator.distributed_type in ("DEEPSPEED", "FSDP")
        fused = not sharded and device.type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.lr, fused=fused or None)
        scheduler = get_cosine_schedule_with_warmup(optimizer, report.warmup_steps, len(plan))
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

        baseline: list[int] | None = None
        if guards.collapse_every:
            with _original_model(trained):
                baseline = greedy_tokens(
                    trained, tokenizer, guards.collapse_prompt, guards.collapse_tokens, precision
                )
        explode_at = (
            guards.explode_factor * math.log(_vocab_size(trained, tokenizer))
            if guards.explode_factor is not None and _is_ga_type(method)
            else None
        )

        def collapsed() -> str | None:
            assert baseline is not None
            tokens = greedy_tokens(
                trained, tokenizer, guards.collapse_prompt, guards.collapse_tokens, precision
            )
            token, share = repetition(tokens)
            base_token, base_share = repetition(baseline)
            if share >= guards.repeat_threshold and not (
                base_share >= guards.repeat_threshold and base_token == token
            ):
                text = tokenizer.decode([token]) if token is not None else ""
                return (
                    f"greedy output repeats one token ({text!r}, id {token}) in {share:.0%} of "
                    f"{len(tokens)} tokens after {guards.collapse_prompt!r}"
                )
            return None

        def guard(reason: str | None) -> None:
            if reason is None:
                return
            if guards.stop_on_collapse:
                raise _Stop("collapsed", reason)
            log.warning("%s: collapse at step %d: %s", method.name, report.steps, reason)
            report.warnings.append(f"step {report.steps}: {reason}")

        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(plan), desc=f"{method.name} ({tm.kind})", unit="step", leave=False)
        if accelerator is not None:  # wrap for DeepSpeed/FSDP/DDP once everything before is done
            trained, optimizer = distributed.prepare(accelerator, trained, optimizer)
        n_batches = len(batches)
        micro_done = 0
        trained.train()
        for step, group in enumerate(plan, 1):
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for j, i in enumerate(group):
                retain = retain_for(i)
                ctx = _to(extras[i], device)
                if retain is not None:
                    ctx = {**ctx, "retain_batch": _to(retain, device)}
                with _autocast(device, precision):
                    loss = method.loss(trained, _to(batches[i], device), ctx)
                    if anchor is not None:
                        loss = loss + anchor(trained, _to(batches[i], device))
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise _Stop("diverged", f"loss is {value} at step {step} (batch {i})")
                scaled = loss / len(group)
                if accelerator is not None:
                    distributed.backward(accelerator, scaled, last_micro_batch=j == len(group) - 1)
                else:
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                step_loss += value / len(group)
                micro_done += 1
            if scaler is not None:
                scaler.unscale_(optimizer)
            if accelerator is not None:
                norm = distributed.clip(accelerator, trained, max_grad_norm)
            else:
                norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
            if scaler is not None:  # fp16 overflow: the scaler skips the step and lowers its scale
                scaler.step(optimizer)
                scaler.update()
            elif norm is not None and not math.isfinite(norm):
                raise _Stop("diverged", f"gradient norm is {norm} at step {step}")
            else:
                optimizer.step()
            _mark_updated(params)
            if prepared.after_step is not None:
                prepared.after_step()
            scheduler.step()
            report.steps = step
            report.epochs = micro_done / n_batches
            report.losses.append(step_loss)
            if bar is not None:
                bar.set_postfix(loss=f"{step_loss:.4g}")
                bar.update(1)
            if on_step is not None:
                on_step(step, step_loss)
            if explode_at is not None and -step_loss > explode_at:
                guard(
                    f"forget NLL {-step_loss:.1f} passed {explode_at:.1f} "
                    f"({guards.explode_factor:g} x ln(vocabulary)): the loss is running away"
                )
            if guards.collapse_every and (step % guards.collapse_every == 0 or step == len(plan)):
                guard(collapsed())
            if on_checkpoint is not None and step in checkpoint_steps:
                trained.eval()
                on_checkpoint(step, trained)
                trained.train()
            if on_epoch is not None and (micro_done % n_batches == 0 or step == len(plan)):
                trained.eval()
                on_epoch(report.epochs, trained)
                trained.train()

        if bar is not None:
            bar.close()
            bar = None
        trained.eval()
        report.routing = moe.finish(trained) if moe is not None else None
        state = None
        if accelerator is not None:  # gathering sharded weights is collective: every process
            trained, state = distributed.gather_for_save(accelerator, trained)
            report.model = trained
        if run_dir is not None and distributed.is_main_process(accelerator):
            report.weights_dir = str(record.save(trained, tokenizer, state_dict=state))
        report.status = "finished"
    except _Stop as stop:
        report.status, report.reason = stop.status, stop.reason
        if accelerator is not None:  # a collapsed run is still evaluated: hand back the module
            report.model = distributed.unwrap(accelerator, trained)
        _close(report, bar, trained, was_training, t0, device, prepared, gradient_checkpointing)
        record.finish(report)
        if stop.status == "diverged":
            raise TrainingError(f"{method.name} training diverged: {stop.reason}", report) from None
        log.warning("%s training stopped: %s", method.name, stop.reason)
        return report
    except KeyboardInterrupt:
        report.status, report.reason = "interrupted", f"interrupted after {report.steps} steps"
        _close(report, bar, trained, was_training, t0, device, prepared, gradient_checkpointing)
        record.finish(report)
        raise
    except BaseException as exc:
        report.status, report.reason = "failed", f"{type(exc).__name__}: {exc}"
        _close(report, bar, trained, was_training, t0, device, prepared, gradient_checkpointing)
        record.finish(report)
        raise
    _close(report, bar, trained, was_training, t0, device, prepared, gradient_checkpointing)
    record.finish(report)
    return report


def _close(
    report: TrainReport,
    bar: Any,
    model: Any,
    was_training: bool,
    t0: float,
    device: torch.device,
    prepared: Any = None,
    checkpointing: bool = False,
) -> None:
    """Fill the report's time and memory, close the bar, put the model back in its mode and
    remove what preparing the mode installed (expert mode's gradient hooks, checkpointing)."""
    if prepared is not None and prepared.release is not None:
        prepared.release()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if checkpointing and _checkpointing(base):
        _disable_checkpointing(base)
    if bar is not None:
        bar.close()
    model.train(was_training)
    report.seconds = time.perf_counter() - t0
    report.peak_rss_mb = peak_rss_mb()
    if device.type == "cuda":
        report.peak_cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20
