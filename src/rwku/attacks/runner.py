"""One command's worth of attack: a run folder (or model directory) → records and a table.

``attack_run`` opens the run, loads its models once, runs the asked attack on every target it
unlearned (or the one asked for), and writes ``attack-<name>.json`` beside the run only when
every target is done — an interrupted attack leaves no record that looks finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rwku.attacks import ATTACKS
from rwku.errors import ConfigError
from rwku.io import atomic_write_json

RECORD_VERSION = 1


def record_path(run_dir: str | Path, attack: str) -> Path:
    return Path(run_dir) / f"attack-{attack}.json"


def attack_subject_targets(path: str | Path, target: str | None, original: str | None):
    """The run targets an attack will hit: a run folder's, or a model directory's one target."""
    from rwku.attacks.subject import model_dir_target, open_run

    path = Path(path)
    is_model_dir = (path / "config.json").is_file() or (path / "adapter_config.json").is_file()
    if (path / "run.json").is_file() or not is_model_dir:
        targets = open_run(path)
    else:
        if target is None:
            raise ConfigError(f"{path} is a model directory: say which target it unlearned with --target")
        if original is None:
            raise ConfigError(f"{path} is a model directory: give the original model with --model")
        targets = [model_dir_target(path, target)]
    if target is not None and targets[0].method != "external":
        chosen = [t for t in targets if t.target == target]
        if not chosen:
            names = ", ".join(t.target for t in targets)
            raise ConfigError(f"the run unlearned {names}, not {target!r}")
        targets = chosen
    return targets


def attack_run(
    attack: str,
    path: str | Path,
    *,
    relearn=None,
    target: str | None = None,
    model: str | None = None,
    data: str | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    threads: int | None = None,
    progress: bool = True,
    use_cache: bool = True,
    log: Callable[[str], None] = print,
    write: bool = True,
) -> dict[str, Any]:
    """Run ``attack`` (relearn or incontext) on the run at ``path``; write and return the record."""
    import torch

    from rwku.attacks.incontext import run_incontext
    from rwku.attacks.relearn import RelearnOptions, run_relearn
    from rwku.attacks.subject import AttackSubject
    from rwku.data import open_data
    from rwku.evaluation.cache import ResultCache
    from rwku.methods.trainer import peak_rss_mb, reset_peak_rss

    if attack not in ATTACKS:
        raise ConfigError(f"unknown attack {attack!r}; choose from: {', '.join(ATTACKS)}")
    relearn = relearn or RelearnOptions()
    run_targets = attack_subject_targets(path, target, model)
    if attack == "relearn":
        from rwku.methods import get_method

        if get_method(run_targets[0].method, **run_targets[0].method_options).guards:
            raise ConfigError(
                f"run {path} is an inference-time guard ({run_targets[0].method}): its weights are the "
                "original model's, so a relearning attack would fine-tune the original model, not the guard; "
                "attack it in context instead (rwku attack incontext)"
            )
    rwku_data = open_data(data or run_targets[0].data)
    # every target must exist (and have passages for the attacks that read them) before models load
    target_data = {rt.target: rwku_data.load_target(rt.target) for rt in run_targets}
    if attack == "incontext" or "related" in relearn.kinds:
        from rwku.attacks.data import target_passages

        for name in target_data:
            target_passages(rwku_data, name)
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    memory_scope = reset_peak_rss()  # the attack's own peak, not the training's before it
    records: dict[str, Any] = {}
    subject = None
    for rt in run_targets:
        if subject is None or subject.run.weights != rt.weights:
            subject = AttackSubject(rt, model=model, device=device, dtype=dtype, progress=progress)
        td = target_data[rt.target]
        cache = ResultCache(enabled=use_cache)
        if attack == "relearn":
            records[td.target.name] = run_relearn(
                subject, rwku_data, td, relearn, log=log, progress=progress, cache=cache
            )
        else:
            records[td.target.name] = run_incontext(
                subject, rwku_data, td, log=log, progress=progress, cache=cache
            )
    record = {
        "version": RECORD_VERSION,
        "attack": attack,
        "status": "finished",
        "run_dir": str(path),
        "targets": records,
        "seconds": round(time.perf_counter() - started, 1),
        # the attack's peak resident memory ("run": since it started; "process": the process's
        # lifetime, where it cannot be reset), for docs/models.md; one model at a time
        "peak_memory_mb": round(peak_rss_mb(), 1),
        "peak_memory_scope": memory_scope,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if write:
        dest = (
            Path(out)
            if out is not None
            else record_path(run_targets[0].run_dir if len(run_targets) == 1 else path, attack)
        )
        atomic_write_json(dest, record)
        record["written_to"] = str(dest)
    return record
