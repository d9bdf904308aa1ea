"""`rwku report`: Table 1 and the attack-type table from real cell files, the figures, the HTML.

The run directory is produced by a real tiny-model sweep (single and batch setting, ICU, a RepE
α grid, NPO LoRA with a recorded epoch, GA on two partial-layer ranges, every suite), so every
table column and every figure has data. The expected numbers are recomputed here straight
from the cell files, not copied from a previous run.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rwku.cli import app
from rwku.experiments.grid import expand_grid
from rwku.experiments.sweep import RunOptions, run_sweep
from rwku.reporting import aggregate as agg
from rwku.reporting.report import write_report
from rwku.reporting.table import COLUMNS, table_values

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = {
    "tradeoff_epochs.png",
    "tradeoff_alpha.png",
    "attack_types.png",
    "batch_targets.png",
    "partial_layers.png",
}


def _resolve(t):
    return {1: "Stephen King", 2: "Confucius"}.get(t, t)


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, data_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    grid = {
        "name": "tiny-report",
        "model": str(tiny_model_dir),
        "targets": [1, 2],
        "setting": ["single", "batch"],
        "batch_sizes": [2],
        "methods": [
            "icu",
            {"name": "repe", "grid": {"alpha": [0.5, 1.0]}},
            {"name": "npo", "lr": 1.0e-3},
            {"name": "ga", "modes": ["partial"], "lr": 1.0e-3, "grid": {"layers": ["0-1", "1-2"]}},
        ],
        "suites": "forget,neighbor,mia,utility",
        "limit": 1,
        "utility_limit": 1,
        "corpus": "authors",
        "corpus_size": 4,
        "max_length": 48,
        "epochs": 2,
        "batch_size": 2,
        "record_epochs": [1],
        "threads": 1,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RWKU_CACHE", str(tmp / "cache"))
        plan = expand_grid(grid, resolve_target=_resolve)
        assert run_sweep(plan, tmp / "out", opts=RunOptions(data=str(data_dir), log=lambda m: None)).ok
    return tmp / "out"


def cells(run_dir: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((run_dir / "cells").glob("*.json"))]


def per_target(value: dict) -> list[dict]:
    return [value] if "scores" in value else list(value.values())


def expected_mean(results: list[dict], column: str) -> float | None:
    values = [table_values(r)[column] for r in results]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def test_mean_and_t_interval_on_a_hand_case():
    s = agg.mean_ci([1.0, 2.0, 3.0])
    # sd = 1, t(0.975, 2) = 4.302653 → half-width 4.302653 / sqrt(3)
    assert s.mean == pytest.approx(2.0) and s.n == 3
    assert s.ci == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)
    wide = agg.mean_ci([1.0, 2.0, 3.0], confidence=0.99)
    assert wide.ci == pytest.approx(9.924843200918284 / math.sqrt(3), rel=1e-9)
    assert agg.mean_ci([5.0, None, float("nan")]) == agg.Stat(5.0, None, 1)
    assert agg.mean_ci([]) == agg.Stat(None, None, 0)
    assert agg.mean_ci([4.0, 4.0]).ci == 0.0


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def test_table1_has_the_paper_layout_and_the_means_of_the_cells(run_dir):
    run = agg.load_run(run_dir)
    assert not run.missing and not run.unscored and len(run.results) == 18
    rows = agg.table1(run)
    md = agg.to_markdown(rows)
    header = md.splitlines()[0]
    assert header == "| Method | n | " + " | ".join(name for name, _ in COLUMNS) + " |"
    assert [r.label for r in rows][:2] == ["Before", "ICU"]
    by_label = {r.label: r for r in rows}
    files = cells(run_dir)

    # the original model: one result per distinct target
    befores = {}
    for c in files:
        for t, res in zip(c["cell"]["targets"], per_target(c["record"]["before"])):
            befores.setdefault(t, res)
    for name, _ in COLUMNS:
        assert by_label["Before"].values[name].mean == pytest.approx(
            expected_mean(list(befores.values()), name)
        )
    assert by_label["Before"].n == 2

    def check(label: str, pick) -> None:
        results = [r for c in files if pick(c["cell"]) for r in per_target(c["record"]["after"])]
        assert results, label
        row = by_label[label]
        assert row.n == len(results)
        for name, _ in COLUMNS:
            want = expected_mean(results, name)
            got = row.values[name].mean
            assert (got is None and want is None) or got == pytest.approx(want), (label, name)

    check("NPO (lora) lr=0.001", lambda c: c["method"] == "npo" and c["setting"] == "single")
    check(
        "RepE alpha=1 [batch k=2]",
        lambda c: c["method"] == "repe" and c["setting"] == "batch" and c["options"]["alpha"] == 1.0,
    )
    check(
        "GA (partial) layers=1-2, lr=0.001",
        lambda c: c["method"] == "ga" and c["setting"] == "single" and c["params"]["layers"] == "1-2",
    )
    # every Table 1 column is filled (all suites ran)
    assert all(by_label["ICU"].values[name].mean is not None for name, _ in COLUMNS)


def test_csv_and_latex_parse_and_agree_with_the_rows(run_dir):
    rows = agg.table1(agg.load_run(run_dir))
    table = list(csv.DictReader(io.StringIO(agg.to_csv(rows))))
    assert [t["label"] for t in table] == [r.label for r in rows]
    for t, r in zip(table, rows):
        for name, _ in COLUMNS:
            assert float(t[name]) == pytest.approx(r.values[name].mean)
            assert (t[f"{name}_ci"] == "") == (r.values[name].ci is None)
    assert table[1]["method"] == "icu" and table[1]["setting"] == "single" and table[1]["mode"] == ""

    tex = agg.to_latex(rows)
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", tex).group(1)
    n_cols = spec.count("l") + spec.count("c")
    assert n_cols == 1 + len(COLUMNS)
    body = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert len(body) == 2 + len(rows)  # group header, column header, one line per row
    for line in body[1:]:
        assert line.count("&") == n_cols - 1, line
    assert tex.count("{") == tex.count("}") and tex.count("$") % 2 == 0
    assert r"\multicolumn{4}{c}{Forget Set}" in tex and r"\multicolumn{5}{c}{Utility Set}" in tex
    assert agg.latex_escape("ga_star & 5%") == r"ga\_star \& 5\%"


def test_attack_type_table_is_the_mean_forget_score_per_type(run_dir):
    run = agg.load_run(run_dir)
    types, rows = agg.attack_types(run)
    files = cells(run_dir)
    seen = sorted(
        {
            t
            for c in files
            for r in per_target(c["record"]["after"])
            for t in r["scores"]["forget"]["aa_by_type"]
        }
    )
    assert types == seen and types
    npo = next(r for r in rows if r.label == "NPO (lora) lr=0.001")
    results = [
        r
        for c in files
        if c["cell"]["method"] == "npo" and c["cell"]["setting"] == "single"
        for r in per_target(c["record"]["after"])
    ]
    for t in types:
        have = [
            r["scores"]["forget"]["aa_by_type"][t]
            for r in results
            if t in r["scores"]["forget"]["aa_by_type"]
        ]
        assert npo.values[t].mean == pytest.approx(np.mean(have)) and npo.values[t].n == len(have)


def test_curves_cover_epochs_alpha_batch_sizes_and_layer_ranges(run_dir):
    run = agg.load_run(run_dir)
    epochs = {s.label: s for s in agg.epoch_curves(run)}
    npo = epochs["NPO (lora) lr=0.001"]
    assert npo.x == [0.0, 1.0, 2.0]
    table = {r.label: r for r in agg.table1(run)}
    assert npo.y["F-LL"][0].mean == pytest.approx(table["Before"].values["F-LL"].mean)
    assert npo.y["F-LL"][-1].mean == pytest.approx(table["NPO (lora) lr=0.001"].values["F-LL"].mean)
    alpha = agg.option_curves(run, "alpha")
    assert [s.x for s in alpha] == [[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]]  # single and batch setting
    assert alpha[0].y["N-All"][2].mean == pytest.approx(table["RepE alpha=1"].values["N-All"].mean)
    batch = agg.batch_curves(run)
    assert {s.label for s in batch} >= {"ICU", "NPO (lora) lr=0.001"} and all(s.x == [2] for s in batch)
    layers = agg.layer_grid(run)
    assert [s.x for s in layers] == [["0-1", "1-2"], ["0-1", "1-2"]]


# --------------------------------------------------------------------------------------------
# Files, HTML, Chromium
# --------------------------------------------------------------------------------------------


def test_report_writes_every_file_and_a_self_contained_html(run_dir, tmp_path):
    result = write_report(run_dir, tmp_path / "rep")
    names = {p.name for p in result.files}
    assert {
        "report.md",
        "report.html",
        "table1.csv",
        "table1.tex",
        "attack_types.md",
        "attack_types.csv",
    } <= names
    assert names >= PLOTS
    for plot in PLOTS:
        assert (tmp_path / "rep" / "plots" / plot).read_bytes().startswith(PNG)
    page = (tmp_path / "rep" / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(PLOTS)
    assert all(base64.b64decode(i).startswith(PNG) for i in images)
    assert 'src="plots/' not in page and "http://" not in page and "https://" not in page
    md = (tmp_path / "rep" / "report.md").read_text()
    assert result.table_markdown in md
    # every figure of Table 1's study is there: the only thing this sweep could add is attacks
    addable = next(line for line in md.splitlines() if line.startswith("Not in this run (could be added):"))
    assert addable.count(";") == 0 and "attacks:" in addable


def test_figures_without_data_are_skipped_with_a_note(run_dir, tmp_path):
    only_icu = tmp_path / "icu"
    shutil.copytree(run_dir, only_icu)
    for f in (only_icu / "cells").glob("*.json"):
        if not f.name.startswith("icu-") or f.name.startswith("icu-batch"):
            f.unlink()
    result = write_report(only_icu)
    md = (only_icu / "report" / "report.md").read_text()
    addable = next(line for line in md.splitlines() if line.startswith("Not in this run (could be added):"))
    for hint in ("record_epochs", "setting: batch", "modes: [partial]", "grid: {alpha"):
        assert hint in addable
    page = (only_icu / "report" / "report.html").read_text()
    for empty in ("Trade-offs", "Batch setting", "Partial layers", "no cells"):  # no empty sections
        assert f"<h2>{empty}" not in page and empty not in md
    assert "<h2>Not in this run</h2>" in page and "<h2>By attack type</h2>" in page
    assert "| ICU | 2 |" in md and "[batch k=2]" not in md
    assert "cells not finished yet" in md  # the removed cells are reported missing, not silently dropped
    assert {p.name for p in result.files} & PLOTS == {"attack_types.png"}
    assert not (only_icu / "report" / "plots" / "batch_targets.png").exists()


def test_report_cli(run_dir, tmp_path):
    result = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "| Before | 2 |" in result.output and (tmp_path / "r" / "report.html").exists()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a sweep directory" in result.output
    assert "Traceback" not in result.output


def test_html_report_renders_in_headless_chromium(run_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("RWKU_REQUIRE_CHROMIUM"):
            pytest.fail("RWKU_REQUIRE_CHROMIUM is set but chromium is not installed")
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI installs it")
    write_report(run_dir, tmp_path / "rep")
    page = (tmp_path / "rep" / "report.html").resolve()
    shot = tmp_path / "shot.png"
    common = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    done = subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.exists(), done.stderr[-2000:]
    print(f"\nheadless Chromium screenshot of the report: {shot}")
    from matplotlib import image

    pixels = image.imread(str(shot))
    assert pixels.shape[:2] == (2000, 1280)
    assert float(pixels[..., :3].std()) > 0.05  # text, tables and figures, not a blank page
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 50
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180
    ).stdout
    assert "<table>" in dom and "F-All" in dom and "NPO (lora) lr=0.001" in dom
    assert dom.count("<img") == len(PLOTS)


# --------------------------------------------------------------------------------------------
# The verdict: changes from Before, paired per target; honest n; saved reports re-rendered
# --------------------------------------------------------------------------------------------


def _single_npo(run_dir: Path) -> list[dict]:
    return [c for c in cells(run_dir) if c["cell"]["method"] == "npo" and c["cell"]["setting"] == "single"]


def test_delta_table_is_after_minus_before_paired_per_target(run_dir):
    rows = {r.label: r for r in agg.delta_table(agg.load_run(run_dir))}
    npo = rows["NPO (lora) lr=0.001"]
    files = _single_npo(run_dir)
    assert npo.n == len(files) == 2
    for col in ("F-All", "N-All", "MIA-FM", "Flu", "F-LL"):
        diffs = [
            table_values(c["record"]["after"])[col] - table_values(c["record"]["before"])[col] for c in files
        ]
        want = agg.mean_ci(diffs)
        got = npo.values[f"Δ{col}"]
        assert got.mean == pytest.approx(want.mean) and got.ci == pytest.approx(want.ci) and got.n == 2
    for col in ("F-LL", "N-LL"):
        before = sum(table_values(c["record"]["before"])[col] for c in files)
        after = sum(table_values(c["record"]["after"])[col] for c in files)
        assert npo.values[f"{col} %"].mean == pytest.approx(100 * (after / before - 1))
    line = agg.reading(npo)
    assert line.startswith("NPO (lora) lr=0.001: forget ")
    assert f"{abs(npo.values['F-LL %'].mean):.0f} %" in line and "n = 2" in line
    # paired: a batch row pairs each of its k targets with that target's Before
    batch = rows["NPO (lora) lr=0.001 [batch k=2]"]
    assert batch.n == 2 and batch.values["ΔF-All"].n == 2


def test_compare_pairs_two_rows_per_target(run_dir, tmp_path):
    """`rwku compare`: A − B per target from the cell files, its t-interval, the count of targets
    where A is lower; a batch row pairs by target too; an unknown row is one line, exit 2."""
    from rwku.reporting.compare import compare

    run = agg.load_run(run_dir)
    a, b = "NPO (lora) lr=0.001", "GA (partial) layers=0-1, lr=0.001"
    assert {a, b} <= set(agg.label_for(k) for k in agg.grouped(run))
    cmp = compare(run, a, b)
    assert sorted(cmp.targets) == ["Confucius", "Stephen King"]
    rows = {r.column: r for r in cmp.rows}

    def after(method: str, layers: str | None) -> dict[str, dict]:
        out = {}
        for c in cells(run_dir):
            cell = c["cell"]
            if (
                cell["setting"] == "single"
                and cell["method"] == method
                and cell["params"].get("layers") == layers
            ):
                out[cell["targets"][0]] = (c["record"]["before"], c["record"]["after"])
        return out

    npo, ga = after("npo", None), after("ga", "0-1")
    for col in ("F-All", "N-All", "MIA-FM", "F-LL", "Flu"):
        diffs = {t: table_values(npo[t][1])[col] - table_values(ga[t][1])[col] for t in cmp.targets}
        got = rows[col]
        assert got.diffs == pytest.approx(diffs)
        want = agg.mean_ci(diffs.values())
        assert got.diff.mean == pytest.approx(want.mean) and got.diff.ci == pytest.approx(want.ci)
        assert got.below == sum(d < 0 for d in diffs.values())
    for t in cmp.targets:  # relative likelihood change, per target, in points
        before = table_values(npo[t][0])["F-LL"]
        rel = [100 * (table_values(x[t][1])["F-LL"] / before - 1) for x in (npo, ga)]
        assert rows["F-LL %"].per_target[t] == pytest.approx(tuple(rel))
    batch = compare(run, "NPO (lora) lr=0.001 [batch k=2]", a)
    assert sorted(batch.targets) == ["Confucius", "Stephen King"]

    res = runner.invoke(
        app,
        ["compare", str(run_dir), a, b, "--csv", str(tmp_path / "p.csv"), "--json", str(tmp_path / "p.json")],
    )
    assert res.exit_code == 0, res.output
    assert "| F-All |" in res.output and "2 target(s)" in res.output
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["columns"]["F-All"]["a_minus_b"] == pytest.approx(rows["F-All"].diff.mean)
    lines = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert {r["target"] for r in lines if r["column"] == "F-All"} == {"Stephen King", "Confucius", "*"}
    bad = runner.invoke(app, ["compare", str(run_dir), "NPO (full)", b])
    assert bad.exit_code == 2 and "no row 'NPO (full)'" in bad.output and a in bad.output


def test_cost_table_is_the_mean_of_the_cells_timings_and_own_peaks(run_dir, tmp_path):
    """The cost section: per row, the cells' training / evaluation seconds and peak memory; a
    record whose peak is the process's lifetime (no `peak_memory_scope: run`) gives no memory."""
    from rwku.reporting import cost

    files = _single_npo(run_dir)
    assert all(c["record"]["run"]["peak_memory_scope"] == "run" for c in files)
    table = cost.cost_table(agg.load_run(run_dir))
    row = {r.label: r for r in table.rows}["NPO (lora) lr=0.001"]
    assert row.n == 2
    train = [c["record"]["run"]["timings"]["train"] for c in files]
    assert row.values["train s"].mean == pytest.approx(sum(train) / 2)
    peaks = [c["record"]["run"]["peak_memory_mb"] / 1024 for c in files]
    assert row.values["peak GB"].mean == pytest.approx(sum(peaks) / 2) and row.values["peak GB"].n == 2
    # the same cells with lifetime peaks (written before the scope existed): memory left out
    old = tmp_path / "old"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("report"))
    for f in (old / "cells").glob("*.json"):
        cell = json.loads(f.read_text())
        cell["record"]["run"].pop("peak_memory_scope", None)
        f.write_text(json.dumps(cell))
    row = {r.label: r for r in cost.cost_table(agg.load_run(old)).rows}["NPO (lora) lr=0.001"]
    assert row.values["train s"].n == 2 and "peak GB" not in row.values  # no cell measured its own
    report = write_report(old, tmp_path / "rep")
    assert "## Cost" in (report.out / "report.md").read_text()
    lines = list(csv.DictReader(io.StringIO((report.out / "cost.csv").read_text())))
    assert {r["label"] for r in lines} >= {"NPO (lora) lr=0.001", "ICU"}


def test_attack_type_changes_are_paired_and_values_over_fewer_targets_show_their_n(run_dir):
    run = agg.load_run(run_dir)
    types, _ = agg.attack_types(run)
    npo = next(r for r in agg.attack_type_deltas(run, types) if r.label == "NPO (lora) lr=0.001")
    files = _single_npo(run_dir)
    for t in types:
        pairs = [
            (
                c["record"]["before"]["scores"]["forget"]["aa_by_type"],
                c["record"]["after"]["scores"]["forget"]["aa_by_type"],
            )
            for c in files
        ]
        diffs = [a[t] - b[t] for b, a in pairs if t in a and t in b]
        assert npo.values[t].n == len(diffs)
        if diffs:
            assert npo.values[t].mean == pytest.approx(np.mean(diffs))
    assert agg.cell_text(agg.Stat(16.7, 211.8, 2), row_n=5) == "16.7 ± 211.8 (n=2)"
    assert agg.cell_text(agg.Stat(16.7, 2.0, 5), row_n=5) == "16.7 ± 2.0"
    assert agg.cell_text(agg.Stat(-1.25, None, 5), signed=True) == "-1.2"
    assert agg.cell_text(agg.Stat(3.0, None, 5), signed=True) == "+3.0"


def test_report_files_carry_the_changes_and_a_saved_report_re_renders_from_its_csv(run_dir, tmp_path):
    rep = tmp_path / "rep"
    write_report(run_dir, rep)
    md = (rep / "report.md").read_text()
    assert md.index("## Change from Before") < md.index("## Table 1")
    assert "- NPO (lora) lr=0.001: forget " in md
    table1_header = next(line for line in md.splitlines() if line.startswith("| Method | n | F-LL | N-LL |"))
    assert table1_header  # the likelihood columns first
    deltas = list(csv.DictReader(io.StringIO((rep / "deltas.csv").read_text())))
    paired = {r.label: r for r in agg.delta_table(agg.load_run(run_dir))}
    for d in deltas:
        assert float(d["F-LL %"]) == pytest.approx(paired[d["label"]].values["F-LL %"].mean)
        assert int(d["ΔF-All_n"]) == paired[d["label"]].values["ΔF-All"].n
    columns, rows = agg.from_csv((rep / "table1.csv").read_text())
    assert columns == agg.COLUMN_NAMES and [r.key for r in rows] == [
        r.key for r in agg.table1(agg.load_run(run_dir))
    ]

    saved = tmp_path / "saved"
    shutil.copytree(rep, saved)
    (saved / "plots" / "tradeoff_epochs.png").unlink()
    table1 = (saved / "table1.csv").read_bytes()
    write_report(saved)  # no cells/: re-rendered in place from the CSV files
    assert (saved / "table1.csv").read_bytes() == table1  # the source is left as it was
    md = (saved / "report.md").read_text()
    assert "Re-rendered from the saved table1.csv" in md and "difference of the means" in md
    assert not (saved / "plots" / "tradeoff_epochs.png").exists()  # cannot be drawn from Table 1
    assert "trade-off across epochs" in md.split("Not in this run (could be added):")[1]
    again = {r["label"]: r for r in csv.DictReader(io.StringIO((saved / "deltas.csv").read_text()))}
    # every row holds the same targets as Before, so the difference of the means is the paired mean
    for label in ("NPO (lora) lr=0.001", "ICU", "GA (partial) layers=0-1, lr=0.001"):
        for col in ("F-LL %", "ΔF-All", "ΔN-LL"):
            assert float(again[label][col]) == pytest.approx(paired[label].values[col].mean)
        assert again[label]["ΔF-All_ci"] == ""


def test_lm_eval_columns_reach_table1_the_changes_csv_latex_and_a_saved_report(run_dir, tmp_path):
    """A run with lm-eval tasks in its utility columns: each task is a column of Table 1 (×100),
    its change is paired per target, and it survives the CSV round trip."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    given: dict[tuple[str, str, str], float] = {}  # (cell file, target, before/after) → acc
    for i, path in enumerate(sorted((run / "cells").glob("*.json"))):
        cell = json.loads(path.read_text())
        for side in ("before", "after"):
            if not cell["record"].get(side):
                continue
            for j, result in enumerate(per_target(cell["record"][side])):
                # the original model's score depends only on the target: every cell shares it
                acc = 0.5 + 0.1 * j if side == "before" else 0.2 + 0.01 * i + 0.1 * j
                utility = result["scores"].setdefault("utility", {})
                utility["lm_eval"] = {"arc_easy": {"acc": acc, "acc_stderr": 0.01, "n": 4}}
                given[(path.name, str(j), side)] = acc
        path.write_text(json.dumps(cell))
    assert given
    data = agg.load_run(run)
    rows = agg.table1(data)
    assert agg.report_columns(rows)[-1] == "arc_easy:acc" == agg.table_columns(rows)[-1]
    for row in rows:
        results = (
            agg.before_results(data)
            if row.key is None
            else [u.after for u in agg.grouped(data)[row.key] if u.after is not None]
        )
        expected = (
            100 * sum(r["scores"]["utility"]["lm_eval"]["arc_easy"]["acc"] for r in results) / len(results)
        )
        assert row.values["arc_easy:acc"].mean == pytest.approx(expected)
    deltas = {r.label: r for r in agg.delta_table(data)}
    for key, units in agg.grouped(data).items():
        diffs = [
            100
            * (
                u.after["scores"]["utility"]["lm_eval"]["arc_easy"]["acc"]
                - u.before["scores"]["utility"]["lm_eval"]["arc_easy"]["acc"]
            )
            for u in units
            if u.before is not None and u.after is not None
        ]
        stat = deltas[agg.label_for(key)].values["Δarc_easy:acc"]
        assert stat.n == len(diffs) and stat.mean == pytest.approx(sum(diffs) / len(diffs))

    rep = tmp_path / "rep"
    write_report(run, rep)
    md = (rep / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method | n | F-LL |"))
    assert header.rstrip(" |").endswith("arc_easy:acc")
    assert "Δarc_easy:acc" in (rep / "deltas.csv").read_text().splitlines()[0]
    assert (
        "lm-eval" in (rep / "table1.tex").read_text() and "arc\\_easy:acc" in (rep / "table1.tex").read_text()
    )
    columns, saved_rows = agg.from_csv((rep / "table1.csv").read_text())
    assert columns == [*agg.COLUMN_NAMES, "arc_easy:acc"]
    for a, b in zip(saved_rows, rows, strict=True):
        assert a.values["arc_easy:acc"].mean == pytest.approx(b.values["arc_easy:acc"].mean)
    saved = tmp_path / "saved"
    shutil.copytree(rep, saved)
    write_report(saved)  # re-rendered from the CSV: the lm-eval column and its change remain
    again = {r["label"]: r for r in csv.DictReader(io.StringIO((saved / "deltas.csv").read_text()))}
    # without the cells, the change is the difference of the means (not every row holds the
    # targets of Before, so it is not always the paired mean)
    before = rows[0].values["arc_easy:acc"].mean
    for row in rows[1:]:
        assert float(again[row.label]["Δarc_easy:acc"]) == pytest.approx(
            row.values["arc_easy:acc"].mean - before
        )


STUDY = Path(__file__).resolve().parents[1] / "docs" / "results" / "cpu-study"
MEASURE = """<script>
window.addEventListener('load', () => {
  const right = (el) => Math.ceil(el.getBoundingClientRect().right);
  const tables = [...document.querySelectorAll('table')].map((t) => right(t));
  const heads = [...document.querySelectorAll('table')].map((t) => [...t.querySelectorAll('th')].map(right));
  const lines = [...document.querySelectorAll('ul.reading li')].map(right);
  const pre = document.createElement('pre');
  pre.id = 'measured';
  pre.textContent = JSON.stringify({width: window.innerWidth, scroll: document.documentElement.scrollWidth,
    tables, heads, lines, h2: [...document.querySelectorAll('h2')].map((h) => h.textContent)});
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("RWKU_REQUIRE_CHROMIUM"):
            pytest.fail("RWKU_REQUIRE_CHROMIUM is set but chromium is not installed")
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI installs it")
    return chromium


def _measure(page: Path, tmp_path: Path) -> dict:
    """Lay the page out in a 1,300 px wide headless Chromium and measure it."""
    probe = tmp_path / "measure.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1300,900",
            "--dump-dom",
            probe.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.parametrize("setting", ["single", "batch"])
def test_study_report_shows_the_verdict_without_horizontal_scrolling(setting, tmp_path):
    """docs/results/cpu-study, regenerated: the reading and the change table come first, and
    every column of every table lies inside the first screen's width at 1,300 px."""
    saved = tmp_path / setting
    shutil.copytree(STUDY / setting, saved)
    write_report(saved)
    m = _measure(saved / "report.html", tmp_path)
    assert m["width"] == 1300 and m["scroll"] <= m["width"]
    assert m["h2"][0].startswith("Change from Before") and m["h2"][1] == "Table 1"
    assert len(m["lines"]) == len((saved / "deltas.csv").read_text().splitlines()) - 1 >= 4
    for right in [*m["tables"], *(r for heads in m["heads"] for r in heads), *m["lines"]]:
        assert right <= m["width"]
    assert not any(h in ("Trade-offs", "Partial layers") for h in m["h2"])
    page = (saved / "report.html").read_text()
    for head in ("F-LL %", "N-LL %", "ΔF-LL", "ΔFlu"):
        assert f">{head}</th>" in page


def test_tiny_report_fits_the_window_too(run_dir, tmp_path):
    write_report(run_dir, tmp_path / "rep")
    m = _measure(tmp_path / "rep" / "report.html", tmp_path)
    assert m["scroll"] <= m["width"] == 1300
    assert m["tables"][0] <= m["width"] and m["tables"][1] <= m["width"]  # changes and Table 1
