"""The attack records as Markdown tables: what ``rwku attack`` prints."""

from __future__ import annotations

from typing import Any

from rwku.attacks.recovery import METRICS

_NAMES = {"fb": "FB", "qa": "QA", "aa": "AA", "all": "All", "ll": "LL"}


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def relearn_table(rec: dict[str, Any]) -> str:
    """One row per (data kind, model, budget): the metrics, R (unlearned) or T (control)."""
    head = ["data", "model", "step", *(_NAMES[m] for m in METRICS), "R(All)", "R(LL)"]
    rows = [
        ["–", "original", "–", *(_num(rec["original"].get(m)) for m in METRICS), "", ""],
        ["–", "unlearned", "–", *(_num(rec["unlearned"].get(m)) for m in METRICS), "", ""],
    ]
    for kind, entry in rec["curves"].items():
        if "skipped" in entry:
            rows.append([kind, f"skipped: {entry['skipped']}", "", *([""] * len(METRICS)), "", ""])
            continue
        for which, key in (("unlearned", "recovery"), ("original", "teaching")):
            for point in entry.get(which, []):
                r = point.get(key) or {}
                label = "unlearned" if which == "unlearned" else "original (control, T)"
                rows.append(
                    [
                        kind,
                        label,
                        str(point["step"]),
                        *(_num(point["metrics"].get(m)) for m in METRICS),
                        _num(r.get("all"), "{:.2f}"),
                        _num(r.get("ll"), "{:.2f}"),
                    ]
                )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def incontext_table(rec: dict[str, Any]) -> str:
    """One row per (model, context): metrics with the context, and the gain over the plain probe."""
    head = ["model", "context", "probes", *(_NAMES[m] for m in METRICS), "gain All", "gain LL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for which, out in rec["models"].items():
        plain = out["plain"]
        lines.append(
            "| "
            + " | ".join([which, "none", str(rec["probes"]), *(_num(plain.get(m)) for m in METRICS), "", ""])
            + " |"
        )
        for kind, c in out["contexts"].items():
            cells = [which, kind, str(c["probes"]), *(_num(c["with_context"].get(m)) for m in METRICS)]
            cells += [_num(c["gain"].get("all"), "{:+.1f}"), _num(c["gain"].get("ll"), "{:+.1f}")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_record(record: dict[str, Any]) -> str:
    """Every target's table of an ``attack-*.json`` record."""
    out = []
    for name, rec in record["targets"].items():
        out.append(
            f"## {record['attack']} attack on {name} ({rec['run']['method']}, {rec['run'].get('mode')})"
        )
        out.append(relearn_table(rec) if record["attack"] == "relearn" else incontext_table(rec))
    return "\n\n".join(out)
