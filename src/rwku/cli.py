"""The ``rwku`` command line.

Every user mistake (bad flag value, missing data, unknown target, unloadable model) ends in one
line on stderr and exit code 2, never a traceback; results are written atomically.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from rwku.cli_sweep import register as register_sweep_commands
from rwku.errors import ConfigError, RwkuError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Real-World Knowledge Unlearning: evaluate (and unlearn) a target person in an LLM.",
)

DataOpt = Annotated[
    str | None, typer.Option("--data", help="RWKU data directory (else $RWKU_DATA, else the hub).")
]


def _fail(err: RwkuError) -> None:
    typer.echo(f"rwku: error: {err}", err=True)
    raise typer.Exit(code=err.exit_code)


def _set_threads(threads: int | None) -> None:
    import torch

    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))


@app.command()
def targets(data: DataOpt = None) -> None:
    """List the targets with their probe counts."""
    from rwku.data import open_data, target_table

    try:
        rows = target_table(open_data(data))
    except RwkuError as err:
        _fail(err)
    cols = list(rows[0]) if rows else []
    typer.echo("\t".join(cols))
    for row in rows:
        typer.echo("\t".join(str(row[c]) for c in cols))


@app.command("eval")
def eval_cmd(
    target: Annotated[str, typer.Option("--target", "-t", help="Target name, id or folder name.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Alias, local dir, .gguf or hub id.")
    ] = None,
    suites: Annotated[
        str, typer.Option(help="Comma list: forget,neighbor,mia,utility (or utility parts).")
    ] = ("forget,neighbor,mia,utility"),
    limit: Annotated[int | None, typer.Option(min=0, help="Keep the first N items of every list.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Most rows per forward pass.")] = 64,
    data: DataOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the full result JSON here.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ignore cached results.")] = False,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads (default: all cores).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 (as the reference), bfloat16, float16.")] = "float32",
    stop_at_newline: Annotated[bool, typer.Option(help="Cut probe answers at the first newline.")] = False,
    bbh_compat: Annotated[
        bool, typer.Option(help="Report BBH with the reference's per-character bug.")
    ] = False,
    bbh_full_output: Annotated[bool, typer.Option(help="Decode BBH to 256 tokens after the answer.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow model code from the checkpoint.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    backend: Annotated[
        str,
        typer.Option(help="hf (transformers) or vllm (CUDA GPUs, pip install 'rwku[vllm]'; docs/scale.md)."),
    ] = "hf",
) -> None:
    """Evaluate a model on one target and print the paper's Table 1 row."""
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.runner import expand_suites
    from rwku.io import atomic_write_json

    try:
        parts = expand_suites(suites)
        cfg = EvalConfig(
            limit=limit,
            stop_at_newline=stop_at_newline,
            bbh_compat=bbh_compat,
            bbh_full_output=bbh_full_output,
        )
        if out is not None and out.exists() and out.is_dir():
            raise ConfigError(f"--out {out} is a directory; give a file name such as results.json")
        result = run_evaluation(
            model=model,
            target=target,
            parts=parts,
            cfg=cfg,
            data=data,
            batch_size=batch_size,
            use_cache=not no_cache,
            threads=threads,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            progress=not quiet,
            backend=backend,
        )
    except RwkuError as err:
        _fail(err)
    from rwku.reporting.table import format_table

    typer.echo(format_table([(result["model"].get("name", "model"), result)]))
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result["timings"].items())
    cached = f" (cached: {', '.join(result['cached_suites'])})" if result["cached_suites"] else ""
    typer.echo(f"timings: {timing}{cached}", err=True)
    if out is not None:
        atomic_write_json(out, result)
        typer.echo(f"results written to {out}", err=True)


@app.command()
def methods() -> None:
    """List the unlearning methods with one-line descriptions."""
    from rwku.methods import list_methods

    for name, cls in list_methods().items():
        corpus = f"[{cls.corpus}]" if cls.corpus else "[inference]"
        typer.echo(f"{name:<10} {corpus:<16} {cls.description}")


def _unlearn_config(config: Path | None, **options):
    from rwku.experiments.unlearn import UnlearnConfig

    options = {k: v for k, v in options.items() if v is not None}
    if "targets" in options and isinstance(options["targets"], str):
        options["targets"] = [t.strip() for t in options["targets"].split(",") if t.strip()]
    if config is not None:
        return UnlearnConfig.from_yaml(config, **options)
    return UnlearnConfig.from_dict(options, source="options")


TargetsOpt = Annotated[
    str | None,
    typer.Option("--target", "-t", help="Target(s): a name, id, or a comma list for the batch setting."),
]
MethodOpt = Annotated[str | None, typer.Option(help="Method (see `rwku methods`).")]
ModeOpt = Annotated[str | None, typer.Option(help="full, lora or partial.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file with any of these options.")]


@app.command()
def unlearn(
    target: TargetsOpt = None,
    method: MethodOpt = None,
    mode: ModeOpt = None,
    model: Annotated[str | None, typer.Option("--model", "-m")] = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
    corpus: Annotated[str | None, typer.Option(help="synthetic (made by the model) or authors.")] = None,
    corpus_size: Annotated[int | None, typer.Option(min=1)] = None,
    layers: Annotated[str | None, typer.Option(help="Partial mode: half-open layer range, e.g. 0-4.")] = None,
    lr: Annotated[float | None, typer.Option(min=0)] = None,
    epochs: Annotated[float | None, typer.Option(min=0)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    run_dir: Annotated[
        str | None, typer.Option(help="Where to save weights/adapter, corpus and config.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Unlearn a target and save the result to a run directory (no evaluation)."""
    from rwku.experiments.unlearn import run_unlearning

    try:
        cfg = _unlearn_config(
            config,
            targets=target,
            method=method,
            mode=mode,
            model=model,
            data=data,
            corpus=corpus,
            corpus_size=corpus_size,
            layers=layers,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            run_dir=run_dir,
            progress=False if quiet else None,
        )
        record = run_unlearning(cfg, evaluate_model=False, log=lambda m: typer.echo(m, err=True))
    except RwkuError as err:
        _fail(err)
    typer.echo(f"run saved to {record['run']['run_dir']} (status: {record['run']['status']})")


@app.command("run")
def run_cmd(
    target: TargetsOpt = None,
    method: MethodOpt = None,
    mode: ModeOpt = None,
    model: Annotated[str | None, typer.Option("--model", "-m")] = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
    corpus: Annotated[str | None, typer.Option(help="synthetic (made by the model) or authors.")] = None,
    corpus_size: Annotated[int | None, typer.Option(min=1)] = None,
    layers: Annotated[str | None, typer.Option(help="Partial mode: half-open layer range, e.g. 0-4.")] = None,
    lr: Annotated[float | None, typer.Option(min=0)] = None,
    epochs: Annotated[float | None, typer.Option(min=0)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    suites: Annotated[str | None, typer.Option(help="Suites to evaluate before and after.")] = None,
    limit: Annotated[int | None, typer.Option(min=0)] = None,
    utility_limit: Annotated[int | None, typer.Option(min=0)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache")] = False,
    run_dir: Annotated[str | None, typer.Option()] = None,
    out: Annotated[Path | None, typer.Option(help="Write {before, after, run} JSON here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Unlearn, evaluate before and after, and print both rows with the deltas."""
    from rwku.experiments.unlearn import run_unlearning
    from rwku.io import atomic_write_json
    from rwku.reporting.table import format_table

    try:
        if suites is not None:
            from rwku.evaluation.runner import expand_suites

            expand_suites(suites)
        cfg = _unlearn_config(
            config,
            targets=target,
            method=method,
            mode=mode,
            model=model,
            data=data,
            corpus=corpus,
            corpus_size=corpus_size,
            layers=layers,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            suites=suites,
            limit=limit,
            utility_limit=utility_limit,
            run_dir=run_dir,
            progress=False if quiet else None,
            use_cache=False if no_cache else None,
        )
        record = run_unlearning(cfg, log=lambda m: typer.echo(m, err=True))
    except RwkuError as err:
        _fail(err)
    before, after = record["before"], record["after"]
    if "scores" in before:
        typer.echo(format_table([("before", before), (f"{cfg.method} ({cfg.mode})", after)], with_delta=True))
    else:
        for name in before:
            typer.echo(f"## {name}")
            typer.echo(format_table([("before", before[name]), (cfg.method, after[name])], with_delta=True))
    typer.echo(f"run saved to {record['run']['run_dir']}", err=True)
    if out is not None:
        atomic_write_json(out, record)
        typer.echo(f"results written to {out}", err=True)


def run_evaluation(
    *,
    model,
    target,
    parts,
    cfg,
    data=None,
    batch_size=16,
    use_cache=True,
    threads=None,
    device="cpu",
    dtype="float32",
    trust_remote_code=False,
    progress=True,
    backend="hf",
) -> dict:
    """Load data and model, evaluate, and return the result dictionary (used by the CLI and tests)."""
    from rwku.data import open_data
    from rwku.evaluation.cache import ResultCache
    from rwku.evaluation.runner import evaluate
    from rwku.models.hf import HFLanguageModel
    from rwku.models.resolve import load_model, resolve_model

    _set_threads(threads)
    target_data = open_data(data).load_target(target)
    spec = resolve_model(model)
    if backend == "vllm":  # generation on vLLM; its own fingerprint, so never mixed in the cache
        from rwku.models.vllm_backend import open_vllm

        lm = open_vllm(
            model,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            batch_size=batch_size,
            progress=progress,
        )
    elif backend == "hf":
        loaded = load_model(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        lm = HFLanguageModel(
            loaded.model, loaded.tokenizer, loaded.info, batch_size=batch_size, progress=progress
        )
    else:
        raise ConfigError(f"--backend must be hf or vllm, got {backend!r}")
    started = time.perf_counter()

    def report(part: str, seconds: float, cached: bool) -> None:
        if progress:
            note = "cached" if cached else f"{seconds:.1f}s"
            typer.echo(f"  {part}: {note}", err=True)

    result = evaluate(
        lm,
        target_data,
        suites=parts,
        cfg=cfg,
        cache=ResultCache(enabled=use_cache),
        model_fingerprint=lm.info.get("fingerprint"),
        on_part=report,
    )
    result["timings"]["total"] = round(time.perf_counter() - started, 3)
    result["tokens_processed"] = lm.tokens_processed
    return result


register_sweep_commands(app)  # rwku sweep, rwku report (rwku/cli_sweep.py)


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # python -m rwku.cli / accelerate launch -m rwku.cli
    main()
