"""``rwku attack relearn|incontext RUN``: is the unlearned target really gone?

Kept apart from :mod:`rwku.cli`, which only registers the group. Conventions as everywhere in
the CLI: a user mistake is one line on stderr and exit code 2; the record is written
atomically beside the run once every target is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rwku.errors import RwkuError

attack_app = typer.Typer(
    no_args_is_help=True,
    help="Attack an unlearned model: relearning (fine-tuning) or in-context re-introduction.",
)

RunArg = Annotated[
    Path, typer.Argument(help="A run folder (rwku run/unlearn/sweep) or an unlearned model dir.")
]
TargetOpt = Annotated[str | None, typer.Option("--target", "-t", help="Only this target of the run.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="The original model (default: the run's own; required for a model dir)."
    ),
]
DataOpt = Annotated[
    str | None, typer.Option("--data", help="RWKU data directory (else the run's, $RWKU_DATA).")
]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Record file (default: RUN/attack-<name>.json).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16 or float16.")]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: all cores).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _fail(err: RwkuError) -> None:
    typer.echo(f"rwku: error: {err}", err=True)
    raise typer.Exit(code=err.exit_code)


def _common(target, model, data, out, device, dtype, threads, quiet) -> dict:
    """The options every attack command shares, as ``attack_run`` keywords."""
    return {
        "target": target,
        "model": model,
        "data": data,
        "out": out,
        "device": device,
        "dtype": dtype,
        "threads": threads,
        "progress": not quiet,
    }


def _attack(name: str, run: Path, **options) -> None:
    """Run the attack, print its tables; a user mistake is one line and exit code 2."""
    from rwku.attacks.runner import attack_run
    from rwku.attacks.tables import format_record

    try:
        record = attack_run(name, run, log=lambda m: typer.echo(m, err=True), **options)
    except RwkuError as err:
        _fail(err)
    typer.echo(format_record(record))
    typer.echo(f"record written to {record['written_to']} ({record['seconds']:.0f} s)", err=True)


@attack_app.command("relearn")
def relearn_cmd(
    run: RunArg,
    kinds: Annotated[str, typer.Option(help="Relearning data kinds: split, related, unrelated.")] = (
        "split,related,unrelated"
    ),
    budgets: Annotated[str, typer.Option(help="Steps to evaluate at, increasing (one training run).")] = (
        "0,10,25,50"
    ),
    mode: Annotated[str, typer.Option(help="The attacker's fine-tuning: full or lora.")] = "full",
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default: the searched rate of the mode).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Relearning batch size.")] = 4,
    max_length: Annotated[int, typer.Option(min=1, help="Tokens per relearning text.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of batch order and LoRA init.")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/evaluated split of the probes.")] = 0,
    no_controls: Annotated[
        bool, typer.Option("--no-controls", help="Skip the original-model control runs.")
    ] = False,
    target: TargetOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    threads: ThreadsOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute the cached control runs.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune the unlearned model a few steps on text that cannot teach the evaluated answers;
    report how much of the target comes back (R), beside the original model's control (T)."""
    from rwku.attacks.relearn import RelearnOptions

    try:
        opts = RelearnOptions.from_dict(
            {
                "kinds": kinds,
                "budgets": budgets,
                "mode": mode,
                "lr": lr,
                "batch_size": batch_size,
                "max_length": max_length,
                "seed": seed,
                "split_seed": split_seed,
                "controls": not no_controls,
            },
            source="options",
        )
    except RwkuError as err:
        _fail(err)
    common = _common(target, model, data, out, device, dtype, threads, quiet)
    _attack("relearn", run, relearn=opts, use_cache=not no_cache, **common)


@attack_app.command("incontext")
def incontext_cmd(
    run: RunArg,
    target: TargetOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    threads: ThreadsOpt = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Recompute the original model's cached results.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Ask every forget probe again with a context from the target's passages (the answer, related
    text without answers, the answer under an invented name); report the gain per context."""
    common = _common(target, model, data, out, device, dtype, threads, quiet)
    _attack("incontext", run, use_cache=not no_cache, **common)


def register(app: typer.Typer) -> None:
    app.add_typer(attack_app, name="attack")
