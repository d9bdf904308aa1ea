"""The evaluation engine on the MoE testbed: eager experts vs prepacked experts, and the dense model.

Not a test. One process, one thread, the same probes (Stephen King's forget and neighbor
suites, the first ``--limit`` probes of every level) on three engines, in alternating order
``--repeats`` times so a noisy machine hits all of them alike:

* ``dense``: the default model (SmolLM2-135M-Instruct), linear layers prepacked;
* ``moe eager``: the testbed (its dense model upcycled into 4 experts, top-2), linear layers
  prepacked but the experts on transformers' eager loop (rwku before 2026-11-29);
* ``moe packed``: the testbed with the experts prepacked too (rwku.models.packed).

It checks that both MoE engines give the same generations and scores (numbers to 1e-4 relative), and prints seconds per suite and the
ratios. ``--json`` writes the table.

    rwku moe-testbed --threads 1        # once
    python scripts/bench_moe_engine.py --data ../shared/data/rwku --json docs/results/bench-moe-engine.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from unittest import mock

from bench_attacks import cpu_flags  # same folder


def differences(a: object, b: object, path: str, rel: float = 1e-4) -> list[str]:
    """Where two suite results differ: any string or count, or a number by more than ``rel``
    relative (float summation order moves log-probabilities by ~1e-6)."""
    if hasattr(a, "__dataclass_fields__"):
        a, b = vars(a), vars(b)
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} vs {sorted(b)}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}", rel)]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} entries"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}[{i}]", rel)
        ]
    if isinstance(a, float) and isinstance(b, int | float) and not isinstance(b, bool):
        close = abs(a - b) <= rel * max(1.0, abs(a), abs(b))
        return [] if close else [f"{path}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--target", default="Stephen King")
    ap.add_argument("--suites", default="forget,neighbor")
    ap.add_argument("--limit", type=int, default=None, help="first N probes of every level")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from rwku.data import open_data
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.runner import PARTS, expand_suites
    from rwku.models import packed
    from rwku.models.hf import HFLanguageModel
    from rwku.models.resolve import load_model

    torch.set_num_threads(args.threads)
    data = open_data(args.data).load_target(args.target)
    cfg = EvalConfig(limit=args.limit)
    models = {
        "dense": load_model("smollm2-135m-instruct"),
        "moe": load_model("smollm2-135m-moe"),
    }
    engines = {
        name: HFLanguageModel(m.model, m.tokenizer, m.info, progress=False) for name, m in models.items()
    }
    runs = {
        "dense": ("dense", contextlib.nullcontext),
        "moe eager": ("moe", lambda: mock.patch.object(packed, "_standard_experts_code", lambda: None)),
        "moe packed": ("moe", contextlib.nullcontext),
    }
    parts = expand_suites(args.suites)
    seconds: dict[str, dict[str, list[float]]] = {r: {p: [] for p in parts} for r in runs}
    scores: dict[str, dict[str, object]] = {}
    for rep in range(args.repeats):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for run in order:
            engine_name, context = runs[run]
            lm = engines[engine_name]
            for part in parts:
                with context():
                    t0 = time.perf_counter()
                    result = PARTS[part](lm, data, cfg)
                    seconds[run][part].append(time.perf_counter() - t0)
                scores.setdefault(run, {})[part] = result
                print(f"repeat {rep} {run:<11} {part:<9} {seconds[run][part][-1]:8.1f} s", flush=True)
    diffs = [d for p in parts for d in differences(scores["moe eager"][p], scores["moe packed"][p], p)]
    same = not diffs
    for d in diffs[:20]:
        print("differs:", d)
    rows = []
    for run in runs:
        best = {p: min(seconds[run][p]) for p in parts}
        rows.append(
            {
                "engine": run,
                **{p: round(s, 1) for p, s in best.items()},
                "total": round(sum(best.values()), 1),
            }
        )
    total = {r["engine"]: r["total"] for r in rows}
    print(f"\n{'engine':<12}" + "".join(f"{p:>10}" for p in parts) + f"{'total':>10}")
    for r in rows:
        print(f"{r['engine']:<12}" + "".join(f"{r[p]:>10}" for p in parts) + f"{r['total']:>10}")
    ratios = {
        "moe eager / moe packed": round(total["moe eager"] / total["moe packed"], 2),
        "moe eager / dense": round(total["moe eager"] / total["dense"], 2),
        "moe packed / dense": round(total["moe packed"] / total["dense"], 2),
    }
    print(f"best of {args.repeats}; ratios: {ratios}; MoE results the same: {same}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": cpu_flags(),
                    "torch": torch.__version__,
                    "threads": args.threads,
                    "target": args.target,
                    "limit": args.limit,
                    "repeats": args.repeats,
                    "rows": rows,
                    "ratios": ratios,
                    "moe_results_same": same,
                    "differences": diffs[:50],
                },
                indent=1,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
