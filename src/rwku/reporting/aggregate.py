"""Aggregate a sweep's cells over targets: Table 1 and the per-attack-type table.

A sweep writes one JSON per cell (:mod:`rwku.experiments.sweep`). Here every cell becomes one
*unit* per target it evaluated (a single-target cell gives one, a batch cell of k targets k),
and units are grouped by what was compared — setting, batch size, method, mode, hyperparameters
and method options — so a group's row is the mean over its targets (and seeds), with a
Student-t confidence interval: with 100 targets the paper reports means, and the interval says
how much of a difference between two methods is just which targets happened to be drawn.

Columns and their order are the paper's Table 1 (:data:`rwku.reporting.table.COLUMNS`): forget
FB/QA/AA/All, neighbor FB/QA/All, MIA FM/RM, utility Gen/Rea/Tru/Fac/Flu, then this project's
likelihood columns F-LL and N-LL.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwku.errors import ConfigError
from rwku.reporting.table import COLUMNS, table_values

#: The paper's method order (Table 1), then anything else alphabetically.
METHOD_ORDER = (
    "icu",
    "repe",
    "eco",
    "guard",
    "ga_star",
    "ga",
    "dpo",
    "npo",
    "rt",
    "graddiff",
    "kl",
    "simnpo",
    "rmu",
)
MODE_ORDER = (None, "full", "lora", "partial", "expert")
#: Column groups of the paper's header row, for the LaTeX table.
COLUMN_GROUPS = (
    ("Forget Set", ("F-FB", "F-QA", "F-AA", "F-All")),
    ("Neighbor Set", ("N-FB", "N-QA", "N-All")),
    ("MIA Set", ("MIA-FM", "MIA-RM")),
    ("Utility Set", ("Gen", "Rea", "Tru", "Fac", "Flu")),
    ("Likelihood", ("F-LL", "N-LL")),
)
UTILITY_COLUMNS = ("Gen", "Rea", "Tru", "Fac")
COLUMN_NAMES = [name for name, _ in COLUMNS]
#: The likelihood columns carry the result on small models (ROUGE barely moves), so the report
#: shows them first; the CSV and LaTeX keep the paper's order.
LIKELIHOOD_COLUMNS = ("F-LL", "N-LL")
REPORT_COLUMNS = [*LIKELIHOOD_COLUMNS, *(c for c in COLUMN_NAMES if c not in LIKELIHOOD_COLUMNS)]
#: The change table: relative change of the likelihood columns (ratio of the paired means − 1,
#: in %), then after − before of the columns that carry a verdict.
DELTA_SOURCES = ("F-LL", "N-LL", "F-All", "N-All", "MIA-FM", "MIA-RM", "Gen", "Rea", "Tru", "Fac", "Flu")
DELTA_COLUMNS = [*(f"{c} %" for c in LIKELIHOOD_COLUMNS), *(f"Δ{c}" for c in DELTA_SOURCES)]


def extra_columns(values: Iterable[Mapping[str, Any]]) -> list[str]:
    """Columns beyond Table 1's, in first-seen order: the lm-evaluation-harness tasks a run added
    to its utility columns (``"arc_easy:acc"``, see :func:`rwku.reporting.table.lm_eval_values`)."""
    return list(
        dict.fromkeys(c for v in values for c in v if c not in COLUMN_NAMES and c not in DELTA_COLUMNS)
    )


def table_columns(rows: Sequence[Row]) -> list[str]:
    """Table 1's columns in the paper's order (CSV, LaTeX), then the rows' lm-eval columns."""
    return [*COLUMN_NAMES, *extra_columns(r.values for r in rows)]


def report_columns(rows: Sequence[Row]) -> list[str]:
    """Table 1's columns as the report shows them (likelihood first), then lm-eval columns."""
    return [*REPORT_COLUMNS, *extra_columns(r.values for r in rows)]


def delta_columns(rows: Sequence[Row]) -> list[str]:
    """The change table's columns, then the change of every lm-eval column (``Δarc_easy:acc``)."""
    return [*DELTA_COLUMNS, *(c for c in extra_columns(r.values for r in rows) if c.startswith("Δ"))]


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """A mean over ``n`` values and the half-width of its confidence interval (None if n < 2)."""

    mean: float | None
    ci: float | None
    n: int


def mean_ci(values: Iterable[float | None], confidence: float = 0.95) -> Stat:
    """Mean and Student-t confidence half-width, ``t_{(1+c)/2, n-1} · s / √n``.

    Missing values (None, NaN) are left out. The t-interval rather than ±1.96·SE because a
    sweep often has few targets per group (10, even 2), where the normal interval is too narrow.
    """
    from scipy import stats

    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(xs)
    if n == 0:
        return Stat(None, None, 0)
    mean = sum(xs) / n
    if n < 2:
        return Stat(mean, None, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Stat(mean, half, n)


def utility_mean(values: dict[str, float | None]) -> float | None:
    """One utility number for plots: the mean of the available Gen, Rea, Tru and Fac (Flu is an
    entropy on another scale, so it is left out)."""
    xs = [values[c] for c in UTILITY_COLUMNS if values.get(c) is not None]
    return sum(xs) / len(xs) if xs else None


# --------------------------------------------------------------------------------------------
# Reading a run directory
# --------------------------------------------------------------------------------------------


@dataclass
class Unit:
    """One target's evaluation inside one cell."""

    cell: dict[str, Any]
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    #: (epoch, result) pairs recorded during training, the final epoch included
    epochs: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    #: an inference-time guard's record (ECO, GUARD: classifier, flag rates), else None
    guard: dict[str, Any] | None = None


@dataclass
class RunData:
    """Everything a report needs from a sweep's output directory."""

    path: Path
    manifest: dict[str, Any] | None
    results: list[dict[str, Any]]
    units: list[Unit]
    #: cells in the manifest without a finished result
    missing: list[str]
    #: finished cells without scores (training diverged), and any other non-finished status
    unscored: list[tuple[str, str]]
    #: cell files present but not in the manifest (an older grid in the same directory)
    ignored: list[str]


def _per_target(value: Any, targets: Sequence[str]) -> dict[str, Any]:
    """A record's before/after: a result dict for one target, or {target: result} for several."""
    if not value:
        return {}
    if len(targets) == 1 and "scores" in value:
        return {targets[0]: value}
    return dict(value)


def load_run(run_dir: str | Path) -> RunData:
    """Read the manifest and every finished cell of a sweep directory."""
    from rwku.experiments.sweep import CELLS_DIR, read_cell, read_manifest

    path = Path(run_dir)
    cells_dir = path / CELLS_DIR
    if not cells_dir.is_dir():
        raise ConfigError(f"{path} is not a sweep directory (no {CELLS_DIR}/ folder); run `rwku sweep` first")
    manifest = read_manifest(path)
    planned = [c["id"] for c in manifest["cells"]] if manifest else None
    results: list[dict[str, Any]] = []
    ignored: list[str] = []
    by_id: dict[str, dict[str, Any]] = {}
    for file in sorted(cells_dir.glob("*.json")):
        result = read_cell(file)
        if result is None:
            continue
        cid = result["cell"].get("id", file.stem)
        if planned is not None and cid not in planned:
            ignored.append(cid)
            continue
        by_id[cid] = result
    order = planned if planned is not None else sorted(by_id)
    results = [by_id[c] for c in order if c in by_id]
    missing = [c for c in (planned or []) if c not in by_id]
    units: list[Unit] = []
    unscored: list[tuple[str, str]] = []
    for result in results:
        cell = result["cell"]
        record = result.get("record")
        if record is None or not record.get("after"):
            unscored.append((cell["id"], result.get("status", "?")))
            continue
        targets = list(cell["targets"])
        before = _per_target(record.get("before"), targets)
        after = _per_target(record.get("after"), targets)
        epochs = [(float(e["epoch"]), _per_target(e["after"], targets)) for e in record.get("epochs") or []]
        for t in targets:
            units.append(
                Unit(
                    cell=cell,
                    target=t,
                    before=before.get(t),
                    after=after.get(t),
                    epochs=[(e, res[t]) for e, res in epochs if t in res],
                    guard=(record.get("run") or {}).get("guard"),
                )
            )
    return RunData(path, manifest, results, units, missing, unscored, ignored)


# --------------------------------------------------------------------------------------------
# Groups and rows
# --------------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def group_key(cell: dict[str, Any], drop: Sequence[str] = ()) -> tuple:
    """What a row compares: setting, k, method, mode, params and options (minus ``drop``)."""
    params = {k: v for k, v in {**cell["params"], **cell["options"]}.items() if k not in drop}
    return (
        cell["setting"],
        len(cell["targets"]) if cell["setting"] == "batch" else 1,
        cell["method"],
        cell["mode"],
        json.dumps(params, sort_keys=True),
    )


def _sort_key(key: tuple) -> tuple:
    setting, k, method, mode, params = key
    m = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return (setting != "single", k, MODE_ORDER.index(mode) if mode in MODE_ORDER else 9, m, method, params)


def label_for(key: tuple) -> str:
    """'NPO (lora) lr=0.001', with '[k=10]' for the batch setting."""
    setting, k, method, mode, params = key
    name = method.upper().replace("_STAR", "*") if method != "repe" else "RepE"
    head = name if mode is None else f"{name} ({mode})"
    extra = ", ".join(f"{p}={_fmt(v)}" for p, v in json.loads(params).items())
    tail = f" [batch k={k}]" if setting == "batch" else ""
    return f"{head} {extra}".strip() + tail


@dataclass
class Row:
    """One table row: a label, the group it summarises and one :class:`Stat` per column."""

    label: str
    key: tuple | None
    n: int
    values: dict[str, Stat]

    @property
    def setting(self) -> str:
        return self.key[0] if self.key else "original"


@dataclass
class RowTable:
    """A report section's rows and the columns they fill; an empty one is left out of the report."""

    rows: list[Row] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.rows


def _stats(
    results: Sequence[dict[str, Any]], confidence: float, extra: Sequence[str] = ()
) -> dict[str, Stat]:
    rows = [table_values(r) for r in results]
    return {c: mean_ci([r.get(c) for r in rows], confidence) for c in [*COLUMN_NAMES, *extra]}


def before_results(run: RunData) -> list[dict[str, Any]]:
    """The original model's result for every distinct target (shared by all its cells)."""
    seen: dict[str, dict[str, Any]] = {}
    for u in run.units:
        if u.before is not None and u.target not in seen:
            seen[u.target] = u.before
    return list(seen.values())


def grouped(run: RunData, drop: Sequence[str] = ()) -> dict[tuple, list[Unit]]:
    groups: dict[tuple, list[Unit]] = {}
    for u in run.units:
        groups.setdefault(group_key(u.cell, drop), []).append(u)
    return {k: groups[k] for k in sorted(groups, key=_sort_key)}


def table1(run: RunData, confidence: float = 0.95) -> list[Row]:
    """The 'Before' row (original model over every target), then one row per group."""
    rows = []
    before = before_results(run)
    afters = [u.after for u in run.units if u.after is not None]
    extra = extra_columns(table_values(r) for r in [*before, *afters])
    if before:
        rows.append(Row("Before", None, len(before), _stats(before, confidence, extra)))
    for key, units in grouped(run).items():
        afters = [u.after for u in units if u.after is not None]
        rows.append(Row(label_for(key), key, len(afters), _stats(afters, confidence, extra)))
    return rows


#: Flag-rate columns (percent of the part's prompts the guard's classifier flagged), and the part
#: of the run record's ``guard.flag_rates.parts`` each reads.
FLAG_COLUMNS = {"flag F %": "forget", "flag N %": "neighbor", "flag MIA %": "mia", "flag U %": "utility"}


def flag_rates(run: RunData, confidence: float = 0.95) -> list[Row]:
    """One row per group of inference-time guard cells: the mean share of each part's prompts that
    the guard's classifier flagged (over the group's targets)."""
    rows = []
    for key, units in grouped(run).items():
        parts = [u.guard["flag_rates"]["parts"] for u in units if u.guard and u.guard.get("flag_rates")]
        if not parts:
            continue

        def pct(p: dict, part: str) -> float | None:
            rate = (p.get(part) or {}).get("rate")
            return None if rate is None else 100 * rate

        values = {c: mean_ci([pct(p, part) for p in parts], confidence) for c, part in FLAG_COLUMNS.items()}
        rows.append(Row(label_for(key), key, len(parts), values))
    return rows


def attack_types(run: RunData, confidence: float = 0.95) -> tuple[list[str], list[Row]]:
    """Forget ROUGE-L recall per adversarial attack type (the paper's per-attack analysis)."""

    by_type = _aa_by_type
    types = sorted({t for u in run.units for r in (u.before, u.after) for t in by_type(r)})
    rows: list[Row] = []
    if not types:
        return [], rows
    before = before_results(run)
    if before:
        rows.append(
            Row(
                "Before",
                None,
                len(before),
                {t: mean_ci([by_type(r).get(t) for r in before], confidence) for t in types},
            )
        )
    for key, units in grouped(run).items():
        values = {t: mean_ci([by_type(u.after).get(t) for u in units], confidence) for t in types}
        rows.append(Row(label_for(key), key, len(units), values))
    return types, rows


def _aa_by_type(result: dict[str, Any] | None) -> dict[str, float]:
    forget = ((result or {}).get("scores") or {}).get("forget") or {}
    return forget.get("aa_by_type") or {}


# --------------------------------------------------------------------------------------------
# Change from the original model, paired per target
# --------------------------------------------------------------------------------------------


def _paired(
    units: Sequence[Unit], values: Callable[[dict[str, Any] | None], dict[str, Any]], columns: Sequence[str]
) -> dict[str, list[tuple[float, float]]]:
    """Per column, the (before, after) pairs of the units where both values exist."""
    out: dict[str, list[tuple[float, float]]] = {c: [] for c in columns}
    for u in units:
        if u.before is None or u.after is None:
            continue
        b, a = values(u.before), values(u.after)
        for c in columns:
            if b.get(c) is not None and a.get(c) is not None:
                out[c].append((float(b[c]), float(a[c])))
    return out


def relative_change(before: float, after: float) -> float | None:
    """(after / before − 1) in %: −32 means the value fell by a third."""
    return None if before == 0 else 100.0 * (after / before - 1.0)


def _delta_stats(
    pairs: dict[str, list[tuple[float, float]]], confidence: float, extra: Sequence[str] = ()
) -> dict[str, Stat]:
    values = {}
    for c in LIKELIHOOD_COLUMNS:
        ps = pairs[c]
        rel = relative_change(sum(b for b, _ in ps), sum(a for _, a in ps)) if ps else None
        values[f"{c} %"] = Stat(rel, None, len(ps) if rel is not None else 0)
    for c in [*DELTA_SOURCES, *extra]:
        values[f"Δ{c}"] = mean_ci([a - b for b, a in pairs.get(c, [])], confidence)
    return values


def delta_table(run: RunData, confidence: float = 0.95) -> list[Row]:
    """Per group: after − before, paired per target (mean ± t-interval of the differences), and
    the relative change of the likelihood columns (ratio of the paired means). Pairing removes
    the spread between targets, which dominates the intervals of Table 1 at a few targets."""
    rows = []
    extra = extra_columns(table_values(r) for u in run.units for r in (u.before, u.after) if r is not None)
    for key, units in grouped(run).items():
        pairs = _paired(units, table_values, [*DELTA_SOURCES, *extra])
        n = max(map(len, pairs.values()), default=0)
        rows.append(Row(label_for(key), key, n, _delta_stats(pairs, confidence, extra)))
    return rows


def attack_type_deltas(run: RunData, types: Sequence[str], confidence: float = 0.95) -> list[Row]:
    """Forget score per attack type, after − before, paired per target."""
    rows = []
    for key, units in grouped(run).items():
        pairs = _paired(units, _aa_by_type, types)
        values = {t: mean_ci([a - b for b, a in pairs[t]], confidence) for t in types}
        rows.append(Row(label_for(key), key, len(units), values))
    return [r for r in rows if any(s.n for s in r.values.values())]


def deltas_of_means(rows: Sequence[Row], columns: Sequence[str] | None = None) -> list[Row]:
    """The change from the 'Before' row (``rows[0]``) computed from the means alone, for a saved
    report without its cells: the difference of the means equals the mean paired difference when
    every row holds the same targets, but has no interval (that needs the per-target pairs).
    Without ``columns``: the columns of :func:`delta_table`; with them: plain differences."""
    if not rows or rows[0].key is not None:
        return []
    before, out = rows[0], []
    extra = extra_columns(r.values for r in rows) if columns is None else []
    for r in rows[1:]:
        pairs = {
            c: [(before.values[c].mean, r.values[c].mean)]
            for c in (columns or [*DELTA_SOURCES, *extra])
            if c in before.values
            and c in r.values
            and before.values[c].mean is not None
            and r.values[c].mean is not None
        }
        if columns is None:
            stats = _delta_stats({c: pairs.get(c, []) for c in DELTA_SOURCES} | pairs, 0.95, extra)
        else:
            stats = {c: mean_ci([a - b for b, a in pairs.get(c, [])]) for c in columns}
        values = {c: Stat(s.mean, None, r.n if s.mean is not None else 0) for c, s in stats.items()}
        out.append(Row(r.label, r.key, r.n, values))
    return out


def _signed(value: float, digits: int, unit: str = "") -> str:
    return f"{value:+.{digits}f}{unit}".replace("-", "−")


def reading(row: Row) -> str:
    """One line per method, like the demo prints:
    'GA (full): forget −32 %, neighbor −8 % (likelihood); F-All −1.9 ± 2.1, N-All −1.9 ± 1.0; n = 5'."""
    v = row.values
    parts = []
    if v["F-LL %"].mean is not None and v["N-LL %"].mean is not None:
        parts.append(
            f"forget {_signed(v['F-LL %'].mean, 0, ' %')}, neighbor {_signed(v['N-LL %'].mean, 0, ' %')} (likelihood)"
        )
    diffs = []
    for c in ("F-All", "N-All", "Flu"):
        s = v[f"Δ{c}"]
        if s.mean is not None:
            diffs.append(f"{c} {_signed(s.mean, 1)}" + ("" if s.ci is None else f" ± {s.ci:.1f}"))
    if diffs:
        parts.append(", ".join(diffs))
    return f"{row.label}: {'; '.join(parts) or 'no paired scores'}; n = {row.n}"


# --------------------------------------------------------------------------------------------
# Output formats
# --------------------------------------------------------------------------------------------


def used_columns(rows: Sequence[Row], columns: Sequence[str]) -> list[str]:
    """Columns with at least one value (a sweep without the utility suite has no Gen ... Flu)."""
    return [c for c in columns if any(r.values[c].mean is not None for r in rows)]


def cell_text(stat: Stat, digits: int = 1, row_n: int | None = None, signed: bool = False) -> str:
    """'7.7 ± 10.9' ('+7.7 ± 10.9' signed, for changes); with ``row_n``, a value over fewer
    items than its row says so: '(n=2)'."""
    if stat.mean is None:
        return "-"
    text = f"{stat.mean:+.{digits}f}" if signed else f"{stat.mean:.{digits}f}"
    text = text if stat.ci is None else f"{text} ± {stat.ci:.{digits}f}"
    return text if row_n is None or stat.n == row_n else f"{text} (n={stat.n})"


def to_markdown(
    rows: Sequence[Row], columns: Sequence[str] | None = None, first: str = "Method", signed: bool = False
) -> str:
    columns = used_columns(rows, columns or COLUMN_NAMES)
    lines = [
        "| " + " | ".join([first, "n", *columns]) + " |",
        "|" + "---|" * (len(columns) + 2),
    ]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [r.label, str(r.n), *(cell_text(r.values[c], row_n=r.n, signed=signed) for c in columns)]
            )
            + " |"
        )
    return "\n".join(lines)


def to_csv(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    """Machine-readable: group fields, n, then ``<col>``, ``<col>_ci`` and ``<col>_n`` (how many
    targets the value is over) for every column."""
    columns = list(columns or table_columns(rows))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "label",
            "setting",
            "k",
            "method",
            "mode",
            "params",
            "n",
            *[x for c in columns for x in (c, f"{c}_ci", f"{c}_n")],
        ]
    )
    for r in rows:
        setting, k, method, mode, params = r.key if r.key else ("original", "", "", "", "{}")
        values = []
        for c in columns:
            s = r.values[c]
            values += ["" if s.mean is None else repr(s.mean), "" if s.ci is None else repr(s.ci), s.n]
        writer.writerow([r.label, setting, k, method, mode or "", params, r.n, *values])
    return buf.getvalue()


def from_csv(text: str) -> tuple[list[str], list[Row]]:
    """Inverse of :func:`to_csv`: the columns and rows of a saved table (re-rendering a report
    whose cells are gone). A CSV from before ``<col>_n`` existed gives every value its row's n."""
    table = list(csv.DictReader(io.StringIO(text)))
    fixed = ("label", "setting", "k", "method", "mode", "params", "n")
    if not table or any(f not in table[0] for f in fixed):
        raise ConfigError("not a table written by `rwku report` (label, setting, k, method, ... columns)")
    columns = [c for c in table[0] if c not in fixed and not c.endswith(("_ci", "_n"))]

    def number(text: str | None) -> float | None:
        return float(text) if text not in (None, "") else None

    rows = []
    for t in table:
        n = int(t["n"])
        key = None
        if t["setting"] != "original":
            key = (t["setting"], int(t["k"]), t["method"], t["mode"] or None, t["params"])
        values = {}
        for c in columns:
            mean = number(t[c])
            count = t.get(f"{c}_n")
            values[c] = Stat(
                mean, number(t[f"{c}_ci"]), int(count) if count else (n if mean is not None else 0)
            )
        rows.append(Row(t["label"], key, n, values))
    return columns, rows


_LATEX_SPECIAL = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(rows: Sequence[Row], confidence: float = 0.95) -> str:
    """A booktabs table with the paper's grouped header; the CI as a subscript ±."""
    columns = used_columns(rows, table_columns(rows))
    extra = tuple(c for c in columns if c not in COLUMN_NAMES)
    groups = [
        (name, [c for c in cols if c in columns]) for name, cols in (*COLUMN_GROUPS, ("lm-eval", extra))
    ]
    groups = [(name, cols) for name, cols in groups if cols]
    spec = "l" + "".join("|" + "c" * len(cols) for _, cols in groups)
    lines = [
        r"% rwku report: mean over targets, subscript = half-width of the "
        + f"{round(confidence * 100)}% t-interval; needs \\usepackage{{booktabs}}",
        r"\begin{tabular}{" + spec + "}",
        r"\toprule",
        " & ".join(["", *(f"\\multicolumn{{{len(cols)}}}{{c}}{{{name}}}" for name, cols in groups)]) + r" \\",
        " & ".join(["Method", *(latex_escape(c) for _, cols in groups for c in cols)]) + r" \\",
        r"\midrule",
    ]
    for i, r in enumerate(rows):
        cells = []
        for _, cols in groups:
            for c in cols:
                s = r.values[c]
                if s.mean is None:
                    cells.append("-")
                elif s.ci is None:
                    cells.append(f"{s.mean:.1f}")
                else:
                    cells.append(f"${s.mean:.1f}_{{\\pm {s.ci:.1f}}}$")
        lines.append(" & ".join([latex_escape(r.label), *cells]) + r" \\")
        if i == 0 and r.key is None and len(rows) > 1:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Curves for the plots
# --------------------------------------------------------------------------------------------

#: The three sides of the trade-off, as (panel title, how to read it off a result).
METRICS: tuple[tuple[str, str], ...] = (
    ("Forget All (lower = forgot more)", "F-All"),
    ("Neighbor All (higher = kept more)", "N-All"),
    ("Utility: mean of Gen/Rea/Tru/Fac (higher = better)", "utility"),
    ("Forget likelihood F-LL (lower = forgot more)", "F-LL"),
)
"""F-LL is beyond RWKU: a small model rarely generates the gold answer, so its ROUGE barely
moves when it forgets, while the probability it gives the answer does (docs/protocol.md)."""


def metric_value(result: dict[str, Any] | None, metric: str) -> float | None:
    if result is None:
        return None
    values = table_values(result)
    return utility_mean(values) if metric == "utility" else values.get(metric)


@dataclass
class Series:
    """One line of a plot: its label, x positions and a :class:`Stat` per x for every metric."""

    label: str
    x: list[Any]
    y: dict[str, list[Stat]]


def _series(label: str, points: list[tuple[Any, list[dict[str, Any] | None]]], confidence: float) -> Series:
    return Series(
        label=label,
        x=[x for x, _ in points],
        y={
            m: [mean_ci([metric_value(r, m) for r in results], confidence) for _, results in points]
            for _, m in METRICS
        },
    )


def epoch_curves(run: RunData, confidence: float = 0.95) -> list[Series]:
    """Efficacy/locality/utility after each recorded epoch; epoch 0 is the original model."""
    out = []
    for key, units in grouped(run).items():
        with_epochs = [u for u in units if u.epochs]
        if not with_epochs:
            continue
        epochs = sorted({e for u in with_epochs for e, _ in u.epochs})
        points: list[tuple[Any, list[dict[str, Any] | None]]] = [(0.0, [u.before for u in with_epochs])]
        for e in epochs:
            points.append((e, [dict(u.epochs).get(e) for u in with_epochs]))
        out.append(_series(label_for(key), points, confidence))
    return out


def option_curves(run: RunData, option: str = "alpha", confidence: float = 0.95) -> list[Series]:
    """Trade-off across a method option (RepE's α); α = 0 is the original model."""
    out = []
    units = [u for u in run.units if option in u.cell["options"]]
    sub = RunData(run.path, run.manifest, run.results, units, [], [], [])
    for key, members in grouped(sub, drop=(option,)).items():
        values = sorted({float(u.cell["options"][option]) for u in members})
        points: list[tuple[Any, list[dict[str, Any] | None]]] = [(0.0, [u.before for u in members])]
        for v in values:
            points.append((v, [u.after for u in members if float(u.cell["options"][option]) == v]))
        out.append(_series(label_for(key), points, confidence))
    return out


def batch_curves(run: RunData, confidence: float = 0.95) -> list[Series]:
    """The batch setting: scores against the number of targets unlearned at once (k)."""
    series: dict[tuple, dict[int, list[Unit]]] = {}
    for u in run.units:
        if u.cell["setting"] != "batch":
            continue
        key = group_key(u.cell)
        series.setdefault(("batch", 0, *key[2:]), {}).setdefault(key[1], []).append(u)
    out = []
    for key in sorted(series, key=_sort_key):
        by_k = series[key]
        label = label_for(key).replace(" [batch k=0]", "")
        points = [(k, [u.after for u in by_k[k]]) for k in sorted(by_k)]
        out.append(_series(label, points, confidence))
    return out


def row_batch_curves(rows: Sequence[Row]) -> list[Series]:
    """:func:`batch_curves` from Table 1's batch rows alone (a saved report without its cells):
    the rows' means and intervals; the utility mean has no interval there."""
    series: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.key is not None and r.key[0] == "batch":
            series.setdefault(("batch", 0, *r.key[2:]), []).append(r)
    out = []
    for key in sorted(series, key=_sort_key):
        members = sorted(series[key], key=lambda r: r.key[1])
        y = {}
        for _, m in METRICS:
            if m == "utility":
                y[m] = [
                    Stat(utility_mean({c: r.values[c].mean for c in UTILITY_COLUMNS}), None, r.n)
                    for r in members
                ]
            else:
                y[m] = [r.values[m] for r in members]
        out.append(Series(label_for(key).replace(" [batch k=0]", ""), [r.key[1] for r in members], y))
    return out


def _layers_of(cell: dict[str, Any]) -> str:
    return str(cell["params"].get("layers") or cell["shared"].get("layers") or "0-4")


def _range_start(spec: str) -> tuple[int, str]:
    head = spec.replace(":", "-").split("-")[0]
    return (int(head) if head.strip().isdigit() else 0, spec)


def layer_grid(run: RunData, confidence: float = 0.95) -> list[Series]:
    """Partial-layer training: scores per trained layer range (categorical x)."""
    units = [u for u in run.units if u.cell["mode"] == "partial"]
    sub = RunData(run.path, run.manifest, run.results, units, [], [], [])
    out = []
    for key, members in grouped(sub, drop=("layers",)).items():
        ranges = sorted({_layers_of(u.cell) for u in members}, key=_range_start)
        points = [(r, [u.after for u in members if _layers_of(u.cell) == r]) for r in ranges]
        out.append(_series(label_for(key), points, confidence))
    return out
