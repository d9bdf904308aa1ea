"""Paired comparison of two training modes of one method under the relearning attack.

Reads the finished cells of a sweep folder (``rwku sweep`` with ``attacks: relearn``), pairs the
two modes' cells per target, and prints per data kind and target the recovery R(LL) at the
largest budget and the absolute gain of the gold-answer likelihood (step max − step 0), then
the mean paired difference (mode A − mode B) with its 95 % Student-t interval over targets
and how many targets have A ahead. docs/results/robustness-study/README.md quotes its output
for "LoRA-unlearned models recover faster than fully fine-tuned ones".

    python scripts/robustness_pairs.py docs/results/robustness-study/out --method ga --modes lora,full
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rwku.reporting.aggregate import mean_ci


def load(out: Path, method: str) -> dict[tuple[str, str], dict]:
    """``{(target, mode): relearn record}`` of the method's finished cells."""
    cells: dict[tuple[str, str], dict] = {}
    for path in sorted((out / "cells").glob("*.json")):
        cell = json.loads(path.read_text(encoding="utf-8"))
        if cell["cell"].get("method") != method or cell.get("status") != "finished":
            continue
        relearn = ((cell.get("record") or {}).get("attacks") or {}).get("relearn") or {}
        for target, rec in (relearn.get("targets") or {}).items():
            cells[(target, cell["cell"].get("mode"))] = rec
    return cells


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a sweep's output folder")
    ap.add_argument("--method", default="ga")
    ap.add_argument("--modes", default="lora,full", help="mode A,mode B")
    args = ap.parse_args()
    a_mode, b_mode = args.modes.split(",")
    cells = load(args.out, args.method)
    targets = sorted({t for t, m in cells if (t, a_mode) in cells and (t, b_mode) in cells})
    print(f"{args.method}: {a_mode} vs {b_mode}; targets with both: {', '.join(targets) or 'none'}")
    kinds = sorted({k for t in targets for k in cells[(t, a_mode)]["curves"]})
    for kind in kinds:
        d_r, d_gain = [], []
        for t in targets:
            a, b = cells[(t, a_mode)]["curves"].get(kind, {}), cells[(t, b_mode)]["curves"].get(kind, {})
            if not a.get("unlearned") or not b.get("unlearned"):
                print(
                    f"  {kind:<9} {t:<20} skipped (no curve: {a.get('skipped') or b.get('skipped') or 'missing'})"
                )
                continue
            last_a, last_b = a["unlearned"][-1], b["unlearned"][-1]
            r_a, r_b = last_a["recovery"]["ll"], last_b["recovery"]["ll"]
            g_a = last_a["metrics"]["ll"] - a["unlearned"][0]["metrics"]["ll"]
            g_b = last_b["metrics"]["ll"] - b["unlearned"][0]["metrics"]["ll"]
            if r_a is not None and r_b is not None:
                d_r.append(r_a - r_b)
            d_gain.append(g_a - g_b)
            r_txt = "–" if r_a is None or r_b is None else f"{r_a:.2f} vs {r_b:.2f}"
            print(
                f"  {kind:<9} {t:<20} step {last_a['step']}: R(LL) {r_txt}; LL gain {g_a:+.2f} vs {g_b:+.2f}"
            )
        for name, diffs in (("R(LL)", d_r), ("LL gain", d_gain)):
            s = mean_ci(diffs)
            ci = f" ± {s.ci:.2f}" if s.ci is not None else ""
            mean = "–" if s.mean is None else f"{s.mean:+.2f}{ci}"
            ahead = sum(x > 0 for x in diffs)
            print(
                f"{kind}: {name} {a_mode} − {b_mode} = {mean} (n = {s.n}); {a_mode} ahead in {ahead} of {len(diffs)}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
