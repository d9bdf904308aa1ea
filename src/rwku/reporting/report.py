"""``rwku report RUN_DIR``: a sweep's tables and figures, as files and as one HTML page.

Writes into ``RUN_DIR/report/`` (or ``--out``):

* ``report.md`` — Table 1 and the per-attack-type table in Markdown, with notes on missing or
  unscored cells;
* ``table1.csv`` / ``table1.tex`` — Table 1 for spreadsheets and for the paper (booktabs);
* ``attack_types.md`` / ``attack_types.csv`` — forget score per adversarial attack type;
* ``robustness.csv`` / ``robustness.tex`` / ``incontext.csv`` — recovery under relearning and
  in-context attacks, when the sweep ran them (:mod:`rwku.reporting.robustness`);
* ``plots/*.png`` — trade-off across epochs, across RepE's α, by attack type, batch-target
  curves, partial-layer grid (each only when the run has the cells for it);
* ``report.html`` — all of the above in one self-contained page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rwku.io import atomic_write_text
from rwku.reporting import aggregate as agg
from rwku.reporting import plots, robustness
from rwku.reporting.html import Figure, Section, render


@dataclass
class ReportFiles:
    out: Path
    files: list[Path] = field(default_factory=list)
    table_markdown: str = ""
    notes: list[str] = field(default_factory=list)


def _notes(run: agg.RunData, confidence: float) -> list[str]:
    notes = []
    total = run.manifest["n_cells"] if run.manifest else len(run.results)
    notes.append(
        f"{len(run.results)} of {total} cells finished; {len(run.units)} (cell, target) evaluations. "
        f"Values: mean over targets (and seeds) ± half-width of the {confidence:.0%} Student-t interval."
    )
    if run.missing:
        notes.append(f"{len(run.missing)} cells not finished yet (re-run `rwku sweep` to finish them).")
    for cid, status in run.unscored:
        notes.append(f"cell {cid}: status {status}, no scores (left out of the means).")
    if run.ignored:
        notes.append(
            f"{len(run.ignored)} cell files in cells/ are not in the manifest (an older grid) and are ignored."
        )
    return notes


def write_report(run_dir: str | Path, out: str | Path | None = None, confidence: float = 0.95) -> ReportFiles:
    """Aggregate the sweep in ``run_dir`` and write every report file (see the module doc)."""
    run = agg.load_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "report"
    plot_dir = out / "plots"
    result = ReportFiles(out=out, notes=_notes(run, confidence))

    rows = agg.table1(run, confidence)
    types, type_rows = agg.attack_types(run, confidence)
    result.table_markdown = agg.to_markdown(rows)
    type_md = agg.to_markdown(type_rows, types) if type_rows else "(no adversarial-attack probes in this run)"

    def write(name: str, text: str) -> None:
        result.files.append(atomic_write_text(out / name, text))

    write("table1.csv", agg.to_csv(rows))
    write("table1.tex", agg.to_latex(rows, confidence))
    write("attack_types.md", type_md + "\n")
    if type_rows:
        write("attack_types.csv", agg.to_csv(type_rows, types))

    figures = {
        "epochs": Figure(
            "Trade-off across epochs",
            plots.plot_epochs(agg.epoch_curves(run, confidence), plot_dir / "tradeoff_epochs.png"),
            "no cells with record_epochs",
        ),
        "alpha": Figure(
            "RepE: trade-off across α",
            plots.plot_alpha(agg.option_curves(run, "alpha", confidence), plot_dir / "tradeoff_alpha.png"),
            "no RepE cells with an α grid",
        ),
        "attack": Figure(
            "Forget score by attack type",
            plots.plot_attack_types(types, type_rows, plot_dir / "attack_types.png"),
            "no adversarial-attack probes",
        ),
        "batch": Figure(
            "Batch-target curves",
            plots.plot_batch(agg.batch_curves(run, confidence), plot_dir / "batch_targets.png"),
            "no batch-setting cells",
        ),
        "layers": Figure(
            "Partial-layer grid",
            plots.plot_layers(agg.layer_grid(run, confidence), plot_dir / "partial_layers.png"),
            "no partial-mode cells",
        ),
    }
    rob = robustness.robustness(run, confidence)
    result.files += robustness.write_files(rob, out, agg.to_csv)
    if rob.curves:
        figures["recovery"] = Figure(
            "Recovery under relearning",
            robustness.plot_recovery(rob, plot_dir / "relearn_recovery.png"),
            "no relearning attacks",
        )
    result.files += [f.path for f in figures.values() if f.path is not None]
    skipped = [f"{f.title}: skipped ({f.note})" for f in figures.values() if f.path is None]

    name = run.manifest["name"] if run.manifest else Path(run_dir).name
    md = [
        f"# rwku report: {name}",
        "",
        *(f"- {n}" for n in result.notes),
        "",
        "## Table 1",
        "",
        result.table_markdown,
        "",
        "## Forget score by attack type",
        "",
        type_md,
        "",
        *robustness.markdown(rob, agg.to_markdown),
        "## Figures",
        "",
        *(f"- ![{f.title}](plots/{f.path.name})" for f in figures.values() if f.path is not None),
        *(f"- {s}" for s in skipped),
        "",
    ]
    write("report.md", "\n".join(md))
    sections = [
        Section("Table 1", rows, agg.COLUMN_NAMES),
        Section(
            "Forget score by attack type",
            type_rows,
            types,
            notes=[] if type_rows else ["no adversarial-attack probes in this run"],
        ),
        Section("Trade-offs", figures=[figures["epochs"], figures["alpha"]]),
        Section("By attack type", figures=[figures["attack"]]),
        Section("Batch setting", figures=[figures["batch"]]),
        Section("Partial layers", figures=[figures["layers"]]),
        *robustness.sections(rob, figures.get("recovery"), Section),
    ]
    write("report.html", render(f"rwku report: {name}", result.notes, sections))
    return result
