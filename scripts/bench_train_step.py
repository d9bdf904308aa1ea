"""Seconds per full fine-tuning step of the default model on 4 x 128 tokens, float32 vs bfloat16
autocast, measured in one run (not a test). docs/attacks.md uses it for the relearning bar's
arithmetic (FLOP rate of the forward pass, and what bf16 autocast would save).

    PYTHONPATH=src taskset -c 0 python scripts/bench_train_step.py --json docs/results/bench-train-step.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch
from bench_attacks import cpu_flags  # same folder


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per precision (after one warm-up)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rwku.models.resolve import load_model

    loaded = load_model(None)
    model = loaded.model
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randint(100, 20000, (4, 128), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-8, fused=True)
    out: dict = {"machine": cpu_flags(), "threads": args.threads, "params": n_params, "tokens": x.numel()}
    for name in ("fp32", "bf16-autocast"):
        bf16 = name != "fp32"
        fwd, step = [], []
        for i in range(args.steps + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                loss = model(input_ids=x, labels=x).loss
            t1 = time.perf_counter()
            loss.backward()
            opt.step()
            opt.zero_grad()
            if i:  # the first step warms up
                fwd.append(t1 - t0)
                step.append(time.perf_counter() - t0)
        out[name] = {"forward_s": min(fwd), "step_s": min(step)}
    flops = 2 * n_params * x.numel()
    out["fp32_forward_gflops"] = flops / out["fp32"]["forward_s"] / 1e9
    out["bf16_step_speedup"] = out["fp32"]["step_s"] / out["bf16-autocast"]["step_s"]
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
