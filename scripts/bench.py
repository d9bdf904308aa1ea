"""Per-suite wall time and throughput of the full single-target evaluation, against the reference.

Not a test: run it on a quiet machine (``make bench``). Every suite is computed fresh (the
result cache is off), on the default model and Stephen King unless told otherwise. The
reference's times come from ../shared/conformance (the authors' evaluators, same model, same
machine kind); the script prints both side by side and writes the table as JSON if asked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
META = ROOT.parent / "shared" / "conformance" / "stephen-king-smollm2" / "meta.json"
# The reference's MIA time is two runs (forget 25.1 s + retain 19.7 s).
REFERENCE_SECONDS = {
    "forget": 16.6,
    "neighbor": 21.1,
    "mmlu": 260.5,
    "bbh": 712.5,
    "truthfulqa": 161.7,
    "triviaqa": 55.7,
    "mia": 44.8,
    "fluency": 179.2,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--target", default="Stephen King")
    parser.add_argument(
        "--data", default=os.environ.get("RWKU_DATA") or str(ROOT.parent / "shared" / "data" / "rwku")
    )
    parser.add_argument("--suites", default="forget,neighbor,mia,utility")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--dtype", default="float32", help="float32 (default), or an opt-in precision: int8, bfloat16"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    import torch

    from rwku.data import open_data
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.runner import PARTS, expand_suites
    from rwku.models.hf import HFLanguageModel
    from rwku.models.resolve import load_model

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    data = open_data(args.data).load_target(args.target)
    t0 = time.perf_counter()
    loaded = load_model(args.model, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    lm = HFLanguageModel(
        loaded.model, loaded.tokenizer, loaded.info, batch_size=args.batch_size, progress=False
    )
    cfg = EvalConfig()
    rows = []
    print(
        f"model {loaded.info.get('name')} loaded in {load_s:.1f}s; torch threads {torch.get_num_threads()}",
        file=sys.stderr,
    )
    print(f"{'suite':<11}{'seconds':>9}{'tokens':>9}{'tok/s':>8}{'reference s':>13}{'speed-up':>10}")
    for part in expand_suites(args.suites):
        before = lm.tokens_processed
        start = time.perf_counter()
        PARTS[part](lm, data, cfg)
        seconds = time.perf_counter() - start
        tokens = lm.tokens_processed - before
        ref = REFERENCE_SECONDS.get(part)
        rows.append(
            {
                "suite": part,
                "seconds": round(seconds, 1),
                "tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 1),
                "reference_seconds": ref,
            }
        )
        speed = f"{ref / seconds:.1f}x" if ref else "-"
        print(
            f"{part:<11}{seconds:>9.1f}{tokens:>9}{tokens / seconds:>8.0f}{ref or '-':>13}{speed:>10}",
            flush=True,
        )
    total = sum(r["seconds"] for r in rows)
    ref_total = sum(r["reference_seconds"] or 0 for r in rows)
    print(
        f"{'total':<11}{total:>9.1f}{sum(r['tokens'] for r in rows):>9}{'':>8}{ref_total:>13.1f}"
        f"{ref_total / total:>9.1f}x"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "total_seconds": total,
                    "reference_total": ref_total,
                    "model_load_seconds": load_s,
                    "info": loaded.info,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
