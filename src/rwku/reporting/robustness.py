"""The robustness section of ``rwku report``: how much of each method's forgetting comes back.

Reads the ``attacks`` records of a sweep's cells (a sweep YAML with ``attacks:``) and makes

* the **relearning table**: per method group and data kind, the recovery R (in %, mean ± CI
  over targets) of the gold-answer likelihood at every budget, of ROUGE (All) at the last
  budget, the original-model control's teaching ratio T at the last budget, and R − T paired
  per target at the first and the last budget (what comes back beyond what the data teaches,
  with its own interval; the first budget shows a recovery that peaks early); then the
  same story in raw likelihood points, which stays readable when R's denominator is small (a
  method that removed 0.5 points has R in the thousands after any training): what unlearning
  removed from the held-out half, what the attack gave back, and that gain minus the
  control's gain on the original model, paired per target;
* the **in-context table**: per method group, the gain (×100 points, mean ± CI over targets)
  that each context gives the unlearned model, and the answer context's gain on the original;
* the **figure**: R of the likelihood against relearning steps, one panel per data kind, one
  line per method group, the controls' T as a dashed grey line.

Rows are :class:`~rwku.reporting.aggregate.Row` objects, so Markdown, CSV, LaTeX and HTML use
the same writers as Table 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwku.reporting.aggregate import Row, RunData, Stat, _sort_key, group_key, label_for, mean_ci

KIND_ORDER = ("split", "related", "unrelated")
CONTEXT_COLUMNS = (
    ("ans ΔLL", "unlearned", "answer", "ll"),
    ("ans ΔAll", "unlearned", "answer", "all"),
    ("rel ΔLL", "unlearned", "related", "ll"),
    ("ren ΔLL", "unlearned", "renamed", "ll"),
    ("orig ans ΔLL", "original", "answer", "ll"),
)


@dataclass
class Robustness:
    relearn_rows: list[Row] = field(default_factory=list)
    relearn_columns: list[str] = field(default_factory=list)
    incontext_rows: list[Row] = field(default_factory=list)
    incontext_columns: list[str] = field(default_factory=list)
    #: (kind, group label) → [(step, R stat)], and kind → [(step, T stat)] for the figure
    curves: dict[tuple[str, str], list[tuple[int, Stat]]] = field(default_factory=dict)
    controls: dict[str, list[tuple[int, Stat]]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.relearn_rows and not self.incontext_rows


def _attack_records(run: RunData, attack: str) -> dict[tuple, list[dict[str, Any]]]:
    """group key → every target's record of ``attack`` in the cells of that group."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for result in run.results:
        record = result.get("record") or {}
        att = (record.get("attacks") or {}).get(attack)
        if not att:
            continue
        groups.setdefault(group_key(result["cell"]), []).extend(att["targets"].values())
    return {k: groups[k] for k in sorted(groups, key=_sort_key)}


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def relearn_table(run: RunData, confidence: float = 0.95) -> Robustness:
    out = Robustness()
    groups = _attack_records(run, "relearn")
    budgets = sorted(
        {
            p["step"]
            for recs in groups.values()
            for r in recs
            for c in r["curves"].values()
            for p in c.get("unlearned", [])
        }
    )
    steps = [b for b in budgets if b > 0]
    if not steps:
        return out
    first, last = steps[0], steps[-1]
    # R − T at the first budget too: on a model the attack's rate over-fits (Qwen2.5-1.5B at 1e-3)
    # the recovery peaks early and both curves fall after, so the last budget alone hides it.
    paired = [first, last] if first != last else [last]
    out.relearn_columns = [f"R% LL@{s}" for s in steps] + [
        f"R% All@{last}",
        f"T% LL@{last}",
        *(f"R−T% LL@{s}" for s in paired),
        "removed LL",
        f"ΔLL@{last}",
        f"ΔLL−ctl@{last}",
    ]
    controls: dict[str, dict[int, list[float | None]]] = {}
    for key, records in groups.items():
        for kind in KIND_ORDER:
            kept = [r for r in records if "unlearned" in r["curves"].get(kind, {})]
            curves = [r["curves"][kind] for r in kept]
            if not curves:
                continue

            def at(entry: list[dict], step: int, field_: str, metric: str) -> float | None:
                for p in entry:
                    if p["step"] == step and p.get(field_):
                        return p[field_].get(metric)
                return None

            values: dict[str, Stat] = {}
            for s in steps:
                values[f"R% LL@{s}"] = mean_ci(
                    [_pct(at(c["unlearned"], s, "recovery", "ll")) for c in curves], confidence
                )
            values[f"R% All@{last}"] = mean_ci(
                [_pct(at(c["unlearned"], last, "recovery", "all")) for c in curves], confidence
            )
            values[f"T% LL@{last}"] = mean_ci(
                [_pct(at(c.get("original", []), last, "teaching", "ll")) for c in curves], confidence
            )

            def beyond(c: dict, step: int) -> float | None:  # recovery beyond what the data teaches
                r = at(c["unlearned"], step, "recovery", "ll")
                t = at(c.get("original", []), step, "teaching", "ll")
                return None if r is None or t is None else _pct(r - t)

            for s in paired:
                values[f"R−T% LL@{s}"] = mean_ci([beyond(c, s) for c in curves], confidence)

            def gain(entry: list[dict], start: float | None) -> float | None:  # raw points at `last`
                end = next((p["metrics"].get("ll") for p in entry if p["step"] == last), None)
                return None if end is None or start is None else end - start

            def ll(r: dict, which: str) -> float | None:
                return (r.get(which) or {}).get("ll")

            values["removed LL"] = mean_ci(
                [
                    None
                    if ll(r, "original") is None or ll(r, "unlearned") is None
                    else ll(r, "original") - ll(r, "unlearned")
                    for r in kept
                ],
                confidence,
            )
            attacked = [gain(c["unlearned"], ll(r, "unlearned")) for r, c in zip(kept, curves, strict=True)]
            control = [
                gain(c.get("original", []), ll(r, "original")) for r, c in zip(kept, curves, strict=True)
            ]
            values[f"ΔLL@{last}"] = mean_ci(attacked, confidence)
            values[f"ΔLL−ctl@{last}"] = mean_ci(
                [None if a is None or c is None else a - c for a, c in zip(attacked, control, strict=True)],
                confidence,
            )
            label = f"{label_for(key)} · {kind}"
            out.relearn_rows.append(Row(label, key, len(curves), values))
            out.curves[(kind, label_for(key))] = [(0, Stat(0.0, None, len(curves)))] + [
                (s, values[f"R% LL@{s}"]) for s in steps
            ]
            for s in steps:
                controls.setdefault(kind, {}).setdefault(s, []).extend(
                    _pct(at(c.get("original", []), s, "teaching", "ll")) for c in curves
                )
    out.controls = {
        kind: [(0, Stat(0.0, None, 0))] + [(s, mean_ci(v, confidence)) for s, v in sorted(by_step.items())]
        for kind, by_step in controls.items()
    }
    return out


def incontext_table(run: RunData, confidence: float = 0.95) -> tuple[list[Row], list[str]]:
    rows = []
    for key, records in _attack_records(run, "incontext").items():
        values = {}
        for col, which, kind, metric in CONTEXT_COLUMNS:
            values[col] = mean_ci(
                [r["models"][which]["contexts"][kind]["gain"].get(metric) for r in records], confidence
            )
        rows.append(Row(label_for(key), key, len(records), values))
    return rows, [c[0] for c in CONTEXT_COLUMNS]


def robustness(run: RunData, confidence: float = 0.95) -> Robustness:
    out = relearn_table(run, confidence)
    out.incontext_rows, out.incontext_columns = incontext_table(run, confidence)
    if not out.incontext_rows:
        out.incontext_columns = []
    return out


def plot_recovery(rob: Robustness, path: Path) -> Path | None:
    """R (gold-answer likelihood, %) against relearning steps: a panel per data kind."""
    if not rob.curves:
        return None
    from rwku.reporting.plots import curve_panels

    kinds = [k for k in KIND_ORDER if any(kk == k for kk, _ in rob.curves)]

    def decorate(ax: Any, i: int) -> None:
        ctl = [(x, s) for x, s in rob.controls.get(kinds[i], []) if s.mean is not None]
        if ctl:
            ax.plot(
                [x for x, _ in ctl],
                [s.mean for _, s in ctl],
                "--",
                color="grey",
                label="control (original, T)",
            )
        ax.axhline(100, color="black", lw=0.6, alpha=0.5)

    return curve_panels(
        [
            (
                f"relearning on {kind} text",
                [(label, pts) for (k, label), pts in rob.curves.items() if k == kind],
            )
            for kind in kinds
        ],
        xlabel="relearning steps",
        ylabel="recovery R of gold-answer likelihood (%)",
        title="How much of the forgotten likelihood comes back",
        path=path,
        decorate=decorate,
    )


def markdown(rob: Robustness, to_markdown) -> list[str]:
    """The report.md lines of the section (nothing when the sweep ran no attacks)."""
    if rob.empty:
        return []
    lines = ["## Robustness: is it really gone?", ""]
    if rob.relearn_rows:
        lines += [
            "Recovery R (%) of what unlearning removed, on the held-out half of the forget probes, after "
            "relearning for the given steps; T = the same attack's gain on the original model (how much "
            "the data teaches by itself); R−T = R minus T per target, averaged (recovery beyond what the "
            "data teaches). – = not measurable (less than 0.5 points forgotten). The last three columns in "
            "likelihood points (×100): what unlearning removed from the held-out half, what the attack gave "
            "back (ΔLL), and that minus the same attack's gain on the original model, paired per target "
            "(readable where R's denominator is small). docs/attacks.md explains every column.",
            "",
            to_markdown(rob.relearn_rows, rob.relearn_columns),
            "",
        ]
    if rob.incontext_rows:
        lines += [
            "In-context re-introduction: gain (points ×100) of the unlearned model when the probe is asked "
            "with a context that holds the answer (ans), related text without answers (rel), or the answer "
            "under an invented name (ren); last column: the original model's gain with the answer context.",
            "",
            to_markdown(rob.incontext_rows, rob.incontext_columns),
            "",
        ]
    return lines


def sections(rob: Robustness, figure, section_cls) -> list[Any]:
    """The report.html sections (none when the sweep ran no attacks)."""
    out = []
    if rob.relearn_rows:
        out.append(
            section_cls(
                "Robustness: relearning attack",
                rob.relearn_rows,
                rob.relearn_columns,
                figures=[figure] if figure is not None and figure.path is not None else [],
                notes=[
                    "R (%) = (attacked − unlearned) / (original − unlearned); T = the control's gain in the same units."
                ],
            )
        )
    if rob.incontext_rows:
        out.append(
            section_cls("Robustness: in-context re-introduction", rob.incontext_rows, rob.incontext_columns)
        )
    return out


def to_latex(rows: Sequence[Row], columns: Sequence[str], first: str = "Method · data") -> str:
    """A plain booktabs table (mean, subscript ± CI half-width)."""
    from rwku.reporting.aggregate import latex_escape

    lines = [
        r"\begin{tabular}{l" + "c" * len(columns) + "}",
        r"\toprule",
        " & ".join([first, *(latex_escape(c) for c in columns)]) + r" \\",
        r"\midrule",
    ]
    for r in rows:
        cells = []
        for c in columns:
            s = r.values[c]
            cells.append(
                "-"
                if s.mean is None
                else f"{s.mean:.1f}"
                if s.ci is None
                else f"${s.mean:.1f}_{{\\pm {s.ci:.1f}}}$"
            )
        lines.append(" & ".join([latex_escape(r.label), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_files(rob: Robustness, out: Path, to_csv) -> list[Path]:
    """robustness.csv / robustness.tex and incontext.csv (when there are rows)."""
    from rwku.io import atomic_write_text

    files: list[Path] = []
    if rob.relearn_rows:
        files.append(atomic_write_text(out / "robustness.csv", to_csv(rob.relearn_rows, rob.relearn_columns)))
        files.append(
            atomic_write_text(out / "robustness.tex", to_latex(rob.relearn_rows, rob.relearn_columns))
        )
    if rob.incontext_rows:
        files.append(
            atomic_write_text(out / "incontext.csv", to_csv(rob.incontext_rows, rob.incontext_columns))
        )
    return files
