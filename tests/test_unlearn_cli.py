"""`rwku methods`, `rwku unlearn` and `rwku run` end to end on a tiny random model, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rwku.cli import app
from rwku.errors import ConfigError
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
            "--gradient-checkpointing",
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
    assert json.loads((saved / "config.json").read_text())["gradient_checkpointing"] is True


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


# ------------------------------------------------------------------------------ options


def _tiny_run(tiny_model_dir, data_dir, tmp_path, *extra: str, name: str = "r") -> tuple:
    """``rwku run`` on the tiny model with the smallest useful settings; returns (result, record)."""
    out = tmp_path / f"{name}.json"
    args = [
        "run",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data_dir),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--suites",
        "forget",
        "--limit",
        "1",
        "--run-dir",
        str(tmp_path / name),
        "--out",
        str(out),
        "-q",
        *extra,
    ]
    result = runner.invoke(app, args)
    record = json.loads(out.read_text()) if out.exists() else None
    return result, record


def test_split_targets_names_lists_and_ranges():
    from rwku.experiments.unlearn import split_targets

    assert split_targets("Stephen King, Confucius") == ["Stephen King", "Confucius"]
    assert split_targets("1..3,Bruce Lee") == ["1", "2", "3", "Bruce Lee"]
    with pytest.raises(ConfigError, match="empty"):
        split_targets("5..2")


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("lr: fast\n", "lr must be a number"),
        ("epochs: true\n", "epochs must be"),
        ("progress: 3\n", "progress must be true or false"),
        ("batch_size: 0\n", "batch_size must be at least 1"),
        ("setting: sideways\n", "setting must be one of single, batch"),
        ("retain: everything\n", "retain must be one of generic, neighbor"),
        ("corpus: /no/such/corpus.jsonl\n", "corpus must be synthetic, authors"),
        ("method: npo\nmethod_options: {gamma: 1}\n", "no option gamma"),
        ("mode: partial\nlayers: four\n", "layers must look like 0-4"),
        ("suites: forget,memory\n", "unknown suite 'memory'"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_yaml_values_are_validated_with_clear_errors(tmp_path, yaml_text, needle):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml_text)
    result = runner.invoke(app, ["run", "--config", str(cfg_file)])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


def test_every_run_option_is_a_yaml_key(tmp_path):
    """The YAML file reaches every option `rwku run` has (eval options included), CLI on top."""
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        "targets: 1..2\nmethod: repe\nsetting: single\nsuites: forget,mmlu\nlimit: 3\nutility_limit: 4\n"
        "stop_at_newline: true\nbbh_compat: true\nbbh_full_output: true\neval_batch_size: 8\n"
        "corpus_preset: paper\nretain: neighbor\nmethod_options: {alpha: 1.5}\nthreads: 1\nout: x.json\n"
    )
    cfg = UnlearnConfig.from_yaml(cfg_file, limit=5)
    assert cfg.targets == ["1", "2"] and cfg.setting == "single" and cfg.limit == 5
    ev = cfg.eval_config()
    assert (ev.limit, ev.utility_limit, ev.stop_at_newline, ev.bbh_compat, ev.bbh_full_output) == (
        5,
        4,
        True,
        True,
        True,
    )
    assert cfg.method_options == {"alpha": 1.5} and cfg.out == "x.json"


def test_unknown_method_or_mode_on_the_command_line_exit_2():
    result = runner.invoke(app, ["unlearn", "--method", "nope", "--target", "1"])
    assert result.exit_code == 2 and "unknown method 'nope'" in result.output
    result = runner.invoke(app, ["unlearn", "--method", "npo", "--mode", "half", "--target", "1"])
    assert result.exit_code == 2 and "mode must be one of full, lora, partial" in result.output
    result = runner.invoke(app, ["run", "--method", "npo", "--option", "beta"])
    assert result.exit_code == 2 and "key=value" in result.output


def test_method_options_and_a_saved_corpus_repeat_a_run(tiny_model_dir, data_dir, tmp_path, isolated_cache):
    """--option reaches the method; --corpus <run dir> trains on exactly the saved corpus."""
    first, rec = _tiny_run(
        tiny_model_dir,
        data_dir,
        tmp_path,
        "--target",
        "Stephen King",
        "--method",
        "npo",
        "--mode",
        "full",
        "--corpus-size",
        "3",
        "--corpus-tokens",
        "5",
        "--option",
        "beta=0.5",
        name="first",
    )
    assert first.exit_code == 0, first.output
    assert rec["run"]["hyperparameters"]["beta"] == 0.5
    saved = tmp_path / "first" / "corpus-Stephen King.jsonl"
    corpus = [json.loads(line) for line in saved.read_text().splitlines()]
    assert len(corpus) == 3 and all(set(r) == {"text"} for r in corpus)
    again, rec2 = _tiny_run(
        tiny_model_dir,
        data_dir,
        tmp_path,
        "--target",
        "Stephen King",
        "--method",
        "npo",
        "--mode",
        "full",
        "--corpus",
        str(tmp_path / "first"),
        "--option",
        "beta=0.5",
        name="again",
    )
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / "corpus-Stephen King.jsonl").read_text() == saved.read_text()
    # same corpus, seed and options: the same training, loss for loss
    assert rec2["run"]["hyperparameters"]["training"]["losses"] == pytest.approx(
        rec["run"]["hyperparameters"]["training"]["losses"]
    )


def test_single_setting_restarts_every_target_from_the_original(
    tiny_model_dir, data_dir, tmp_path, isolated_cache
):
    result, rec = _tiny_run(
        tiny_model_dir,
        data_dir,
        tmp_path,
        "--target",
        "1..2",
        "--setting",
        "single",
        "--method",
        "ga",
        "--mode",
        "full",
        "--corpus",
        "authors",
        "--corpus-size",
        "2",
        "--no-cache",
    )
    assert result.exit_code == 0, result.output
    names = ["Stephen King", "Confucius"]
    assert rec["run"]["setting"] == "single" and list(rec["run"]["runs"]) == names
    assert set(rec["before"]) == set(rec["after"]) == set(names)
    for name in names:  # one run folder per target, each trained on its own corpus only
        sub = rec["run"]["runs"][name]
        assert sub["targets"] == [name] and sub["corpus"]["sizes"] == {name: 2}
        assert (Path(sub["run_dir"]) / "weights").is_dir()
    # Confucius's "before" is the original model's, not the model GA left after Stephen King.
    from rwku.cli import run_evaluation
    from rwku.evaluation.config import EvalConfig

    fresh = run_evaluation(
        model=str(tiny_model_dir),
        target="Confucius",
        parts=["forget"],
        cfg=EvalConfig(limit=1),
        data=str(data_dir),
        use_cache=False,
        progress=False,
    )
    got = [i["likelihood"] for i in rec["before"]["Confucius"]["items"]["forget"]]
    assert got == pytest.approx([i["likelihood"] for i in fresh["items"]["forget"]])


def test_batch_setting_trains_one_model_on_mixed_targets(tiny_model_dir, data_dir, tmp_path, isolated_cache):
    result, rec = _tiny_run(
        tiny_model_dir,
        data_dir,
        tmp_path,
        "--target",
        "Stephen King,Confucius",
        "--method",
        "rt",
        "--mode",
        "lora",
        "--corpus",
        "authors",
        "--corpus-size",
        "2",
    )
    assert result.exit_code == 0, result.output
    run = rec["run"]
    assert run["setting"] == "batch" and run["corpus"]["sizes"] == {"Stephen King": 2, "Confucius": 2}
    assert run["hyperparameters"]["training"]["steps"] == 2  # 4 mixed records, batch 2, one run
    assert (tmp_path / "r" / "weights" / "adapter_config.json").is_file()
    assert set(rec["after"]) == {"Stephen King", "Confucius"}


def test_generic_retain_text_never_comes_from_an_unlearned_target(data_dir):
    from rwku.data import open_data
    from rwku.experiments.unlearn import build_retain

    data = open_data(str(data_dir))
    targets = [data.target("Stephen King"), data.target("Confucius")]
    cfg = UnlearnConfig(targets=["Stephen King", "Confucius"], retain="generic")
    retain = build_retain(cfg, data, None, targets, [], "fp", 50)
    unlearned = {r["text"] for t in targets for r in data.load_corpus("passage", t)}
    assert len(retain) == 50 and not unlearned & {r["text"] for r in retain}
    # round-robin over the other targets in id order: the first passage of targets 3, 4, 5, ...
    firsts = [data.load_corpus("passage", data.target(i))[0]["text"] for i in (3, 4, 5)]
    assert [r["text"] for r in retain[:3]] == firsts


def test_retain_methods_train_on_generic_text(tiny_model_dir, data_dir, tmp_path, isolated_cache):
    result, rec = _tiny_run(
        tiny_model_dir,
        data_dir,
        tmp_path,
        "--target",
        "Stephen King",
        "--method",
        "graddiff",
        "--mode",
        "lora",
        "--corpus",
        "authors",
        "--corpus-size",
        "2",
        "--retain-size",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert rec["run"]["corpus"]["retain"] == {"source": "generic", "size": 3}
    assert len((tmp_path / "r" / "retain.jsonl").read_text().splitlines()) == 3


def test_a_collapsed_run_is_reported_not_evaluated(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """A guard rail that fires ends the command with exit 1, a message, and an honest record."""
    import rwku.methods.trainer as trainer

    real_train = trainer.train

    def collapsing(*args, **kwargs):
        kwargs["guards"] = trainer.GuardRails(collapse_every=None, explode_factor=1e-6)  # fires at once
        return real_train(*args, **kwargs)

    monkeypatch.setattr(trainer, "train", collapsing)
    result, rec = _tiny_run(
        tiny_model_dir,
        data_dir,
        tmp_path,
        "--target",
        "Stephen King",
        "--method",
        "ga",
        "--mode",
        "lora",
        "--corpus",
        "authors",
        "--corpus-size",
        "2",
    )
    assert result.exit_code == 1
    assert "training stopped (collapsed)" in result.output and "running away" in result.output
    assert rec["run"]["status"] == "collapsed" and rec["after"] == {}
    saved = json.loads((tmp_path / "r" / "run.json").read_text())
    assert saved["run"]["status"] == "collapsed" and "running away" in saved["run"]["reason"]
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "collapsed"
    assert not (tmp_path / "r" / "weights").exists()


def test_a_diverged_run_exits_1_with_its_record(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import torch

    from rwku.methods.ga import GradientAscent

    def nan_loss(self, model, batch, ctx):
        return model.get_input_embeddings().weight.sum() * torch.tensor(float("nan"))

    monkeypatch.setattr(GradientAscent, "loss", nan_loss)
    result, rec = _tiny_run(
        tiny_model_dir,
        data_dir,
        tmp_path,
        "--target",
        "Stephen King",
        "--method",
        "ga",
        "--mode",
        "full",
        "--corpus",
        "authors",
        "--corpus-size",
        "2",
    )
    assert result.exit_code == 1 and "diverged" in result.output and "run record in" in result.output
    assert rec is None  # no --out result for a run that has no "after"
    saved = json.loads((tmp_path / "r" / "run.json").read_text())
    assert saved["run"]["status"] == "diverged" and "nan" in saved["run"]["reason"]
    assert not (tmp_path / "r" / "weights").exists()


def test_unlearn_repe_saves_its_control_vectors_with_alpha(tiny_model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    run_dir = tmp_path / "repe"
    args = ["unlearn", "--model", str(tiny_model_dir), "--data", str(data_dir), "--target", "1"]
    args += ["--method", "repe", "--option", "alpha=1.5", "--run-dir", str(run_dir), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    vectors = load_file(run_dir / "control_vectors.safetensors")["control_vectors"]
    assert vectors.shape == (2, 32) and vectors.abs().sum() > 0  # one vector per layer of the tiny model
    run = json.loads((run_dir / "run.json").read_text())["run"]
    assert run["hyperparameters"]["alpha"] == 1.5 and run["status"] == "finished"


def test_ctrl_c_leaves_an_interrupted_record_and_no_weights(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import rwku.methods.trainer as trainer

    real_train = trainer.train

    def interrupted(*args, **kwargs):
        def ctrl_c(step: int, loss: float) -> None:
            raise KeyboardInterrupt

        return real_train(*args, **{**kwargs, "on_step": ctrl_c})

    monkeypatch.setattr(trainer, "train", interrupted)
    result, rec = _tiny_run(
        tiny_model_dir,
        data_dir,
        tmp_path,
        "--target",
        "Stephen King",
        "--method",
        "npo",
        "--mode",
        "full",
        "--corpus",
        "authors",
        "--corpus-size",
        "4",
    )
    assert result.exit_code != 0 and rec is None
    saved = json.loads((tmp_path / "r" / "run.json").read_text())
    assert saved["run"]["status"] == "interrupted" and saved["after"] == {}
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / "r" / "weights").exists() and not list((tmp_path / "r").glob(".weights*"))


# --------------------------------------------------------------------------------------------
# Fail early: options checked against the loaded model before any evaluation or training
# --------------------------------------------------------------------------------------------


def test_layers_out_of_range_fail_right_after_loading(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import time

    import rwku.evaluation.runner as runner_mod

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before the layer range was checked")

    monkeypatch.setattr(runner_mod, "evaluate", no_evaluation)
    monkeypatch.setenv("RWKU_CACHE", str(tmp_path / "cache"))
    args = ["run", "--model", str(tiny_model_dir), "--target", "1", "--data", str(data_dir), "--method", "ga"]
    t0 = time.perf_counter()
    result = runner.invoke(
        app, [*args, "--mode", "partial", "--layers", "1-5", "--run-dir", str(tmp_path / "r")]
    )
    assert time.perf_counter() - t0 < 30
    assert result.exit_code == 2, result.output
    assert "layers '1-5'" in result.output and "2 layers" in result.output
    assert "Traceback" not in result.output and "AssertionError" not in result.output
    assert not (tmp_path / "r").exists()  # nothing was built or saved


def test_memory_for_the_training_mode_is_checked_against_what_is_free(monkeypatch):
    from types import SimpleNamespace

    import rwku.experiments.unlearn as unlearn

    model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=30))
    monkeypatch.setattr(unlearn, "_free_memory_bytes", lambda device: 2 * 2**30)  # 2 GiB free
    full = UnlearnConfig(method="ga", mode="full")
    unlearn.check_against_model(full, model, 100_000_000, "cpu")  # 1.1 GiB of state: fits
    with pytest.raises(ConfigError, match=r"mode full trains 1000M parameters.*11\.2 GiB.*2\.0 GiB is free"):
        unlearn.check_against_model(full, model, 1_000_000_000, "cpu")
    # partial trains 3 of 30 layers, LoRA and inference-time methods keep the base weights frozen
    unlearn.check_against_model(UnlearnConfig(method="ga", mode="partial", layers="0-3"), model, 10**9, "cpu")
    unlearn.check_against_model(UnlearnConfig(method="ga", mode="lora"), model, 10**9, "cpu")
    unlearn.check_against_model(UnlearnConfig(method="icu", mode="full"), model, 10**9, "cpu")
    with pytest.raises(ConfigError, match=r"layers '28-31'.*30 layers"):
        unlearn.check_against_model(
            UnlearnConfig(method="ga", mode="partial", layers="28-31"), model, 1, "cpu"
        )
    # weights still in their file's pages (a safetensors memory map) are copied when trained
    unlearn.check_against_model(full, model, 150_000_000, "cpu")  # 1.7 GiB of state: fits
    monkeypatch.setattr(unlearn, "_file_backed_bytes", lambda model: 600_000_000)
    with pytest.raises(ConfigError, match=r"1\.7 GiB \(and 0\.6 GiB more for the weights themselves"):
        unlearn.check_against_model(full, model, 150_000_000, "cpu")
    partial = UnlearnConfig(method="ga", mode="partial", layers="0-2")  # a tenth of the weights
    unlearn.check_against_model(partial, model, 150_000_000, "cpu")


def test_training_that_cannot_fit_exits_2_with_the_advice(
    tiny_model_dir, data_dir, tmp_path, isolated_cache, monkeypatch
):
    import rwku.methods.memory as memory

    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 2**20)  # 1 MiB free: nothing fits
    result = runner.invoke(
        app,
        [
            "unlearn",
            *("--model", str(tiny_model_dir), "--target", "Stephen King", "--method", "ga", "--mode", "lora"),
            *("--data", str(data_dir), "--corpus", "authors", "--corpus-size", "4", "--batch-size", "2"),
            *("--run-dir", str(tmp_path / "r"), "-q"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "rwku: error: not enough memory to train" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r" / "weights").exists()
