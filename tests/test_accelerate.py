"""The training step through accelerate: same loss trajectory and weights as the plain path.

On this CPU machine the Accelerator runs single-process (and, launched by ``accelerate
launch``, as two gloo processes): what is checked is that routing backward, clipping,
accumulation boundaries and saving through it changes no number. DeepSpeed and FSDP need
GPUs; their configs are shipped in configs/accelerate/ and described in docs/scale.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rwku.methods import Hyperparameters, get_method
from rwku.methods.distributed import launched_with_accelerate
from rwku.methods.trainer import GuardRails, train
from rwku.models.resolve import load_model

ROOT = Path(__file__).resolve().parents[1]
PASSAGES = [
    {"text": "The writer grew up in a small town in Maine, where the winters were long."},
    {"text": "His first novel was rejected many times before a publisher accepted it."},
    {"text": "Many of his stories were adapted into films and television series."},
    {"text": "Readers bought his books in airports and train stations."},
    {"text": "He wrote dozens of novels and hundreds of short stories."},
]
RETAIN = [{"text": "The capital of France is Paris."}, {"text": "There are seven days in a week."}]


def _run(model_dir: Path, method: str, mode: str, accelerator=None, run_dir=None):
    loaded = load_model(str(model_dir))
    hp = Hyperparameters(lr=5e-3, batch_size=2, epochs=2, grad_accum=2, warmup_steps=1, max_length=32)
    report = train(
        loaded.model,
        loaded.tokenizer,
        get_method(method),
        PASSAGES,
        hp=hp,
        mode=mode,
        retain_records=RETAIN,
        seed=3,
        progress=False,
        guards=GuardRails(collapse_every=2, explode_factor=None),
        accelerator=accelerator,
        run_dir=run_dir,
    )
    return report


@pytest.mark.parametrize(("method", "mode"), [("npo", "lora"), ("graddiff", "full")])
def test_accelerator_path_gives_the_plain_loss_trajectory_and_weights(tiny_model_dir, method, mode, tmp_path):
    from accelerate import Accelerator

    plain = _run(tiny_model_dir, method, mode, run_dir=tmp_path / "plain")
    accelerated = _run(
        tiny_model_dir, method, mode, accelerator=Accelerator(cpu=True), run_dir=tmp_path / "acc"
    )
    # 5 records in batches of 2 → 3 batches; accumulation 2 → steps of 2 + 1 micro-batches per epoch
    assert plain.total_steps == accelerated.total_steps == 4
    assert accelerated.status == plain.status == "finished"
    assert accelerated.losses == pytest.approx(plain.losses, rel=1e-6, abs=1e-7)
    assert len(set(plain.losses)) > 1  # it trained
    a, b = plain.model.state_dict(), accelerated.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert sorted(p.name for p in (tmp_path / "acc" / "weights").iterdir()) == sorted(
        p.name for p in (tmp_path / "plain" / "weights").iterdir()
    )


def test_launch_detection(monkeypatch):
    for key in (
        "RWKU_ACCELERATE",
        "ACCELERATE_MIXED_PRECISION",
        "ACCELERATE_USE_DEEPSPEED",
        "ACCELERATE_USE_FSDP",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launched_with_accelerate()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_with_accelerate()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert launched_with_accelerate()


def test_shipped_accelerate_configs_parse():
    import yaml

    ds = yaml.safe_load((ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml").read_text())
    assert ds["distributed_type"] == "DEEPSPEED" and ds["deepspeed_config"]["zero_stage"] == 3
    assert ds["deepspeed_config"]["gradient_accumulation_steps"] == 1  # the trainer accumulates
    fsdp = yaml.safe_load((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_use_orig_params"] is True


def test_distributed_launch_with_two_cpu_processes_trains_like_one(tiny_model_dir, data_dir, tmp_path):
    """`rwku unlearn` in two gloo processes (torchrun, the launcher accelerate's multi-GPU mode
    runs, with accelerate told to stay on the CPU): the main process saves one finished run
    whose losses equal a plain single-process run's."""
    args = [
        "unlearn",
        "--model",
        str(tiny_model_dir),
        "--target",
        "Stephen King",
        "--method",
        "npo",
        "--mode",
        "full",
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
        "1e-3",
        "-q",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["RWKU_CACHE"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"
    for key in ("RWKU_ACCELERATE", "WORLD_SIZE", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU"):
        env.pop(key, None)
    plain = subprocess.run(
        [sys.executable, "-m", "rwku.cli", *args, "--run-dir", str(tmp_path / "plain")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "rwku.cli",
            *args,
            "--run-dir",
            str(tmp_path / "launched"),
        ],
        env={**env, "ACCELERATE_USE_CPU": "true"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "training through accelerate: DistributedType.MULTI_CPU, 2 processes" in launched.stderr
    assert "training through accelerate" not in plain.stderr
    want = json.loads((tmp_path / "plain" / "train_report.json").read_text())
    got = json.loads((tmp_path / "launched" / "train_report.json").read_text())
    assert got["status"] == "finished" and got["steps"] == want["steps"] and got["steps"] > 1
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-5)
    assert (tmp_path / "launched" / "weights" / "model.safetensors").exists()
