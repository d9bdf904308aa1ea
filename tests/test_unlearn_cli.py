"""`rwku methods`, `rwku unlearn` and `rwku run` end to end on a tiny random model, in seconds."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rwku.cli import app
from rwku.experiments.unlearn import UnlearnConfig

runner = CliRunner()


def test_methods_lists_every_registered_method():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]
    assert {"icu", "repe", "ga", "ga_star", "npo", "dpo", "rt", "graddiff", "kl", "simnpo", "rmu"} <= set(
        names
    )


def test_run_npo_lora_on_tiny_model_records_everything(tiny_model_dir, data_dir, tmp_path, isolated_cache):
    out = tmp_path / "run.json"
    result = runner.invoke(
        app,
        [
            "run",
            "--model",
            str(tiny_model_dir),
            "--target",
            "Stephen King",
            "--method",
            "npo",
            "--mode",
            "lora",
            "--data",
            str(data_dir),
            "--corpus",
            "authors",
            "--corpus-size",
            "4",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--lr",
            "1e-5",
            "--suites",
            "forget,neighbor",
            "--limit",
            "2",
            "--run-dir",
            str(tmp_path / "r"),
            "--out",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "before" in result.output and "Δ" in result.output
    rec = json.loads(out.read_text())
    assert set(rec) == {"before", "after", "run"}
    run = rec["run"]
    assert run["method"] == "npo" and run["mode"] == "lora" and run["status"] == "finished"
    assert run["hyperparameters"]["lr"] == pytest.approx(1e-5)
    assert run["peak_memory_mb"] > 0 and run["timings"]["train"] > 0
    assert rec["before"]["scores"]["forget"]["likelihood"]["all"] is not None
    # a changed model: the forget likelihoods moved
    lb = [i["likelihood"] for i in rec["before"]["items"]["forget"]]
    la = [i["likelihood"] for i in rec["after"]["items"]["forget"]]
    assert lb != la
    saved = tmp_path / "r"
    assert (saved / "config.json").exists() and (saved / "run.json").exists()
    assert json.loads((saved / "status.json").read_text())["status"] == "finished"


def test_icu_changes_prompts_not_weights(tiny_model_dir, data_dir, tmp_path, isolated_cache):
    out = tmp_path / "icu.json"
    result = runner.invoke(
        app,
        [
            "run",
            "--model",
            str(tiny_model_dir),
            "--target",
            "1",
            "--method",
            "icu",
            "--data",
            str(data_dir),
            "--suites",
            "forget",
            "--limit",
            "1",
            "--run-dir",
            str(tmp_path / "icu"),
            "--out",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rec = json.loads(out.read_text())
    assert "unlearn about Stephen King" in rec["after"]["items"]["forget"][0]["prompt"]
    assert "unlearn about" not in rec["before"]["items"]["forget"][0]["prompt"]


def test_bad_config_values_are_clear_errors(tmp_path):
    bad = tmp_path / "cfg.yaml"
    bad.write_text("method: npo\nmode: sideways\n")
    result = runner.invoke(app, ["run", "--config", str(bad)])
    assert result.exit_code == 2 and "mode" in result.output and "Traceback" not in result.output
    bad.write_text("method: npo\nlearning_rate: 1\n")
    result = runner.invoke(app, ["unlearn", "--config", str(bad)])
    assert result.exit_code == 2 and "learning_rate" in result.output
    result = runner.invoke(app, ["run", "--method", "forgetful"])
    assert result.exit_code == 2 and "npo" in result.output


def test_yaml_config_round_trip(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        "targets: [Stephen King, Confucius]\nmethod: rt\nmode: partial\nlayers: 0-4\nlr: 0.001\n"
    )
    cfg = UnlearnConfig.from_yaml(cfg_file, epochs=2)
    assert cfg.targets == ["Stephen King", "Confucius"] and cfg.mode == "partial" and cfg.epochs == 2
