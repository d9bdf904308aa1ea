"""How much a model knows about each target before unlearning: the knowledge census.

Unlearning can only be measured on a target the model knows. The census asks a model the
first ``limit`` forget probes of every fill-in-the-blank (FB) and question (QA) list of each
target and records, per target, ROUGE-L recall (×100, as the forget columns) and the
gold-answer likelihood (mean probability per gold token, ×100, the F-LL column), each per
level and over both. The result picks the well-known targets for a study and shows users
which targets are meaningful for a given model.

Outputs in ``out_dir``:

* ``census.jsonl``: one line per finished target, appended and flushed as each finishes, after
  a header line naming the model fingerprint and options. A killed census resumes where it
  stopped (``rwku census`` again with the same ``--out``); a different model or limit in the
  same folder is refused rather than mixed. A line cut off by a kill is ignored and redone.
* ``census.csv`` and ``census.json`` (rows sorted by target id, plus the header), and
  ``census.png`` (targets ordered by likelihood, ROUGE beside), rewritten after every target.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rwku.errors import ConfigError
from rwku.io import atomic_write_json

__all__ = ["CENSUS_FILE", "FIELDS", "parse_target_range", "read_census", "run_census", "write_outputs"]

CENSUS_FILE = "census.jsonl"
FORMAT = 1
FIELDS = (
    "id",
    "target",
    "n_fb",
    "n_qa",
    "rouge_fb",
    "rouge_qa",
    "rouge",
    "ll_fb",
    "ll_qa",
    "ll",
    "seconds",
)


def parse_target_range(text: str) -> list[str]:
    """``1-100``, ``1..100``, ``3,7,Bruce Lee`` → target names or ids, in the order given."""
    from rwku.experiments.unlearn import split_targets

    parts = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        parts.append(f"{lo}..{hi}" if sep and lo.strip().isdigit() and hi.strip().isdigit() else part)
    return split_targets(",".join(parts))


def read_census(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header, rows) of a census file; a last line cut off by a kill is dropped."""
    if not path.is_file():
        return None, []
    header, rows = None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a killed run was writing: that target is simply done again
        if isinstance(record, dict) and record.get("census") == FORMAT:
            header = record
        elif isinstance(record, dict) and "target" in record:
            rows.append(record)
    return header, rows


def _append(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, flushed to disk; after a line a kill cut off, on a line of its own."""
    with open(path, "a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write((json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def census_row(lm: Any, target_data: Any, limit: int | None) -> dict[str, Any]:
    """One target's row: FB and QA probes (the first ``limit`` of each), ROUGE and likelihood."""
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.suites.probes import LEVEL_NAMES, run_probes

    levels = {  # the data's keys are level1..level3; a probe's own level is "1".."3"
        LEVEL_NAMES.get(key.removeprefix("level"), key): list(items[:limit] if limit is not None else items)
        for key, items in target_data.forget.items()
    }
    levels = {k: v for k, v in levels.items() if k in ("fb", "qa")}
    started = time.perf_counter()
    scores = run_probes(lm, levels, EvalConfig(limit=limit), "forget").scores
    lik = scores.get("likelihood", {})
    t = target_data.target
    return {
        "id": t.id,
        "target": t.name,
        "n_fb": len(levels.get("fb", [])),
        "n_qa": len(levels.get("qa", [])),
        "rouge_fb": scores.get("fb"),
        "rouge_qa": scores.get("qa"),
        "rouge": scores.get("all"),
        "ll_fb": lik.get("fb"),
        "ll_qa": lik.get("qa"),
        "ll": lik.get("all"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def write_outputs(out_dir: Path, header: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """census.csv, census.json and census.png from the rows so far (sorted by target id)."""
    rows = sorted(rows, key=lambda r: (r.get("id") is None, r.get("id") or 0, r["target"]))
    tmp = out_dir / ".census.csv.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(FIELDS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, out_dir / "census.csv")
    atomic_write_json(out_dir / "census.json", {**header, "targets": len(rows), "rows": rows})
    if rows:
        _figure(out_dir / "census.png", header, rows)


def _figure(path: Path, header: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(rows, key=lambda r: -(r.get("ll") or 0.0))
    x = range(len(ordered))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * len(ordered) + 2), 4.2))
    ax.bar(x, [r.get("ll") or 0.0 for r in ordered], color="#4c72b0", label="gold-answer likelihood (F-LL)")
    ax.plot(
        x,
        [r.get("rouge") or 0.0 for r in ordered],
        "o",
        color="#dd8452",
        ms=4,
        label="ROUGE-L recall (FB+QA)",
    )
    ax.set_xticks(list(x))
    ax.set_xticklabels([r["target"] for r in ordered], rotation=90, fontsize=6)
    ax.set_ylabel("×100")
    limit = header.get("limit")
    ax.set_title(
        f"What {header.get('model', 'the model')} knows before unlearning "
        f"({len(ordered)} targets, first {limit if limit is not None else 'all'} FB and QA probes each)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def run_census(
    lm: Any,
    data: Any,
    targets: Sequence[str],
    out_dir: Path,
    *,
    limit: int | None,
    log: Callable[[str], None] = lambda m: None,
) -> list[dict[str, Any]]:
    """Census ``targets`` into ``out_dir``, skipping those already there; returns all rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CENSUS_FILE
    header = {
        "census": FORMAT,
        "model": lm.info.get("name"),
        "fingerprint": lm.info.get("fingerprint"),
        "limit": limit,
        "levels": ["fb", "qa"],
    }
    old_header, rows = read_census(path)
    if old_header is not None:
        clash = [k for k in ("fingerprint", "limit", "levels") if old_header.get(k) != header[k]]
        if clash:
            raise ConfigError(
                f"{path} holds a census of another {'/'.join(clash)} ({', '.join(f'{k}={old_header.get(k)!r}' for k in clash)}); "
                "use another --out folder"
            )
        header = old_header
    elif rows:
        raise ConfigError(f"{path} has rows but no header line; use another --out folder")
    else:
        _append(path, header)
    done = {r["target"] for r in rows}
    wanted = [data.target(t) for t in targets]  # unknown targets fail here, before any work
    todo = [t for t in wanted if t.name not in done]
    if len(todo) < len(wanted):
        log(f"census: {len(wanted) - len(todo)} of {len(wanted)} targets already in {path}, resuming")
    for i, target in enumerate(todo, 1):
        row = census_row(lm, data.load_target(target.name), limit)
        _append(path, row)
        rows.append(row)
        write_outputs(out_dir, header, rows)
        log(
            f"census {i}/{len(todo)}: {target.name}: ROUGE {row['rouge'] or 0:.1f}, likelihood {row['ll'] or 0:.1f} "
            f"({row['seconds']:.0f} s)"
        )
    write_outputs(out_dir, header, rows)
    return rows
