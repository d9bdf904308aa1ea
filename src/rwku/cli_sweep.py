"""``rwku sweep`` and ``rwku report``: a whole study in one command, its figures in one more.

Kept apart from :mod:`rwku.cli` (which only registers these commands) so the grid, resume and
report logic can change without touching the evaluation commands. The conventions are the
CLI's: a user mistake is one line on stderr and exit code 2; a sweep that ends with failed or
unfinished cells exits with 1, so job arrays and CI notice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rwku.errors import ConfigError, RwkuError


def _fail(err: RwkuError) -> None:
    typer.echo(f"rwku: error: {err}", err=True)
    raise typer.Exit(code=err.exit_code)


def _resolver(data: str | None):
    """Target name or id → canonical name, from the data the sweep will run on."""
    from rwku.data import open_data

    opened = open_data(data)
    return lambda t: opened.target(t).name


def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep YAML file (see docs/sweeps.md).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory (created; re-use it to resume).")
    ],
    data: Annotated[
        str | None,
        typer.Option("--data", help="RWKU data directory (else the config's, $RWKU_DATA, the hub)."),
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="Run only shard i of n (0-based), e.g. 0/4, for job arrays.")
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray", help="Run cells as Ray tasks: a cluster address, 'auto', or 'local' (start one)."
        ),
    ] = None,
    gpus_per_cell: Annotated[float, typer.Option(min=0, help="Ray: GPUs each cell asks for.")] = 0.0,
    cpus_per_cell: Annotated[float, typer.Option(min=0, help="Ray: CPUs each cell asks for.")] = 1.0,
    device: Annotated[str | None, typer.Option(help="Override the config's device (cpu, cuda ...).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads per cell.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the cells (and which are done) and exit.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars inside cells.")] = False,
) -> None:
    """Run a grid of unlearning runs; a re-run resumes it (finished cells are skipped)."""
    from rwku.experiments.grid import describe, expand_grid, load_sweep_config, parse_shard
    from rwku.experiments.sweep import RunOptions, format_summary, is_finished, run_sweep, run_with_ray

    try:
        raw = load_sweep_config(config)
        data_dir = data if data is not None else raw.get("data")
        if data_dir is not None and not isinstance(data_dir, str):
            raise ConfigError(f"{config}: data must be a path, got {data_dir!r}")
        plan = expand_grid(
            raw, resolve_target=_resolver(data_dir), source=str(config), default_name=config.stem
        )
        shard_spec = parse_shard(shard)
        cells = plan.shard(*shard_spec) if shard_spec else plan.cells
        if dry_run:
            typer.echo(describe(cells))
            done = sum(is_finished(out, c) for c in cells)
            typer.echo(f"{len(cells)} cells ({done} finished in {out})", err=True)
            return
        opts = RunOptions(data=data_dir, device=device, threads=threads, progress=not quiet)
        if ray is not None:
            summary = run_with_ray(
                plan,
                out,
                address=ray,
                shard=shard_spec,
                opts=opts,
                num_gpus=gpus_per_cell,
                num_cpus=cpus_per_cell,
            )
        else:
            summary = run_sweep(plan, out, shard=shard_spec, opts=opts)
    except RwkuError as err:
        _fail(err)
    typer.echo(format_summary(summary), err=True)
    if not summary.ok:
        raise typer.Exit(code=1)


def report(
    run_dir: Annotated[Path, typer.Argument(help="A sweep's output directory.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report directory (default RUN_DIR/report).")
    ] = None,
    confidence: Annotated[
        float, typer.Option(min=0.5, max=0.999, help="Confidence level of the intervals.")
    ] = 0.95,
) -> None:
    """Table 1 (Markdown, CSV, LaTeX), the attack-type table, the figures and one HTML page."""
    from rwku.reporting.report import write_report

    try:
        result = write_report(run_dir, out, confidence)
    except RwkuError as err:
        _fail(err)
    typer.echo(result.table_markdown)
    for note in result.notes:
        typer.echo(note, err=True)
    typer.echo(f"report written to {result.out} ({len(result.files)} files; open report.html)", err=True)


def compare(
    run_dir: Annotated[Path, typer.Argument(help="A sweep's output directory.")],
    a: Annotated[str, typer.Argument(help="Row A, as Table 1 labels it (e.g. 'GA (expert) anchor=1').")],
    b: Annotated[str, typer.Argument(help="Row B (e.g. 'GA (full)').")],
    confidence: Annotated[
        float, typer.Option(min=0.5, max=0.999, help="Confidence level of the intervals.")
    ] = 0.95,
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="Also write every per-target difference as CSV.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the comparison as JSON.")
    ] = None,
) -> None:
    """Two rows of a sweep paired per target: A − B per column, its interval, and on how many
    targets A is below B (a row's own interval mostly measures how the targets differ)."""
    from rwku.io import atomic_write_json, atomic_write_text
    from rwku.reporting.aggregate import load_run
    from rwku.reporting.compare import compare as pair
    from rwku.reporting.compare import summary, to_csv, to_markdown

    try:
        cmp = pair(load_run(run_dir), a, b, confidence)
    except RwkuError as err:
        _fail(err)
    typer.echo(to_markdown(cmp))
    if csv_out is not None:
        atomic_write_text(csv_out, to_csv(cmp))
    if json_out is not None:
        atomic_write_json(json_out, summary(cmp))


def register(app: typer.Typer) -> None:
    """Add the commands to the main ``rwku`` app."""
    app.command("sweep")(sweep)
    app.command("report")(report)
    app.command("compare")(compare)
