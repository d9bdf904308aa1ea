"""Speed and agreement of the opt-in CPU precisions against float32, measured in one run.

Not a test: run it on a quiet machine. Evaluates one target (default Stephen King, default
model, every suite, result cache off) once per precision, float32 first, and prints per suite
the seconds, the speed-up over float32 in the same run, the share of greedy outputs equal to
float32's (free generations and BBH/MMLU/TriviaQA predictions) and the largest change of any
of the suite's scores (points ×100 for the RWKU columns). Writes the table as JSON if asked.

    PYTHONPATH=src python scripts/precision_agreement.py --dtypes int8,bfloat16 \
        --json docs/results/precision-agreement.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench_attacks import cpu_flags

ROOT = Path(__file__).resolve().parents[1]


def _outputs(items: dict) -> list[str]:
    """The greedy text of every record that has one, in a fixed order."""
    out = []
    for key in sorted(items):
        for rec in items[key]:
            for field in ("output", "prediction"):
                if isinstance(rec, dict) and field in rec:
                    out.append(f"{key}:{rec[field]}")
    return out


def _numbers(scores, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    if isinstance(scores, dict):
        for k, v in scores.items():
            flat |= _numbers(v, f"{prefix}{k}.")
    elif isinstance(scores, (int, float)) and not isinstance(scores, bool):
        flat[prefix.rstrip(".")] = float(scores)
    return flat


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None)
    parser.add_argument("--target", default="Stephen King")
    parser.add_argument(
        "--data", default=os.environ.get("RWKU_DATA") or str(ROOT.parent / "shared" / "data" / "rwku")
    )
    parser.add_argument("--suites", default="forget,neighbor,mia,utility")
    parser.add_argument("--dtypes", default="int8,bfloat16", help="compared with float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N items of every list (a smoke run)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from rwku.data import open_data
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.runner import PARTS, expand_suites
    from rwku.models.hf import HFLanguageModel
    from rwku.models.resolve import load_model

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    data = open_data(args.data).load_target(args.target)
    if args.limit is not None:
        data = data.limited(args.limit)
    parts = expand_suites(args.suites)
    runs: dict[str, dict[str, dict]] = {}
    for dtype in ["float32", *[d for d in args.dtypes.split(",") if d and d != "float32"]]:
        loaded = load_model(args.model, dtype=dtype)
        lm = HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, progress=False)
        runs[dtype] = {}
        for part in parts:
            start = time.perf_counter()
            result = PARTS[part](lm, data, EvalConfig())
            runs[dtype][part] = {
                "seconds": time.perf_counter() - start,
                "outputs": _outputs(result.items),
                "scores": _numbers(result.scores),
            }
            print(f"{dtype:<10}{part:<11}{runs[dtype][part]['seconds']:>8.1f}s", file=sys.stderr, flush=True)
        del lm, loaded

    base = runs["float32"]
    rows = []
    for dtype, run in runs.items():
        for part in [*parts, "total"]:
            if part == "total":
                seconds = sum(r["seconds"] for r in run.values())
                ref = sum(r["seconds"] for r in base.values())
                equal = total = 0
                for p in parts:
                    total += len(base[p]["outputs"])
                    equal += sum(a == b for a, b in zip(base[p]["outputs"], run[p]["outputs"], strict=True))
                delta, worst = None, ""
            else:
                seconds, ref = run[part]["seconds"], base[part]["seconds"]
                pairs = list(zip(base[part]["outputs"], run[part]["outputs"], strict=True))
                equal, total = sum(a == b for a, b in pairs), len(pairs)
                diffs = {
                    k: run[part]["scores"][k] - v
                    for k, v in base[part]["scores"].items()
                    if k in run[part]["scores"]
                }
                worst = max(diffs, key=lambda k: abs(diffs[k]), default="")
                delta = diffs.get(worst)
            rows.append(
                {
                    "dtype": dtype,
                    "suite": part,
                    "seconds": round(seconds, 1),
                    "speed_up": round(ref / seconds, 2),
                    "equal_outputs": equal,
                    "outputs": total,
                    "largest_score_change": None if delta is None else round(delta, 4),
                    "score": worst,
                }
            )
    machine = cpu_flags()
    print(f"machine: {machine}; torch threads {torch.get_num_threads()}")
    print(
        f"{'dtype':<10}{'suite':<11}{'seconds':>8}{'speed-up':>9}{'equal outputs':>15}  largest score change"
    )
    for r in rows:
        share = f"{r['equal_outputs']}/{r['outputs']}" if r["outputs"] else "-"
        change = (
            "" if r["largest_score_change"] is None else f"{r['largest_score_change']:+.4f} ({r['score']})"
        )
        print(
            f"{r['dtype']:<10}{r['suite']:<11}{r['seconds']:>8.1f}{r['speed_up']:>8.2f}x{share:>15}  {change}"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "target": args.target, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
