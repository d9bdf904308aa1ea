"""``rwku report RUN_DIR``: a sweep's tables and figures, as files and as one HTML page.

Writes into ``RUN_DIR/report/`` (or ``--out``):

* ``report.md`` — the verdict first: a one-line reading per method and the change table
  (after − before, paired per target; relative change of the likelihood columns), then Table 1
  (likelihood columns first) and the per-attack-type tables, with notes on missing or unscored
  cells and one line on what the run could add;
* ``deltas.csv`` — the change table;
* ``table1.csv`` / ``table1.tex`` — Table 1 for spreadsheets and for the paper (booktabs);
* ``flag_rates.csv`` — for the inference-time guards (ECO, GUARD), the share of forget, neighbor,
  MIA and utility prompts their classifier flagged (shown under Table 1 in ``report.md``);
* ``attack_types.md`` / ``attack_types.csv`` — forget score per adversarial attack type;
* ``robustness.csv`` / ``robustness.tex`` / ``incontext.csv`` — recovery under relearning and
  in-context attacks, when the sweep ran them (:mod:`rwku.reporting.robustness`);
* ``routing.csv`` / ``routing.tex`` / ``plots/routing_shift.png`` — for mixture-of-experts runs,
  how far unlearning moved the routers' expert selection (:mod:`rwku.reporting.routing`);
* ``cost.csv`` — per row, training and evaluation seconds and peak memory
  (:mod:`rwku.reporting.cost`);
* ``plots/*.png`` — trade-off across epochs, across RepE's α, by attack type, batch-target
  curves, partial-layer grid (each only when the run has the cells for it);
* ``report.html`` — all of the above in one self-contained page; sections without data are
  left out.

A saved report directory (``table1.csv``, no ``cells/``) is re-rendered in place from its CSV
files (:func:`tables_from_saved_report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rwku.io import atomic_write_text
from rwku.reporting import aggregate as agg
from rwku.reporting import cost, plots, robustness, routing
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
        f"Values: mean over targets (and seeds) ± half-width of the {confidence:.0%} Student-t interval; "
        "changes: after − before paired per target."
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


@dataclass
class Tables:
    """What a report shows, from a sweep's cells or from a saved report's CSV files."""

    name: str
    notes: list[str]
    rows: list[agg.Row]
    types: list[str]
    type_rows: list[agg.Row]
    deltas: list[agg.Row]
    type_deltas: list[agg.Row]
    curves: dict[str, list[agg.Series]]
    #: True when the changes are paired per target (from the cells), False for differences of means
    paired: bool = True
    #: the flag rates of the inference-time guards' classifiers (empty without guard cells)
    flags: list[agg.Row] = field(default_factory=list)
    #: the relearning / in-context attack tables (empty without attacks or cells)
    robustness: robustness.Robustness = field(default_factory=robustness.Robustness)
    #: the routing-shift table of mixture-of-experts runs (empty for dense models)
    routing: routing.Routing = field(default_factory=routing.Routing)
    #: seconds and peak memory per row (empty for a saved report)
    cost: cost.Cost = field(default_factory=cost.Cost)


FLAG_NOTE = (
    "Share of each part's prompts (forget probes, neighbor probes, MIA texts, utility prompts) that the "
    "guard's classifier flagged, in %; the flagged ones were answered by the guarded model, the rest by the "
    "original (docs/guards.md). Neighbor flags are false positives."
)


def tables_from_run(run_dir: Path, confidence: float) -> Tables:
    run = agg.load_run(run_dir)
    types, type_rows = agg.attack_types(run, confidence)
    return Tables(
        name=run.manifest["name"] if run.manifest else run_dir.name,
        notes=_notes(run, confidence),
        rows=agg.table1(run, confidence),
        types=types,
        type_rows=type_rows,
        deltas=agg.delta_table(run, confidence),
        type_deltas=agg.attack_type_deltas(run, types, confidence),
        curves={
            "epochs": agg.epoch_curves(run, confidence),
            "alpha": agg.option_curves(run, "alpha", confidence),
            "batch": agg.batch_curves(run, confidence),
            "layers": agg.layer_grid(run, confidence),
        },
        robustness=robustness.robustness(run, confidence),
        routing=routing.routing_table(run, confidence),
        cost=cost.cost_table(run, confidence),
        flags=agg.flag_rates(run, confidence),
    )


def is_saved_report(path: Path) -> bool:
    """A report directory (table1.csv) rather than a sweep's output (cells/)."""
    from rwku.experiments.sweep import CELLS_DIR

    return not (path / CELLS_DIR).is_dir() and (path / "table1.csv").is_file()


def tables_from_saved_report(path: Path) -> Tables:
    """Re-render a report whose cells are gone (a study committed without them) from its
    table1.csv and attack_types.csv; its notes are kept from its report.md."""
    _, rows = agg.from_csv((path / "table1.csv").read_text(encoding="utf-8"))
    types, type_rows = [], []
    if (path / "attack_types.csv").is_file():
        types, type_rows = agg.from_csv((path / "attack_types.csv").read_text(encoding="utf-8"))
    name, notes = path.name, []
    old = path / "report.md"
    if old.is_file():
        lines = old.read_text(encoding="utf-8").splitlines()
        if lines and lines[0].startswith("# rwku report: "):
            name = lines[0].removeprefix("# rwku report: ")
        head = lines[1 : next((i for i, x in enumerate(lines) if x.startswith("## ")), len(lines))]
        notes = [x[2:] for x in head if x.startswith("- ") and "Re-rendered" not in x]
    notes.append(
        "Re-rendered from the saved table1.csv and attack_types.csv (the run's cells are not here): "
        "changes are differences of the means (the paired difference when every row holds the same "
        "targets) without intervals, and per-value n is the row's n."
    )
    return Tables(
        name=name,
        notes=notes,
        rows=rows,
        types=types,
        type_rows=type_rows,
        deltas=agg.deltas_of_means(rows),
        type_deltas=agg.deltas_of_means(type_rows, types),
        curves={"epochs": [], "alpha": [], "batch": agg.row_batch_curves(rows), "layers": []},
        paired=False,
    )


#: What a run that was attacked in context only could add (a guard run cannot be relearned).
RELEARN_ONLY = "relearning attacks (attacks: {relearn: {}}; not for inference-time guards, whose weights are the original's)"

#: figure key → (title, file, how the run could get it)
FIGURES = {
    "epochs": (
        "Trade-off across epochs",
        "tradeoff_epochs.png",
        "the trade-off across epochs (record_epochs)",
    ),
    "alpha": ("RepE: trade-off across α", "tradeoff_alpha.png", "RepE's α curve (grid: {alpha: [...]})"),
    "attack": ("Forget score by attack type", "attack_types.png", "the attack-type analysis (forget suite)"),
    "batch": ("Batch-target curves", "batch_targets.png", "batch-target curves (setting: batch)"),
    "layers": ("Partial-layer grid", "partial_layers.png", "the partial-layer grid (modes: [partial])"),
    "recovery": (
        "Recovery under relearning",
        "relearn_recovery.png",
        "relearning and in-context attacks (attacks: {relearn: {}, incontext: {}})",
    ),
}


def write_report(run_dir: str | Path, out: str | Path | None = None, confidence: float = 0.95) -> ReportFiles:
    """Aggregate the sweep in ``run_dir`` and write every report file (see the module doc).

    ``run_dir`` may also be a saved report (its table1.csv, no cells/): it is re-rendered in
    place from its CSV files, which are left as they are."""
    source = Path(run_dir)
    saved = is_saved_report(source)
    t = tables_from_saved_report(source) if saved else tables_from_run(source, confidence)
    out = Path(out) if out is not None else (source if saved else source / "report")
    plot_dir = out / "plots"
    result = ReportFiles(out=out, notes=t.notes)
    change = "paired per target" if t.paired else "difference of the means"

    result.table_markdown = agg.to_markdown(t.rows, agg.report_columns(t.rows))
    delta_md = agg.to_markdown(t.deltas, agg.delta_columns(t.deltas), signed=True) if t.deltas else ""
    readings = [agg.reading(r) for r in t.deltas]
    type_md = agg.to_markdown(t.type_rows, t.types) if t.type_rows else ""
    type_delta_md = agg.to_markdown(t.type_deltas, t.types, signed=True) if t.type_deltas else ""

    def write(name: str, text: str) -> None:
        result.files.append(atomic_write_text(out / name, text))

    if not saved:
        write("table1.csv", agg.to_csv(t.rows))
        write("table1.tex", agg.to_latex(t.rows, confidence))
        if t.type_rows:
            write("attack_types.csv", agg.to_csv(t.type_rows, t.types))
    flag_columns = list(agg.FLAG_COLUMNS)
    flag_md = agg.to_markdown(t.flags, flag_columns) if t.flags else ""
    if t.flags:
        write("flag_rates.csv", agg.to_csv(t.flags, flag_columns))
    if t.deltas:
        write("deltas.csv", agg.to_csv(t.deltas, agg.delta_columns(t.deltas)))
    if type_md:
        extra = ["", f"Change from Before ({change}):", "", type_delta_md] if type_delta_md else []
        write("attack_types.md", "\n".join([type_md, *extra]) + "\n")

    drawn = {
        "epochs": plots.plot_epochs(t.curves["epochs"], plot_dir / FIGURES["epochs"][1]),
        "alpha": plots.plot_alpha(t.curves["alpha"], plot_dir / FIGURES["alpha"][1]),
        "attack": plots.plot_attack_types(t.types, t.type_rows, plot_dir / FIGURES["attack"][1]),
        "batch": plots.plot_batch(t.curves["batch"], plot_dir / FIGURES["batch"][1]),
        "layers": plots.plot_layers(t.curves["layers"], plot_dir / FIGURES["layers"][1]),
    }
    rob = t.robustness
    result.files += robustness.write_files(rob, out, agg.to_csv)
    drawn["recovery"] = robustness.plot_recovery(rob, plot_dir / "relearn_recovery.png")
    result.files += routing.write_files(t.routing, out, agg.to_csv)
    result.files += cost.write_files(t.cost, out, agg.to_csv)
    routing_path = routing.plot_routing(t.routing, plot_dir / "routing_shift.png")
    figures = {k: Figure(FIGURES[k][0], path) for k, path in drawn.items() if path is not None}
    if routing_path is not None:  # MoE runs only: not offered as "could be added" to dense ones
        figures["routing"] = Figure("Routing shift per layer", routing_path)
    result.files += [f.path for f in figures.values()]
    absent = [FIGURES[k][2] for k, path in drawn.items() if path is None]
    if drawn["recovery"] is None and rob.incontext_rows:  # in context ran: only relearning is missing
        absent[absent.index(FIGURES["recovery"][2])] = RELEARN_ONLY
    addable = f"Not in this run (could be added): {'; '.join(absent)}." if absent else ""

    delta_title = f"Change from Before (after − before, {change})"
    delta_note = (
        "F-LL % / N-LL %: relative change of the gold-answer likelihood (the measure that moves on "
        "small models); Δ: after − before in the column's units."
    )
    md = [f"# rwku report: {t.name}", "", *(f"- {n}" for n in t.notes), ""]
    if t.deltas:
        md += [f"## {delta_title}", "", *(f"- {x}" for x in readings), "", delta_note, "", delta_md, ""]
    md += ["## Table 1", "", result.table_markdown, ""]
    if flag_md:
        md += ["### Flagged by the inference-time guards", "", FLAG_NOTE, "", flag_md, ""]
    if type_md:
        md += ["## Forget score by attack type", "", type_md, ""]
        if type_delta_md:
            md += [f"### {delta_title}", "", type_delta_md, ""]
    md += robustness.markdown(rob, agg.to_markdown)
    md += routing.markdown(t.routing, agg.to_markdown)
    md += cost.markdown(t.cost, agg.to_markdown)
    if figures:
        md += ["## Figures", "", *(f"- ![{f.title}](plots/{f.path.name})" for f in figures.values()), ""]
    if addable:
        md += [addable, ""]
    write("report.md", "\n".join(md))

    def fig(*keys: str) -> list[Figure]:
        return [figures[k] for k in keys if k in figures]

    sections = [
        Section(
            delta_title,
            t.deltas,
            agg.delta_columns(t.deltas),
            lines=readings,
            notes=[delta_note] if t.deltas else [],
            signed=True,
        ),
        Section("Table 1", t.rows, agg.report_columns(t.rows)),
        Section(
            "Flagged by the inference-time guards",
            t.flags,
            flag_columns,
            notes=[FLAG_NOTE] if t.flags else [],
        ),
        Section("Forget score by attack type", t.type_rows, t.types),
        Section(
            f"Forget score by attack type: {delta_title[0].lower()}{delta_title[1:]}",
            t.type_deltas,
            t.types,
            signed=True,
        ),
        Section("Trade-offs", figures=fig("epochs", "alpha")),
        Section("By attack type", figures=fig("attack")),
        Section("Batch setting", figures=fig("batch")),
        Section("Partial layers", figures=fig("layers")),
        *robustness.sections(rob, figures.get("recovery"), Section),
        *routing.sections(t.routing, figures.get("routing"), Section),
        *cost.sections(t.cost, Section),
        Section("Not in this run", notes=[addable] if addable else []),
    ]
    write("report.html", render(f"rwku report: {t.name}", t.notes, sections))
    return result
