"""Peak memory and time of an expert-mode run vs a full run on the MoE testbed (docs/moe.md).

Each mode runs as its own ``rwku unlearn`` process (so the peak resident memory of one is
not the other's), GA on Stephen King, the authors' corpus cut to ``--records`` passages,
``--batch-size`` per step, one epoch: ``records / batch`` optimiser steps (2 by default).
Printed: the training seconds and peak memory the run's ``train_report.json`` records, the
trainable parameters, and the wall time of the whole command (loading included).

    rwku moe-testbed --threads 1        # once
    python scripts/bench_moe.py --data ../shared/data/rwku --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(mode: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "rwku.cli", "unlearn",
        "--model", args.model, "--target", args.target, "--method", args.method, "--mode", mode,
        "--data", args.data, "--corpus", "authors", "--corpus-size", str(args.records),
        "--batch-size", str(args.batch_size), "--epochs", "1", "--max-length", str(args.max_length),
        "--threads", str(args.threads), "--run-dir", str(out / mode), "-q",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    report = json.loads((out / mode / "train_report.json").read_text(encoding="utf-8"))
    return {
        "mode": mode,
        "steps": report["steps"],
        "train_s": round(report["seconds"], 1),
        "peak_rss_gb": round(report["peak_rss_mb"] / 1024, 2),
        "trainable": report["trainable_params"],
        "total": report["total_params"],
        "wall_s": round(wall, 1),
        "experts": (report.get("experts") or {}).get("trained"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-moe")
    ap.add_argument("--data", required=True)
    ap.add_argument("--target", default="Stephen King")
    ap.add_argument("--method", default="ga")
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default="expert,full")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rwku-bench-moe-") as tmp:
        rows = [run(mode, args, Path(tmp)) for mode in args.modes.split(",")]
    print("| mode | steps | train s | peak RSS GB | trainable / total params | command wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mode = r["mode"] + (f" ({', '.join(r['experts'])})" if r["experts"] else "")
        print(
            f"| {mode} | {r['steps']} | {r['train_s']} | {r['peak_rss_gb']} | "
            f"{r['trainable']:,} / {r['total']:,} | {r['wall_s']} |"
        )
    print(f"(children's peak RSS: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20:.2f} GB)")


if __name__ == "__main__":
    main()
