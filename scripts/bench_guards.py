"""Wall time of a guarded evaluation (ECO or GUARD) against the plain evaluation of one target.

Not a test: run it on a quiet machine. Loads the model, evaluates the target's suites once
plainly (no result cache) and once through the guard, and prints both times, the overhead, the
time to build the guard (writing its text — cached by the corpus module after the first time —,
fitting the classifier, and for ECO the σ search) and the flag rates. The guarded evaluation
costs the classifier's pass over every prompt (up to the middle layer, last 128 tokens) and
whatever the changed answers cost (a flagged prompt's answer may be longer or shorter).

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/bench_guards.py --method guard --utility-limit 10 \\
        --threads 1 --json guards-bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", default="guard", choices=["guard", "eco"])
    parser.add_argument("--target", default="Stephen King")
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--data", default=os.environ.get("RWKU_DATA") or str(ROOT.parent / "shared" / "data" / "rwku")
    )
    parser.add_argument("--suites", default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--utility-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--option", action="append", default=[], help="method option key=value")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch
    import yaml

    from rwku.data import open_data
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.runner import evaluate
    from rwku.methods import get_method
    from rwku.models.hf import HFLanguageModel
    from rwku.models.resolve import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.option)}
    method = get_method(args.method, **options)
    data = open_data(args.data)
    target = data.target(args.target)
    target_data = data.load_target(target.name)
    loaded = load_model(args.model)
    lm = HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, progress=False)
    cfg = EvalConfig(limit=args.limit, utility_limit=args.utility_limit)

    started = time.perf_counter()
    evaluate(lm, target_data, suites=args.suites, cfg=cfg)
    plain = time.perf_counter() - started
    started = time.perf_counter()
    fingerprint = loaded.info.get("fingerprint") or "unknown"
    # use_cache=False: the overhead of a first run, not of one that reads its features back
    guarded = method.guard(
        lm, data, target, fingerprint=fingerprint, seed=0, progress=False, log=print, use_cache=False
    )
    build = time.perf_counter() - started
    started = time.perf_counter()
    evaluate(guarded, target_data, suites=args.suites, cfg=cfg)
    guarded_s = time.perf_counter() - started
    result = {
        "method": args.method,
        "target": target.name,
        "model": loaded.info.get("name"),
        "suites": args.suites or "all",
        "utility_limit": args.utility_limit,
        "threads": torch.get_num_threads(),
        "plain_s": round(plain, 1),
        "guarded_s": round(guarded_s, 1),
        "overhead": round(guarded_s / plain - 1, 3),
        "build_s": round(build, 1),
        "classify_s": round(guarded.classify_seconds, 1),
        "flag_rates": guarded.flag_rates()["parts"],
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
