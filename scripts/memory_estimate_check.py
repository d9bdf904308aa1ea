"""Measure one LoRA/full training step's peak memory growth and print rwku's estimate beside it.

    python scripts/memory_estimate_check.py [MODE] [ROWS] [TOKENS] [--model M] [--checkpointing]

One fresh process per measurement (ru_maxrss is a process-wide peak). Random token ids,
labels = inputs, the GA loss: the same forward and backward a training step runs. The
constants in rwku/methods/memory.py were set from these numbers (SmolLM2-135M, one thread).
"""

from __future__ import annotations

import argparse
import gc
import resource

import psutil
import torch

from rwku.methods.losses import token_nll_mean
from rwku.methods.memory import GiB, estimate_step_memory
from rwku.methods.modes import prepare_model
from rwku.models.resolve import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="lora")
    ap.add_argument("rows", nargs="?", type=int, default=4)
    ap.add_argument("tokens", nargs="?", type=int, default=256)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpointing", action="store_true", help="with gradient checkpointing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    prepared = prepare_model(loaded.model, args.mode)
    model = prepared.model
    if args.checkpointing:
        from rwku.methods.trainer import _enable_checkpointing

        _enable_checkpointing(model)
    model.train()
    ids = torch.randint(0, 1000, (args.rows, args.tokens))
    gc.collect()
    base = psutil.Process().memory_info().rss
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    (-token_nll_mean(logits, ids)).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    est = estimate_step_memory(
        loaded.model.config,
        prepared.trainable_params,
        args.rows,
        args.tokens,
        args.rows * args.tokens,
        checkpointing=args.checkpointing,
    )
    est_no_optimizer = est.total - est.optimizer  # the optimizer has not stepped yet
    print(
        f"{loaded.info['name']} {args.mode}{' checkpointed' if args.checkpointing else ''} "
        f"{args.rows}x{args.tokens}: measured growth "
        f"{(peak - base) / GiB:.2f} GiB, estimated {est_no_optimizer / GiB:.2f} GiB "
        f"(+ {est.optimizer / GiB:.2f} GiB optimizer state at the first update)"
    )


if __name__ == "__main__":
    main()
