"""The unlearning recipe: one target (or several), one method, one mode — top to bottom.

1. open the data and the original model, and check the options against it (layer range,
   memory for the training mode) before anything is evaluated;
2. evaluate the original model (from the result cache when it has been evaluated before);
3. get the forget corpus the method needs (the model writes it itself, cached; or the
   authors' Llama-3 corpora; or the corpus a previous run saved) and, for the
   retain-regularised methods, a retain corpus;
4. unlearn: an inference-time method changes the prompt or hooks the model, a training
   method trains (full, LoRA or partial layers) with its reference log-probs precomputed;
5. evaluate the unlearned model on the same suites;
6. save the run (weights or adapter, corpus, resolved config, report) and return
   ``{"before", "after", "run"}``.

Two settings, as in the paper. ``single``: every target starts again from the original model
(several targets = several independent runs, one sub-folder each). ``batch``: the targets'
corpora are mixed and unlearned together in one run. With several targets and no ``setting``
given, the run is a batch run (``--target "A,B"`` has always meant unlearning A and B together).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rwku.errors import ConfigError, RwkuError
from rwku.io import atomic_write_json, atomic_write_text

#: Presets for models under 1B parameters (the default SmolLM2-135M-Instruct). The paper's
#: learning rates, searched for Llama-3-8B, barely move a 135M model, so these come from the
#: search in ``scripts/search_presets.py`` (rule, every trial and its numbers in
#: docs/methods.md): per cell, the largest forget-likelihood drop whose neighbor drop is at
#: most half of it and whose fluency stays above 60 %. "searched" cells were tried; the others
#: take the rate of the same mode's searched methods (noted per line). Two epochs everywhere.
#: Explicit --lr/--epochs/--batch-size win.
SMALL_MODEL_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # LoRA (q_proj/v_proj, r 8)
    ("ga", "lora"): {"lr": 1e-3, "epochs": 2, "batch_size": 4},  # searched
    ("npo", "lora"): {"lr": 2e-3, "epochs": 2, "batch_size": 4},  # searched
    ("dpo", "lora"): {
        "lr": 3e-3,
        "epochs": 2,
        "batch_size": 4,
    },  # searched: nothing admissible, largest tried
    ("rt", "lora"): {"lr": 1e-3, "epochs": 2, "batch_size": 8},  # searched: never selective, see docs
    ("ga_star", "lora"): {"lr": 1e-3, "epochs": 2, "batch_size": 4},  # searched: not selective
    ("simnpo", "lora"): {"lr": 1e-3, "epochs": 2, "batch_size": 4},  # searched
    ("graddiff", "lora"): {"lr": 1e-3, "epochs": 2, "batch_size": 4},  # searched (neighbor retain)
    ("kl", "lora"): {"lr": 1e-3, "epochs": 2, "batch_size": 4},  # searched (neighbor retain)
    ("rmu", "lora"): {"lr": 1e-3, "epochs": 2, "batch_size": 4},  # searched: no effect at WMDP's c, alpha
    # full fine-tuning
    ("ga", "full"): {"lr": 3e-5, "epochs": 2, "batch_size": 4},  # searched
    ("npo", "full"): {"lr": 3e-5, "epochs": 2, "batch_size": 4},  # searched
    ("dpo", "full"): {"lr": 3e-5, "epochs": 2, "batch_size": 4},  # as npo/full
    ("rt", "full"): {
        "lr": 1e-4,
        "epochs": 2,
        "batch_size": 8,
    },  # not searched (time): as rt/lora scaled like npo
    ("ga_star", "full"): {"lr": 3e-5, "epochs": 2, "batch_size": 4},  # as ga/full
    ("simnpo", "full"): {"lr": 3e-5, "epochs": 2, "batch_size": 4},  # as npo/full
    ("graddiff", "full"): {"lr": 3e-5, "epochs": 2, "batch_size": 4},  # as ga/full
    ("kl", "full"): {"lr": 3e-5, "epochs": 2, "batch_size": 4},  # as ga/full
    ("rmu", "full"): {"lr": 3e-5, "epochs": 2, "batch_size": 4},  # as npo/full
    # partial layers (default 0-4: layers 0..3)
    ("ga", "partial"): {"lr": 3e-4, "epochs": 2, "batch_size": 4},  # searched: the most selective cell
    ("npo", "partial"): {"lr": 3e-4, "epochs": 2, "batch_size": 4},  # searched
    ("dpo", "partial"): {"lr": 3e-4, "epochs": 2, "batch_size": 4},  # as npo/partial
    ("rt", "partial"): {"lr": 3e-4, "epochs": 2, "batch_size": 8},  # searched
    ("ga_star", "partial"): {"lr": 3e-4, "epochs": 2, "batch_size": 4},  # as ga/partial
    ("simnpo", "partial"): {"lr": 3e-4, "epochs": 2, "batch_size": 4},  # as npo/partial
    ("graddiff", "partial"): {"lr": 3e-4, "epochs": 2, "batch_size": 4},  # as ga/partial
    ("kl", "partial"): {"lr": 3e-4, "epochs": 2, "batch_size": 4},  # as ga/partial
    ("rmu", "partial"): {"lr": 3e-4, "epochs": 2, "batch_size": 4},  # as npo/partial
}
DEFAULT_SMALL = {"lr": 3e-4, "epochs": 2, "batch_size": 4}

SETTINGS = ("single", "batch")
CORPUS_PRESETS = ("cpu", "paper")
RETAIN_SOURCES = ("generic", "neighbor")

#: The type(s) every option accepts, for YAML validation (CLI values are typed by the parser).
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "targets": (list,),
    "method": (str,),
    "mode": (str,),
    "setting": (str,),
    "model": (str,),
    "data": (str,),
    "corpus": (str,),
    "corpus_preset": (str,),
    "corpus_size": (int,),
    "corpus_tokens": (int,),
    "retain": (str,),
    "retain_size": (int,),
    "layers": (str,),
    "experts": (str, int),
    "lr": (int, float),
    "epochs": (int, float),
    "batch_size": (int,),
    "grad_accum": (int,),
    "max_length": (int,),
    "gradient_checkpointing": (bool,),
    "seed": (int,),
    "method_options": (dict,),
    "suites": (str,),
    "limit": (int,),
    "utility_limit": (int,),
    "stop_at_newline": (bool,),
    "bbh_compat": (bool,),
    "bbh_full_output": (bool,),
    "lm_eval_tasks": (str, list),
    "lm_eval_include": (str, list),
    "eval_batch_size": (int,),
    "run_dir": (str,),
    "out": (str,),
    "device": (str,),
    "dtype": (str,),
    "threads": (int,),
    "trust_remote_code": (bool,),
    "progress": (bool,),
    "use_cache": (bool,),
}
#: Options that may be null (``None`` = "not given": the preset or default decides).
_NULLABLE = {
    "setting",
    "model",
    "data",
    "corpus_size",
    "corpus_tokens",
    "retain_size",
    "lr",
    "epochs",
    "batch_size",
    "limit",
    "utility_limit",
    "lm_eval_tasks",
    "lm_eval_include",
    "run_dir",
    "out",
    "threads",
}
_POSITIVE = {
    "corpus_size",
    "corpus_tokens",
    "retain_size",
    "batch_size",
    "grad_accum",
    "max_length",
    "threads",
}
_NON_NEGATIVE = {"lr", "epochs", "limit", "utility_limit", "eval_batch_size"}


@dataclass
class UnlearnConfig:
    """Everything a run depends on; every field is also a key of the YAML config file.

    ``corpus``: ``synthetic`` (the model writes it, cached), ``authors`` (the paper's
    Llama-3 corpora) or a path: a corpus file, or a previous run's folder (its
    ``corpus-<target>.jsonl`` files), which repeats that run's training data exactly.
    ``corpus_preset``: the synthetic corpus sizes, ``cpu`` (32 passages/pairs × 128 tokens,
    48 questions) or ``paper`` (582 × 512, 300); ``corpus_size``/``corpus_tokens`` override.
    ``retain`` (GradDiff, KL, RMU only): ``generic`` — Wikipedia passages of *other* RWKU
    targets, text the evaluation never scores — or ``neighbor`` — passages the model writes
    about the target's neighbours (names from the neighbor probes, no answers).
    """

    targets: list[str] = field(default_factory=lambda: ["Stephen King"])
    method: str = "npo"
    mode: str = "lora"
    setting: str | None = None  # single | batch; None: batch when several targets
    model: str | None = None
    data: str | None = None
    corpus: str = "synthetic"
    corpus_preset: str = "cpu"
    corpus_size: int | None = None
    corpus_tokens: int | None = None
    retain: str = "generic"
    retain_size: int | None = None
    layers: str = "0-4"  # partial mode: half-open range of decoder layers
    #: expert mode (MoE models): N best-attributed experts, "L.E,L.E" or "random" (docs/moe.md)
    experts: str | int = "1"
    lr: float | None = None
    epochs: float | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    max_length: int = 512
    #: recompute activations in the backward pass (memory for time; numbers unchanged)
    gradient_checkpointing: bool = False
    seed: int = 0
    method_options: dict[str, Any] = field(default_factory=dict)
    suites: str = "forget,neighbor,mia,utility"
    limit: int | None = None
    utility_limit: int | None = None
    stop_at_newline: bool = False
    bbh_compat: bool = False
    bbh_full_output: bool = False
    #: lm-evaluation-harness tasks added to the utility columns (comma list or list; docs/protocol.md)
    lm_eval_tasks: str | list[str] | None = None
    #: folders of local lm-eval task YAMLs (comma list or list)
    lm_eval_include: str | list[str] | None = None
    eval_batch_size: int = 64
    run_dir: str | None = None
    out: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    trust_remote_code: bool = False
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
        """Build from a mapping (YAML or CLI options) plus overrides; then validate everything."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known) + sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        values = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
        if isinstance(values.get("targets"), (str, int)):
            values["targets"] = split_targets(str(values["targets"]))
        for name, value in values.items():
            _check_type(name, value, source)
        if "targets" in values:
            values["targets"] = [str(t) for t in values["targets"]]
        cfg = cls(**values)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "options") -> None:
        """Check values the types alone do not (choices, ranges); raise ConfigError."""
        from rwku.methods import get_method

        method = get_method(self.method, **self.method_options)  # unknown method or option: ConfigError
        if method.guards and len(self.targets) > 1:
            raise ConfigError(
                f"{source}: method {method.name!r} guards one target at a time; give one target"
            )
        for name, choices in (
            ("mode", ("full", "lora", "partial", "expert")),
            ("setting", (*SETTINGS, None)),
            ("corpus_preset", CORPUS_PRESETS),
            ("retain", RETAIN_SOURCES),
            ("dtype", ("float32", "bfloat16", "float16")),
        ):
            if getattr(self, name) not in choices:
                shown = ", ".join(c for c in choices if c is not None)
                raise ConfigError(f"{source}: {name} must be one of {shown}, got {getattr(self, name)!r}")
        if self.corpus not in ("synthetic", "authors") and not Path(self.corpus).exists():
            raise ConfigError(
                f"{source}: corpus must be synthetic, authors, or an existing corpus file or run "
                f"folder; {self.corpus!r} is none of these"
            )
        if not self.targets:
            raise ConfigError(f"{source}: no target given")
        if self.mode == "partial":
            parse_layers(self.layers)
        if self.mode == "expert":
            from rwku.methods.modes import parse_experts

            parse_experts(self.experts)
        elif self.method_options.get("anchor"):
            raise ConfigError(f"{source}: option anchor (the router anchor) only applies to mode expert")
        from rwku.evaluation.runner import expand_suites

        expand_suites(self.suites)
        if self.lm_eval_tasks:
            from rwku.evaluation.lm_eval_backend import require_lm_eval

            require_lm_eval()  # task names are checked when the evaluation starts

    def eval_config(self):
        """The evaluation options of this run, as ``rwku eval`` would take them."""
        from rwku.evaluation.config import EvalConfig
        from rwku.evaluation.lm_eval_backend import split_names

        return EvalConfig(
            limit=self.limit,
            utility_limit=self.utility_limit,
            stop_at_newline=self.stop_at_newline,
            bbh_compat=self.bbh_compat,
            bbh_full_output=self.bbh_full_output,
            lm_eval_tasks=split_names(self.lm_eval_tasks),
            lm_eval_include=split_names(self.lm_eval_include),
        )


def _check_type(name: str, value: Any, source: str) -> None:
    types = _OPTION_TYPES[name]
    if value is None:
        if name in _NULLABLE:
            return
        raise ConfigError(f"{source}: {name} may not be empty")
    # bool is an int in Python; a YAML `lr: yes` or `epochs: true` is a mistake, not 1
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        names = {int: "an integer", str: "text", bool: "true or false", list: "a list", dict: "a mapping"}
        wanted = "a number" if float in types else " or ".join(names[t] for t in types)
        raise ConfigError(f"{source}: {name} must be {wanted}, got {value!r} ({type(value).__name__})")
    if name in _POSITIVE and value < 1:
        raise ConfigError(f"{source}: {name} must be at least 1, got {value!r}")
    if name in _NON_NEGATIVE and value < 0:
        raise ConfigError(f"{source}: {name} must not be negative, got {value!r}")
    if name == "targets" and not all(isinstance(t, (str, int)) and not isinstance(t, bool) for t in value):
        raise ConfigError(f"{source}: targets must be names or ids, got {value!r}")


_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")


def split_targets(text: str) -> list[str]:
    """'Stephen King, Confucius' → two names; '1..10' → the ids 1 to 10 (the paper's targets 1..k)."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        m = _RANGE.match(part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise ConfigError(f"target range {part!r} is empty (write low..high)")
            out.extend(str(i) for i in range(a, b + 1))
        elif part:
            out.append(part)
    return out


def parse_layers(spec: str) -> tuple[int, int]:
    """'0-4' → (0, 4): the half-open range [0, 4) of decoder layers, as the paper writes it."""
    try:
        a, b = (int(x) for x in spec.split("-"))
    except ValueError:
        raise ConfigError(f"layers must look like 0-4 (half-open range), got {spec!r}") from None
    if not 0 <= a < b:
        raise ConfigError(f"layers range {spec!r} is empty or negative")
    return a, b


def check_layers(cfg: UnlearnConfig, num_layers: int | None, source: str = "options") -> None:
    """A partial-mode layer range against the model's number of decoder layers (if known)."""
    if cfg.mode != "partial" or num_layers is None:
        return
    from rwku.methods import get_method
    from rwku.methods.modes import parse_layer_range

    if get_method(cfg.method, **cfg.method_options).kind != "training":
        return
    try:
        parse_layer_range(cfg.layers, num_layers)
    except ConfigError as err:
        raise ConfigError(f"{source}: layers {cfg.layers!r}: {err}") from None


def _free_memory_bytes(device: str) -> int | None:
    """Free memory on ``device`` (:func:`rwku.methods.memory.free_memory_bytes`)."""
    from rwku.methods.memory import free_memory_bytes

    return free_memory_bytes(device)


def _file_backed_bytes(model) -> int:
    """Bytes of ``model``'s parameters in a file mapping (:func:`rwku.methods.memory.file_backed_bytes`)."""
    from rwku.methods.memory import file_backed_bytes

    parameters = getattr(model, "parameters", None)
    return file_backed_bytes(parameters()) if callable(parameters) else 0


def check_against_model(
    cfg: UnlearnConfig, model, n_params: int, device: str, source: str = "options"
) -> None:
    """What the loaded model can tell before anything is evaluated or trained: the partial-mode
    layer range, and whether the memory for the trained parameters' gradients and AdamW state
    (12 bytes per trained float32 parameter; activations come on top) and, where the weights
    are still pages of their file, for the weights themselves is free at all."""
    from rwku.methods import get_method

    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    num_layers = getattr(config, "num_hidden_layers", None)
    check_layers(cfg, num_layers, source)
    training = get_method(cfg.method, **cfg.method_options).kind == "training"
    if training and cfg.mode == "expert":
        from rwku.methods.modes import check_experts

        try:
            check_experts(model, cfg.experts)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        return  # one expert and a router: a sliver of the model's memory
    if not training or cfg.mode == "lora" or not n_params:
        return
    trained = n_params
    if cfg.mode == "partial" and num_layers:
        a, b = parse_layers(cfg.layers)
        trained = n_params * (b - a) // num_layers
    need, free = 12 * trained, _free_memory_bytes(device)
    # weights still in their file's pages become the process's own when trained (memory.py)
    mapped = _file_backed_bytes(model) * trained // n_params
    if free is not None and need + mapped > free:
        copied = f" (and {mapped / 2**30:.1f} GiB more for the weights themselves, now pages of their file)"
        raise ConfigError(
            f"{source}: mode {cfg.mode} trains {trained / 1e6:.0f}M parameters, whose gradients and "
            f"optimizer state need about {need / 2**30:.1f} GiB{copied if mapped else ''}, but only "
            f"{free / 2**30:.1f} GiB is free on {device}; use mode lora (or partial with fewer layers)"
        )


def corpus_file_name(target: str) -> str:
    """The file a run saves one target's forget corpus in (and ``corpus: <run dir>`` reads)."""
    return f"corpus-{target}.jsonl"


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    from rwku.data.corpus import load_corpus_file

    text = path.read_text(encoding="utf-8")
    first = text.split("\n", 1)[0]
    if '"_rwku_corpus_meta"' in first:  # a cached corpus file, metadata line first
        return load_corpus_file(path)[0]
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not a JSON Lines corpus file ({err.msg})") from None


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def resolve_hyperparameters(method, cfg: UnlearnConfig, n_params: int):
    """Explicit options win; else the paper's preset for 8B-scale models; else the small-model preset.

    The paper's learning rates were searched for Llama-3-8B; below 1B parameters they barely
    move the model, so a small model gets this project's presets (docs/methods.md).
    """
    from rwku.methods import Hyperparameters

    small = n_params < 1_000_000_000
    batch = cfg.setting != "single" and len(cfg.targets) > 1
    paper = method.paper_presets.get(f"batch_{cfg.mode}" if batch else cfg.mode)
    if paper is None and batch:
        paper = method.paper_presets.get(cfg.mode)
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
    chosen = dict(base)
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


def _corpus_size(kind: str, cfg: UnlearnConfig):
    from rwku.data.corpus import CPU_SIZES, PAPER_SIZES, CorpusSize

    size = (PAPER_SIZES if cfg.corpus_preset == "paper" else CPU_SIZES)[kind]
    return CorpusSize(cfg.corpus_size or size.n, cfg.corpus_tokens or size.max_new_tokens)


def load_corpus_for(method, cfg: UnlearnConfig, data, lm, target, fingerprint: str) -> list[dict]:
    """The forget corpus of one target: model-written (cached), the authors', or a saved one.

    GA* always reads the target's Wikipedia passages (its definition). On the CPU preset the
    authors' corpora and the passages are cut to the preset's number of records, like the
    synthetic ones (582 records of 512 tokens take hours on a CPU).
    """
    from rwku.data.corpus import CPU_SIZES, authors_corpus, get_or_generate, load_generation_resources

    kind = method.corpus
    if cfg.corpus not in ("synthetic", "authors"):
        path = Path(cfg.corpus)
        if path.is_dir():
            path = path / corpus_file_name(target.name)
            if not path.is_file():
                raise ConfigError(f"{cfg.corpus}: no saved corpus for {target.name} ({path.name})")
        records = read_jsonl(path)
        return records[: cfg.corpus_size] if cfg.corpus_size else records
    if cfg.corpus == "authors" or kind == "wiki_passages":
        records = authors_corpus(data, target.name, kind)
        cpu = CPU_SIZES.get(kind, CPU_SIZES["passages"]).n
        n = cfg.corpus_size or (cpu if cfg.corpus_preset == "cpu" else None)
        return records[:n] if n else records
    size = _corpus_size(kind, cfg)
    resources = load_generation_resources(data)
    return get_or_generate(
        lm.model,
        lm.tokenizer,
        target,
        kind=kind,
        model_fingerprint=fingerprint,
        n=size.n,
        max_new_tokens=size.max_new_tokens,
        seed=cfg.seed,
        openings=resources.openings,
        refusals=resources.refusals,
        progress=cfg.progress,
    )


def build_retain(cfg: UnlearnConfig, data, lm, targets, target_data, fingerprint: str, n: int) -> list[dict]:
    """Retain text for GradDiff, KL and RMU (the paper has no retain term; see docs/methods.md).

    ``generic``: Wikipedia passages of the other RWKU targets, round-robin in id order (the first
    passage of every target that is not unlearned, then the second, ...), ``n`` of them: text
    about many people and topics that the evaluation of the unlearned targets never scores, so
    the retain loss cannot flatter the locality numbers.
    ``neighbor``: ``n`` passages the model writes about the neighbours named in the
    targets' neighbor probes (cached like the forget corpus); the probes' answers are never used.
    """
    from rwku.data.corpus import get_or_generate, load_generation_resources

    if cfg.retain == "neighbor":
        size = _corpus_size("neighbors", cfg)
        resources = load_generation_resources(data)
        out: list[dict] = []
        per_target = max(1, -(-n // len(targets)))
        for t, td in zip(targets, target_data):
            names = list(dict.fromkeys(p.neighbor for ps in td.neighbor.values() for p in ps if p.neighbor))
            if not names:
                raise ConfigError(f"retain neighbor: {t.name} has no neighbour names in its probes")
            out += get_or_generate(
                lm.model,
                lm.tokenizer,
                t,
                kind="neighbors",
                model_fingerprint=fingerprint,
                n=per_target,
                max_new_tokens=size.max_new_tokens,
                seed=cfg.seed,
                openings=resources.openings,
                neighbors=names,
                progress=cfg.progress,
            )
        return out[:n]
    unlearned = {t.name for t in targets}
    pools: list[list[str]] = []
    for other in data.targets():
        if other.name in unlearned:
            continue
        try:
            pools.append([r["text"] for r in data.load_corpus("passage", other)])
        except RwkuError:  # a target without passages in this data copy
            continue
    out = [
        {"text": pool[j]} for j in range(max(map(len, pools), default=0)) for pool in pools if j < len(pool)
    ]
    if not out:
        raise ConfigError("retain generic: the data has no Wikipedia passages of other targets")
    return out[:n]


def write_run_files(
    run_dir: Path, cfg: UnlearnConfig, corpus: dict[str, list[dict]], retain: list[dict] | None, record: dict
) -> None:
    """The resolved config, the corpora used and the run record, so a run can be repeated."""
    atomic_write_json(run_dir / "config.json", asdict(cfg))
    for name, records in corpus.items():
        write_jsonl(run_dir / corpus_file_name(name), records)
    if retain:
        write_jsonl(run_dir / "retain.jsonl", retain)
    atomic_write_json(run_dir / "run.json", record)


def _peak_rss_mb() -> float:
    from rwku.methods.trainer import peak_rss_mb

    return peak_rss_mb()


def _reset_peak_rss() -> str:
    from rwku.methods.trainer import reset_peak_rss

    return reset_peak_rss()


def run_unlearning(
    cfg: UnlearnConfig,
    *,
    evaluate_model: bool = True,
    log: Callable[[str], None] = print,
    record_epochs: Sequence[float] | None = None,
    save: bool = True,
) -> dict:
    """Unlearn ``cfg.targets`` with ``cfg.method`` and evaluate before/after (see module docstring).

    In the ``single`` setting with several targets, each target is a run of its own from the
    original model, saved in ``<run_dir>/<target>/``; the result maps target → before/after and
    ``run["runs"]`` holds each run record. A run a guard rail stopped (``status`` collapsed) is
    not evaluated after; its record says why. A diverged run raises ``TrainingError`` after its
    record is written.

    For sweeps: ``record_epochs`` evaluates the model after each of those training epochs too,
    into ``record["epochs"]`` (one run gives the whole trade-off curve); ``save=False`` writes
    no run directory (no weights, corpus or run.json).
    """
    run_dir = Path(cfg.run_dir or Path("runs") / f"{timestamp()}-{cfg.method}-{cfg.mode}")
    extra = {"record_epochs": record_epochs, "save": save}
    if cfg.setting != "single" or len(cfg.targets) == 1:
        return _run_once(replace(cfg, run_dir=str(run_dir)), evaluate_model=evaluate_model, log=log, **extra)
    started = time.perf_counter()
    runs: dict[str, dict] = {}
    for name in cfg.targets:
        sub = replace(cfg, targets=[name], run_dir=str(run_dir / re.sub(r"[^\w.,-]+", "_", name)))
        log(f"== {name} (single setting: from the original model) ==")
        runs[name] = _run_once(sub, evaluate_model=evaluate_model, log=log, **extra)
    statuses = [r["run"]["status"] for r in runs.values()]
    names = [r["run"]["targets"][0] for r in runs.values()]
    record = {
        "run": {
            "method": next(iter(runs.values()))["run"]["method"],
            "mode": cfg.mode,
            "setting": "single",
            "targets": names,
            "status": next((s for s in statuses if s != "finished"), "finished"),
            "runs": {n: r["run"] for n, r in zip(names, runs.values())},
            "timings": {"total": round(time.perf_counter() - started, 1)},
            # each target's run measured its own peak: the largest of them
            "peak_memory_mb": max((r["run"].get("peak_memory_mb") or 0.0) for r in runs.values()),
            "peak_memory_scope": next(iter(runs.values()))["run"].get("peak_memory_scope"),
            "run_dir": str(run_dir),
            "config": asdict(cfg),
        },
        "before": {n: r["before"] for n, r in zip(names, runs.values()) if r["before"]},
        "after": {n: r["after"] for n, r in zip(names, runs.values()) if r["after"]},
    }
    if save:
        atomic_write_json(run_dir / "config.json", asdict(cfg))
        atomic_write_json(run_dir / "run.json", record)
    return record


def _run_once(
    cfg: UnlearnConfig,
    *,
    evaluate_model: bool,
    log: Callable[[str], None],
    record_epochs: Sequence[float] | None,
    save: bool,
) -> dict:
    """One unlearning run: one target, or several at once (the batch setting)."""
    import torch

    from rwku.data import open_data
    from rwku.evaluation.cache import ResultCache
    from rwku.evaluation.runner import evaluate
    from rwku.methods import get_method
    from rwku.methods.distributed import accelerator_from_env, is_main_process
    from rwku.methods.trainer import TrainingError, mix_targets, train
    from rwku.models.hf import HFLanguageModel
    from rwku.models.moe import is_moe
    from rwku.models.resolve import load_model

    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    memory_scope = _reset_peak_rss()  # this run's peak, not an earlier sweep cell's
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
    loaded = load_model(cfg.model, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    lm = HFLanguageModel(
        loaded.model, loaded.tokenizer, loaded.info, batch_size=cfg.eval_batch_size, progress=cfg.progress
    )
    fingerprint = loaded.info.get("fingerprint") or "unknown"
    method = get_method(cfg.method, **cfg.method_options)
    # everything the model can tell is checked now, before any evaluation or training
    check_against_model(cfg, loaded.model, loaded.info.get("num_parameters") or 0, device)
    eval_cfg = cfg.eval_config()
    timings: dict[str, float] = {"load": round(time.perf_counter() - started, 1)}

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
    epoch_rows: list[dict] = []
    corpora: dict[str, list[dict]] = {}
    retain: list[dict] | None = None
    report = None
    undo = None
    after_cfg = eval_cfg
    hyper: dict[str, Any] = dict(method.options)
    t0 = time.perf_counter()
    record: dict[str, Any] = {}
    eval_lm = lm  # the model the "after" evaluation asks: a guard's wrapper for ECO and GUARD
    guard: dict[str, Any] | None = None  # what a guard chose and measured (run record "guard")

    def make_record(status: str, reason: str | None, after: dict) -> dict:
        timings["total"] = round(time.perf_counter() - started, 1)
        return {
            "run": {
                "method": method.name,
                "mode": cfg.mode if method.kind == "training" else None,
                "setting": (cfg.setting or "batch") if len(targets) > 1 else "single",
                "targets": [t.name for t in targets],
                "status": status,
                "reason": reason,
                "hyperparameters": hyper,
                "corpus": {
                    "source": cfg.corpus,
                    "preset": cfg.corpus_preset,
                    "kind": method.corpus,
                    "sizes": {k: len(v) for k, v in corpora.items()},
                    "files": [corpus_file_name(k) for k in corpora],
                    "retain": {"source": cfg.retain, "size": len(retain)} if retain else None,
                },
                "seeds": {"seed": cfg.seed, "torch": cfg.seed, "corpus_sampling": cfg.seed},
                "timings": timings,
                "peak_memory_mb": round(_peak_rss_mb(), 1),
                "train_peak_memory_mb": report.peak_rss_mb if report is not None else None,
                "peak_memory_scope": memory_scope,
                "model": {k: loaded.info.get(k) for k in ("name", "fingerprint", "num_parameters")},
                "run_dir": str(run_dir) if run_dir is not None else None,
                "config": asdict(cfg),
                **({"guard": guard} if guard is not None else {}),
            },
            "before": before[targets[0].name] if len(targets) == 1 and before else before,
            "after": after[targets[0].name] if len(targets) == 1 and after else after,
        }

    if method.kind == "inference":
        prefix = method.prompt_prefix()
        if prefix:
            after_cfg = replace(eval_cfg, prompt_prefix=prefix)
            hyper["prompt_prefix"] = prefix
        for t in targets:  # RepE: one control vector per target (single-target use)
            undo = method.install(lm.model, lm.tokenizer, t) or undo
            vectors = getattr(method, "vectors", None)
            if vectors is not None and run_dir is not None:
                from safetensors.torch import save_file

                save_file(
                    {"control_vectors": vectors.contiguous()}, str(run_dir / "control_vectors.safetensors")
                )
                hyper["control_vectors"] = {
                    "file": "control_vectors.safetensors",
                    "shape": list(vectors.shape),
                }
        if method.guards:
            from rwku.methods.guarding import GuardRail

            try:
                eval_lm = method.guard(
                    lm,
                    data,
                    targets[0],
                    fingerprint=fingerprint,
                    seed=cfg.seed,
                    progress=cfg.progress,
                    log=log,
                    use_cache=cfg.use_cache,
                )
            except GuardRail as err:  # the classifier cannot meet its false-positive target
                guard = {"classifier": err.info}
                timings["guard"] = round(time.perf_counter() - t0, 1)
                log(f"guard rail: {err}. The model is not evaluated; the run record says why.")
                record = make_record("guard_rail", str(err), {})
                if run_dir is not None:
                    write_run_files(run_dir, cfg, corpora, retain, record)
                return record
            guard = dict(method.record)
            timings["guard"] = round(time.perf_counter() - t0, 1)
    else:
        for t in targets:
            log(f"building the {method.corpus} corpus for {t.name} ({cfg.corpus}) ...")
            corpora[t.name] = load_corpus_for(method, cfg, data, lm, t, fingerprint)
        records = mix_targets(corpora) if len(corpora) > 1 else next(iter(corpora.values()))
        if method.needs_retain:
            n = cfg.retain_size or len(records)
            log(f"building {n} {cfg.retain} retain passages ...")
            retain = build_retain(cfg, data, lm, targets, target_data, fingerprint, n)
        timings["corpus"] = round(time.perf_counter() - t0, 1)
        hp, preset = resolve_hyperparameters(method, cfg, loaded.info.get("num_parameters") or 0)
        hyper.update(
            {"lr": hp.lr, "epochs": hp.epochs, "batch_size": hp.batch_size, "grad_accum": hp.grad_accum}
        )
        hyper.update({"max_length": hp.max_length, "preset": preset})
        log(
            f"training {method.name} ({cfg.mode}, {preset} preset: lr {hp.lr:g}, {hp.epochs:g} epochs, "
            f"batch {hp.batch_size}) on {len(records)} records ..."
        )
        t1 = time.perf_counter()
        mode = {"partial": f"partial:{cfg.layers}", "expert": f"expert:{cfg.experts}"}.get(cfg.mode, cfg.mode)
        probes = None
        if retain is None and is_moe(lm.model):
            n = min(16, cfg.retain_size or len(records))
            log(f"building {n} {cfg.retain} passages for the routing diagnostics ...")
            probes = build_retain(cfg, data, lm, targets, target_data, fingerprint, n)
        wanted = sorted({float(e) for e in record_epochs or ()})

        def on_epoch(done: float, model) -> None:
            """Evaluate at a recorded epoch; the last epoch is the usual "after" evaluation."""
            if done >= hp.epochs - 1e-6 or not any(abs(done - e) < 1e-6 for e in wanted):
                return
            log(f"evaluating after epoch {done:g} ...")
            lm.model = model
            rows = {td.target.name: evaluate(lm, td, suites=cfg.suites, cfg=after_cfg) for td in target_data}
            epoch_rows.append({"epoch": done, "after": rows})

        try:
            report = train(
                lm.model,
                lm.tokenizer,
                method,
                records,
                hp=hp,
                mode=mode,
                retain_records=retain,
                probe_records=probes,
                seed=cfg.seed,
                progress=cfg.progress,
                run_dir=run_dir if is_main_process(accelerator) else None,
                on_epoch=on_epoch if wanted and evaluate_model else None,
                accelerator=accelerator,
                gradient_checkpointing=cfg.gradient_checkpointing,
            )
        except TrainingError as err:  # diverged: record it, then let the caller report it
            report = err.report
            timings["train"] = round(time.perf_counter() - t1, 1)
            if report is not None:
                hyper.update({"training": report.to_dict()})
            if run_dir is None:
                raise
            write_run_files(run_dir, cfg, corpora, retain, make_record("diverged", str(err), {}))
            raise TrainingError(f"{err}; run record in {run_dir}", report) from None
        except KeyboardInterrupt:  # the trainer kept no weights and wrote status "interrupted"
            timings["train"] = round(time.perf_counter() - t1, 1)
            if run_dir is not None:
                reason = "interrupted (Ctrl-C) during training; no weights were kept"
                write_run_files(run_dir, cfg, corpora, retain, make_record("interrupted", reason, {}))
                log(f"interrupted: no weights were kept; the run record in {run_dir} says so")
            raise
        timings["train"] = round(time.perf_counter() - t1, 1)
        hyper.update({"training": report.to_dict()})
        lm.model = report.model
        lm.model.eval()
        if report.status != "finished":
            log(
                f"training stopped ({report.status}) after {report.steps}/{report.total_steps} steps: "
                f"{report.reason}. The model is not evaluated; the run record says why."
            )
            record = make_record(report.status, report.reason, {})
            if run_dir is not None:
                write_run_files(run_dir, cfg, corpora, retain, record)
            return record

    # 5. evaluate the unlearned model (never cached: its weights exist only in this run)
    after = {}
    if evaluate_model:
        t0 = time.perf_counter()
        for td in target_data:
            log(f"evaluating the unlearned model on {td.target.name} ...")
            after[td.target.name] = evaluate(eval_lm, td, suites=cfg.suites, cfg=after_cfg)
        timings["evaluate_after"] = round(time.perf_counter() - t0, 1)
        if guard is not None:
            guard["flag_rates"] = eval_lm.flag_rates()
            guard["classify_seconds"] = round(eval_lm.classify_seconds, 1)
            cache = getattr(eval_lm.classifier, "cache", None)
            if cache is not None:
                guard["feature_cache"] = cache.record()
    if undo is not None:
        undo()

    # 6. the run record
    record = make_record("finished", None, after)
    if record_epochs and report is not None and evaluate_model:
        epoch_rows.append({"epoch": report.epochs, "after": after})
        single = len(targets) == 1
        record["epochs"] = [
            {"epoch": row["epoch"], "after": row["after"][targets[0].name] if single else row["after"]}
            for row in epoch_rows
        ]
    if run_dir is not None and is_main_process(accelerator):
        write_run_files(run_dir, cfg, corpora, retain, record)
    return record
