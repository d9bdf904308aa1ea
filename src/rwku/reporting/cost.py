"""The cost section of ``rwku report``: what each row took in seconds and memory.

Every cell records its wall-clock phases (``record.run.timings``: load, evaluate before, corpus,
train, evaluate after, total), the run's peak resident memory (``peak_memory_mb``) and its peak
up to the end of training (``train_peak_memory_mb``). A method that forgets as well as another
at a fraction of the memory (expert mode on an MoE, LoRA) is a result in itself, so the report
puts the costs beside the scores: per row, the mean over its cells with the Student-t interval.

Times are wall-clock on whatever machine and load the sweep met (the cell's ``host`` is in
its file): compare rows of one sweep run on one machine. The memory includes the evaluation
engine's packed weights, and a run's peak can be no lower than what its process already held
when the run started (in a sweep: memory earlier cells left allocated). Only records whose peak
is the run's own (``peak_memory_scope: run``) give memory: a process-lifetime peak would carry
an earlier cell's peak in a sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rwku.reporting.aggregate import Row, RowTable, RunData, _sort_key, group_key, label_for, mean_ci

COLUMNS = ["train s", "eval after s", "cell s", "train peak GB", "peak GB"]
NOTE = (
    "Per row, the mean over its cells (a batch cell counts once) ± CI: training and after-evaluation "
    "wall-clock seconds, the cell's whole wall-clock time, and the run's peak resident memory up to the end "
    "of training and overall, in GB (only from cells that measured their own peak; an (n=…) says how many; "
    "in a sweep it includes what the process still held from earlier cells). "
    "Wall-clock times depend on the machine and its load: compare rows of one sweep on one machine."
)


class Cost(RowTable):
    """One row per method group: its mean costs."""


def _gb(mb: Any) -> float | None:
    return float(mb) / 1024.0 if isinstance(mb, (int, float)) else None


def cell_costs(result: dict[str, Any]) -> dict[str, float | None]:
    """One cell's cost values from its result file."""
    run = (result.get("record") or {}).get("run") or {}
    timings = run.get("timings") or {}
    seconds = result.get("seconds")
    # a lifetime peak (records before 2026-11-29, or a platform that cannot reset it) would
    # carry an earlier cell's memory in a sweep: left out rather than shown wrong
    own = run.get("peak_memory_scope") == "run"
    return {
        "train s": timings.get("train"),
        "eval after s": timings.get("evaluate_after"),
        "cell s": float(seconds) if isinstance(seconds, (int, float)) else timings.get("total"),
        "train peak GB": _gb(run.get("train_peak_memory_mb")) if own else None,
        "peak GB": _gb(run.get("peak_memory_mb")) if own else None,
    }


def cost_table(run: RunData, confidence: float = 0.95) -> Cost:
    """One row per method group of the run's finished cells."""
    groups: dict[tuple, list[dict[str, float | None]]] = {}
    for result in run.results:
        if result.get("status") != "finished" or not (result.get("record") or {}).get("run"):
            continue
        groups.setdefault(group_key(result["cell"]), []).append(cell_costs(result))
    out = Cost()
    columns = [c for c in COLUMNS if any(v.get(c) is not None for vs in groups.values() for v in vs)]
    if not columns:
        return out
    out.columns = columns
    for key in sorted(groups, key=_sort_key):
        values = groups[key]
        stats = {c: mean_ci([v.get(c) for v in values], confidence) for c in columns}
        out.rows.append(Row(label_for(key), key, len(values), stats))
    return out


def markdown(cost: Cost, to_markdown) -> list[str]:
    """The report.md lines of the section (nothing without cells that recorded costs)."""
    if cost.empty:
        return []
    return ["## Cost", "", NOTE, "", to_markdown(cost.rows, cost.columns), ""]


def sections(cost: Cost, section_cls) -> list[Any]:
    if cost.empty:
        return []
    return [section_cls("Cost", cost.rows, cost.columns, notes=[NOTE])]


def write_files(cost: Cost, out: Path, to_csv) -> list[Path]:
    """cost.csv (when there are rows)."""
    from rwku.io import atomic_write_text

    if cost.empty:
        return []
    return [atomic_write_text(out / "cost.csv", to_csv(cost.rows, cost.columns))]
