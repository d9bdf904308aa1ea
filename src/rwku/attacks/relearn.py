"""The relearning attack: a few steps of fine-tuning, and how much of the target comes back.

Reads top to bottom (:func:`run_relearn`):

1. split the target's forget probes in two halves (:func:`rwku.attacks.data.split_probes`);
   every number below is measured on the evaluated half only;
2. evaluate the original model there (from the result cache when it can);
3. for each data kind (``split``, ``related``, ``unrelated``): fine-tune a copy of the
   original model for ``max(budgets)`` steps, evaluating after each budget along the way
   (one run, one schedule) — the control that says how much the data teaches by itself
   (cached: every method attacked on the same target shares it) — then, once the original
   model's work is done (the subject holds one model at a time), evaluate the unlearned
   model and do the same to it;
4. recovery R and the control's teaching ratio T per metric and budget
   (:mod:`rwku.attacks.recovery`).

The fine-tuning is plain next-token NLL on the relearning text (no chat template), AdamW with
a short warm-up and cosine decay over the largest budget, in ``full`` or ``lora`` mode, through
the same trainer as the unlearning methods. Learning rates per mode come from the search in
docs/attacks.md (``scripts/search_relearn.py``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from rwku.attacks.data import DATA_KINDS, DATA_RULE, RelearnData, build_relearn_data, split_probes
from rwku.attacks.recovery import METRICS, probe_metrics, recovery, teaching
from rwku.errors import ConfigError
from rwku.methods.base import UnlearningMethod, forward_logits
from rwku.methods.losses import token_nll_mean

#: Learning rates of the attacker's fine-tuning per mode (scripts/search_relearn.py, docs/attacks.md).
RELEARN_LR = {"full": 3e-5, "lora": 1e-3}
RELEARN_MODES = ("full", "lora")
DEFAULT_BUDGETS = (0, 10, 25, 50)


class Relearn(UnlearningMethod):
    """Plain fine-tuning (descent on the text's NLL); not an unlearning method, so not registered."""

    name: ClassVar[str] = "relearn"
    description: ClassVar[str] = "Relearning attack: fine-tune on text."
    corpus: ClassVar[str | None] = "passages"

    def loss(self, model, batch, ctx):
        return token_nll_mean(forward_logits(model, batch), batch["labels"])


@dataclass(frozen=True)
class RelearnOptions:
    """What a relearning attack does; every field is also a key of a sweep's ``attacks.relearn``."""

    kinds: tuple[str, ...] = DATA_KINDS
    budgets: tuple[int, ...] = DEFAULT_BUDGETS
    mode: str = "full"
    lr: float | None = None  # None: RELEARN_LR[mode]
    batch_size: int = 4
    max_length: int = 128
    seed: int = 0
    split_seed: int = 0
    controls: bool = True

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, source: str = "relearn options") -> RelearnOptions:
        raw = dict(raw or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        for key in ("kinds", "budgets"):
            if key in raw:
                value = raw[key]
                if isinstance(value, str):
                    value = [v.strip() for v in value.split(",") if v.strip()]
                if not isinstance(value, (list, tuple)):
                    raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
                raw[key] = tuple(value)
        if "budgets" in raw:
            try:
                raw["budgets"] = tuple(int(b) for b in raw["budgets"])
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{source}: budgets must be step counts, got {list(raw['budgets'])!r}"
                ) from None
        opts = cls(**raw)
        opts.validate(source)
        return opts

    def validate(self, source: str = "relearn options") -> None:
        for kind in self.kinds:
            if kind not in DATA_KINDS:
                raise ConfigError(
                    f"{source}: unknown data kind {kind!r}; choose from: {', '.join(DATA_KINDS)}"
                )
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ConfigError(
                f"{source}: kinds must name each data kind at most once, got {list(self.kinds)}"
            )
        b = list(self.budgets)
        if not b or any(x < 0 for x in b) or any(y <= x for x, y in zip(b, b[1:])):
            raise ConfigError(
                f"{source}: budgets must be increasing step counts >= 0, e.g. 0,10,25,50; got {b}"
            )
        if self.mode not in RELEARN_MODES:
            raise ConfigError(f"{source}: mode must be one of {', '.join(RELEARN_MODES)}, got {self.mode!r}")
        for key in ("batch_size", "max_length"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"{source}: {key} must be a positive integer, got {getattr(self, key)!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"{source}: lr must be a positive number, got {self.lr!r}")

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else RELEARN_LR[self.mode])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(kinds=list(self.kinds), budgets=list(self.budgets), lr=self.learning_rate)
        return out

    def training_key(self) -> str:
        """What a fine-tuning run's numbers depend on (not ``kinds`` or ``controls``)."""
        keep = {k: v for k, v in self.to_dict().items() if k not in ("kinds", "controls")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class _Context:
    """What every step of one attack shares."""

    subject: Any
    target: Any
    evaluated: dict[str, list]
    opts: RelearnOptions
    progress: bool
    cache: Any
    data_key: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def _data_key(evaluated: dict[str, list], extra: Any = None) -> str:
    blob = json.dumps(
        [[p.level, p.type, p.query, p.answer] for ps in evaluated.values() for p in ps] + [extra],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate_half(ctx: _Context, model, which: str) -> dict[str, float | None]:
    """The attack metrics of ``model`` on the evaluated half (with the run's prefix/hooks if unlearned)."""
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.suites.probes import run_probes

    lm = ctx.subject.lm
    lm.model = model
    undo = ctx.subject.guard(model, which, ctx.target)
    try:
        cfg = EvalConfig(prompt_prefix=ctx.subject.prefix_for(which))
        result = run_probes(lm, ctx.evaluated, cfg, "forget")
    finally:
        if undo is not None:
            undo()
    return probe_metrics(result.scores)


#: Bumped when cached control curves computed by an earlier version are wrong: 2 = after the
#: fused-optimizer fix (the relearning budgets had been evaluated on the weights of step 0).
CONTROL_CACHE_VERSION = 2


def _cached(ctx: _Context, suite: str, compute: Callable[[], Any], data_key: str | None = None) -> Any:
    """The original model's numbers are the same for every run on this target: cache them."""
    from rwku import PROTOCOL

    if ctx.cache is None:
        return compute()
    key = ctx.cache.key(
        model=ctx.subject.fingerprint,
        target=ctx.target.name,
        suite=suite,
        protocol=PROTOCOL,
        controls=str(CONTROL_CACHE_VERSION),
        config=ctx.opts.training_key(),
        data=data_key or ctx.data_key,
    )
    return ctx.cache.value(key, compute)


def relearn_curve(
    ctx: _Context, which: str, data: RelearnData, start: dict[str, float | None] | None = None
) -> list[dict[str, Any]]:
    """Fine-tune a fresh copy of ``which`` on ``data``; the metrics after every budget.

    ``start``: the metrics of ``which`` itself, already measured (step 0 is then not
    evaluated again: it is the same model on the same probes for every data kind).
    In ``lora`` mode there is no copy: the adapters go onto the model itself, whose weights
    LoRA never changes, and come off again afterwards (:func:`rwku.methods.modes.remove_lora`)
    — one model less in memory, which decides whether a 1.5B model can be attacked in 24 GB."""
    from rwku.methods import Hyperparameters
    from rwku.methods.modes import remove_lora
    from rwku.methods.trainer import GuardRails, train

    opts = ctx.opts
    points: list[dict[str, Any]] = []
    steps = [b for b in opts.budgets if b > 0]
    shared = opts.mode == "lora" and bool(steps)
    model = ctx.subject.model(which) if shared else ctx.subject.fresh(which)
    if 0 in opts.budgets:
        metrics = dict(start) if start is not None else evaluate_half(ctx, model, which)
        points.append({"step": 0, "metrics": metrics})
    if not steps:
        return points
    n_batches = -(-len(data.records) // opts.batch_size)
    hp = Hyperparameters(
        lr=opts.learning_rate,
        batch_size=opts.batch_size,
        epochs=max(steps) / n_batches,
        max_length=opts.max_length,
    )
    losses: list[float] = []

    def checkpoint(step: int, trained) -> None:
        points.append(
            {
                "step": step,
                "metrics": evaluate_half(ctx, trained, which),
                "loss": round(sum(losses[-5:]) / max(1, len(losses[-5:])), 4),
            }
        )

    flags = {n: p.requires_grad for n, p in model.named_parameters()} if shared else None
    try:
        report = train(
            model,
            ctx.subject.tokenizer,
            Relearn(),
            data.records,
            hp=hp,
            mode=opts.mode,
            seed=opts.seed,
            progress=ctx.progress,
            guards=GuardRails(collapse_every=None, explode_factor=None),
            on_step=lambda _s, loss: losses.append(loss),
            on_checkpoint=checkpoint,
            checkpoint_steps=set(steps),
        )
    finally:
        if shared:
            remove_lora(model, flags)
            model.eval()
    if report.status != "finished":
        raise ConfigError(f"relearning {which} on {data.kind} stopped: {report.status} ({report.reason})")
    del model, report
    return points


def run_relearn(
    subject,
    rwku_data,
    target_data,
    opts: RelearnOptions | None = None,
    *,
    log: Callable[[str], None] = print,
    progress: bool = True,
    cache: Any = None,
) -> dict[str, Any]:
    """The relearning attack on one target of ``subject`` (see the module doc); the record."""
    import gc

    opts = opts or RelearnOptions()
    started = time.perf_counter()
    train_half, evaluated = split_probes(target_data, opts.split_seed)
    ctx = _Context(subject, target_data.target, evaluated, opts, progress, cache)
    ctx.data_key = _data_key(evaluated)
    # the data first: a missing passage corpus fails before any model time is spent
    datasets = {k: build_relearn_data(k, rwku_data, target_data, train_half, evaluated) for k in opts.kinds}
    log(
        f"relearning attack on {target_data.target.name}: {sum(map(len, evaluated.values()))} evaluated probes"
    )
    # the original model's work first, then the unlearned one's: the subject holds one model at a
    # time (rwku.attacks.subject), so this order switches once
    original = _cached(ctx, "relearn:original", lambda: evaluate_half(ctx, subject.original, "original"))
    controls: dict[str, list[dict[str, Any]]] = {}
    control_seconds: dict[str, float] = {}
    for kind, data in datasets.items():
        if opts.controls and data.records:
            t0 = time.perf_counter()
            controls[kind] = _cached(
                ctx,
                f"relearn:control:{kind}",
                lambda d=data: relearn_curve(ctx, "original", d, start=original),
                data_key=_data_key(evaluated, data.records),
            )
            control_seconds[kind] = time.perf_counter() - t0
    unlearned = evaluate_half(ctx, subject.unlearned, "unlearned")
    curves: dict[str, Any] = {}
    for kind, data in datasets.items():
        t0 = time.perf_counter()
        if not data.records:
            log(f"  {kind}: no training text left after the answer filter; not measurable")
            curves[kind] = {
                "data": data.summary(),
                "skipped": "no training text left after the answer filter",
            }
            continue
        log(f"  {kind}: {len(data.records)} records, steps {list(opts.budgets)}")
        att = relearn_curve(ctx, "unlearned", data, start=unlearned)
        for point in att:
            point["recovery"] = recovery(point["metrics"], unlearned, original)
        entry: dict[str, Any] = {"data": data.summary(), "unlearned": att}
        if kind in controls:
            ctl = controls[kind]
            for point in ctl:
                point["teaching"] = teaching(point["metrics"], unlearned, original)
            entry["original"] = ctl
        curves[kind] = entry
        ctx.timings[kind] = round(time.perf_counter() - t0 + control_seconds.get(kind, 0.0), 1)
        gc.collect()
    ctx.timings["total"] = round(time.perf_counter() - started, 1)
    return {
        "attack": "relearn",
        "data_rule": DATA_RULE,
        "target": target_data.target.name,
        "run": subject.run.describe(),
        "model": {k: subject.info.get(k) for k in ("name", "fingerprint", "num_parameters")},
        "options": opts.to_dict(),
        "split": {
            "seed": opts.split_seed,
            "evaluated": {lv: len(ps) for lv, ps in evaluated.items()},
            "train": {lv: len(ps) for lv, ps in train_half.items()},
        },
        "metrics": list(METRICS),
        "original": original,
        "unlearned": unlearned,
        "curves": curves,
        "timings": ctx.timings,
    }
