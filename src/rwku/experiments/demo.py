"""``make demo`` / ``rwku demo``: make the default model forget Stephen King, and show how much.

One call of the unlearning recipe (:func:`rwku.experiments.unlearn.run_unlearning`) with the
method and mode that worked best on the default 135M model in the preset search
(docs/methods.md), then a summary a reader can check at a glance:

1. load SmolLM2-135M-Instruct and evaluate it on Stephen King — forget, neighbor, MIA, and a
   small utility slice (the first ``UTILITY_LIMIT`` MMLU, TriviaQA and fluency items; BBH and
   TruthfulQA are left out for time) — from the result cache when it was evaluated before;
2. let the model write a small synthetic forget corpus from the target's name and intro
   (cached);
3. unlearn (``DEMO_METHOD`` / ``DEMO_MODE`` with its small-model preset);
4. evaluate again, print the Table 1 rows before and after with the deltas, and state in
   numbers how far the forget likelihood fell against the neighbor likelihood;
5. write the full results (``results.json``) and a bar chart (``likelihood.png``) under
   ``results/demo/``.

The likelihood columns carry the verdict because a 135M model rarely generates a right answer
in the first place, so its ROUGE scores have little room to fall; the mean probability of the
gold answers does move (see docs/protocol.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rwku.io import atomic_write_json

DEMO_TARGET = "Stephen King"
#: The best (method, mode) of the preset search on the default model (docs/methods.md).
DEMO_METHOD = "ga"
DEMO_MODE = "partial"  # decoder layers 0-3 (the default --layers 0-4, half-open)
DEMO_SUITES = "forget,neighbor,mia,mmlu,triviaqa,fluency"
UTILITY_LIMIT = 10
#: What the demo calls a clear, selective effect (the issue's bar): the forget likelihood falls
#: by at least this fraction ...
MIN_FORGET_DROP = 0.30
#: ... and the neighbor likelihood by less than this share of the forget drop.
MAX_NEIGHBOR_SHARE = 1 / 3

LEVELS = {"forget": ("fb", "qa", "aa", "all"), "neighbor": ("fb", "qa", "all")}


def relative_drop(before: float | None, after: float | None) -> float | None:
    """(before − after) / before; 0.4 = fell by 40 %."""
    if before is None or after is None or before == 0:
        return None
    return (before - after) / before


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """The demo's numbers: likelihood per level before/after, relative drops, and the verdict."""
    before, after = record["before"]["scores"], record["after"]["scores"]
    out: dict[str, Any] = {}
    for suite, levels in LEVELS.items():
        out[suite] = {
            lv: {
                "before": before[suite]["likelihood"].get(lv),
                "after": after[suite]["likelihood"].get(lv),
            }
            for lv in levels
        }
    f = relative_drop(out["forget"]["all"]["before"], out["forget"]["all"]["after"])
    n = relative_drop(out["neighbor"]["all"]["before"], out["neighbor"]["all"]["after"])
    out["forget_drop"], out["neighbor_drop"] = f, n
    out["selective"] = bool(
        f is not None and n is not None and f >= MIN_FORGET_DROP and n < MAX_NEIGHBOR_SHARE * f
    )
    return out


def headline(summary: dict[str, Any]) -> str:
    """The sentence the demo ends with."""
    fa, na = summary["forget"]["all"], summary["neighbor"]["all"]
    f, n = summary["forget_drop"], summary["neighbor_drop"]

    def change(x: float) -> str:
        return f"−{100 * x:.0f}%" if x >= 0 else f"+{-100 * x:.0f}%"

    text = (
        f"forget likelihood fell from {fa['before']:.2f} to {fa['after']:.2f} ({change(f)}), "
        f"neighbor likelihood from {na['before']:.2f} to {na['after']:.2f} ({change(n)})"
    )
    if summary["selective"]:
        share = n / f if f else 0.0
        verdict = (
            f"a clear, selective effect: the neighbor drop is {100 * max(share, 0):.0f}% of the "
            f"forget drop (bar: forget ≥ {100 * MIN_FORGET_DROP:.0f}%, neighbor < "
            f"{100 * MAX_NEIGHBOR_SHARE:.0f}% of it)"
        )
    else:
        verdict = (
            f"below the demo's bar (forget ≥ {100 * MIN_FORGET_DROP:.0f}%, neighbor < "
            f"{100 * MAX_NEIGHBOR_SHARE:.0f}% of the forget drop)"
        )
    return f"{text}: {verdict}."


def plot(summary: dict[str, Any], path: Path, title: str) -> Path:
    """Before/after bars of the forget and neighbor gold-answer likelihood, per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, before, after = [], [], []
    for suite, levels in LEVELS.items():
        for lv in levels:
            labels.append(f"{suite}\n{lv.upper() if lv != 'all' else 'All'}")
            before.append(summary[suite][lv]["before"] or 0.0)
            after.append(summary[suite][lv]["after"] or 0.0)
    x = range(len(labels))
    width = 0.38
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.bar([i - width / 2 for i in x], before, width, label="before", color="#4C72B0")
    ax.bar([i + width / 2 for i in x], after, width, label="after unlearning", color="#DD8452")
    ax.axvline(len(LEVELS["forget"]) - 0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("gold-answer likelihood (mean prob. per token ×100)")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(
    *,
    out_dir: str | Path = "results/demo",
    data: str | None = None,
    model: str | None = None,
    threads: int = 2,
    progress: bool = True,
    log: Callable[[str], None] = print,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo end to end and return ``{"summary", "record", "paths", "seconds"}``."""
    from rwku.experiments.unlearn import UnlearnConfig, parse_layers, run_unlearning
    from rwku.reporting.table import format_table

    started = time.perf_counter()
    out = Path(out_dir)
    cfg = UnlearnConfig.from_dict(
        {
            "targets": [DEMO_TARGET],
            "method": DEMO_METHOD,
            "mode": DEMO_MODE,
            "model": model,
            "data": data,
            "suites": DEMO_SUITES,
            "utility_limit": UTILITY_LIMIT,
            "threads": threads,
            "progress": progress,
            "run_dir": str(out / "run"),
        },
        source="demo",
    )
    echo(
        f"rwku demo: unlearn {DEMO_TARGET} from the default model with {DEMO_METHOD} ({DEMO_MODE}), "
        f"from the target's name and intro alone"
    )
    record = run_unlearning(cfg, log=log)
    if record["run"]["status"] != "finished":
        from rwku.errors import RwkuError

        raise RwkuError(f"the demo's training stopped: {record['run'].get('reason')}")
    summary = summarize(record)
    seconds = round(time.perf_counter() - started, 1)
    hyper = record["run"]["hyperparameters"]
    lo, hi = parse_layers(cfg.layers)
    label = (
        f"{DEMO_METHOD} ({DEMO_MODE}, layers {lo}-{hi - 1})"
        if DEMO_MODE == "partial"
        else f"{DEMO_METHOD} ({DEMO_MODE})"
    )
    echo("")
    echo(format_table([("before", record["before"]), (label, record["after"])], with_delta=True))
    echo("")
    echo(
        f"{label}: lr {hyper['lr']:g}, {hyper['epochs']:g} epochs, batch {hyper['batch_size']}, "
        f"{sum(record['run']['corpus']['sizes'].values())} model-written passages; "
        f"utility = first {UTILITY_LIMIT} MMLU / TriviaQA / fluency items"
    )
    echo(headline(summary))
    paths = {
        "results": str(out / "results.json"),
        "plot": str(out / "likelihood.png"),
        "run": record["run"]["run_dir"],
    }
    atomic_write_json(paths["results"], {**record, "summary": summary, "demo_seconds": seconds})
    title = f"{DEMO_TARGET}: SmolLM2-135M-Instruct before and after {label}"
    plot(summary, Path(paths["plot"]), title)
    echo(
        f"full results: {paths['results']}; plot: {paths['plot']}; run (weights, corpus, config): {paths['run']}"
    )
    timings = record["run"]["timings"]
    echo(
        f"took {seconds:.0f} s (evaluate before {timings.get('evaluate_before', 0):.0f} s, corpus "
        f"{timings.get('corpus', 0):.0f} s, train {timings.get('train', 0):.0f} s, evaluate after "
        f"{timings.get('evaluate_after', 0):.0f} s)"
    )
    return {"summary": summary, "record": record, "paths": paths, "seconds": seconds}
