"""The command line: bad input gives one clear line and exit code 2, and results are written atomically."""

from __future__ import annotations

import json
import lzma
import shutil

import pytest
from typer.testing import CliRunner

from rwku.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def test_unknown_target_suggests_close_names(data_dir):
    out = _one_error_line(run("eval", "--target", "Stephen Kng", "--data", str(data_dir)))
    assert "Stephen King" in out


def test_missing_data_directory(tmp_path):
    out = _one_error_line(run("eval", "--target", "x", "--data", str(tmp_path / "nope")))
    assert "not found" in out and "nope" in out


def test_bad_suite_name(data_dir):
    out = _one_error_line(
        run("eval", "--target", "1", "--suites", "forget,nonsense", "--data", str(data_dir))
    )
    assert "nonsense" in out and "utility" in out


@pytest.mark.parametrize("flag", [["--limit", "-1"], ["--batch-size", "0"], ["--limit", "many"]])
def test_bad_flag_values(flag, data_dir):
    result = run("eval", "--target", "1", "--data", str(data_dir), *flag)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_unloadable_model(data_dir, tmp_path, isolated_cache):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    out = _one_error_line(run("eval", "--target", "1", "--model", str(bad), "--data", str(data_dir)))
    assert "broken.gguf" in out


def test_nonexistent_model(data_dir):
    out = _one_error_line(run("eval", "--target", "1", "--model", "./no/such/model", "--data", str(data_dir)))
    assert "no/such/model" in out


def _copy_data(data_dir, tmp_path):
    dst = tmp_path / "rwku"
    shutil.copytree(data_dir / "eval", dst / "eval")
    return dst


def test_bad_json_line_names_file_and_line(data_dir, tmp_path, tiny_model_dir):
    dst = _copy_data(data_dir, tmp_path)
    path = dst / "eval" / "forget_level1.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:40]  # cut a Stephen King record in half
    path.write_text("\n".join(lines) + "\n")
    out = _one_error_line(run("eval", "--target", "1", "--data", str(dst), "--model", str(tiny_model_dir)))
    assert "forget_level1.jsonl:3" in out


def test_missing_field_names_field(data_dir, tmp_path, tiny_model_dir):
    dst = _copy_data(data_dir, tmp_path)
    path = dst / "eval" / "forget_level2.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    del rec["answer"]
    lines[0] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    out = _one_error_line(run("eval", "--target", "1", "--data", str(dst), "--model", str(tiny_model_dir)))
    assert "forget_level2.jsonl:1" in out and "answer" in out


def test_corrupt_xz_file(data_dir, tmp_path, tiny_model_dir):
    dst = _copy_data(data_dir, tmp_path)
    path = dst / "eval" / "retain_mmlu.jsonl.xz"
    path.write_bytes(lzma.compress(b"{}")[:10])
    out = _one_error_line(
        run("eval", "--target", "1", "--data", str(dst), "--model", str(tiny_model_dir), "--suites", "mmlu")
    )
    assert "retain_mmlu.jsonl.xz" in out


def test_failed_run_leaves_no_results_file(data_dir, tmp_path):
    out_file = tmp_path / "results.json"
    result = run("eval", "--target", "Nobody At All", "--data", str(data_dir), "--out", str(out_file))
    assert result.exit_code == 2 and not out_file.exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_eval_writes_json_with_public_shape(data_dir, tmp_path, tiny_model_dir, isolated_cache):
    out_file = tmp_path / "res.json"
    result = run(
        "eval",
        "--target",
        "Stephen King",
        "--data",
        str(data_dir),
        "--model",
        str(tiny_model_dir),
        "--limit",
        "1",
        "--suites",
        "forget,neighbor",
        "--out",
        str(out_file),
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert "F-FB" in result.output and "N-All" in result.output  # the Table 1 row
    res = json.loads(out_file.read_text())
    assert res["target"] == "Stephen King" and res["protocol"] == "rwku-2024"
    assert {"name", "kind", "fingerprint"} <= set(res["model"])
    item = res["items"]["forget"][0]
    assert {"prompt", "output", "gold", "score", "likelihood", "level", "type"} <= set(item)
    assert set(res["timings"]) >= {"forget", "neighbor", "total"}


def test_targets_lists_counts(data_dir):
    result = run("targets", "--data", str(data_dir))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split("\t")[:3] == ["id", "name", "fb"]
    assert lines[1].split("\t")[:5] == ["1", "Stephen King", "8", "10", "29"]
    assert len(lines) == 101
