"""Wall time of the attacks on one unlearned run (default: the demo's), per part.

Not a test: run it on a quiet machine. The relearning attack runs with its defaults (three
data kinds, budgets 0/10/25/50, full fine-tuning) and with its controls computed fresh (the
result cache off), then once more with the controls from the cache (what every further method
attacked on the same target pays); the in-context attack runs once. Prints a table, the CPU
model and flags, and writes JSON if asked.

    PYTHONPATH=src python scripts/bench_attacks.py --run results/demo/run --json docs/results/bench-attacks.json
    PYTHONPATH=src python scripts/bench_attacks.py --kinds split --threads 2 --no-incontext   # one kind
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?"
    )
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    keep = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma")]
    return f"{model}; {os.cpu_count()} cores; {' '.join(keep)}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default=str(ROOT / "results" / "demo" / "run"))
    parser.add_argument(
        "--data", default=os.environ.get("RWKU_DATA") or str(ROOT.parent / "shared" / "data" / "rwku")
    )
    parser.add_argument("--mode", default="full")
    parser.add_argument(
        "--kinds", default="split,related,unrelated", help="relearning data kinds (default: all three)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-incontext", action="store_true", help="time the relearning attack only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())

    from rwku.attacks.relearn import RelearnOptions
    from rwku.attacks.runner import attack_run

    rows = []
    from rwku.models.resolve import model_cache_dir

    models = model_cache_dir()  # the converted model is kept: a user attacking a run has it
    with tempfile.TemporaryDirectory() as cache:
        if models.is_dir():
            (Path(cache) / "models").symlink_to(models, target_is_directory=True)
        os.environ["RWKU_CACHE"] = cache  # fresh controls and original-model numbers
        for label in ("relearn (controls computed)", "relearn (controls cached)"):
            t0 = time.perf_counter()
            rec = attack_run(
                "relearn",
                args.run,
                relearn=RelearnOptions(mode=args.mode, kinds=kinds),
                data=args.data,
                threads=args.threads,
                progress=False,
                write=False,
            )
            wall = time.perf_counter() - t0
            t = next(iter(rec["targets"].values()))["timings"]
            rows.append(
                {"part": label, "seconds": round(wall, 1), **{k: v for k, v in t.items() if k != "total"}}
            )
        if not args.no_incontext:
            t0 = time.perf_counter()
            attack_run(
                "incontext", args.run, data=args.data, threads=args.threads, progress=False, write=False
            )
            rows.append({"part": "incontext", "seconds": round(time.perf_counter() - t0, 1)})
    print(f"machine: {cpu_flags()}; torch threads {args.threads or 'default'}; kinds {','.join(kinds)}")
    print("| part | seconds | split | related | unrelated |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['part']} | {r['seconds']} | {r.get('split', '')} | {r.get('related', '')} | {r.get('unrelated', '')} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": cpu_flags(), "threads": args.threads, "kinds": list(kinds), "rows": rows},
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
