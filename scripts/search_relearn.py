"""The relearning attack's learning rates: a small search per model (docs/attacks.md).

For each mode (full, lora) and learning rate, attack one unlearned run (default: the demo's
GA-on-layers-0-3 run of Stephen King) with one kind of data (default ``related``) at budgets
0/10/25/50 and record R and the original-model control's T for the gold-answer likelihood.
The rule that picks a mode's rate: the largest R − T at the last budget (what comes back
beyond what the data teaches a model that never forgot), among rates whose control stays
below T = 0.5.

    PYTHONPATH=src python scripts/search_relearn.py --run results/demo/run          # measure
    PYTHONPATH=src python scripts/search_relearn.py --report                          # the table

The default model's search is docs/results/relearn-search.jsonl; another model's goes to its
own file (``--out``, with ``--lora-rates``/``--full-rates`` for its grid): the Qwen search is
docs/results/qwen-study/relearn-search/trials.jsonl (read in docs/results/qwen-study/README.md). Every trial is one line of the file
(appended; a finished trial is skipped on a re-run, so the search resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "relearn-search.jsonl"
GRID = {"full": [1e-5, 3e-5, 1e-4], "lora": [3e-4, 1e-3, 3e-3]}
MAX_T = 0.5


def _trials(out: Path = OUT) -> list[dict]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def _rates(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def report(out: Path = OUT) -> str:
    rows = _trials(out)
    lines = [
        "| mode | lr | R(LL)@10 | R(LL)@25 | R(LL)@50 | T(LL)@50 | R−T @50 | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    best: dict[str, tuple[float, float]] = {}
    for t in sorted(rows, key=lambda r: (r["mode"], r["lr"])):
        r, c = t["R_ll"], t["T_ll"]
        gap = None if r.get("50") is None or c is None else r["50"] - c
        if gap is not None and c < MAX_T and gap > best.get(t["mode"], (-1e9, 0))[0]:
            best[t["mode"]] = (gap, t["lr"])
        cells = [f"{r.get(s):.2f}" if r.get(s) is not None else "–" for s in ("10", "25", "50")]
        lines.append(
            f"| {t['mode']} | {t['lr']:g} | {' | '.join(cells)} | "
            f"{'–' if c is None else f'{c:.2f}'} | {'–' if gap is None else f'{gap:.2f}'} | {t['seconds']:.0f} |"
        )
    lines.append("")
    lines += [f"chosen for {m}: lr {lr:g} (R − T = {g:.2f})" for m, (g, lr) in sorted(best.items())]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default=str(ROOT / "results" / "demo" / "run"))
    parser.add_argument("--kind", default="related")
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument(
        "--data", default=os.environ.get("RWKU_DATA") or str(ROOT.parent / "shared" / "data" / "rwku")
    )
    parser.add_argument("--out", default=str(OUT), help="the trials file (JSON lines, appended)")
    parser.add_argument("--full-rates", default=",".join(map(str, GRID["full"])))
    parser.add_argument("--lora-rates", default=",".join(map(str, GRID["lora"])))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--report", action="store_true", help="print the table of the recorded trials")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        print(report(out))
        return 0
    grid = {"full": _rates(args.full_rates), "lora": _rates(args.lora_rates)}

    from rwku.attacks.relearn import RelearnOptions
    from rwku.attacks.runner import attack_run

    done = {(t["mode"], t["lr"], t["kind"]) for t in _trials(out)}
    for mode in args.modes.split(","):
        for lr in grid[mode]:
            if (mode, lr, args.kind) in done:
                continue
            opts = RelearnOptions(kinds=(args.kind,), mode=mode, lr=lr)
            t0 = time.perf_counter()
            record = attack_run(
                "relearn",
                args.run,
                relearn=opts,
                data=args.data,
                threads=args.threads,
                progress=False,
                write=False,
            )
            rec = next(iter(record["targets"].values()))
            curve = rec["curves"][args.kind]
            row = {
                "mode": mode,
                "lr": lr,
                "kind": args.kind,
                "target": rec["target"],
                "run": rec["run"],
                "R_ll": {str(p["step"]): p["recovery"]["ll"] for p in curve["unlearned"] if p["step"]},
                "R_all": {str(p["step"]): p["recovery"]["all"] for p in curve["unlearned"] if p["step"]},
                "T_ll": curve["original"][-1]["teaching"]["ll"],
                "original": rec["original"],
                "unlearned": rec["unlearned"],
                "curves": curve,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{mode} lr {lr:g}: R(LL)@50 {row['R_ll'].get('50')} T {row['T_ll']} ({row['seconds']} s)")
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
