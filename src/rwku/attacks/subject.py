"""What an attack is aimed at: a finished run (or a model directory) as two models.

An attack needs the *original* model (for the controls and the denominator of R) and the
*unlearned* one, each fresh for every fine-tuning run (relearning changes the weights in
place). :func:`open_run` reads a run folder written by ``rwku run``/``rwku unlearn``/a sweep
with ``save_runs`` and says, per target, which weights belong to it; :class:`AttackSubject`
holds one of the two at a time (below) and hands out copies:

* a full or partial run's ``weights/`` folder is a whole model: loaded once and copied;
* a LoRA run's adapter is merged into the original in place (the attacker then fine-tunes a
  plain model, in whatever mode the attack uses);
* an inference-time run (ICU, RepE) keeps the original weights: the unlearned model is the
  original plus the run's prompt prefix (ICU) or steering hooks (RepE, with the control
  vectors computed once on the original model, so a fine-tuned copy is steered the same way).

**One model in memory at a time.** A run with weights of its own holds either the original or
the unlearned model, never both: asking for the other one drops the one held and makes the
other — a LoRA run's adapter is merged into the original *in place*, a full run's weights are
read from disk, the original is loaded again (from the converted cache: seconds). The attacks
do all their work on the original model first (its numbers are mostly cached), then on the
unlearned one, so one attack switches once. On the 1.5B knowledge model that is the difference
between ~13 GB and ~19 GB (two 6.2 GB float32 copies), which decides whether an attack fits
beside another job on a 24 GB machine. Inference-time runs share the original's weights.

Bad input is one :class:`~rwku.errors.ConfigError` line: a run without weights (interrupted,
diverged, collapsed), a model other than the run's, a target the run did not unlearn.
"""

from __future__ import annotations

import copy
import gc
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rwku.errors import ConfigError


@dataclass(frozen=True)
class RunTarget:
    """One target of a finished run: where its weights are and how it was unlearned."""

    target: str
    run_dir: Path
    method: str
    mode: str | None
    method_options: dict[str, Any]
    model: str | None  # the run's --model (None = the default model)
    fingerprint: str | None
    weights: Path | None  # None for inference-time methods
    setting: str = "single"
    data: str | None = None
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "method": self.method,
            "mode": self.mode,
            "setting": self.setting,
            "method_options": self.method_options,
            "model_fingerprint": self.fingerprint,
        }


def _read_run(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "run.json").read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is not a run folder (no run.json); give a folder written by rwku run/unlearn, "
            "or a model directory with --original"
        ) from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path / 'run.json'}: not valid JSON ({err.msg})") from None


def open_run(path: str | Path) -> list[RunTarget]:
    """Every target of the run folder ``path`` with its weights (see the module doc)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"run folder not found: {path}")
    record = _read_run(path)
    run = record.get("run") or {}
    if run.get("setting") == "single" and run.get("runs"):
        out = []
        for name, sub in run["runs"].items():
            sub_dir = Path(sub.get("run_dir") or path / name)
            if not sub_dir.is_absolute() and not sub_dir.exists():
                sub_dir = path / sub_dir.name
            out.extend(_targets_of(sub, sub_dir))
        return out
    return _targets_of(run, path)


def _targets_of(run: dict[str, Any], path: Path) -> list[RunTarget]:
    from rwku.methods import get_method

    status = run.get("status")
    if status != "finished":
        why = f": {run['reason']}" if run.get("reason") else ""
        raise ConfigError(
            f"run {path} did not finish (status {status}{why}); it has no unlearned model to attack"
        )
    cfg = run.get("config") or {}
    method = get_method(run["method"], **(cfg.get("method_options") or {}))
    weights = None
    if method.kind == "training":
        weights = path / "weights"
        if not weights.is_dir() or not any(weights.iterdir()):
            raise ConfigError(
                f"run {path} has no weights/ folder (was it saved? an interrupted run keeps none)"
            )
    options = dict(method.options)
    if method.guards and isinstance(run.get("guard"), dict):
        options.update(method.replay_options(run["guard"]))  # e.g. ECO's searched σ, not searched again
    targets = run.get("targets") or cfg.get("targets") or []
    setting = run.get("setting") or ("batch" if len(targets) > 1 else "single")
    return [
        RunTarget(
            target=t,
            run_dir=path,
            method=method.name,
            mode=run.get("mode"),
            method_options=options,
            model=cfg.get("model"),
            fingerprint=(run.get("model") or {}).get("fingerprint"),
            weights=weights,
            setting=setting,
            data=cfg.get("data"),
            seed=int(cfg.get("seed") or 0),
        )
        for t in targets
    ]


def model_dir_target(path: str | Path, target: str) -> RunTarget:
    """A plain model directory (an unlearned model made elsewhere) as an attack subject."""
    path = Path(path)
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise ConfigError(f"{path} is neither a run folder (run.json) nor a model directory (config.json)")
    return RunTarget(
        target=target,
        run_dir=path,
        method="external",
        mode=None,
        method_options={},
        model=None,
        fingerprint=None,
        weights=path,
    )


class AttackSubject:
    """The original and the unlearned model of one run target, as fresh copies on demand."""

    def __init__(
        self,
        run: RunTarget,
        *,
        model: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        trust_remote_code: bool = False,
        eval_batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        from rwku.methods import get_method
        from rwku.models.hf import HFLanguageModel

        self.run = run
        self._spec = model if model is not None else run.model
        self._device, self._dtype, self._trust = device, dtype, trust_remote_code
        loaded = self._load_original_model()
        fingerprint = loaded.info.get("fingerprint")
        if run.fingerprint and fingerprint and run.fingerprint != fingerprint:
            raise ConfigError(
                f"run {run.run_dir} was made with model {run.fingerprint[:24]}..., but the model given "
                f"({loaded.info.get('name')}) is {fingerprint[:24]}...; pass the run's own --model"
            )
        self.info = loaded.info
        self.tokenizer = loaded.tokenizer
        self._original = loaded.model.eval()
        self._unlearned = None
        #: how often each model was made (loaded, merged, read): the one-model policy's price
        self.loads = {"original": 1, "unlearned": 0}
        self.method = get_method(run.method, **run.method_options) if run.method != "external" else None
        self.prompt_prefix: str | None = self.method.prompt_prefix() if self.method is not None else None
        self._vectors: dict[str, Any] = {}
        self._guards: dict[str, Any] = {}  # an inference-time guard per target (see asked)
        self.lm = HFLanguageModel(
            self._original, self.tokenizer, self.info, batch_size=eval_batch_size, progress=progress
        )

    def _load_original_model(self):
        from rwku.models.resolve import load_model

        return load_model(self._spec, dtype=self._dtype, device=self._device, trust_remote_code=self._trust)

    @property
    def original(self):
        """The original model, loaded again if the unlearned one took its place (module doc)."""
        if self._original is None:
            self._drop("unlearned")
            self._original = self._load_original_model().model.eval()
            self.loads["original"] += 1
            self.lm.model = self._original
        return self._original

    @property
    def unlearned(self):
        """The unlearned model, made in place of the original if the run has weights (module doc)."""
        if self.run.weights is None:  # inference-time method: the original weights
            return self.original
        if self._unlearned is None:
            self._unlearned = self._load_unlearned()
            self.loads["unlearned"] += 1
            self.lm.model = self._unlearned
        return self._unlearned

    def _forget(self, which: str):
        """Stop holding the ``which`` model (and the engine's reference to it); return it."""
        from rwku.models.packed import release_packed

        held = self._original if which == "original" else self._unlearned
        if held is not None:
            release_packed(held)  # stale once its weights change, and a second copy of them
            if self.lm.model is held:
                self.lm.model = None
        if which == "original":
            self._original = None
        else:
            self._unlearned = None
        return held

    def _drop(self, which: str) -> None:
        """Forget the ``which`` model so its memory frees before the other one is made."""
        if self._forget(which) is not None:
            gc.collect()

    @property
    def fingerprint(self) -> str:
        return str(self.info.get("fingerprint") or "unknown")

    def _load_unlearned(self):
        """The run's unlearned model, replacing the original in memory (module doc)."""
        import torch

        weights = self.run.weights
        if (weights / "adapter_config.json").is_file():
            from peft import PeftModel

            from rwku.methods.modes import quiet_peft

            base = self.original  # loaded again if an earlier unlearned model had replaced it
            self._forget("original")  # merged in place: from here on it is the unlearned model
            with quiet_peft():
                merged = PeftModel.from_pretrained(base, str(weights)).merge_and_unload()
            return merged.eval()
        from transformers import AutoModelForCausalLM

        self._drop("original")
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            self._dtype
        ]
        model = AutoModelForCausalLM.from_pretrained(str(weights), use_safetensors=True, dtype=torch_dtype)
        return model.to(self._device).eval()

    def model(self, which: str):
        """The ``original`` or ``unlearned`` model itself (shared: whoever changes it restores it)."""
        return self.original if which == "original" else self.unlearned

    def fresh(self, which: str):
        """A copy of the ``original`` or ``unlearned`` model that a fine-tuning run may change."""
        from rwku.models.packed import release_packed

        model = self.original if which == "original" else self.unlearned
        release_packed(model)  # the engine's packed weights cannot be copied (and are rebuilt)
        return copy.deepcopy(model)

    def guard(self, model, which: str, target) -> Callable[[], None] | None:
        """Install the run's inference-time change (RepE hooks) on ``model``; the undo function.

        ICU's change is its prompt prefix (:attr:`prompt_prefix`), applied by the evaluation.
        The original model (``which == "original"``) is never changed.
        """
        if which == "original" or self.method is None or self.method.kind != "inference":
            return None
        if self.method.name == "repe":
            if target.name not in self._vectors:
                from rwku.methods.repe import control_vectors

                self._vectors[target.name] = control_vectors(self.original, self.tokenizer, target)
            return self.method.install(model, self.tokenizer, target, vectors=self._vectors[target.name])
        return self.method.install(model, self.tokenizer, target)

    def asked(self, which: str, rwku_data, target, log: Callable[[str], None] = print):
        """The model an evaluation of ``which`` asks: the engine, or for an inference-time guard's
        unlearned side the guard around it (rebuilt as the run built it: same cached text, seed
        and options; :meth:`rwku.methods.base.UnlearningMethod.guard`)."""
        if which == "original" or self.method is None or not self.method.guards:
            return self.lm
        if target.name not in self._guards:
            self._guards[target.name] = self.method.guard(
                self.lm,
                rwku_data,
                target,
                fingerprint=self.fingerprint,
                seed=self.run.seed,
                progress=self.lm.progress,
                log=log,
            )
        return self._guards[target.name]

    def prefix_for(self, which: str) -> str | None:
        return self.prompt_prefix if which == "unlearned" else None
