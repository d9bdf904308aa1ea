"""One short real unlearning run on the default model (``pytest -m slow``; about a minute on 2 cores).

The tiny random model proves the plumbing; only the real model can show that unlearning
unlearns. NPO with LoRA on eight of the authors' Stephen King passages (their text states the
facts the probes ask about) must lower the likelihood of the gold answers to the forget
probes, finish cleanly, and leave a complete run folder: the adapter, the corpus it trained
on, the resolved config, the run record and a "finished" status. Four steps only, so the
learning rate is high (1e-2; measured 2026-11-23: forget likelihood 5.45 → 2.42, where 3e-3
moved it by 4 %).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rwku.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_real_npo_lora_run_lowers_the_forget_likelihood(data_dir, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "run.json"
    args = ["run", "--target", "Stephen King", "--method", "npo", "--mode", "lora", "--data", str(data_dir)]
    args += ["--corpus", "authors", "--corpus-size", "8", "--max-length", "128", "--epochs", "2"]
    args += ["--batch-size", "4", "--lr", "1e-2", "--suites", "forget", "--limit", "3", "--threads", "2"]
    args += ["--no-cache", "--run-dir", str(run_dir), "--out", str(out), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rec = json.loads(out.read_text())
    run = rec["run"]
    assert run["status"] == "finished" and run["method"] == "npo" and run["mode"] == "lora"
    assert run["hyperparameters"]["training"]["steps"] == 4
    before = rec["before"]["scores"]["forget"]["likelihood"]["all"]
    after = rec["after"]["scores"]["forget"]["likelihood"]["all"]
    assert after < 0.9 * before, (before, after)
    assert (run_dir / "weights" / "adapter_config.json").is_file()
    assert (run_dir / "weights" / "adapter_model.safetensors").is_file()
    assert len((run_dir / "corpus-Stephen King.jsonl").read_text().splitlines()) == 8
    assert json.loads((run_dir / "config.json").read_text())["method"] == "npo"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert json.loads((run_dir / "run.json").read_text())["run"]["status"] == "finished"
