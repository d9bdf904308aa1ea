"""The ``rwku`` command line.

Every user mistake (bad flag value, missing data, unknown target, unloadable model) ends in one
line on stderr and exit code 2, never a traceback; results are written atomically.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from rwku.cli_attack import register as register_attack_commands
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
LmEvalTasksOpt = Annotated[
    str | None,
    typer.Option(
        help="lm-evaluation-harness tasks added to the utility columns, comma list, e.g. arc_easy,winogrande "
        "(pip install 'rwku[lmeval]')."
    ),
]
LmEvalIncludeOpt = Annotated[
    list[str] | None, typer.Option(help="Folder of local lm-eval task YAMLs (repeatable).")
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
    dtype: Annotated[
        str,
        typer.Option(
            help="float32 (as the reference), bfloat16, float16; int8: opt-in faster CPU evaluation."
        ),
    ] = "float32",
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
    lm_eval_tasks: LmEvalTasksOpt = None,
    lm_eval_include: LmEvalIncludeOpt = None,
) -> None:
    """Evaluate a model on one target and print the paper's Table 1 row."""
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.lm_eval_backend import check_tasks, split_names
    from rwku.evaluation.runner import expand_suites
    from rwku.io import atomic_write_json

    try:
        parts = expand_suites(suites)
        cfg = EvalConfig(
            limit=limit,
            stop_at_newline=stop_at_newline,
            bbh_compat=bbh_compat,
            bbh_full_output=bbh_full_output,
            lm_eval_tasks=split_names(lm_eval_tasks),
            lm_eval_include=tuple(lm_eval_include or ()),
        )
        check_tasks(cfg.lm_eval_tasks, cfg.lm_eval_include)  # before the model loads
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


def _unlearn_config(recipe: dict, **own):
    """CLI options (None = not given) over the YAML file's, validated as one UnlearnConfig:
    ``recipe`` holds the options of :func:`_recipe_options` as typer gave them, ``own`` the
    command's own options under their UnlearnConfig names."""
    from rwku.experiments.unlearn import UnlearnConfig

    options = dict(recipe)
    config = options.pop("config")
    options.update(
        targets=options.pop("target"),
        method_options=_method_options(options.pop("option")),
        trust_remote_code=options.pop("trust_remote_code") or None,
        gradient_checkpointing=options.pop("gradient_checkpointing") or None,
        progress=False if options.pop("quiet") else None,
        **own,
    )
    options = {k: v for k, v in options.items() if v is not None}
    if config is not None:
        return UnlearnConfig.from_yaml(config, **options)
    return UnlearnConfig.from_dict(options, source="options")


def _method_options(pairs: list[str] | None) -> dict | None:
    """``--option beta=0.1 --option alpha=1.5`` → {"beta": 0.1, "alpha": 1.5} (YAML-typed values)."""
    import yaml

    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes key=value (e.g. --option beta=0.1), got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


TargetsOpt = Annotated[
    str | None,
    typer.Option(
        "--target",
        "-t",
        help="Target(s): a name or id; a comma list or a range 1..10 for several targets.",
    ),
]
MethodOpt = Annotated[str | None, typer.Option(help="Method (see `rwku methods`).")]
ModeOpt = Annotated[
    str | None, typer.Option(help="full, lora, partial, or expert (mixture-of-experts models).")
]
SettingOpt = Annotated[
    str | None,
    typer.Option(help="single (each target from the original model) or batch (all targets at once)."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file with any of these options.")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Alias, local dir, .gguf or hub id.")]
CorpusOpt = Annotated[
    str | None,
    typer.Option(help="synthetic (made by the model), authors, or a corpus file / previous run folder."),
]
CorpusPresetOpt = Annotated[
    str | None, typer.Option(help="Synthetic corpus sizes: cpu (32 x 128 tokens) or paper (582 x 512).")
]
CorpusSizeOpt = Annotated[int | None, typer.Option(min=1, help="Records in the forget corpus.")]
CorpusTokensOpt = Annotated[int | None, typer.Option(min=1, help="New tokens per generated record.")]
RetainOpt = Annotated[str | None, typer.Option(help="Retain text for graddiff/kl/rmu: generic or neighbor.")]
RetainSizeOpt = Annotated[
    int | None, typer.Option(min=1, help="Retain records (default: as many as forget).")
]
LayersOpt = Annotated[str | None, typer.Option(help="Partial mode: half-open layer range, e.g. 0-4.")]
ExpertsOpt = Annotated[
    str | None,
    typer.Option(
        help="Expert mode: N best-attributed experts (default 1), layer.expert pairs (3.5,4.1) or random."
    ),
]
LrOpt = Annotated[float | None, typer.Option(min=0, help="Learning rate (default: the preset).")]
EpochsOpt = Annotated[float | None, typer.Option(min=0, help="Epochs (default: the preset).")]
BatchOpt = Annotated[int | None, typer.Option(min=1, help="Training batch size (default: the preset).")]
AccumOpt = Annotated[int | None, typer.Option(min=1, help="Gradient accumulation steps.")]
MaxLenOpt = Annotated[int | None, typer.Option(min=1, help="Training cutoff in tokens (paper: 512).")]
CheckpointOpt = Annotated[
    bool,
    typer.Option(
        "--gradient-checkpointing",
        help="Recompute each layer's activations in the backward pass: less memory, one more forward per step.",
    ),
]
SeedOpt = Annotated[int | None, typer.Option(help="Seed of corpus sampling, LoRA init and batch order.")]
OptionOpt = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="Method option key=value, repeatable (e.g. beta=0.1, alpha=1.5)."),
]
RunDirOpt = Annotated[str | None, typer.Option(help="Where to save weights/adapter, corpus and config.")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, mps ...")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: all cores).")]
RemoteOpt = Annotated[bool, typer.Option(help="Allow model code from the checkpoint.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _recipe_options(
    target: TargetsOpt = None,
    method: MethodOpt = None,
    mode: ModeOpt = None,
    setting: SettingOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
    corpus: CorpusOpt = None,
    corpus_preset: CorpusPresetOpt = None,
    corpus_size: CorpusSizeOpt = None,
    corpus_tokens: CorpusTokensOpt = None,
    retain: RetainOpt = None,
    retain_size: RetainSizeOpt = None,
    layers: LayersOpt = None,
    experts: ExpertsOpt = None,
    lr: LrOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    grad_accum: AccumOpt = None,
    max_length: MaxLenOpt = None,
    gradient_checkpointing: CheckpointOpt = False,
    seed: SeedOpt = None,
    option: OptionOpt = None,
    run_dir: RunDirOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    threads: ThreadsOpt = None,
    trust_remote_code: RemoteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The options `rwku unlearn` and `rwku run` share, defined once: only this signature is
    used (see :func:`_with_recipe_options`)."""


def _with_recipe_options(command: Callable) -> Callable:
    """Give ``command(recipe, **own)`` the options of :func:`_recipe_options` too.

    Typer reads one signature: the shared options, with the command's own ones inserted
    before ``--run-dir`` (after the recipe's, before where and on what it runs). The command
    is called with the shared options gathered in ``recipe`` (a dict, values as given) and
    its own as keywords.
    """
    shared = inspect.signature(_recipe_options, eval_str=True).parameters
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
    params = list(shared.values())
    at = list(shared).index("run_dir")
    params[at:at] = own

    @functools.wraps(command)
    def wrapper(**options):
        recipe = {name: options.pop(name) for name in shared}
        return command(recipe, **options)

    wrapper.__signature__ = inspect.Signature(params, return_annotation=None)
    # Evaluated annotations, for typing.get_type_hints (functools.wraps copied the command's own).
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    return wrapper


def _exit_for(record: dict) -> None:
    """A run a guard rail stopped is not a success: say why and exit 1."""
    run = record["run"]
    if run["status"] != "finished":
        reasons = [run.get("reason")] + [r.get("reason") for r in (run.get("runs") or {}).values()]
        reason = next((r for r in reasons if r), "")
        stopped = "the guard stopped" if run["status"] == "guard_rail" else "training stopped"
        typer.echo(f"rwku: {stopped} ({run['status']}): {reason}; record in {run['run_dir']}", err=True)
        raise typer.Exit(code=1)


@app.command()
@_with_recipe_options
def unlearn(recipe: dict) -> None:
    """Unlearn a target and save the result to a run directory (no evaluation)."""
    from rwku.experiments.unlearn import run_unlearning

    try:
        cfg = _unlearn_config(recipe)
        record = run_unlearning(cfg, evaluate_model=False, log=lambda m: typer.echo(m, err=True))
    except RwkuError as err:
        _fail(err)
    _exit_for(record)
    typer.echo(f"run saved to {record['run']['run_dir']} (status: {record['run']['status']})")


@app.command("run")
@_with_recipe_options
def run_cmd(
    recipe: dict,
    suites: Annotated[str | None, typer.Option(help="Suites to evaluate before and after.")] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Keep the first N items of every list.")] = None,
    utility_limit: Annotated[int | None, typer.Option(min=0, help="The same, utility sets only.")] = None,
    eval_batch_size: Annotated[int | None, typer.Option(min=1, help="Most rows per evaluation pass.")] = None,
    stop_at_newline: Annotated[bool, typer.Option(help="Cut probe answers at the first newline.")] = False,
    bbh_compat: Annotated[bool, typer.Option(help="Report BBH with the reference's bug.")] = False,
    bbh_full_output: Annotated[bool, typer.Option(help="Decode BBH to 256 tokens.")] = False,
    lm_eval_tasks: LmEvalTasksOpt = None,
    lm_eval_include: LmEvalIncludeOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Evaluate the original model afresh.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write {before, after, run} JSON here.")] = None,
) -> None:
    """Unlearn, evaluate before and after, and print both rows with the deltas."""
    from rwku.experiments.unlearn import run_unlearning
    from rwku.io import atomic_write_json
    from rwku.reporting.table import format_table

    try:
        cfg = _unlearn_config(
            recipe,
            suites=suites,
            limit=limit,
            utility_limit=utility_limit,
            eval_batch_size=eval_batch_size,
            stop_at_newline=stop_at_newline or None,
            bbh_compat=bbh_compat or None,
            bbh_full_output=bbh_full_output or None,
            lm_eval_tasks=lm_eval_tasks,
            lm_eval_include=lm_eval_include or None,
            out=str(out) if out is not None else None,
            use_cache=False if no_cache else None,
        )
        if cfg.out is not None and Path(cfg.out).is_dir():
            raise ConfigError(f"--out {cfg.out} is a directory; give a file name such as run.json")
        eval_cfg = cfg.eval_config()
        if eval_cfg.lm_eval_tasks:
            from rwku.evaluation.lm_eval_backend import check_tasks

            check_tasks(eval_cfg.lm_eval_tasks, eval_cfg.lm_eval_include)
        record = run_unlearning(cfg, log=lambda m: typer.echo(m, err=True))
    except RwkuError as err:
        _fail(err)
    before, after = record["before"], record["after"]
    label = (
        f"{record['run']['method']} ({cfg.mode})" if record["run"].get("mode") else record["run"]["method"]
    )
    if after and "scores" in before:
        typer.echo(format_table([("before", before), (label, after)], with_delta=True))
    else:
        for name in after:
            typer.echo(f"## {name}")
            typer.echo(format_table([("before", before[name]), (label, after[name])], with_delta=True))
    flags = (record["run"].get("guard") or {}).get("flag_rates")
    if flags:
        from rwku.reporting.table import format_flag_rates

        typer.echo(format_flag_rates([(label, flags)]))
    typer.echo(f"run saved to {record['run']['run_dir']}", err=True)
    if cfg.out is not None:
        atomic_write_json(cfg.out, record)
        typer.echo(f"results written to {cfg.out}", err=True)
    _exit_for(record)


@app.command("experts")
def experts_cmd(
    target: TargetsOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    corpus: CorpusOpt = None,
    corpus_preset: CorpusPresetOpt = None,
    corpus_size: CorpusSizeOpt = None,
    top: Annotated[int, typer.Option(min=1, help="Experts shown per layer.")] = 3,
    max_length: MaxLenOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also write the table as JSON here.")] = None,
) -> None:
    """Attribute a target to the experts of a mixture-of-experts model (UOE/SEUF expert attribution)."""
    from rwku.experiments.experts import expert_table, format_expert_table
    from rwku.experiments.unlearn import UnlearnConfig
    from rwku.io import atomic_write_json

    try:
        options = dict(
            targets=target,
            model=model,
            data=data,
            corpus=corpus,
            corpus_preset=corpus_preset,
            corpus_size=corpus_size,
            max_length=max_length,
            seed=seed,
            device=device,
            threads=threads,
            progress=False,
        )
        cfg = UnlearnConfig.from_dict({k: v for k, v in options.items() if v is not None}, source="options")
        result = expert_table(cfg, top=top, log=lambda m: typer.echo(m, err=True))
    except RwkuError as err:
        _fail(err)
    typer.echo(format_expert_table(result))
    if out is not None:
        atomic_write_json(out, result)
        typer.echo(f"table written to {out}", err=True)


@app.command("moe-testbed")
def moe_testbed(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Dense Llama-architecture model (default: the default)."),
    ] = None,
    experts: Annotated[int, typer.Option(min=2, help="Routed experts per layer.")] = 4,
    top_k: Annotated[int, typer.Option(min=1, help="Experts per token.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the router initialisation.")] = 0,
    force: Annotated[bool, typer.Option(help="Rebuild even if a cached build exists.")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Build the local MoE testbed (alias smollm2-135m-moe): the dense model sparsely upcycled into Mixtral."""
    from rwku.models.testbed import MOE_ALIAS, build_testbed

    _set_threads(threads)
    try:
        path, manifest = build_testbed(
            model,
            num_experts=experts,
            top_k=top_k,
            seed=seed,
            force=force,
            log=lambda m: typer.echo(m, err=True),
        )
    except RwkuError as err:
        _fail(err)
    typer.echo(
        f"{MOE_ALIAS}: {manifest['architecture']}, {manifest['num_experts']} experts, top-{manifest['top_k']}, "
        f"{manifest['num_parameters']:,} parameters (dense: {manifest['dense_parameters']:,})"
    )
    typer.echo(f"path: {path}")


@app.command()
def demo(
    data: DataOpt = None,
    model: ModelOpt = None,
    out_dir: Annotated[Path, typer.Option(help="Where the results JSON, plot and run go.")] = Path(
        "results/demo"
    ),
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads.")] = 2,
    quiet: QuietOpt = False,
) -> None:
    """Unlearn Stephen King from the default model and show before/after (what `make demo` runs)."""
    from rwku.experiments.demo import run_demo

    try:
        run_demo(
            out_dir=out_dir,
            data=data,
            model=model,
            threads=threads,
            progress=not quiet,
            log=lambda m: typer.echo(m, err=True),
            echo=typer.echo,
        )
    except RwkuError as err:
        _fail(err)


@app.command()
def census(
    model: ModelOpt = None,
    targets: Annotated[
        str, typer.Option(help="Targets: a range 1-100 (or 1..100), ids or names, comma list.")
    ] = "1-100",
    limit: Annotated[
        int | None, typer.Option(min=1, help="First K probes of each of FB and QA per target (all: 0).")
    ] = 5,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for census.jsonl/csv/json/png; resumes.")
    ] = Path("results/census"),
    data: DataOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Most rows per forward pass.")] = 64,
    threads: ThreadsOpt = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 (as the reference), bfloat16, float16.")] = "float32",
    trust_remote_code: RemoteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """What a model knows about each target before unlearning: FB/QA ROUGE and gold-answer
    likelihood on the first K probes, one row per target (resumable)."""
    from rwku.data import open_data
    from rwku.experiments.census import parse_target_range, run_census
    from rwku.models.hf import HFLanguageModel
    from rwku.models.resolve import load_model

    try:
        names = parse_target_range(targets)
        opened = open_data(data)
        for t in names:
            opened.target(t)  # unknown targets fail before the model loads
        _set_threads(threads)
        loaded = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        lm = HFLanguageModel(
            loaded.model, loaded.tokenizer, loaded.info, batch_size=batch_size, progress=not quiet
        )
        rows = run_census(lm, opened, names, out, limit=limit or None, log=lambda m: typer.echo(m, err=True))
    except RwkuError as err:
        _fail(err)
    typer.echo(f"census of {len(rows)} targets written to {out} (census.csv, census.json, census.png)")


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
register_attack_commands(app)  # rwku attack relearn|incontext (rwku/cli_attack.py)


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # python -m rwku.cli / accelerate launch -m rwku.cli
    main()
