"""The unlearning recipe: one target (or several at once), one method, one mode — top to bottom.

1. open the data and the original model;
2. evaluate the original model (from the result cache when it has been evaluated before);
3. get the forget corpus the method needs (the model writes it itself, cached; or the
   authors' Llama-3 corpora);
4. unlearn: an inference-time method changes the prompt or hooks the model, a training
   method trains (full, LoRA or partial layers) with its reference log-probs precomputed;
5. evaluate the unlearned model on the same suites;
6. save the run (weights or adapter, corpus, resolved config, report) and return
   ``{"before", "after", "run"}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rwku.errors import ConfigError
from rwku.io import atomic_write_json, atomic_write_text

#: Provisional presets for models under 1B parameters. NOT yet chosen by a search (that is
#: open work, see docs/methods.md); they are starting points, scaled up from the paper's 8B
#: learning rates, which barely move a 135M model. Override with --lr/--epochs/--batch-size.
SMALL_MODEL_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("ga", "full"): {"lr": 2e-5, "epochs": 2, "batch_size": 4},
    ("ga", "lora"): {"lr": 5e-4, "epochs": 2, "batch_size": 4},
    ("ga", "partial"): {"lr": 5e-5, "epochs": 2, "batch_size": 4},
    ("ga_star", "full"): {"lr": 2e-5, "epochs": 2, "batch_size": 4},
    ("ga_star", "lora"): {"lr": 5e-4, "epochs": 2, "batch_size": 4},
    ("npo", "full"): {"lr": 5e-5, "epochs": 3, "batch_size": 4},
    ("npo", "lora"): {"lr": 1e-3, "epochs": 3, "batch_size": 4},
    ("npo", "partial"): {"lr": 1e-4, "epochs": 3, "batch_size": 4},
    ("dpo", "full"): {"lr": 5e-5, "epochs": 3, "batch_size": 4},
    ("dpo", "lora"): {"lr": 1e-3, "epochs": 3, "batch_size": 4},
    ("rt", "full"): {"lr": 5e-5, "epochs": 3, "batch_size": 8},
    ("rt", "lora"): {"lr": 1e-3, "epochs": 3, "batch_size": 8},
}
DEFAULT_SMALL = {"lr": 5e-5, "epochs": 3, "batch_size": 4}


@dataclass
class UnlearnConfig:
    """Everything a run depends on; readable from YAML (``rwku run --config run.yaml``)."""

    targets: list[str] = field(default_factory=lambda: ["Stephen King"])
    method: str = "npo"
    mode: str = "lora"
    model: str | None = None
    data: str | None = None
    corpus: str = "synthetic"  # synthetic | authors
    corpus_size: int | None = None
    corpus_tokens: int | None = None
    layers: str = "0-4"  # partial mode: half-open range of decoder layers
    lr: float | None = None
    epochs: float | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 0
    method_options: dict[str, Any] = field(default_factory=dict)
    suites: str = "forget,neighbor,mia,utility"
    limit: int | None = None
    utility_limit: int | None = None
    eval_batch_size: int = 64
    run_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    progress: bool = True
    use_cache: bool = True

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> UnlearnConfig:
        """Load and validate a YAML file; unknown keys and wrong types are ConfigErrors."""
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of options, got {type(raw).__name__}")
        return cls.from_dict(raw, source=str(path), **overrides)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config", **overrides: Any) -> UnlearnConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(known)}")
        values = dict(raw)
        if isinstance(values.get("targets"), str):
            values["targets"] = [t.strip() for t in values["targets"].split(",") if t.strip()]
        cfg = cls(**values)
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "options") -> None:
        from rwku.methods import list_methods

        if (
            self.method.lower() not in list_methods()
            and self.method.lower().replace("*", "_star") not in list_methods()
        ):
            raise ConfigError(
                f"{source}: unknown method {self.method!r}; available: {', '.join(list_methods())}"
            )
        if self.mode not in ("full", "lora", "partial"):
            raise ConfigError(f"{source}: mode must be full, lora or partial, got {self.mode!r}")
        if self.corpus not in ("synthetic", "authors"):
            raise ConfigError(f"{source}: corpus must be synthetic or authors, got {self.corpus!r}")
        for name in ("lr", "epochs", "batch_size", "corpus_size", "corpus_tokens", "limit", "utility_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"{source}: {name} must be a non-negative number, got {value!r}")
        if not self.targets:
            raise ConfigError(f"{source}: no target given")


def parse_layers(spec: str) -> tuple[int, int]:
    """'0-4' → (0, 4): the half-open range [0, 4) of decoder layers, as the paper writes it."""
    try:
        a, b = (int(x) for x in spec.split("-"))
    except ValueError:
        raise ConfigError(f"layers must look like 0-4 (half-open range), got {spec!r}") from None
    if not 0 <= a < b:
        raise ConfigError(f"layers range {spec!r} is empty or negative")
    return a, b


def write_run_files(run_dir: Path, cfg: UnlearnConfig, corpus: dict[str, list[dict]], record: dict) -> None:
    """The resolved config, the corpus used and the run record, so a run can be repeated."""
    atomic_write_json(run_dir / "config.json", asdict(cfg))
    for name, records in corpus.items():
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write_text(run_dir / f"corpus-{name}.jsonl", lines)
    atomic_write_json(run_dir / "run.json", record)


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def resolve_hyperparameters(method, cfg: UnlearnConfig, n_params: int):
    """Explicit options win; else the paper's preset for 8B-scale models; else the small-model preset.

    The paper's learning rates were searched for Llama-3-8B; below 1B parameters they barely
    move the model, so a small model gets this project's presets (docs/methods.md).
    """
    from rwku.methods import Hyperparameters

    small = n_params < 1_000_000_000
    paper = method.paper_presets.get(cfg.mode if len(cfg.targets) == 1 else f"batch_{cfg.mode}")
    base = (
        {
            "lr": paper.lr,
            "epochs": paper.epochs,
            "batch_size": paper.batch_size,
            "grad_accum": paper.grad_accum,
        }
        if paper is not None and not small
        else SMALL_MODEL_PRESETS.get((method.name, cfg.mode), DEFAULT_SMALL)
    )
    chosen = {k: v for k, v in base.items()}
    for key in ("lr", "epochs", "batch_size"):
        if getattr(cfg, key) is not None:
            chosen[key] = getattr(cfg, key)
    if cfg.grad_accum != 1:
        chosen["grad_accum"] = cfg.grad_accum
    return Hyperparameters(
        lr=float(chosen["lr"]),
        batch_size=int(chosen["batch_size"]),
        epochs=float(chosen["epochs"]),
        grad_accum=int(chosen.get("grad_accum", 1)),
        max_length=cfg.max_length,
    ), ("paper" if paper is not None and not small else "small-model")


def load_corpus_for(method, cfg: UnlearnConfig, data, lm, target, fingerprint: str) -> list[dict]:
    """The forget corpus of one target: generated by the model itself (cached) or the authors'."""
    from rwku.data.corpus import CPU_SIZES, authors_corpus, get_or_generate, load_generation_resources

    kind = method.corpus
    if cfg.corpus == "authors" or kind == "wiki_passages":
        records = authors_corpus(data, target.name, kind)
        return records[: cfg.corpus_size] if cfg.corpus_size else records
    size = CPU_SIZES[kind]
    resources = load_generation_resources(data)
    return get_or_generate(
        lm.model,
        lm.tokenizer,
        target,
        kind=kind,
        model_fingerprint=fingerprint,
        n=cfg.corpus_size or size.n,
        max_new_tokens=cfg.corpus_tokens or size.max_new_tokens,
        seed=cfg.seed,
        openings=resources.openings,
        refusals=resources.refusals,
        progress=cfg.progress,
    )


def run_unlearning(
    cfg: UnlearnConfig,
    *,
    evaluate_model: bool = True,
    log=print,
    record_epochs: Sequence[float] | None = None,
    save: bool = True,
) -> dict:
    """Unlearn ``cfg.targets`` with ``cfg.method`` and evaluate before/after (see module docstring).

    For sweeps (:mod:`rwku.experiments.sweep`): ``record_epochs`` evaluates the model after
    each of those training epochs too, into ``record["epochs"]`` (one run gives the whole
    trade-off curve); ``save=False`` writes no run directory (no weights, corpus or run.json).
    """
    import torch

    from rwku.data import open_data
    from rwku.evaluation.cache import ResultCache
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.runner import evaluate
    from rwku.methods import get_method
    from rwku.methods.distributed import accelerator_from_env, is_main_process
    from rwku.methods.trainer import mix_targets, train
    from rwku.models.hf import HFLanguageModel
    from rwku.models.resolve import load_model

    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    # 1. data and the original model
    data = open_data(cfg.data)
    targets = [data.target(t) for t in cfg.targets]
    target_data = [data.load_target(t.name) for t in targets]
    # under `accelerate launch` every process trains on its own device (docs/scale.md)
    accelerator = accelerator_from_env()
    device = str(accelerator.device) if accelerator is not None else cfg.device
    if accelerator is not None and accelerator.is_main_process:
        log(
            f"training through accelerate: {accelerator.distributed_type}, {accelerator.num_processes} processes"
        )
    loaded = load_model(cfg.model, dtype=cfg.dtype, device=device)
    lm = HFLanguageModel(
        loaded.model, loaded.tokenizer, loaded.info, batch_size=cfg.eval_batch_size, progress=cfg.progress
    )
    fingerprint = loaded.info.get("fingerprint") or "unknown"
    method = get_method(cfg.method, **cfg.method_options)
    eval_cfg = EvalConfig(limit=cfg.limit, utility_limit=cfg.utility_limit)
    timings: dict[str, float] = {}

    # 2. evaluate the original model (cached by model fingerprint, target, suite, options, data)
    before = {}
    if evaluate_model:
        t0 = time.perf_counter()
        for td in target_data:
            log(f"evaluating the original model on {td.target.name} ...")
            before[td.target.name] = evaluate(
                lm,
                td,
                suites=cfg.suites,
                cfg=eval_cfg,
                cache=ResultCache(enabled=cfg.use_cache),
                model_fingerprint=fingerprint,
            )
        timings["evaluate_before"] = round(time.perf_counter() - t0, 1)

    # 3.-4. unlearn
    run_dir = Path(cfg.run_dir or Path("runs") / f"{timestamp()}-{cfg.method}-{cfg.mode}") if save else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    corpora: dict[str, list[dict]] = {}
    epoch_rows: list[dict] = []
    report = None
    undo = None
    after_cfg = eval_cfg
    t0 = time.perf_counter()
    if method.kind == "inference":
        prefix = method.prompt_prefix()
        if prefix:
            after_cfg = replace(eval_cfg, prompt_prefix=prefix)
        for t in targets:  # RepE: one control vector per target (single-target use)
            undo = method.install(lm.model, lm.tokenizer, t) or undo
    else:
        for t in targets:
            log(f"building the {method.corpus} corpus for {t.name} ({cfg.corpus}) ...")
            corpora[t.name] = load_corpus_for(method, cfg, data, lm, t, fingerprint)
        timings["corpus"] = round(time.perf_counter() - t0, 1)
        records = mix_targets(corpora) if len(corpora) > 1 else next(iter(corpora.values()))
        retain = None
        if method.needs_retain:
            retain = [{"text": m.text} for td in target_data for m in td.retain_mia]
        hp, preset = resolve_hyperparameters(method, cfg, loaded.info.get("num_parameters") or 0)
        log(
            f"training {method.name} ({cfg.mode}, {preset} preset: lr {hp.lr}, {hp.epochs} epochs, "
            f"batch {hp.batch_size}) on {len(records)} records ..."
        )
        t1 = time.perf_counter()
        mode = cfg.mode if cfg.mode != "partial" else f"partial:{cfg.layers}"
        wanted = sorted({float(e) for e in record_epochs or ()})

        def on_epoch(done: float, model) -> None:
            """Evaluate at a recorded epoch; the last epoch is the usual "after" evaluation."""
            if done >= hp.epochs - 1e-6 or not any(abs(done - e) < 1e-6 for e in wanted):
                return
            log(f"evaluating after epoch {done:g} ...")
            lm.model = model
            rows = {td.target.name: evaluate(lm, td, suites=cfg.suites, cfg=after_cfg) for td in target_data}
            epoch_rows.append({"epoch": done, "after": rows})

        report = train(
            lm.model,
            lm.tokenizer,
            method,
            records,
            hp=hp,
            mode=mode,
            retain_records=retain,
            seed=cfg.seed,
            progress=cfg.progress,
            run_dir=run_dir if is_main_process(accelerator) else None,
            on_epoch=on_epoch if wanted and evaluate_model else None,
            accelerator=accelerator,
        )
        timings["train"] = round(time.perf_counter() - t1, 1)
        lm.model = report.model
        lm.model.eval()

    # 5. evaluate the unlearned model (never cached: its weights exist only in this run)
    after = {}
    if evaluate_model:
        t0 = time.perf_counter()
        for td in target_data:
            log(f"evaluating the unlearned model on {td.target.name} ...")
            after[td.target.name] = evaluate(lm, td, suites=cfg.suites, cfg=after_cfg)
        timings["evaluate_after"] = round(time.perf_counter() - t0, 1)
    if undo is not None:
        undo()
    timings["total"] = round(time.perf_counter() - started, 1)

    # 6. the run record
    record = {
        "run": {
            "method": method.name,
            "mode": cfg.mode,
            "targets": [t.name for t in targets],
            "hyperparameters": report.to_dict()
            if report is not None
            else {"prompt_prefix": after_cfg.prompt_prefix},
            "corpus": {
                "source": cfg.corpus,
                "kind": method.corpus,
                "sizes": {k: len(v) for k, v in corpora.items()},
            },
            "seeds": {"seed": cfg.seed},
            "timings": timings,
            "peak_memory_mb": report.peak_rss_mb if report is not None else None,
            "status": report.status if report is not None else "finished",
            "run_dir": str(run_dir) if run_dir is not None else None,
            "config": asdict(cfg),
        },
        "before": before[targets[0].name] if len(targets) == 1 and before else before,
        "after": after[targets[0].name] if len(targets) == 1 and after else after,
    }
    if record_epochs and report is not None and evaluate_model:
        epoch_rows.append({"epoch": report.epochs, "after": after})
        single = len(targets) == 1
        record["epochs"] = [
            {"epoch": row["epoch"], "after": row["after"][targets[0].name] if single else row["after"]}
            for row in epoch_rows
        ]
    if run_dir is not None and is_main_process(accelerator):
        write_run_files(run_dir, cfg, corpora, record)
    return record
