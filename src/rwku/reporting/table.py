"""The paper's Table 1 layout, as plain text, for one or more evaluation results.

Columns: forget FB/QA/AA/All (↓), neighbor FB/QA/All (↑), MIA FM (↑)/RM (↓), utility
Gen/Rea/Tru/Fac/Flu (↑), then this project's likelihood columns: the mean probability per gold
token (×100) over all forget and all neighbor probes. lm-evaluation-harness tasks follow, one
column per task ("arc_easy:acc"), ×100 like the rest (perplexities as lm-eval reports them).
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


#: lm-eval metrics that are not fractions (shown as lm-eval reports them, not ×100)
RAW_METRICS = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


def lm_eval_values(result: dict) -> dict[str, float | None]:
    """One column per lm-evaluation-harness task: its first metric, ×100 when it is a fraction."""
    tasks = ((result.get("scores") or {}).get("utility") or {}).get("lm_eval") or {}
    out: dict[str, float | None] = {}
    for task, metrics in tasks.items():
        metric = next((m for m, v in metrics.items() if m != "n" and not isinstance(v, dict)), None)
        if metric is None:
            continue
        value = metrics[metric]
        if isinstance(value, (int, float)) and metric not in RAW_METRICS:
            value = 100 * value
        out[f"{task}:{metric}"] = value if isinstance(value, (int, float)) else None
    return out


def table_values(result: dict) -> dict[str, float | None]:
    """One row of Table 1 from a result dictionary (``rwku eval``'s JSON), then lm-eval tasks."""
    return {name: _get(result.get("scores", {}), path) for name, path in COLUMNS} | lm_eval_values(result)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(rows: Sequence[tuple[str, dict]], *, with_delta: bool = False) -> str:
    """Markdown table of labelled results; with_delta adds a row of last − first."""
    values = [(label, table_values(res)) for label, res in rows]
    extra = list(dict.fromkeys(k for _, v in values for k in v if k not in dict(COLUMNS)))
    names = [c for c in [n for n, _ in COLUMNS] + extra if any(v.get(c) is not None for _, v in values)]
    lines = ["| " + " | ".join(["", *names]) + " |", "|" + "---|" * (len(names) + 1)]
    for label, vals in values:
        lines.append("| " + " | ".join([label, *(_fmt(vals.get(n)) for n in names)]) + " |")
    if with_delta and len(values) >= 2:
        first, last = values[0][1], values[-1][1]
        deltas = [
            "-" if first.get(n) is None or last.get(n) is None else f"{last[n] - first[n]:+.1f}"
            for n in names
        ]
        lines.append("| " + " | ".join(["Δ", *deltas]) + " |")
    return "\n".join(lines)


#: The parts of an evaluation an inference-time guard's flag rates are reported for.
FLAG_PARTS = ("forget", "neighbor", "mia", "utility")


def flag_rate_cells(flag_rates: dict) -> dict[str, str]:
    """``flagged/total (rate %)`` per part of a guard run's ``flag_rates`` (``-`` where not run)."""
    parts = flag_rates.get("parts", {})
    cells = {}
    for part in FLAG_PARTS:
        p = parts.get(part)
        cells[part] = (
            "-" if not p or not p.get("total") else f"{p['flagged']}/{p['total']} ({100 * p['rate']:.0f}%)"
        )
    return cells


def format_flag_rates(rows: Sequence[tuple[str, dict]]) -> str:
    """Markdown table of how many prompts of each part a guard's classifier flagged."""
    lines = ["| flagged | " + " | ".join(FLAG_PARTS) + " |", "|" + "---|" * (len(FLAG_PARTS) + 1)]
    for label, rates in rows:
        cells = flag_rate_cells(rates)
        lines.append("| " + " | ".join([label, *(cells[p] for p in FLAG_PARTS)]) + " |")
    return "\n".join(lines)
