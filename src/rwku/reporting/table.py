"""The paper's Table 1 layout, as plain text, for one or more evaluation results.

Columns: forget FB/QA/AA/All (↓), neighbor FB/QA/All (↑), MIA FM (↑)/RM (↓), utility
Gen/Rea/Tru/Fac/Flu (↑), then this project's likelihood columns: the mean probability per gold
token (×100) over all forget and all neighbor probes.
"""

from __future__ import annotations

from collections.abc import Sequence

COLUMNS: list[tuple[str, tuple[str, ...]]] = [
    ("F-FB", ("forget", "fb")),
    ("F-QA", ("forget", "qa")),
    ("F-AA", ("forget", "aa")),
    ("F-All", ("forget", "all")),
    ("N-FB", ("neighbor", "fb")),
    ("N-QA", ("neighbor", "qa")),
    ("N-All", ("neighbor", "all")),
    ("MIA-FM", ("mia", "fm", "loss")),
    ("MIA-RM", ("mia", "rm", "loss")),
    ("Gen", ("utility", "gen")),
    ("Rea", ("utility", "rea")),
    ("Tru", ("utility", "tru")),
    ("Fac", ("utility", "fac")),
    ("Flu", ("utility", "flu")),
    ("F-LL", ("forget", "likelihood", "all")),
    ("N-LL", ("neighbor", "likelihood", "all")),
]


def _get(scores: dict, path: tuple[str, ...]):
    node = scores
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, (int, float)) else None


def table_values(result: dict) -> dict[str, float | None]:
    """One row of Table 1 from a result dictionary (``rwku eval``'s JSON)."""
    return {name: _get(result.get("scores", {}), path) for name, path in COLUMNS}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(rows: Sequence[tuple[str, dict]], *, with_delta: bool = False) -> str:
    """Markdown table of labelled results; with_delta adds a row of last − first."""
    values = [(label, table_values(res)) for label, res in rows]
    names = [c for c, _ in COLUMNS if any(v[c] is not None for _, v in values)]
    lines = ["| " + " | ".join(["", *names]) + " |", "|" + "---|" * (len(names) + 1)]
    for label, vals in values:
        lines.append("| " + " | ".join([label, *(_fmt(vals[n]) for n in names)]) + " |")
    if with_delta and len(values) >= 2:
        first, last = values[0][1], values[-1][1]
        deltas = ["-" if first[n] is None or last[n] is None else f"{last[n] - first[n]:+.1f}" for n in names]
        lines.append("| " + " | ".join(["Δ", *deltas]) + " |")
    return "\n".join(lines)
