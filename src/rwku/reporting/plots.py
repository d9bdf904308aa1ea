"""The paper's figures from a sweep, drawn with matplotlib (Agg, no display needed).

* trade-off across training epochs (or RepE's α): forget, neighbor and utility side by side;
* forget score by adversarial attack type, one bar per method;
* batch setting: scores against the number of targets unlearned at once (k = 10 ... 50);
* partial-layer grid: scores per trained layer range.

Every function draws only what the run holds and returns ``None`` when there is nothing to
draw, so a report says "no data" instead of showing an empty or invented figure. Error bars
are the confidence intervals of :mod:`rwku.reporting.aggregate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rwku.reporting.aggregate import METRICS, Row, Series, Stat

DPI = 110
#: Every plotted score is a percentage: an interval reaching past 0 or 100 (small n, a wide
#: t-quantile) is cut at the axis instead of squashing the means into a flat line.
SCORE_RANGE = (0.0, 100.0)


def _limit_axis(ax, lows: list[float], highs: list[float]) -> None:
    if not lows:
        return
    lo, hi = max(min(lows), SCORE_RANGE[0]), min(max(highs), SCORE_RANGE[1])
    pad = max(2.0, 0.05 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _panels(
    series: Sequence[Series], xlabel: str, title: str, path: Path, categorical: bool = False
) -> Path | None:
    """One panel per metric with data; one line (with CI bars) per series."""
    metrics = [(t, m) for t, m in METRICS if any(s.mean is not None for ser in series for s in ser.y[m])]
    if not series or not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, (panel, metric) in zip(axes[0], metrics):
        lows: list[float] = []
        highs: list[float] = []
        for ser in series:
            pts = [(x, s) for x, s in zip(ser.x, ser.y[metric]) if s.mean is not None]
            if not pts:
                continue
            lows += [s.mean - (s.ci or 0.0) for _, s in pts]
            highs += [s.mean + (s.ci or 0.0) for _, s in pts]
            xs = [str(x) for x, _ in pts] if categorical else [x for x, _ in pts]
            ax.errorbar(
                xs,
                [s.mean for _, s in pts],
                yerr=[s.ci or 0.0 for _, s in pts],
                marker="o",
                capsize=3,
                label=ser.label,
            )
        _limit_axis(ax, lows, highs)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def curve_panels(
    panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[tuple[float, Stat]]]]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    path: Path,
    width: float = 4.4,
    marker: str = "o",
    decorate: Callable[[Any, int], None] | None = None,
    share: bool = False,
    integer_x: bool = False,
) -> Path | None:
    """One panel per ``(panel title, [(line label, [(x, Stat)])])``, one line with CI bars per
    label, panels sharing the y axis; ``decorate(ax, i)`` adds what panel ``i`` needs beyond
    its lines (a control curve, a reference line). ``share``: the values are shares in %, so
    intervals reaching past 0 or 100 (few targets, a wide t-quantile) are cut at the axis.
    None when nothing has data."""
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.8), squeeze=False, sharey=True)
    lows: list[float] = []
    highs: list[float] = []
    for i, (ax, (panel, lines)) in enumerate(zip(axes[0], panels)):
        for label, pts in lines:
            pts = [(x, s) for x, s in pts if s.mean is not None]
            lows += [s.mean - (s.ci or 0.0) for _, s in pts]
            highs += [s.mean + (s.ci or 0.0) for _, s in pts]
            ax.errorbar(
                [x for x, _ in pts],
                [s.mean for _, s in pts],
                yerr=[s.ci or 0.0 for _, s in pts],
                marker=marker,
                capsize=3 if marker == "o" else 2,
                label=label,
            )
        if decorate is not None:
            decorate(ax, i)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if integer_x:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if share:
        _limit_axis(axes[0][0], lows, highs)
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_epochs(series: Sequence[Series], path: Path) -> Path | None:
    return _panels(series, "epoch (0 = original model)", "Trade-off across training epochs", path)


def plot_alpha(series: Sequence[Series], path: Path) -> Path | None:
    return _panels(series, "α (0 = original model)", "RepE: trade-off across the steering strength α", path)


def plot_batch(series: Sequence[Series], path: Path) -> Path | None:
    return _panels(series, "targets unlearned at once (k)", "Batch-target setting", path)


def plot_layers(series: Sequence[Series], path: Path) -> Path | None:
    return _panels(series, "trained layers [a, b)", "Partial-layer training", path, categorical=True)


def plot_attack_types(types: Sequence[str], rows: Sequence[Row], path: Path) -> Path | None:
    """Grouped bars: forget ROUGE-L recall per attack type, one bar per method row."""
    rows = [r for r in rows if any(r.values[t].mean is not None for t in types)]
    if not types or not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(types) + 3), 4.2))
    width = 0.8 / len(rows)
    highs: list[float] = []
    for i, row in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(types))]
        means = [row.values[t].mean or 0.0 for t in types]
        errs = [row.values[t].ci or 0.0 for t in types]
        highs += [m + e for m, e in zip(means, errs)]
        ax.bar(xs, means, width=width, yerr=errs, capsize=2, label=row.label)
    _limit_axis(ax, [0.0], highs)
    ax.set_xticks(range(len(types)))
    ax.set_xticklabels([t.replace("_", " ") for t in types], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("forget ROUGE-L recall ×100 (lower = forgot more)")
    ax.set_title("Forget score by adversarial attack type")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
