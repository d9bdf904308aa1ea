"""The shared trainer and the training modes, on the tiny random model.

What matters here is plumbing that a wrong number would not reveal: which parameters a mode
lets move (bit-for-bit), that reference outputs are precomputed instead of held in a second
model, that every way a run can end leaves an honest record behind, and that the guard rails
fire. Every run is a handful of steps on a 2-layer model with 32 hidden units.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from helpers import PASSAGES, RETAIN
from rwku.errors import ConfigError
from rwku.methods import Hyperparameters, UnlearningMethod, get_method
from rwku.methods.base import forward_logits
from rwku.methods.batches import build_batch
from rwku.methods.losses import token_nll_mean
from rwku.methods.modes import (
    TrainingMode,
    changed_parameters,
    count_parameters,
    count_trainable,
    load_trained,
    merge_lora,
    parse_layer_range,
    parse_mode,
    prepare_model,
    snapshot,
)
from rwku.methods.trainer import (
    GuardRails,
    TrainingError,
    mix_targets,
    plan_steps,
    repetition,
    train,
    warmup_steps_for,
)

OFF = GuardRails(collapse_every=None, explode_factor=None)  # guard rails are tested on their own


def hp(lr: float = 1e-3, batch_size: int = 2, epochs: float = 1, **kw: Any) -> Hyperparameters:
    return Hyperparameters(lr=lr, batch_size=batch_size, epochs=epochs, warmup_steps=0, max_length=32, **kw)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def lm(tiny_model_dir):
    """A fresh copy of the tiny model for every test: training changes it in place
    (``RWKU_TEST_DEVICE=cuda`` puts it on a GPU)."""
    from rwku.models.resolve import load_model

    return load_model(str(tiny_model_dir), device=os.environ.get("RWKU_TEST_DEVICE", "cpu"))


def on_device(batch: dict, model) -> dict:
    device = next(model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def forget_nll(model, tokenizer) -> float:
    batch = on_device(build_batch("passages", PASSAGES, tokenizer, max_length=32), model)
    with torch.no_grad():
        return token_nll_mean(forward_logits(model, batch), batch["labels"]).item()


def read_status(run_dir) -> dict:
    return json.loads((run_dir / "status.json").read_text(encoding="utf-8"))


def no_weights_left(run_dir) -> bool:
    return not (run_dir / "weights").exists() and not list(run_dir.glob(".weights.tmp-*"))


# ------------------------------------------------------------------------------ modes


def test_layer_ranges_are_half_open_and_checked():
    assert parse_layer_range("0-4", 30) == (0, 4)
    assert parse_layer_range("2:5", 30) == (2, 5)
    assert parse_layer_range("7", 30) == (7, 8)
    assert parse_layer_range((1, 2), 2) == (1, 2)
    for bad in ("3-3", "0-3", "x", "4-1"):
        with pytest.raises(ConfigError, match="layer range"):
            parse_layer_range(bad, 2)
    assert parse_mode("partial:0-4") == TrainingMode(kind="partial", layers="0-4")
    assert parse_mode("LoRA").kind == "lora"
    with pytest.raises(ConfigError, match="unknown training mode"):
        parse_mode("half")
    with pytest.raises(ConfigError, match="only 'partial'"):
        parse_mode("full:0-2")


def test_prepare_model_counts_and_freezes(lm):
    total = count_parameters(lm.model)
    part = prepare_model(lm.model, "partial:1-2")
    layer1 = sum(p.numel() for n, p in lm.model.named_parameters() if n.startswith("model.layers.1."))
    assert part.trainable_params == count_trainable(lm.model) == layer1 and part.layers == (1, 2)
    assert not lm.model.model.embed_tokens.weight.requires_grad and not lm.model.lm_head.weight.requires_grad
    assert prepare_model(lm.model, "full").trainable_params == total
    with pytest.raises(ConfigError, match="needs a layer range"):
        prepare_model(lm.model, "partial")


# ------------------------------------------------------------------------------ what moves


def test_full_mode_changes_every_parameter_and_saves_a_finished_run(lm, tmp_path):
    before = snapshot(lm.model)
    steps: list[tuple[int, float]] = []
    report = train(
        lm.model,
        lm.tokenizer,
        get_method("ga"),
        PASSAGES,
        hp=hp(),
        mode="full",
        progress=False,
        guards=OFF,
        run_dir=tmp_path,
        on_step=lambda s, loss: steps.append((s, loss)),
    )
    assert report.status == "finished" and report.reason is None
    assert report.steps == report.total_steps == 2 and report.epochs == 1.0
    assert [s for s, _ in steps] == [1, 2] and [x for _, x in steps] == report.losses
    assert report.trainable_params == report.total_params == count_parameters(lm.model)
    assert report.peak_rss_mb > 0 and report.seconds > 0
    assert changed_parameters(before, lm.model) == sorted(before)  # every parameter gets a gradient
    assert read_status(tmp_path)["status"] == "finished"
    assert (tmp_path / "weights" / "model.safetensors").is_file() and not list(
        tmp_path.glob(".weights.tmp-*")
    )
    saved = json.loads((tmp_path / "train_report.json").read_text(encoding="utf-8"))
    assert saved["losses"] == report.losses and "model" not in saved


def test_lora_changes_only_adapter_weights_and_saves_only_the_adapter(lm, tmp_path):
    before = snapshot(lm.model)
    report = train(
        lm.model,
        lm.tokenizer,
        get_method("ga"),
        PASSAGES,
        hp=hp(lr=1e-2),
        mode="lora",
        progress=False,
        guards=OFF,
        run_dir=tmp_path,
    )
    peft_model = report.model
    base = peft_model.get_base_model()
    after = {n.replace(".base_layer", ""): p for n, p in base.named_parameters()}
    changed = [n for n, p in after.items() if n not in before or not torch.equal(before[n], p.detach().cpu())]
    assert changed and all(".lora_A." in n or ".lora_B." in n for n in changed)
    assert all(n in changed for n in after if ".lora_B." in n)  # B starts at zero and must move
    assert set(before) <= set(after)  # every base weight still there, bit-identical
    assert report.trainable_params == count_trainable(peft_model) < report.total_params // 10
    weights = tmp_path / "weights"
    assert (weights / "adapter_config.json").is_file() and (weights / "adapter_model.safetensors").is_file()
    assert not (weights / "model.safetensors").exists()

    ids = on_device(build_batch("passages", PASSAGES[:1], lm.tokenizer, max_length=32), peft_model)
    with torch.no_grad():
        trained = forward_logits(peft_model, ids)
        merged = forward_logits(merge_lora(peft_model), ids)  # a merged copy ...
        still = forward_logits(peft_model, ids)  # ... leaves the adapter model as it was
    torch.testing.assert_close(merged, trained, rtol=1e-4, atol=1e-5)
    assert torch.equal(still, trained)

    from rwku.models.resolve import load_model

    reloaded = load_trained(weights, load_model(lm.info["path"], device=ids["input_ids"].device).model)
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(reloaded, ids), trained)


def test_partial_mode_changes_only_its_layers(lm):
    before = snapshot(lm.model)
    report = train(
        lm.model,
        lm.tokenizer,
        get_method("ga"),
        PASSAGES,
        hp=hp(),
        mode="partial:0-1",
        progress=False,
        guards=OFF,
    )
    layer0 = sorted(n for n in before if n.startswith("model.layers.0."))
    assert report.status == "finished" and report.trainable_params < report.total_params
    assert changed_parameters(before, lm.model) == layer0  # tied embedding/head and norm untouched


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_gradient_checkpointing_gives_the_same_updates_and_is_switched_off_after(lm, mode):
    twin = copy.deepcopy(lm.model)
    calls = {"plain": 0, "recomputed": 0}  # layer 0 MLP forward calls while training (inside the checkpoint)

    def counter(key):
        def hook(module, args):  # a pre-hook: the recompute stops early, inside the MLP's forward
            calls[key] += module.training

        return hook

    lm.model.model.layers[0].mlp.register_forward_pre_hook(counter("plain"))
    twin.model.layers[0].mlp.register_forward_pre_hook(counter("recomputed"))
    reports = [
        train(
            model,
            lm.tokenizer,
            get_method("ga"),
            PASSAGES,
            hp=hp(),
            mode=mode,
            progress=False,
            guards=OFF,
            gradient_checkpointing=checkpointing,
        )
        for model, checkpointing in ((lm.model, False), (twin, True))
    ]
    assert [r.status for r in reports] == ["finished", "finished"]
    assert calls["recomputed"] == 2 * calls["plain"] > 0  # every layer ran again in the backward pass
    assert reports[0].losses == pytest.approx(reports[1].losses, rel=1e-5)
    plain, recomputed = (dict(r.model.named_parameters()) for r in reports)
    assert sorted(plain) == sorted(recomputed)
    for name, value in plain.items():
        torch.testing.assert_close(recomputed[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert not twin.is_activation_checkpointing  # evaluation afterwards runs the plain forward


@pytest.mark.parametrize("mode", ["full", "partial:0-1", "lora"])
def test_an_engine_that_evaluated_before_training_evaluates_the_trained_weights(lm, mode):
    """The engine prepacks linear weights per layer and keys them on the weight's version; the
    fused optimizer step must not leave it evaluating the weights from before training."""
    from rwku.models.backend import ScoreRequest
    from rwku.models.hf import HFLanguageModel

    engine = HFLanguageModel(lm.model, lm.tokenizer, lm.info, batch_size=4, progress=False)
    requests = [ScoreRequest(context="Stephen King wrote", continuation=" Carrie")]
    before = engine.score(requests)[0]

    def packed() -> bool:
        return any("_rwku_packed" in m.__dict__ for m in lm.model.modules())

    assert packed() == engine.packed  # the engine keeps its packed copy of the weights ...
    train(
        lm.model,
        lm.tokenizer,
        get_method("ga"),
        PASSAGES,
        hp=hp(lr=1e-2),
        mode=mode,
        progress=False,
        guards=OFF,
    )
    assert not packed()  # ... which training drops: stale, and a second model in memory
    lm.model.eval()
    with torch.no_grad():  # the trained model without the engine: plain transformers forward
        ids = lm.tokenizer("Stephen King wrote Carrie", return_tensors="pt").input_ids
        n_ctx = len(lm.tokenizer("Stephen King wrote").input_ids)
        logp = torch.log_softmax(lm.model(ids.to(lm.model.device)).logits[0].float(), -1)
        plain = sum(logp[i - 1, ids[0, i]].item() for i in range(n_ctx, ids.shape[1]))
    after = engine.score(requests)[0]
    assert abs(plain - before.sum) > 1e-3  # training changed the answer's likelihood ...
    assert after.sum == pytest.approx(plain, abs=1e-4)  # ... and the engine sees it


def test_ga_raises_the_forget_nll(lm):
    nll0 = forget_nll(lm.model, lm.tokenizer)
    report = train(
        lm.model,
        lm.tokenizer,
        get_method("ga"),
        PASSAGES,
        hp=hp(lr=1e-2, epochs=3),
        progress=False,
        guards=OFF,
    )
    assert report.steps == 6 and report.losses[-1] < report.losses[0]  # minimising −NLL ...
    assert forget_nll(lm.model, lm.tokenizer) > nll0 + 0.5  # ... makes the text less likely


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_npo_uses_precomputed_reference_and_never_copies_the_model(lm, mode, monkeypatch):
    real_deepcopy = copy.deepcopy

    def no_model_copies(obj, *args, **kwargs):
        if isinstance(obj, torch.nn.Module):
            raise AssertionError("the trainer copied a model")
        return real_deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    method = get_method("npo")
    calls: list[str] = []
    real_pre, real_loss = method.precompute, method.loss
    monkeypatch.setattr(method, "precompute", lambda *a: calls.append("pre") or real_pre(*a))
    monkeypatch.setattr(method, "loss", lambda *a: calls.append("loss") or real_loss(*a))

    report = train(
        lm.model,
        lm.tokenizer,
        method,
        PASSAGES,
        hp=hp(lr=5e-3, epochs=2),
        mode=mode,
        progress=False,
        guards=OFF,
    )
    assert calls[:2] == ["pre", "pre"] and calls.count("pre") == 2  # one per batch, all before step 1
    assert calls.count("loss") == 4
    # step 1 runs at θ = original model: NPO's loss is exactly (2/β)·ln 2 there
    assert report.losses[0] == pytest.approx(2 / 0.2 * math.log(2), rel=1e-5)
    assert report.losses[-1] < report.losses[0]


def test_graddiff_needs_and_uses_retain_records(lm):
    with pytest.raises(ConfigError, match="retain"):
        train(lm.model, lm.tokenizer, get_method("graddiff"), PASSAGES, hp=hp(), progress=False)
    report = train(
        lm.model,
        lm.tokenizer,
        get_method("graddiff"),
        PASSAGES,
        hp=hp(),
        retain_records=RETAIN,
        progress=False,
        guards=OFF,
    )
    assert report.status == "finished" and all(math.isfinite(x) for x in report.losses)


# ------------------------------------------------------------------------------ how runs end


class NanAtStep2(UnlearningMethod):
    """A loss that turns NaN on its second call (not registered: tests only)."""

    name: ClassVar[str] = "nan_test"
    corpus: ClassVar[str | None] = "passages"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def loss(self, model, batch, ctx: Mapping[str, Any]) -> torch.Tensor:
        self.calls += 1
        loss = token_nll_mean(forward_logits(model, batch), batch["labels"])
        return loss * float("nan") if self.calls >= 2 else loss


def test_nan_loss_stops_with_training_error_and_diverged_status(lm, tmp_path):
    with pytest.raises(TrainingError, match="diverged: loss is nan at step 2") as info:
        train(
            lm.model,
            lm.tokenizer,
            NanAtStep2(),
            PASSAGES,
            hp=hp(),
            progress=False,
            guards=OFF,
            run_dir=tmp_path,
        )
    assert info.value.report.status == "diverged" and info.value.report.steps == 1
    status = read_status(tmp_path)
    assert status["status"] == "diverged" and "nan" in status["reason"]
    assert no_weights_left(tmp_path)


def test_interrupt_leaves_no_weights_and_no_finished_marker(lm, tmp_path):
    def stop_at_2(step: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            lm.model,
            lm.tokenizer,
            get_method("ga"),
            PASSAGES,
            hp=hp(batch_size=1),
            progress=False,
            guards=OFF,
            on_step=stop_at_2,
            run_dir=tmp_path,
        )
    assert read_status(tmp_path)["status"] == "interrupted"
    report = json.loads((tmp_path / "train_report.json").read_text(encoding="utf-8"))
    assert report["status"] == "interrupted" and report["steps"] == 2 and report["total_steps"] == 4
    assert no_weights_left(tmp_path)


def test_collapse_to_one_repeated_token_stops_the_run(lm, tmp_path):
    def flatten_logits(step: int, loss: float) -> None:
        if step == 1:  # a zero final norm makes every logit 0: greedy decoding repeats token 0 forever
            with torch.no_grad():
                lm.model.model.norm.weight.zero_()

    guards = GuardRails(collapse_every=1, explode_factor=None)
    report = train(
        lm.model,
        lm.tokenizer,
        get_method("ga"),
        PASSAGES,
        hp=hp(batch_size=1),
        progress=False,
        guards=guards,
        on_step=flatten_logits,
        run_dir=tmp_path,
    )
    assert report.status == "collapsed" and report.steps == 1
    assert "repeats one token" in report.reason and "id 0" in report.reason
    assert read_status(tmp_path)["status"] == "collapsed" and no_weights_left(tmp_path)


def test_collapse_check_ignores_a_loop_the_original_model_already_had(lm):
    # the random tiny model's greedy output is one token repeated from the start: not a collapse
    assert repetition([1, 1, 1, 2]) == (1, 0.75) and repetition([]) == (None, 0.0)
    report = train(
        lm.model,
        lm.tokenizer,
        get_method("ga"),
        PASSAGES,
        hp=hp(lr=0.0),
        progress=False,
        guards=GuardRails(collapse_every=1),
    )
    assert report.status == "finished" and not report.warnings


def test_runaway_ga_loss_is_a_collapse_but_can_be_only_recorded(lm):
    tight = GuardRails(collapse_every=None, explode_factor=0.5)  # NLL > 0.5·ln V: fires at once
    report = train(lm.model, lm.tokenizer, get_method("ga"), PASSAGES, hp=hp(), progress=False, guards=tight)
    assert report.status == "collapsed" and "running away" in report.reason and report.steps == 1
    # NPO's loss is bounded: the runaway check does not apply to it
    npo = train(lm.model, lm.tokenizer, get_method("npo"), PASSAGES, hp=hp(), progress=False, guards=tight)
    assert npo.status == "finished"
    warn = GuardRails(collapse_every=None, explode_factor=0.5, stop_on_collapse=False)
    kept = train(lm.model, lm.tokenizer, get_method("ga"), PASSAGES, hp=hp(), progress=False, guards=warn)
    assert kept.status == "finished" and len(kept.warnings) == 2


# ------------------------------------------------------------------------------ plan & batch setting


def test_checkpoints_see_the_model_in_eval_mode_after_the_asked_steps(lm):
    seen = []

    def checkpoint(step, model):
        seen.append((step, model.training, forget_nll(model, lm.tokenizer)))

    report = train(
        lm.model,
        lm.tokenizer,
        get_method("ga"),
        PASSAGES,
        hp=Hyperparameters(lr=1e-3, batch_size=1, epochs=2, max_length=32),
        checkpoint_steps={1, 3},
        on_checkpoint=checkpoint,
        guards=OFF,
    )
    assert report.status == "finished" and report.total_steps == 2 * len(PASSAGES) > 3
    assert [s for s, _, _ in seen] == [1, 3] and not any(training for _, training, _ in seen)
    assert seen[1][2] > seen[0][2]  # gradient ascent kept raising the forget NLL in between


def test_plan_shuffles_batch_order_per_epoch_with_a_seed():
    plan = plan_steps(5, epochs=2, grad_accum=1, seed=0)
    epochs = [[g[0] for g in plan[:5]], [g[0] for g in plan[5:]]]
    assert all(sorted(e) == list(range(5)) for e in epochs) and epochs[0] != epochs[1]
    assert plan == plan_steps(5, 2, 1, seed=0) and plan != plan_steps(5, 2, 1, seed=1)
    accum = plan_steps(5, epochs=1, grad_accum=2, seed=0)
    assert [len(g) for g in accum] == [2, 2, 1]  # the epoch's last step takes what is left
    assert sum(len(g) for g in plan_steps(4, epochs=1.5, grad_accum=1, seed=0)) == 6
    assert (
        warmup_steps_for(6, 20) == 0 and warmup_steps_for(100, 20) == 10 and warmup_steps_for(1000, 20) == 20
    )


def test_mix_targets_interleaves_round_robin():
    corpora = {"king": ["k1", "k2", "k3"], "curie": ["c1"], "bach": ["b1", "b2"]}
    assert mix_targets(corpora) == ["k1", "c1", "b1", "k2", "b2", "k3"]
    assert mix_targets({}) == [] and mix_targets({"a": [1, 2]}) == [1, 2]


# ------------------------------------------------------------------------------ memory guard


def test_a_step_that_cannot_fit_is_refused_before_it_runs(lm, tmp_path, monkeypatch):
    import rwku.methods.memory as memory

    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 2**20)  # 1 MiB free
    before = snapshot(lm.model)
    with pytest.raises(ConfigError, match=r"not enough memory to train.*only 0\.0 GiB is free on cpu"):
        train(lm.model, lm.tokenizer, get_method("ga"), PASSAGES, hp=hp(), progress=False, run_dir=tmp_path)
    assert not changed_parameters(before, lm.model)
    assert read_status(tmp_path)["status"] == "failed" and no_weights_left(tmp_path)


def test_memory_advice_names_a_batch_that_fits():
    from types import SimpleNamespace

    from rwku.methods.memory import GiB, check_training_memory, estimate_step_memory

    # Qwen2.5-1.5B's shape, LoRA (about 1M trained), 8 rows x 512 tokens, 14 GiB free
    qwen = SimpleNamespace(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        vocab_size=151936,
        num_attention_heads=12,
    )
    batch = {"input_ids": torch.zeros(8, 512, dtype=torch.long)}
    est = estimate_step_memory(qwen, 1_089_536, 8, 512, 8 * 512)
    assert 25 * GiB < est.total < 40 * GiB  # the run the kernel killed at 24 GB
    with pytest.raises(ConfigError, match=r"use --batch-size 2 --grad-accum 4 \(still 8 rows"):
        check_training_memory(
            qwen, 1_089_536, [batch], [None], device="cpu", batch_size=8, grad_accum=1, free=14 * GiB
        )
    # gradient checkpointing keeps one layer's activations: the paper's batch then fits
    with pytest.raises(ConfigError, match="--gradient-checkpointing"):
        check_training_memory(
            qwen, 1_089_536, [batch], [None], device="cpu", batch_size=8, grad_accum=1, free=8 * GiB
        )
    light = estimate_step_memory(qwen, 1_089_536, 8, 512, 8 * 512, checkpointing=True)
    assert light.logits == est.logits and light.activations < est.activations / 4
    assert check_training_memory(
        qwen,
        1_089_536,
        [batch],
        [None],
        device="cpu",
        batch_size=8,
        grad_accum=1,
        free=14 * GiB,
        checkpointing=True,
    )
    one = {"input_ids": torch.zeros(2, 512, dtype=torch.long)}
    assert check_training_memory(
        qwen, 1_089_536, [one], [None], device="cpu", batch_size=2, grad_accum=4, free=14 * GiB
    )
    # unknown free memory (e.g. MPS) or an unknown model shape: nothing is refused
    assert (
        check_training_memory(qwen, 0, [batch], [None], device="mps", batch_size=8, grad_accum=1) is not None
    )
    assert (
        check_training_memory(object(), 0, [batch], [None], device="cpu", batch_size=8, grad_accum=1, free=1)
        is None
    )


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux only: /proc/self/maps")
def test_weights_still_in_their_file_count_as_needed(tmp_path):
    from functools import partial
    from types import SimpleNamespace

    from safetensors.torch import load_file, save_file

    from rwku.methods.memory import GiB, check_training_memory, file_backed_bytes

    save_file({"w": torch.ones(1 << 16), "b": torch.ones(10)}, str(tmp_path / "m.safetensors"))
    loaded = load_file(str(tmp_path / "m.safetensors"))  # a memory map, as transformers loads
    own = torch.ones(1 << 16)
    assert file_backed_bytes(loaded.values()) == 4 * ((1 << 16) + 10)
    assert file_backed_bytes([own, own + 1]) == 0 and file_backed_bytes([loaded["w"] * 2]) == 0
    assert file_backed_bytes([loaded["w"], own]) == 4 << 16
    assert file_backed_bytes([torch.ones(1 << 16).share_memory_()]) == 0  # /dev/shm: not page cache

    shape = SimpleNamespace(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, vocab_size=1000, num_attention_heads=4
    )
    batch = {"input_ids": torch.zeros(2, 16, dtype=torch.long)}
    step = partial(
        check_training_memory,
        shape,
        10**8,
        [batch],
        [None],
        device="cpu",
        batch_size=2,
        grad_accum=1,
        free=2 * GiB,
    )
    fits = step()
    assert fits is not None and fits.weights == 0 and fits.total < 2 * GiB
    # the same step with the trained weights still in their file: their 0.4 GiB tips it over
    with pytest.raises(ConfigError, match=r"trained weights copied out of their file 0\.4\).*mode lora"):
        step(mapped=4 * 10**8)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only: /proc/self/clear_refs")
def test_peak_memory_is_reset_per_run():
    """A sweep process runs many cells: after a reset the peak is the new run's, not an earlier
    cell's (the lifetime peak made every cell after a full fine-tuning report its memory)."""
    from rwku.methods.trainer import peak_rss_mb, reset_peak_rss

    assert reset_peak_rss() == "run"
    base = peak_rss_mb()
    block = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
    assert peak_rss_mb() > base + 350
    del block
    assert peak_rss_mb() > base + 350  # a peak outlives the memory
    assert reset_peak_rss() == "run"
    assert peak_rss_mb() < base + 100
