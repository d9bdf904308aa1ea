"""The learning-rate search behind ``SMALL_MODEL_PRESETS`` (not a test; docs/methods.md has its output).

The paper's learning rates were grid-searched for Llama-3-8B-Instruct; on the 135M default
model they barely move anything. This script redoes a small search on the default model, on
one target (Stephen King) and the small synthetic corpus the model writes itself (the corpus
every default run uses), one trial per (method, mode, learning rate):

1. unlearn from the original model with the recipe's own pieces (corpus, retain text,
   hyperparameter resolution and the shared trainer, exactly as ``rwku run`` calls them);
2. measure the gold-answer likelihood of every forget and neighbor probe
   (``scores.forget.likelihood.all`` / ``scores.neighbor.likelihood.all``: mean probability
   per gold token ×100, same prompts, same scoring call, same averaging as the probe suite —
   the script checks that it reproduces the suite's numbers on the original model before it
   starts) and a fluency slice (the utility guard: a collapsing model stops producing varied
   text; its MMLU is near chance already). The probe suite's greedy generations (ROUGE) are
   skipped: they take two thirds of an evaluation and a 135M model's ROUGE barely moves;
3. append one JSON line to ``--out`` (the search resumes: trials already there are skipped).

Per (method, mode) the chosen setting is the one with the largest relative forget drop among
the *admissible* trials: the run finished (no guard rail fired), the neighbor likelihood fell
by at most ``--max-neighbor-ratio`` times the forget drop, and fluency kept at least
``--min-fluency`` of its original value. ``--report`` prints the markdown table and the
chosen presets.

Run it with one thread (the default) so the machine keeps a core for others:

    PYTHONPATH=src python scripts/search_presets.py --out results/search.jsonl
    PYTHONPATH=src python scripts/search_presets.py --out results/search.jsonl --report

Another model gets its own grid and corpus settings (``--grid qwen``: the search behind the
Qwen study's learning rates, docs/models.md), e.g.

    PYTHONPATH=src python scripts/search_presets.py --model qwen2.5-coder-1.5b-instruct --grid qwen \
        --corpus authors --corpus-size 8 --max-length 128 --out docs/results/qwen-study/search.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: (method, mode, extra options) -> (learning rates, epochs, batch size), in the order run.
#: Sized to about 90 minutes of a shared 2-core machine at one thread, where one trial costs
#: 2–3 minutes (NPO/GA/RT, 16 steps of 4 passages) and DPO about 10 (pairs are two sequences
#: of ~190 tokens per record: 26 s per step). So: three learning rates half a decade apart
#: for NPO and GA in LoRA mode, where the trade-off was located first (NPO got 2e-3 once 1e-3
#: and 3e-3 bracketed it); two for NPO, GA and RT in full mode and the partial layers, and for
#: RT LoRA; one, at the LoRA rate that moved NPO and GA, for DPO and for the methods beyond
#: the paper (the retain-regularised ones with neighbour retain text, the more local choice).
#: NPO on layers 0-3 turned out the most selective (the paper's finding too), so the partial
#: mode got a third rate for NPO and one each for GA and RT; full GA and RT one each.
#: Epochs are 2 everywhere (the paper: 3), to keep a default run inside the demo's budget.
Cell = tuple[str, str, tuple[tuple[str, str], ...]]
Grid = dict[Cell, tuple[list[float], float, int]]
GRID: Grid = {
    ("npo", "lora", ()): ([3e-4, 1e-3, 2e-3, 3e-3], 2, 4),
    ("ga", "lora", ()): ([1e-4, 3e-4, 1e-3], 2, 4),
    ("dpo", "lora", ()): ([3e-4, 3e-3], 2, 4),
    ("rt", "lora", ()): ([1e-3, 3e-3], 2, 8),
    ("npo", "full", ()): ([3e-5, 1e-4], 2, 4),
    ("kl", "lora", (("retain", "neighbor"),)): ([1e-3], 2, 4),
    ("graddiff", "lora", (("retain", "neighbor"),)): ([1e-3], 2, 4),
    ("npo", "partial", ()): ([1e-4, 3e-4, 1e-3], 2, 4),
    ("simnpo", "lora", ()): ([1e-3], 2, 4),
    ("ga_star", "lora", ()): ([1e-3], 2, 4),
    ("rmu", "lora", ()): ([1e-3], 2, 4),
    ("ga", "partial", ()): ([3e-4], 2, 4),
    ("rt", "partial", ()): ([3e-4], 2, 8),
    ("ga", "full", ()): ([3e-5], 2, 4),
    ("rt", "full", ()): ([1e-4], 2, 8),
}

#: Qwen2.5-Coder-1.5B-Instruct (issue 15). The paper's LoRA rates (GA 1e-5, NPO 5e-5, RT
#: 3e-5) are for Llama-3-8B on its full corpora (3 epochs of a few hundred passages); with
#: the few updates a CPU study affords (8 passages × 128 tokens, batch 2, 2 epochs: 8 steps)
#: they barely move the model; the 135M model's searched rates (GA 1e-3, NPO 2e-3) were the
#: starting point. A trial here costs ~8 minutes on one core (training ~5, the likelihood
#: measurement ~3). GA LoRA first, four rates half a decade apart (1e-4 and 3e-4 moved the
#: forget likelihood by 1 % and 7 %, 1e-3 by 38 %); NPO from GA's working rate up (its loss
#: is bounded and moves less per step); RT at the same rate; layers 0-3 (all their weights)
#: from the default model's partial rate down (1e-4 already took 98 % of the forget and 67 %
#: of the neighbor likelihood, 3e-4 ran away).
QWEN_GRID: Grid = {
    ("ga", "lora", ()): ([1e-4, 3e-4, 1e-3, 3e-3], 2, 2),
    ("npo", "lora", ()): ([1e-3, 3e-3], 2, 2),
    ("rt", "lora", ()): ([1e-3], 2, 2),
    ("ga", "partial", ()): ([1e-4, 3e-4, 3e-5], 2, 2),
}

GRIDS: dict[str, Grid] = {"small": GRID, "qwen": QWEN_GRID}


def cell_name(cell: Cell) -> str:
    """'npo/lora' or 'kl/lora/retain=neighbor': how --cells and the report name a cell."""
    method, mode, extra = cell
    return "/".join([method, mode, *(f"{k}={v}" for k, v in extra)])


def trial_key(cell: Cell, lr: float, epochs: float) -> str:
    return f"{cell_name(cell)}/lr={lr:g}/ep={epochs:g}"


def relative_drop(before: float | None, after: float | None) -> float | None:
    """(before − after) / before: 0.3 means the score fell by 30 %."""
    if before is None or after is None or before == 0:
        return None
    return (before - after) / before


def probe_likelihoods(lm, levels: dict[str, list], name: str) -> dict[str, float | None]:
    """The probe suite's likelihood scores (per level and "all") without its generations.

    The same calls as :func:`rwku.evaluation.suites.probes.run_probes`: the prompt of every
    probe, the gold answer as continuation, ``lm.score``, then the mean over probes of
    exp(mean token log-prob), ×100.
    """
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.suites.base import mean100
    from rwku.evaluation.suites.probes import LEVEL_NAMES, build_prompt, continuation_for
    from rwku.models.backend import ScoreRequest

    probes = [p for level in sorted(levels) for p in levels[level]]
    prompts = [build_prompt(lm, p, EvalConfig()) for p in probes]
    scores = lm.score(
        [ScoreRequest(p, continuation_for(p, q.answer), group=name) for p, q in zip(prompts, probes)],
        desc=f"{name}: gold likelihood",
    )
    probs = [(LEVEL_NAMES.get(q.level, q.level), math.exp(s.mean)) for q, s in zip(probes, scores)]
    out = {lv: mean100(p for level, p in probs if level == lv) for lv in dict.fromkeys(lv for lv, _ in probs)}
    out["all"] = mean100(p for _, p in probs)
    return out


def measure(lm, td, utility_limit: int) -> dict[str, Any]:
    """Forget and neighbor likelihoods and the fluency slice of the model ``lm`` holds now."""
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.runner import evaluate

    flu = evaluate(lm, td, suites="fluency", cfg=EvalConfig(utility_limit=utility_limit))
    return {
        "forget": probe_likelihoods(lm, td.forget, "forget"),
        "neighbor": probe_likelihoods(lm, td.neighbor, "neighbor"),
        "fluency": flu["scores"]["utility"]["flu"],
    }


class Session:
    """Data, target and the original model's numbers, loaded once for the whole search."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from rwku.data import open_data

        torch.set_num_threads(args.threads)
        self.args = args
        self.data = open_data(args.data)
        self.target = self.data.target(args.target)
        self.td = self.data.load_target(self.target.name)
        lm = self.fresh_model()
        self.before = measure(lm, self.td, args.utility_limit)
        self.check_against_suite(lm)

    def fresh_model(self):
        """The original model, loaded again (a trial trains it in place)."""
        from rwku.models.hf import HFLanguageModel
        from rwku.models.resolve import load_model

        loaded = load_model(self.args.model)
        self.info = loaded.info
        return HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, batch_size=64, progress=False)

    def check_against_suite(self, lm) -> None:
        """Refuse to search with numbers that differ from what `rwku run` reports."""
        from rwku.evaluation.cache import ResultCache
        from rwku.evaluation.runner import evaluate

        full = evaluate(
            lm,
            self.td,
            suites="forget,neighbor",
            cache=ResultCache(),
            model_fingerprint=self.info["fingerprint"],
        )
        for suite in ("forget", "neighbor"):
            want, got = full["scores"][suite]["likelihood"]["all"], self.before[suite]["all"]
            if abs(want - got) > 1e-6 * max(1.0, abs(want)):
                raise SystemExit(f"{suite} likelihood {got} differs from the suite's {want}")
        print(
            f"[search] original model: forget LL {self.before['forget']['all']:.3f}, neighbor LL "
            f"{self.before['neighbor']['all']:.3f} (= the probe suites'), fluency {self.before['fluency']:.1f}",
            file=sys.stderr,
            flush=True,
        )


def run_trial(session: Session, cell: Cell, lr: float, epochs: float, batch_size: int) -> dict:
    """One unlearning run from the original model and its before/after numbers, as one row."""
    from rwku.errors import RwkuError
    from rwku.experiments.unlearn import UnlearnConfig, build_retain, load_corpus_for, resolve_hyperparameters
    from rwku.methods import get_method
    from rwku.methods.trainer import train

    args = session.args
    method, mode, extra = cell
    row: dict[str, Any] = {
        "key": trial_key(cell, lr, epochs),
        "cell": cell_name(cell),
        "method": method,
        "mode": mode,
        **dict(extra),
        "lr": lr,
        "epochs": epochs,
        "batch_size": batch_size,
        "target": session.target.name,
        "model": session.info.get("name"),
        **corpus_options(session.args),
    }
    started = time.perf_counter()
    cfg = UnlearnConfig.from_dict(
        {
            "targets": [session.target.name],
            "method": method,
            "mode": mode,
            "lr": lr,
            "epochs": epochs,
            "batch_size": batch_size,
            "data": args.data,
            "seed": args.seed,
            **corpus_options(args),
            "progress": False,
            **dict(extra),
        },
        source="search",
    )
    lm = session.fresh_model()
    fp = session.info["fingerprint"]
    method_obj = get_method(method)
    records = load_corpus_for(method_obj, cfg, session.data, lm, session.target, fp)
    retain = (
        build_retain(cfg, session.data, lm, [session.target], [session.td], fp, len(records))
        if method_obj.needs_retain
        else None
    )
    hp, _ = resolve_hyperparameters(method_obj, cfg, session.info.get("num_parameters") or 0)
    train_mode = mode if mode != "partial" else f"partial:{cfg.layers}"
    try:
        report = train(
            lm.model,
            lm.tokenizer,
            method_obj,
            records,
            hp=hp,
            mode=train_mode,
            retain_records=retain,
            seed=args.seed,
            progress=False,
        )
    except RwkuError as err:  # diverged: a result of the search, not a crash
        row.update(status="diverged", reason=str(err), seconds=round(time.perf_counter() - started, 1))
        return row
    row.update(
        status=report.status,
        reason=report.reason,
        train_seconds=round(report.seconds, 1),
        steps=report.steps,
        final_loss=report.losses[-1] if report.losses else None,
        records=len(records),
    )
    if report.status == "finished":
        lm.model = report.model
        lm.model.eval()
        after = measure(lm, session.td, args.utility_limit)
        b = session.before
        row.update(
            forget_before=b["forget"]["all"],
            forget_after=after["forget"]["all"],
            neighbor_before=b["neighbor"]["all"],
            neighbor_after=after["neighbor"]["all"],
            fluency_before=b["fluency"],
            fluency_after=after["fluency"],
            forget_levels={lv: [b["forget"][lv], after["forget"][lv]] for lv in b["forget"]},
            neighbor_levels={lv: [b["neighbor"][lv], after["neighbor"][lv]] for lv in b["neighbor"]},
        )
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def corpus_options(args: argparse.Namespace) -> dict[str, Any]:
    """The corpus/length settings given on the command line (unset ones keep rwku's defaults)."""
    keys = ("corpus", "corpus_size", "max_length", "grad_accum")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def admissible(row: dict[str, Any], max_ratio: float, min_fluency: float) -> bool:
    """Finished, neighbor drop ≤ max_ratio × forget drop, fluency kept (see module doc)."""
    if row.get("status") != "finished" or row.get("forget_after") is None:
        return False
    f = relative_drop(row["forget_before"], row["forget_after"])
    n = relative_drop(row["neighbor_before"], row["neighbor_after"])
    if f is None or n is None or f <= 0 or n > max_ratio * f:
        return False
    fb, fa = row.get("fluency_before"), row.get("fluency_after")
    return not (fb and fa is not None and fa < min_fluency * fb)


def row_cell(row: dict[str, Any]) -> str:
    return row.get("cell") or f"{row['method']}/{row['mode']}"


def choose(rows: Iterable[dict[str, Any]], max_ratio: float, min_fluency: float) -> dict[str, dict]:
    """Per cell (method, mode, options): the admissible trial with the largest relative forget drop."""
    best: dict[str, dict] = {}
    for row in rows:
        if not admissible(row, max_ratio, min_fluency):
            continue
        cell = row_cell(row)
        f = relative_drop(row["forget_before"], row["forget_after"])
        if cell not in best or f > relative_drop(best[cell]["forget_before"], best[cell]["forget_after"]):
            best[cell] = row
    return best


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{-100 * x:+.0f}%"


def report(rows: list[dict[str, Any]], max_ratio: float, min_fluency: float) -> str:
    """The markdown table of every trial (chosen ones in bold) and the presets dictionary."""
    best = choose(rows, max_ratio, min_fluency)
    chosen = {id(r) for r in best.values()}
    lines = [
        "| cell | lr | epochs | status | forget LL before → after | neighbor LL before → after "
        "| N/F drop | fluency before → after | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        mark = "**" if id(row) in chosen else ""
        if row.get("forget_after") is None:
            lines.append(
                f"| {row_cell(row)} | {row['lr']:g} | {row['epochs']:g} | "
                f"{row.get('status')}: {row.get('reason') or ''} | | | | | {row.get('train_seconds') or ''} |"
            )
            continue
        f = relative_drop(row["forget_before"], row["forget_after"])
        n = relative_drop(row["neighbor_before"], row["neighbor_after"])
        flu = (
            f"{row['fluency_before']:.0f} → {row['fluency_after']:.0f}"
            if row.get("fluency_before") is not None and row.get("fluency_after") is not None
            else "–"
        )
        ratio = f"{n / f:.2f}" if f and n is not None and f > 0 else "–"
        lines.append(
            f"| {row_cell(row)} | {mark}{row['lr']:g}{mark} | {row['epochs']:g} | "
            f"{row['status']} | {row['forget_before']:.2f} → {row['forget_after']:.2f} ({_pct(f)}) | "
            f"{row['neighbor_before']:.2f} → {row['neighbor_after']:.2f} ({_pct(n)}) | {ratio} | {flu} | "
            f"{row.get('train_seconds')} |"
        )
    lines.append("")
    lines.append("Chosen (admissible trial with the largest forget drop per cell):")
    lines.append("")
    for cell, row in sorted(best.items()):
        lines.append(
            f"    {cell}: {{'lr': {row['lr']:g}, 'epochs': {row['epochs']:g}, 'batch_size': {row['batch_size']}}}"
        )
    missing = sorted({row_cell(r) for r in rows} - set(best))
    if missing:
        lines.append("")
        lines.append("No admissible trial: " + ", ".join(missing))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "search.jsonl")
    parser.add_argument(
        "--data", default=os.environ.get("RWKU_DATA") or str(ROOT.parent / "shared" / "data" / "rwku")
    )
    parser.add_argument("--target", default="Stephen King")
    parser.add_argument("--model", default=None, help="alias, directory or hub id (default: rwku's default)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="small", help="which grid of trials")
    parser.add_argument("--corpus", default=None, help="synthetic (default), authors or a path")
    parser.add_argument("--corpus-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--grad-accum", type=int, default=None)
    parser.add_argument(
        "--cells", default=None, help="comma list of cells (npo/lora, kl/lora/retain=neighbor; default: all)"
    )
    parser.add_argument("--utility-limit", type=int, default=5, help="fluency items (the utility guard)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-neighbor-ratio", type=float, default=0.5)
    parser.add_argument("--min-fluency", type=float, default=0.6)
    parser.add_argument("--report", action="store_true", help="print the table from --out and exit")
    args = parser.parse_args()

    if args.report:
        print(report(load_rows(args.out), args.max_neighbor_ratio, args.min_fluency))
        return 0
    grid = GRIDS[args.grid]
    cells = list(grid)
    if args.cells:
        by_name = {cell_name(c): c for c in grid}
        wanted = [c.strip() for c in args.cells.split(",")]
        unknown = [c for c in wanted if c not in by_name]
        if unknown:
            parser.error(f"not in the grid: {unknown}; cells: {', '.join(by_name)}")
        cells = [by_name[c] for c in wanted]
    done = {r["key"] for r in load_rows(args.out)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    session = Session(args)
    for cell in cells:
        lrs, epochs, batch_size = grid[cell]
        for lr in lrs:
            key = trial_key(cell, lr, epochs)
            if key in done:
                continue
            print(f"[search] {key}", file=sys.stderr, flush=True)
            row = run_trial(session, cell, lr, epochs, batch_size)
            gc.collect()
            with args.out.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            f = relative_drop(row.get("forget_before"), row.get("forget_after"))
            n = relative_drop(row.get("neighbor_before"), row.get("neighbor_after"))
            print(
                f"[search] {key}: {row['status']} forget {_pct(f)} neighbor {_pct(n)} "
                f"fluency {row.get('fluency_before')} -> {row.get('fluency_after')} ({row['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
