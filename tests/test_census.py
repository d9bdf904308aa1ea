"""`rwku census` on the tiny model: rows, outputs, resuming after a kill, refusing a mixed folder."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from rwku.cli import app
from rwku.experiments import census as C

runner = CliRunner()


def _census(tiny_model_dir, data_dir, out, targets="1-2", limit="2"):
    return runner.invoke(
        app,
        [
            "census",
            *("--model", str(tiny_model_dir), "--data", str(data_dir), "--out", str(out)),
            *("--targets", targets, "--limit", limit, "--threads", "1", "-q"),
        ],
    )


def test_census_writes_one_row_per_target_and_resumes(
    tiny_model_dir, data_dir, tmp_path, isolated_cache, monkeypatch
):
    out = tmp_path / "census"
    result = _census(tiny_model_dir, data_dir, out)
    assert result.exit_code == 0, result.output
    header, rows = C.read_census(out / C.CENSUS_FILE)
    assert header["limit"] == 2 and header["levels"] == ["fb", "qa"]
    assert [r["id"] for r in rows] == [1, 2] and rows[0]["target"] == "Stephen King"
    for row in rows:
        assert row["n_fb"] == 2 and row["n_qa"] == 2
        assert 0 <= row["rouge"] <= 100 and 0 <= row["ll"] <= 100
    with open(out / "census.csv", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [r["target"] for r in table] == [r["target"] for r in rows] and list(table[0]) == list(C.FIELDS)
    assert json.loads((out / "census.json").read_text())["targets"] == 2
    assert (out / "census.png").stat().st_size > 1000

    # a kill while target 2's line was being written: that line is cut off
    lines = (out / C.CENSUS_FILE).read_text().splitlines()
    (out / C.CENSUS_FILE).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    seen = []
    real = C.census_row
    monkeypatch.setattr(
        C, "census_row", lambda lm, td, limit: seen.append(td.target.id) or real(lm, td, limit)
    )
    result = _census(tiny_model_dir, data_dir, out, targets="1-3")
    assert result.exit_code == 0, result.output
    assert seen == [2, 3] and "1 of 3 targets already" in result.output
    assert [r["id"] for r in C.read_census(out / C.CENSUS_FILE)[1]] == [1, 2, 3]


def test_census_refuses_to_mix_limits_and_unknown_targets(tiny_model_dir, data_dir, tmp_path, isolated_cache):
    out = tmp_path / "census"
    assert _census(tiny_model_dir, data_dir, out, targets="1", limit="1").exit_code == 0
    result = _census(tiny_model_dir, data_dir, out, targets="1", limit="2")
    assert result.exit_code == 2 and "another limit" in result.output and "Traceback" not in result.output
    result = _census(tiny_model_dir, data_dir, tmp_path / "other", targets="Nobody Atall")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_target_ranges():
    assert C.parse_target_range("1-3") == ["1", "2", "3"]
    assert C.parse_target_range("2..3,Bruce Lee") == ["2", "3", "Bruce Lee"]
