"""Seconds per AdamW step over ~132M float32 parameters on the CPU: loop, foreach and fused.

The measurement behind the trainer's choice of the fused kernel (rwku.methods.trainer). Not a
test; run on a quiet machine and name the CPU flags beside the numbers:

    python scripts/bench_optimizer.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = [torch.nn.Parameter(torch.randn(576 * 1536)) for _ in range(150)]  # the default model's size
    for p in params:
        p.grad = torch.randn_like(p)
    for name, kwargs in (("loop", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-5, **kwargs)
        opt.step()  # allocate the moments outside the timing
        t0 = time.perf_counter()
        for _ in range(args.steps):
            opt.step()
        print(f"{name:8s} {(time.perf_counter() - t0) / args.steps:.2f} s/step")


if __name__ == "__main__":
    main()
