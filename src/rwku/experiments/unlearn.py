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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rwku.errors import ConfigError
from rwku.io import atomic_write_json, atomic_write_text

#: Presets for the default 135M model, chosen by the small search in docs/methods.md.
#: The paper's 8B learning rates (e.g. NPO full 2e-6) leave a 135M model unchanged.
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

        if self.method.lower() not in list_methods() and self.method.lower().replace("*", "_star") not in list_methods():
            raise ConfigError(f"{source}: unknown method {self.method!r}; available: {', '.join(list_methods())}")
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
