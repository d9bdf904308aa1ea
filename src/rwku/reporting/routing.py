"""The mixture-of-experts section of ``rwku report``: where unlearning moved the routers.

Every training run on an MoE model records, in its ``hyperparameters.training`` (the run's
``train_report.json``), the expert selection on the forget batches and on retain text before
and after training and their shift (:mod:`rwku.models.moe`, docs/moe.md). UOE/SEUF's pilot
finding is that plain unlearning shifts the routers' selection on the forget text; this module
makes that visible per method group, over the sweep's targets:

* the **routing table**: trainable parameters (% of the model), and on forget and retain text
  the share of tokens whose top-k expert set changed (mean over layers, and at the layer where
  it changed most) and the total-variation distance between the selection distributions
  before and after (mean over layers), all in %, mean ± CI over targets;
* the **figure**: the changed-token share per layer, a panel for forget and one for retain
  text, one line per method group.

Dense runs have no routing record and add nothing: the section appears only for MoE sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwku.reporting.aggregate import (
    Row,
    RowTable,
    RunData,
    Stat,
    _sort_key,
    group_key,
    label_for,
    mean_ci,
)
from rwku.reporting.robustness import _pct

PARTS = (("forget", "F"), ("retain", "R"))
COLUMNS = [
    "params %",
    "F-chg%",
    "F-chg% max",
    "F-TV%",
    "R-chg%",
    "R-chg% max",
    "R-TV%",
]
NOTE = (
    "Routing before vs after unlearning (docs/moe.md): chg% = share of tokens whose top-k expert set "
    "changed, mean over the MoE layers (max: at the layer where it changed most); TV% = total-variation "
    "distance between the expert-selection distributions, mean over layers; F = the forget text, R = retain "
    "text; params % = trainable share of the model's parameters. Mean ± CI over targets."
)


@dataclass
class Routing(RowTable):
    #: (part, group label) → [(layer, changed-token share % stat)] for the figure
    curves: dict[tuple[str, str], list[tuple[int, Stat]]] = field(default_factory=dict)


def _training(result: dict[str, Any]) -> dict[str, Any] | None:
    run = (result.get("record") or {}).get("run") or {}
    training = (run.get("hyperparameters") or {}).get("training")
    return training if isinstance(training, dict) and training.get("routing") else None


def cell_values(training: dict[str, Any]) -> dict[str, float | None]:
    """One run's table values (in %) from its training report."""
    out: dict[str, float | None] = {}
    total, trainable = training.get("total_params"), training.get("trainable_params")
    out["params %"] = 100.0 * trainable / total if total and trainable is not None else None
    for part, short in PARTS:
        shift = (training["routing"].get(part) or {}).get("shift") or {}
        mean, per_layer = shift.get("mean") or {}, shift.get("per_layer") or {}
        out[f"{short}-chg%"] = _pct(mean.get("changed_tokens"))
        changed = [v.get("changed_tokens") for v in per_layer.values() if v.get("changed_tokens") is not None]
        out[f"{short}-chg% max"] = _pct(max(changed)) if changed else None
        out[f"{short}-TV%"] = _pct(mean.get("tv"))
    return out


def routing_table(run: RunData, confidence: float = 0.95) -> Routing:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for result in run.results:
        training = _training(result)
        if training is not None:
            groups.setdefault(group_key(result["cell"]), []).append(training)
    out = Routing()
    if not groups:
        return out
    out.columns = list(COLUMNS)
    for key in sorted(groups, key=_sort_key):
        trainings = groups[key]
        per_cell = [cell_values(t) for t in trainings]
        values = {c: mean_ci([v[c] for v in per_cell], confidence) for c in COLUMNS}
        label = label_for(key)
        out.rows.append(Row(label, key, len(trainings), values))
        for part, _ in PARTS:
            by_layer: dict[int, list[float | None]] = {}
            for t in trainings:
                per_layer = ((t["routing"].get(part) or {}).get("shift") or {}).get("per_layer") or {}
                for layer, v in per_layer.items():
                    by_layer.setdefault(int(layer), []).append(_pct(v.get("changed_tokens")))
            if by_layer:
                out.curves[(part, label)] = [
                    (ly, mean_ci(v, confidence)) for ly, v in sorted(by_layer.items())
                ]
    return out


def plot_routing(rt: Routing, path: Path) -> Path | None:
    """Changed-token share (%) per layer: a panel for forget text and one for retain text."""
    from rwku.reporting.plots import curve_panels

    parts = [p for p, _ in PARTS if any(k == p for k, _ in rt.curves)]
    return curve_panels(
        [
            (f"{part} text", [(label, pts) for (k, label), pts in rt.curves.items() if k == part])
            for part in parts
        ],
        xlabel="layer",
        ylabel="tokens whose top-k experts changed (%)",
        title="Routing shift after unlearning, per layer",
        path=path,
        width=5.2,
        marker=".",
        share=True,
        integer_x=True,
    )


def markdown(rt: Routing, to_markdown) -> list[str]:
    """The report.md lines of the section (nothing for a sweep without MoE training runs)."""
    if rt.empty:
        return []
    return ["## Routing shift (mixture-of-experts runs)", "", NOTE, "", to_markdown(rt.rows, rt.columns), ""]


def sections(rt: Routing, figure, section_cls) -> list[Any]:
    """The report.html section (none without MoE training runs)."""
    if rt.empty:
        return []
    figures = [figure] if figure is not None and figure.path is not None else []
    return [
        section_cls(
            "Routing shift (mixture-of-experts runs)", rt.rows, rt.columns, figures=figures, notes=[NOTE]
        )
    ]


def write_files(rt: Routing, out: Path, to_csv) -> list[Path]:
    """routing.csv / routing.tex (when there are rows)."""
    from rwku.io import atomic_write_text
    from rwku.reporting.robustness import to_latex

    if rt.empty:
        return []
    return [
        atomic_write_text(out / "routing.csv", to_csv(rt.rows, rt.columns)),
        atomic_write_text(out / "routing.tex", to_latex(rt.rows, rt.columns, first="Method")),
    ]
