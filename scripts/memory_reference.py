"""Peak memory of NPO and DPO: reference log-probs precomputed (rwku) vs a second model copy.

Not a test; docs/methods.md quotes its output. NPO and DPO compare the trained model with the
original one. The usual implementation keeps a frozen second copy of the model in memory and
runs it at every step; rwku's trainer instead runs the original model once over every batch
before the first update and keeps a few numbers per row (``precompute``), so the copy is never
allocated. This script measures both on the default model:

* ``precomputed`` — the shipped method, through :func:`rwku.methods.trainer.train`;
* ``second-model`` — the same method and trainer, but the reference comes from a second copy
  of the original model, loaded separately and kept for the whole run (what a trainer with a
  ``ref_model`` does), computed at every step under ``torch.no_grad``.

Each (method, mode, reference) runs in a fresh subprocess, so its peak resident set size
(``ru_maxrss``) is its own: model load, corpus, reference, training. Same corpus (the cached
synthetic one, cut to ``--records``), same steps, one thread.

    PYTHONPATH=src python scripts/memory_reference.py            # the whole table
    PYTHONPATH=src python scripts/memory_reference.py --one npo lora second-model
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = ("precomputed", "second-model")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def second_model_variant(method, ref_model):
    """The same loss with the reference computed at every step by ``ref_model``."""
    import torch

    from rwku.methods.base import forward_logits
    from rwku.methods.dpo import pair_logps
    from rwku.methods.losses import sequence_nll

    class WithReferenceModel(type(method)):
        def precompute(self, model, batch, retain_batch=None):
            return {}  # nothing stored: the reference model is asked at every step

        def loss(self, model, batch, ctx):
            with torch.no_grad():
                if self.corpus == "pairs":
                    c, r = pair_logps(ref_model, batch)
                    ref = {"ref_chosen_logp": c, "ref_rejected_logp": r}
                else:
                    ref = {"ref_nll": sequence_nll(forward_logits(ref_model, batch), batch["labels"])}
            return super().loss(model, batch, {**ctx, **ref})

    return WithReferenceModel(**method.options)


def one(method_name: str, mode: str, reference: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train once in this process and return its numbers (called in a subprocess)."""
    import torch

    torch.set_num_threads(args.threads)
    from rwku.data import open_data
    from rwku.experiments.unlearn import UnlearnConfig, load_corpus_for
    from rwku.methods import Hyperparameters, get_method
    from rwku.methods.trainer import GuardRails, train
    from rwku.models.hf import HFLanguageModel
    from rwku.models.resolve import load_model

    data = open_data(args.data)
    target = data.target(args.target)
    loaded = load_model(None)
    rss_model = peak_rss_mb()
    lm = HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, progress=False)
    method = get_method(method_name)
    cfg = UnlearnConfig(targets=[target.name], method=method_name, mode=mode, data=args.data)
    records = load_corpus_for(method, cfg, data, lm, target, loaded.info["fingerprint"])[: args.records]
    if reference == "second-model":
        ref = load_model(None).model.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        method = second_model_variant(method, ref)
    hp = Hyperparameters(
        lr=1e-4, batch_size=args.batch_size, epochs=args.epochs, warmup_steps=0, max_length=512
    )
    started = time.perf_counter()
    report = train(
        loaded.model,
        loaded.tokenizer,
        method,
        records,
        hp=hp,
        mode=mode,
        progress=False,
        guards=GuardRails(collapse_every=None, explode_factor=None),
    )
    return {
        "method": method_name,
        "mode": mode,
        "reference": reference,
        "status": report.status,
        "steps": report.steps,
        "records": len(records),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_model_load_mb": round(rss_model, 1),
        "first_loss": report.losses[0] if report.losses else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default=os.environ.get("RWKU_DATA") or str(ROOT.parent / "shared" / "data" / "rwku")
    )
    parser.add_argument("--target", default="Stephen King")
    parser.add_argument("--methods", default="npo,dpo")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--records", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "MODE", "REFERENCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(json.dumps(one(*args.one, args)))
        return 0
    rows = []
    for method in args.methods.split(","):
        for mode in args.modes.split(","):
            for reference in REFERENCES:
                cmd = [sys.executable, __file__, "--one", method, mode, reference]
                cmd += ["--data", args.data, "--target", args.target, "--records", str(args.records)]
                cmd += ["--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
                cmd += ["--threads", str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    return done.returncode
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print("| method | mode | reference | peak RSS MB | RSS after loading the model MB | steps | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['method']} | {r['mode']} | {r['reference']} | {r['peak_rss_mb']:,.0f} | "
            f"{r['rss_after_model_load_mb']:,.0f} | {r['steps']} | {r['seconds']} |"
        )
    by = {(r["method"], r["mode"], r["reference"]): r for r in rows}
    for method in args.methods.split(","):
        for mode in args.modes.split(","):
            pre, sec = by[(method, mode, "precomputed")], by[(method, mode, "second-model")]
            print(
                f"{method} {mode}: a second model costs {sec['peak_rss_mb'] - pre['peak_rss_mb']:+,.0f} MB "
                f"of peak RSS ({pre['peak_rss_mb']:,.0f} → {sec['peak_rss_mb']:,.0f})"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
