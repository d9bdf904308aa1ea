"""Two rows of one sweep, paired per target: does arm A really differ from arm B?

A report's rows are means over targets, each with its own interval. Two rows' intervals often
overlap even when A is below B on every target, because the targets differ far more from each
other (how well the model knows them) than the arms do. Pairing removes that: per column, the
difference A − B on every target both arms evaluated, its mean with a Student-t interval, and
on how many targets A is below B. ``rwku compare`` prints it; the studies' findings tables quote
it (``docs/results/*/README.md``).

Columns: Table 1's (the after values; the before value is the same original model for both
arms, so A − B of the after values is also the difference of their changes), the relative
likelihood changes ``F-LL %`` / ``N-LL %`` (per target, in points), and for MoE runs the routing
shift (:mod:`rwku.reporting.routing`: trainable share, changed-token share and TV distance on
forget and retain text).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from rwku.errors import ConfigError
from rwku.reporting.aggregate import (
    REPORT_COLUMNS,
    RunData,
    Stat,
    grouped,
    label_for,
    mean_ci,
    relative_change,
)
from rwku.reporting.routing import COLUMNS as ROUTING_COLUMNS
from rwku.reporting.routing import _training, cell_values
from rwku.reporting.table import table_values

RELATIVE_COLUMNS = ("F-LL %", "N-LL %")


@dataclass
class Paired:
    """One column: each arm's mean over the paired targets, and the paired difference A − B."""

    column: str
    a: Stat
    b: Stat
    diff: Stat
    #: targets where A < B, and how many were compared
    below: int
    #: {target: (A, B)}
    per_target: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def diffs(self) -> dict[str, float]:
        return {t: a - b for t, (a, b) in self.per_target.items()}


@dataclass
class Comparison:
    a: str
    b: str
    targets: list[str]
    rows: list[Paired]
    confidence: float


def _arm(run: RunData, label: str) -> dict[str, dict[str, float | None]]:
    """{target: column values} of the row called ``label`` (one cell per target: a batch cell's
    targets each get its values, seeds are averaged)."""
    groups = {label_for(key): units for key, units in grouped(run).items()}
    if label not in groups:
        lowered = {k.lower(): k for k in groups}
        if label.lower() not in lowered:
            raise ConfigError(
                f"no row {label!r} in {run.path}; its rows are: " + "; ".join(repr(k) for k in groups)
            )
        label = lowered[label.lower()]
    routing = {id(r["cell"]): r for r in run.results}
    seen: dict[str, list[dict[str, float | None]]] = {}
    for u in groups[label]:
        if u.after is None or u.before is None:
            continue
        values: dict[str, float | None] = dict(table_values(u.after))
        before = table_values(u.before)
        for col, src in zip(RELATIVE_COLUMNS, ("F-LL", "N-LL")):
            b, a = before.get(src), values.get(src)
            values[col] = relative_change(b, a) if a is not None and b is not None else None
        training = _training(routing.get(id(u.cell)) or {}) if len(u.cell["targets"]) == 1 else None
        if training is not None:
            values.update(cell_values(training))
        seen.setdefault(u.target, []).append(values)
    out: dict[str, dict[str, float | None]] = {}
    for target, rows in seen.items():  # seeds of one target: their mean
        cols = {c for r in rows for c in r}
        out[target] = {
            c: (sum(xs) / len(xs) if (xs := [r[c] for r in rows if r.get(c) is not None]) else None)
            for c in cols
        }
    return out


def compare(run: RunData, a: str, b: str, confidence: float = 0.95) -> Comparison:
    """Pair the rows ``a`` and ``b`` of ``run`` per target (see the module doc)."""
    arm_a, arm_b = _arm(run, a), _arm(run, b)
    targets = [t for t in arm_a if t in arm_b]
    if not targets:
        raise ConfigError(f"rows {a!r} and {b!r} have no target in common: nothing to pair")
    present = {c for t in targets for c in (*arm_a[t], *arm_b[t])}
    order = [*RELATIVE_COLUMNS, *REPORT_COLUMNS, *ROUTING_COLUMNS]
    rows = []
    for col in [c for c in order if c in present]:
        pairs = {
            t: (arm_a[t][col], arm_b[t][col])
            for t in targets
            if arm_a[t].get(col) is not None and arm_b[t].get(col) is not None
        }
        if not pairs:
            continue
        diffs = [x - y for x, y in pairs.values()]
        rows.append(
            Paired(
                column=col,
                a=mean_ci([x for x, _ in pairs.values()], confidence),
                b=mean_ci([y for _, y in pairs.values()], confidence),
                diff=mean_ci(diffs, confidence),
                below=sum(d < 0 for d in diffs),
                per_target=pairs,
            )
        )
    return Comparison(a=a, b=b, targets=targets, rows=rows, confidence=confidence)


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _stat(s: Stat, signed: bool = False) -> str:
    text = _num(s.mean, signed)
    return f"{text} ± {s.ci:.2f}" if s.ci is not None else text


def to_markdown(cmp: Comparison) -> str:
    """The comparison as a Markdown table, one row per column, per-target differences last."""
    head = [
        f"A = {cmp.a}, B = {cmp.b}; {len(cmp.targets)} target(s) evaluated by both: "
        + ", ".join(cmp.targets),
        f"A − B per target, mean ± half-width of the {cmp.confidence:.0%} Student-t interval; "
        "'A < B' counts the targets where A is lower. F-LL % / N-LL %: each arm's relative change "
        "of the likelihood (after / before − 1, per target), their difference in points.",
        "",
        "| column | A | B | A − B | A < B | per target (A − B) |",
        "|---|---|---|---|---|---|",
    ]
    lines = []
    for r in cmp.rows:
        per = ", ".join(f"{_num(v, True)}" for v in r.diffs.values())
        n = len(r.per_target)
        lines.append(
            f"| {r.column} | {_stat(r.a)} | {_stat(r.b)} | {_stat(r.diff, True)} | {r.below} of {n} | {per} |"
        )
    return "\n".join(head + lines) + "\n"


def to_csv(cmp: Comparison) -> str:
    """One row per (column, target), then per column the summary (target '*')."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["column", "target", "a", "b", "a_minus_b", "ci", "n", "a_below_b"])
    for r in cmp.rows:
        for t, (a, b) in r.per_target.items():
            w.writerow([r.column, t, a, b, a - b, "", 1, int(a < b)])
        w.writerow([r.column, "*", r.a.mean, r.b.mean, r.diff.mean, r.diff.ci, r.diff.n, r.below])
    return buf.getvalue()


def summary(cmp: Comparison) -> dict[str, Any]:
    """Plain data (JSON) of the comparison."""
    return {
        "a": cmp.a,
        "b": cmp.b,
        "targets": cmp.targets,
        "confidence": cmp.confidence,
        "columns": {
            r.column: {
                "a": r.a.mean,
                "b": r.b.mean,
                "a_minus_b": r.diff.mean,
                "ci": r.diff.ci,
                "n": r.diff.n,
                "a_below_b": r.below,
                "per_target": {t: {"a": a, "b": b} for t, (a, b) in r.per_target.items()},
            }
            for r in cmp.rows
        },
    }
