"""Where a suite's time goes: every forward pass of the engine timed per worker thread.

Not a test: ``PYTHONPATH=src python scripts/pass_timing.py --suites bbh,fluency``. For each
suite it prints the wall time, the seconds each core spent in forward passes ("thread-s"),
split into shared-prefix passes (one row), prompt passes and decoding steps (at most
``MAX_DRAFT`` + 1 tokens per row, logits kept for all of them), the idle core-seconds
(2 × wall − busy on two workers) and how many prompt-pass tokens were padding. The numbers in
docs/speed.md's breakdown table come from this script.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--target", default="Stephen King")
    parser.add_argument(
        "--data", default=os.environ.get("RWKU_DATA") or str(ROOT.parent / "shared" / "data" / "rwku")
    )
    parser.add_argument("--suites", default="forget,neighbor,mia,mmlu,bbh,truthfulqa,triviaqa,fluency")
    args = parser.parse_args()

    import torch

    from rwku.data import open_data
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.runner import PARTS
    from rwku.models import hf
    from rwku.models.resolve import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    passes: list[tuple[str, float, tuple[int, int], int, int]] = []
    forward = hf.HFLanguageModel._model_forward

    def timed(self, cache, input_ids, prefix_lengths, keep):
        start = time.perf_counter()
        out = forward(self, cache, input_ids, prefix_lengths, keep)
        pads = int((input_ids == self.pad_id).sum())
        passes.append(
            (threading.current_thread().name, time.perf_counter() - start, tuple(input_ids.shape), keep, pads)
        )
        return out

    hf.HFLanguageModel._model_forward = timed
    data = open_data(args.data).load_target(args.target)
    loaded = load_model(args.model)
    lm = hf.HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, progress=False)
    workers = lm.workers
    print(
        f"{'suite':<11}{'wall s':>8}{'busy':>8}{'idle':>7}{'prefix':>8}{'prompt':>8}{'decode':>8}  pad/prompt tokens"
    )
    for suite in args.suites.split(","):
        passes.clear()
        start = time.perf_counter()
        PARTS[suite](lm, data, EvalConfig())
        wall = time.perf_counter() - start
        kinds: Counter[str] = Counter()
        pads = tokens = 0
        for _thread, seconds, (rows, width), keep, pad in passes:
            if width <= hf.MAX_DRAFT + 1 and keep == width:
                kind = "decode"
            elif rows == 1:
                kind = "prefix"
            else:
                kind = "prompt"
            kinds[kind] += seconds
            if kind != "decode":
                pads, tokens = pads + pad, tokens + rows * width
        busy = sum(kinds.values())
        print(
            f"{suite:<11}{wall:>8.1f}{busy:>8.1f}{workers * wall - busy:>7.1f}"
            f"{kinds['prefix']:>8.1f}{kinds['prompt']:>8.1f}{kinds['decode']:>8.1f}  {pads}/{tokens}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
