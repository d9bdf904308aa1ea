"""Attacks inside a sweep (the `attacks:` key), and the robustness section of `rwku report`."""

from __future__ import annotations

import csv
import io
import json

import pytest

from rwku.errors import ConfigError
from rwku.experiments.grid import expand_grid
from rwku.experiments.sweep import RunOptions, read_cell, run_sweep
from rwku.reporting.report import write_report


def _grid(tiny_model_dir, **extra) -> dict:
    return {
        "name": "attacks",
        "model": str(tiny_model_dir),
        "targets": ["Stephen King"],
        "methods": [{"name": "ga", "modes": ["full"], "lr": 1.0e-3}],
        "suites": "forget",
        "limit": 2,
        "corpus": "authors",
        "corpus_size": 4,
        "max_length": 32,
        "epochs": 1,
        "batch_size": 2,
        "threads": 1,
        **extra,
    }


ATTACKS = {"relearn": {"kinds": ["split"], "budgets": [0, 2], "max_length": 32}, "incontext": {}}


def test_attacks_key_is_validated_and_keeps_ids_of_grids_without_it(tiny_model_dir):
    plain = expand_grid(_grid(tiny_model_dir)).cells[0]
    attacked = expand_grid(_grid(tiny_model_dir, attacks=ATTACKS)).cells[0]
    assert "attacks" not in plain.spec() and plain.id != attacked.id
    assert attacked.spec()["attacks"]["relearn"]["budgets"] == [0, 2]
    assert type(attacked).from_dict(attacked.to_dict()).id == attacked.id  # manifests round-trip
    assert expand_grid(_grid(tiny_model_dir, attacks=["incontext"])).cells[0].attacks == {"incontext": {}}
    for bad, message in (
        ({"bogus": {}}, "unknown attack"),
        ({"relearn": {"budgets": [5, 2]}}, "increasing"),
        ({"incontext": {"x": 1}}, "takes no options"),
        ("relearn", "must map attack names"),
    ):
        with pytest.raises(ConfigError, match=message):
            expand_grid(_grid(tiny_model_dir, attacks=bad))


def test_sweep_attacks_every_cell_and_report_shows_the_robustness_tables(
    tiny_model_dir, data_dir, tmp_path, isolated_cache
):
    plan = expand_grid(_grid(tiny_model_dir, attacks=ATTACKS))
    out = tmp_path / "out"
    assert run_sweep(plan, out, opts=RunOptions(data=str(data_dir), log=lambda m: None)).ok
    cell = plan.cells[0]
    result = read_cell(out / "cells" / f"{cell.id}.json")
    attacks = result["record"]["attacks"]
    rec = attacks["relearn"]["targets"]["Stephen King"]
    assert [p["step"] for p in rec["curves"]["split"]["unlearned"]] == [0, 2]
    assert attacks["incontext"]["targets"]["Stephen King"]["coverage"]["answer"] > 0
    # the scratch run folder (weights read back by the attacks) is gone; save_runs was off
    assert not (out / "runs").exists() and not [p for p in out.iterdir() if p.name.startswith("rwku-")]

    report = write_report(out)
    rows = list(csv.DictReader(io.StringIO((report.out / "robustness.csv").read_text())))
    assert len(rows) == 1 and rows[0]["label"].endswith("· split")
    r = rec["curves"]["split"]["unlearned"][1]["recovery"]["ll"]
    value = rows[0]["R% LL@2"]
    assert (value == "" and r is None) or float(value) == pytest.approx(100 * r)
    t = rec["curves"]["split"]["original"][1]["teaching"]["ll"]
    beyond = rows[0]["R−T% LL@2"]
    assert (beyond == "" and None in (r, t)) or float(beyond) == pytest.approx(100 * (r - t))
    assert (report.out / "incontext.csv").is_file() and (report.out / "robustness.tex").is_file()
    assert not (report.out / "routing.csv").exists()  # a dense model's runs have no routing section
    assert "Routing shift" not in (report.out / "report.md").read_text()
    assert (report.out / "plots" / "relearn_recovery.png").read_bytes()[:4] == b"\x89PNG"
    md = (report.out / "report.md").read_text()
    assert "## Robustness: is it really gone?" in md and "ans ΔLL" in md
    html = (report.out / "report.html").read_text()
    assert "Robustness: relearning attack" in html and "Robustness: in-context re-introduction" in html
    assert "could be added" not in md or "attacks: {" not in md.split("could be added")[1]

    # attacked in context only (as guard runs are): the note offers relearning, not what ran
    path = out / "cells" / f"{cell.id}.json"
    stripped = json.loads(path.read_text())
    del stripped["record"]["attacks"]["relearn"]
    path.write_text(json.dumps(stripped))
    md = (write_report(out).out / "report.md").read_text()
    addable = md.split("Not in this run (could be added):")[1].splitlines()[0]
    assert "attacks: {relearn: {}}" in addable and "incontext" not in addable
    assert "ans ΔLL" in md and "R% LL@2" not in md


def test_report_without_attacks_has_no_robustness_section(tiny_model_dir, data_dir, tmp_path, isolated_cache):
    plan = expand_grid(_grid(tiny_model_dir, methods=["icu"]))
    out = tmp_path / "out"
    assert run_sweep(plan, out, opts=RunOptions(data=str(data_dir), log=lambda m: None)).ok
    report = write_report(out)
    assert not (report.out / "robustness.csv").exists()
    assert "Robustness" not in (report.out / "report.md").read_text()
    assert json.loads((out / "manifest.json").read_text())["cells"][0]["id"] == plan.cells[0].id


def test_recovery_beyond_the_control_is_paired_per_target():
    from pathlib import Path

    from rwku.reporting.aggregate import RunData
    from rwku.reporting.robustness import relearn_table

    def target(r10: float, r50: float, t50: float, orig: float = 10.0, unl: float = 2.0) -> dict:
        """A record whose raw likelihoods agree with its R and T (R = gain / (orig − unl))."""
        removed = orig - unl
        point = lambda step, r: {  # noqa: E731
            "step": step,
            "recovery": {"ll": r, "all": None},
            "metrics": {"ll": unl + r * removed},
        }
        return {
            "original": {"ll": orig},
            "unlearned": {"ll": unl},
            "curves": {
                "related": {
                    "unlearned": [point(0, 0.0), point(10, r10), point(50, r50)],
                    "original": [
                        {"step": 0, "teaching": {"ll": 0.0}, "metrics": {"ll": orig}},
                        {
                            "step": 10,
                            "teaching": {"ll": t50 / 2},
                            "metrics": {"ll": orig + t50 / 2 * removed},
                        },
                        {"step": 50, "teaching": {"ll": t50}, "metrics": {"ll": orig + t50 * removed}},
                    ],
                }
            },
        }

    cell = {
        "setting": "single",
        "targets": ["A"],
        "method": "ga",
        "mode": "partial",
        "params": {},
        "options": {},
    }
    results = [
        {"cell": {**cell, "targets": [name]}, "record": {"attacks": {"relearn": {"targets": {name: rec}}}}}
        for name, rec in (
            ("A", target(0.1, 0.5, 0.1)),
            ("B", target(0.2, 0.3, 0.2)),
            ("C", target(0.0, 0.4, -0.2, orig=4.0, unl=3.5)),
        )
    ]
    run = RunData(Path("."), None, results, [], [], [], [])
    table = relearn_table(run)
    row = table.relearn_rows[0]
    assert row.label.endswith("· related") and row.n == 3
    assert table.relearn_columns == [
        "R% LL@10",
        "R% LL@50",
        "R% All@50",
        "T% LL@50",
        "R−T% LL@10",
        "R−T% LL@50",
        "removed LL",
        "ΔLL@50",
        "ΔLL−ctl@50",
    ]
    assert row.values["R% LL@50"].mean == pytest.approx(40.0)
    assert row.values["T% LL@50"].mean == pytest.approx(100 * (0.1 + 0.2 - 0.2) / 3)
    beyond = row.values["R−T% LL@50"]
    assert beyond.mean == pytest.approx(100 * (0.4 + 0.1 + 0.6) / 3)
    # at the first budget too (the control taught half its 50-step gain by step 10)
    assert row.values["R−T% LL@10"].mean == pytest.approx(100 * (0.05 + 0.1 + 0.1) / 3)
    # its interval is that of the paired differences (sd 25 points, n 3), not of R and T apart
    assert beyond.ci == pytest.approx(4.302653 * 25.166115 / 3**0.5, rel=1e-4)
    # the same in raw likelihood points: removed 8, 8, 0.5; gained 4, 2.4, 0.2; beyond the
    # control's gain (0.8, 1.6, -0.1): 3.2, 0.8, 0.3 — a small denominator no longer dominates
    assert row.values["removed LL"].mean == pytest.approx((8 + 8 + 0.5) / 3)
    assert row.values["ΔLL@50"].mean == pytest.approx((4.0 + 2.4 + 0.2) / 3)
    assert row.values["ΔLL−ctl@50"].mean == pytest.approx((3.2 + 0.8 + 0.3) / 3)
