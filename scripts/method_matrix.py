"""Every method × every training mode once on the default model: a bounded `rwku run` each.

Not a test; docs/methods.md has its table. It proves that each combination runs end to end
on the real model — corpus, training, saving, evaluating — and records what each costs. Each
run is a separate ``rwku run`` process (so its peak RSS is its own) with small, fixed bounds:
a 4-record synthetic corpus (GA* reads 4 Wikipedia passages), 1 epoch, the small-model
preset's learning rate and batch size, forget and neighbor on the first 3 probes of every
list, one thread. The numbers show that something moved, not how well a method unlearns
(that is the preset search's job).

    PYTHONPATH=src python scripts/method_matrix.py --out results/matrix
    PYTHONPATH=src python scripts/method_matrix.py --out results/matrix --report
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("full", "lora", "partial")


def cells() -> list[tuple[str, str | None]]:
    """(method, mode) for every training method × mode, and (method, None) for inference ones."""
    from rwku.methods import list_methods

    out: list[tuple[str, str | None]] = []
    for name, cls in list_methods().items():
        if cls.kind == "inference":
            out.append((name, None))
        else:
            out.extend((name, mode) for mode in MODES)
    return out


def run_cell(method: str, mode: str | None, args: argparse.Namespace) -> dict:
    name = f"{method}-{mode or 'inference'}"
    out_json = args.out / f"{name}.json"
    cmd = [sys.executable, "-m", "rwku.cli", "run", "--target", args.target, "--method", method]
    cmd += ["--mode", mode or "lora", "--data", args.data, "--suites", "forget,neighbor"]
    cmd += ["--limit", str(args.limit), "--corpus-size", str(args.corpus_size), "--epochs", "1"]
    cmd += ["--threads", str(args.threads), "--run-dir", str(args.out / "runs" / name)]
    cmd += ["--out", str(out_json), "-q"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    row = {
        "method": method,
        "mode": mode,
        "exit": done.returncode,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    if out_json.is_file():
        rec = json.loads(out_json.read_text())
        run = rec["run"]
        b, a = rec["before"]["scores"], rec["after"]["scores"]
        train = (run["hyperparameters"] or {}).get("training") or {}
        row.update(
            status=run["status"],
            peak_rss_mb=run["peak_memory_mb"],
            train_seconds=run["timings"].get("train"),
            lr=run["hyperparameters"].get("lr"),
            steps=train.get("steps"),
            trainable=train.get("trainable_params"),
            forget=[b["forget"]["likelihood"]["all"], a["forget"]["likelihood"]["all"]],
            neighbor=[b["neighbor"]["likelihood"]["all"], a["neighbor"]["likelihood"]["all"]],
        )
    else:
        row.update(status="error", error=(done.stderr or done.stdout)[-800:])
    return row


def report(rows: list[dict]) -> str:
    lines = [
        "| method | mode | status | lr | steps | trainable params | train s | wall s | peak RSS MB "
        "| forget LL before → after | neighbor LL before → after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r.get("forget"):
            f = f"{r['forget'][0]:.2f} → {r['forget'][1]:.2f}"
            n = f"{r['neighbor'][0]:.2f} → {r['neighbor'][1]:.2f}"
        else:
            f = n = "–"
        lr = f"{r['lr']:g}" if r.get("lr") is not None else "–"
        trainable = f"{r['trainable']:,}" if r.get("trainable") else "–"
        lines.append(
            f"| {r['method']} | {r['mode'] or '–'} | {r['status']} | {lr} | {r.get('steps') or '–'} | "
            f"{trainable} | {r.get('train_seconds') or '–'} | {r['wall_seconds']} | "
            f"{r.get('peak_rss_mb') or '–'} | {f} | {n} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "matrix")
    parser.add_argument(
        "--data", default=os.environ.get("RWKU_DATA") or str(ROOT.parent / "shared" / "data" / "rwku")
    )
    parser.add_argument("--target", default="Stephen King")
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--corpus-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help="comma list of method or method-mode names")
    parser.add_argument("--report", action="store_true", help="print the table from --out and exit")
    args = parser.parse_args()

    summary = args.out / "summary.jsonl"
    rows = [json.loads(x) for x in summary.read_text().splitlines()] if summary.is_file() else []
    if args.report:
        print(report(list({(r["method"], r["mode"]): r for r in rows}.values())))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    done = {(r["method"], r["mode"]) for r in rows if r["status"] == "finished"}
    wanted = set(args.only.split(",")) if args.only else None
    for method, mode in cells():
        if (method, mode) in done:
            continue
        if wanted and method not in wanted and f"{method}-{mode}" not in wanted:
            continue
        print(f"[matrix] {method} {mode or ''}", file=sys.stderr, flush=True)
        row = run_cell(method, mode, args)
        print(f"[matrix] -> {json.dumps(row)}", file=sys.stderr, flush=True)
        with summary.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    rows = [json.loads(x) for x in summary.read_text().splitlines()]
    latest = {(r["method"], r["mode"]): r for r in rows}
    print(report(list(latest.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
