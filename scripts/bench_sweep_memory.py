"""What a sweep process holds between cells, with and without giving the freed heap back.

Not a test. Runs one small sweep twice, each in a fresh process (default model, two targets,
full fine-tuning and LoRA cells, forget probes only): once as ``rwku sweep`` runs it (after a
cell, :func:`rwku.experiments.sweep.release_memory`: collect + ``malloc_trim``), once with the
collection only (what sweeps did before). Each cell's record says the process's resident
memory before the cell, after it, and after the release (``resident_mb``); the script prints
both series side by side and writes them as JSON.

    PYTHONPATH=src python scripts/bench_sweep_memory.py --json docs/results/bench-sweep-memory.json

Why: the MoE study's sweep processes held 9-12 GB between cells, so a second process no longer
fit beside them (docs/sweeps.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = {
    "name": "sweep-memory",
    "setting": "single",
    "targets": [1, 2],
    "methods": [
        {"name": "ga", "modes": ["full", "lora"]},
        {"name": "npo", "modes": ["full"]},
        {"name": "rt", "modes": ["full"]},
    ],
    "suites": "forget",
    "limit": 5,
    "corpus": "authors",
    "corpus_size": 8,
    "max_length": 128,
    "epochs": 1,
    "seed": 0,
    "threads": 1,
}


def _child(mode: str, out: str, data: str) -> None:
    """One sweep in this process; ``mode`` "gc" replaces the release by the collection alone."""
    import gc

    from rwku.data import open_data
    from rwku.experiments import sweep
    from rwku.experiments.grid import expand_grid

    if mode == "gc":
        sweep.release_memory = gc.collect
    rwku_data = open_data(data)
    plan = expand_grid(SWEEP, resolve_target=lambda t: rwku_data.target(t).name)
    sweep.run_sweep(plan, out, opts=sweep.RunOptions(data=data, threads=1))


def _series(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "cells").glob("*.json"), key=lambda p: p.stat().st_mtime):
        cell = json.loads(path.read_text())
        rows.append({"cell": cell["cell"]["id"], "seconds": cell["seconds"], **cell["resident_mb"]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default=os.environ.get("RWKU_DATA") or str(ROOT.parent / "shared" / "data" / "rwku")
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=["trim", "gc"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.out, args.data)
        return 0

    result: dict = {"sweep": SWEEP, "modes": {}}
    from bench_attacks import cpu_flags  # scripts/ is on the path when this file runs

    result["cpu"] = cpu_flags()
    for mode in ("gc", "trim"):
        with tempfile.TemporaryDirectory(prefix=f"rwku-sweep-memory-{mode}-") as out:
            cmd = [sys.executable, __file__, "--child", mode, "--out", out, "--data", args.data]
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            result["modes"][mode] = _series(Path(out))
    print(f"{'cell':44s} {'gc: after':>10s} {'gc: held':>9s} {'trim: after':>12s} {'trim: held':>11s}  (MiB)")
    for a, b in zip(result["modes"]["gc"], result["modes"]["trim"], strict=True):
        print(
            f"{a['cell'][:44]:44s} {a['after']:10.0f} {a['released']:9.0f} {b['after']:12.0f} {b['released']:11.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
