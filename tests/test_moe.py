"""Mixture-of-experts models (rwku.models.moe): recognition, routing, attribution, the anchor,
expert-mode training and the fast engine on tiny random models of five MoE families."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from helpers import PASSAGES, RETAIN, plain_greedy
from rwku.errors import ConfigError
from rwku.models.backend import GenerationRequest
from rwku.models.hf import HFLanguageModel
from rwku.models.moe import (
    RouterCapture,
    anchor_loss,
    attribute,
    moe_layers,
    require_moe,
    router_anchor,
    routing,
    selection_shift,
)
from rwku.models.resolve import load_model, resolve_model
from rwku.models.tiny import TINY_ARCHITECTURES, make_tiny_model

MOE_ARCHS = [a for a in TINY_ARCHITECTURES if a != "llama"]


@pytest.fixture(scope="module", params=MOE_ARCHS)
def moe_dir(request, tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp(request.param), seed=0, arch=request.param)


@pytest.fixture(scope="module")
def moe_lm(moe_dir):
    loaded = load_model(resolve_model(str(moe_dir)))
    return HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, batch_size=4, progress=False)


def _batch(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}


def test_every_family_is_recognised_with_its_experts(moe_lm):
    layers = moe_layers(moe_lm.model)
    cfg = moe_lm.model.config
    assert [ly.index for ly in layers] == list(range(cfg.num_hidden_layers))
    assert all(ly.num_experts == 4 and ly.top_k == 2 for ly in layers)
    sigmoid = cfg.model_type == "deepseek_v3"
    assert all(ly.scoring == ("sigmoid" if sigmoid else "softmax") for ly in layers)
    assert cfg._experts_implementation == "eager"  # switched on the CPU by load_model


def test_engine_generates_what_plain_generate_does(moe_lm):
    prompts = [
        moe_lm.chat_prompt(q) for q in ("Who wrote the novel?", "Where was the author born? " * 3, "x")
    ]
    reqs = [GenerationRequest(p, 12, group="g") for p in prompts]
    assert moe_lm.generate(reqs, stop_token_ids=[]) == [plain_greedy(moe_lm, p, 12) for p in prompts]


def test_router_capture_sees_every_token_and_probabilities_sum_to_one(moe_lm):
    b = _batch(moe_lm.tokenizer, ["The writer grew up in Maine.", "Music"])
    layers = moe_layers(moe_lm.model)
    with torch.no_grad(), RouterCapture(layers) as cap:
        moe_lm.model(**b, use_cache=False)
    for ly in layers:
        g = cap.probs[ly.index][0]
        assert g.shape == (b["input_ids"].numel(), 4)
        assert torch.allclose(g.sum(-1), torch.ones(g.shape[0]), atol=1e-5)
        assert cap.topk[ly.index][0].shape == (b["input_ids"].numel(), 2)


def test_attribution_finds_the_expert_a_hand_made_router_prefers(moe_dir):
    model = load_model(resolve_model(str(moe_dir))).model
    tok = load_model(resolve_model(str(moe_dir))).tokenizer
    with torch.no_grad():  # every token carries +5 on hidden dimension 0; layer 0's router reads it
        model.get_input_embeddings().weight[:, 0] = 5.0
        router = moe_layers(model)[0].router
        router.weight.zero_()
        router.weight[2, 0] = 4.0
    b = _batch(tok, ["The writer grew up in a small town.", "Science is patient work", "A B C"])
    att = attribute(model, [b])
    assert att.ranked()[0][:2] == (0, 2)
    assert att.ratio(0, 2) > 1.5  # sigmoid routers (DeepSeek-V3) cap it: 1/(1 + 3 x 0.5) x 4
    assert att.sequences == 3 and att.tokens == int(b["attention_mask"].sum())


def test_anchor_loss_equals_its_formula():
    g = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    mask = torch.tensor([1, 1, 0])
    by_hand = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.9**2 + 0.8**2)) / 2
    assert anchor_loss(g, 0, mask).item() == pytest.approx(by_hand)
    # the released code's F.mse_loss = the summed form / E on unpadded rows
    onehot = torch.nn.functional.one_hot(torch.zeros(3, dtype=torch.long), 3).float()
    assert torch.nn.functional.mse_loss(onehot, g).item() == pytest.approx(anchor_loss(g, 0).item() / 3)


def test_router_anchor_sums_the_anchored_layers_and_trains_each_router(moe_lm):
    model = moe_lm.model
    b = _batch(moe_lm.tokenizer, ["The writer grew up in Maine.", "Music"])
    first, second = moe_layers(model)[:2]
    with torch.no_grad(), RouterCapture([first, second]) as cap:
        model(**b, use_cache=False)
    by_hand = anchor_loss(cap.probs[first.index][0], 1, b["attention_mask"]) + anchor_loss(
        cap.probs[second.index][0], 3, b["attention_mask"]
    )
    model.zero_grad(set_to_none=True)
    value = router_anchor(model, [(first, 1), (second, 3)], b)
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-5)
    value.backward()
    assert all(
        ly.router.weight.grad is not None and ly.router.weight.grad.abs().sum() > 0 for ly in (first, second)
    )
    model.zero_grad(set_to_none=True)
    single = router_anchor(model, [(first, 1)], b)
    assert single.item() == pytest.approx(
        anchor_loss(cap.probs[first.index][0], 1, b["attention_mask"]).item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="one per layer"):
        router_anchor(model, [(first, 1), (first, 2)], b)


def test_selection_shift_is_zero_for_the_same_model_and_counts_changes(moe_lm):
    b = _batch(moe_lm.tokenizer, ["The writer grew up in Maine.", "Music has been part of every culture"])
    r = routing(moe_lm.model, [b])
    same = selection_shift(r, r)
    assert same["mean"] == {"tv": 0.0, "changed_tokens": 0.0, "changed_slots": 0.0}
    moved = routing(moe_lm.model, [b])
    moved.selections[0] = moved.selections[0].flip(-1)  # the same set: no change counted
    assert selection_shift(r, moved)["mean"]["changed_tokens"] == 0.0
    moved.selections[0] = (moved.selections[0] + 1) % 4
    shift = selection_shift(r, moved)["per_layer"][str(r.layers[0])]
    assert shift["changed_tokens"] > 0 and 0 < shift["changed_slots"] <= 1


def test_dense_model_is_refused_with_one_clear_message(tiny_model_dir):
    model = load_model(resolve_model(str(tiny_model_dir))).model
    assert moe_layers(model) == []
    with pytest.raises(ConfigError, match="dense"):
        require_moe(model, "mode 'expert'")


# ------------------------------------------------------------------------------ expert mode


def _train(loaded, method="ga", mode="expert", wd=0.1, **options):
    from rwku.methods import Hyperparameters, get_method
    from rwku.methods.trainer import GuardRails, train

    hp = Hyperparameters(lr=1e-2, batch_size=2, epochs=2, warmup_steps=0, max_length=32, weight_decay=wd)
    return train(
        loaded.model,
        loaded.tokenizer,
        get_method(method, **options),
        PASSAGES,
        hp=hp,
        mode=mode,
        retain_records=RETAIN if method in ("graddiff", "kl", "rmu") else None,
        probe_records=RETAIN,
        progress=False,
        guards=GuardRails(collapse_every=None, explode_factor=None),
    )


def _changed_slices(before, model):
    """{name: experts whose slice changed} for fused tensors, {name: None} for whole tensors."""
    out = {}
    for name, p in model.named_parameters():
        old = before[name]
        if torch.equal(old, p.detach()):
            continue
        if p.ndim == 3 and ".experts." in name:
            out[name] = [e for e in range(p.shape[0]) if not torch.equal(old[e], p.detach()[e])]
        else:
            out[name] = None
    return out


@pytest.mark.parametrize("anchor", [0.0, 1.0])
def test_expert_mode_trains_exactly_that_expert_and_that_router(moe_dir, anchor):
    from rwku.methods.modes import snapshot

    loaded = load_model(resolve_model(str(moe_dir)))
    before = snapshot(loaded.model)
    report = _train(loaded, mode="expert:1.3", **({"anchor": anchor} if anchor else {}))
    assert report.status == "finished" and report.experts["trained"] == ["1.3"]
    block = moe_layers(loaded.model)[1].name
    changed = _changed_slices(before, loaded.model)
    assert changed == {
        f"{block}.gate.weight": None,
        f"{block}.experts.gate_up_proj": [3],
        f"{block}.experts.down_proj": [3],
    }
    per_expert = sum(p[0].numel() for p in moe_layers(loaded.model)[1].experts.parameters())
    assert report.trainable_params == per_expert + moe_layers(loaded.model)[1].router.weight.numel()
    assert report.experts["anchor"] == anchor
    # the gradient masks are gone: a later fine-tune (a relearning attack) may train every slice
    assert all(not p._backward_hooks for p in loaded.model.parameters())


def test_several_experts_with_anchor_anchor_each_trained_layer_once(moe_dir):
    loaded = load_model(resolve_model(str(moe_dir)))
    report = _train(loaded, mode="expert:1.3,0.2,1.0", anchor=1.0)
    assert report.status == "finished"
    assert report.experts["trained"] == ["1.3", "0.2", "1.0"]
    assert report.experts["anchored"] == ["1.3", "0.2"]  # layer 1's best-ranked expert only


def test_expert_mode_attributes_and_records_routing(moe_dir):
    loaded = load_model(resolve_model(str(moe_dir)))
    report = _train(loaded, method="npo", mode="expert", anchor=1.0)
    assert report.status == "finished"
    assert len(report.experts["trained"]) == 1
    assert report.experts["trained"][0] == report.experts["attribution"][0]["expert"]
    assert set(report.routing) == {"forget", "retain"}
    for part in report.routing.values():
        layers = part["before"]["distribution"]
        assert all(sum(d) == pytest.approx(1.0, abs=1e-4) for d in layers.values())
        assert set(part["shift"]["mean"]) == {"tv", "changed_tokens", "changed_slots"}


def test_full_mode_on_moe_records_routing_shift(moe_dir):
    loaded = load_model(resolve_model(str(moe_dir)))
    report = _train(loaded, mode="full")
    assert report.experts is None
    assert report.routing["forget"]["shift"]["mean"]["tv"] >= 0


def test_random_expert_is_seeded_and_in_range(moe_dir):
    from rwku.methods.modes import select_experts

    model = load_model(resolve_model(str(moe_dir))).model
    a, _ = select_experts(model, "random", None, seed=3)
    assert a == select_experts(model, "random", None, seed=3)[0]
    assert 0 <= a[0][0] < 2 and 0 <= a[0][1] < 4


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("9.0", "layer 9 has no routed experts"),
        ("0.7", "experts 0..3"),
        ("0.x", "bad expert selection"),
        ("99", "only 8 routed experts"),
    ],
)
def test_bad_expert_selection_is_one_clear_error(moe_dir, spec, match):
    from rwku.methods.modes import select_experts

    model = load_model(resolve_model(str(moe_dir))).model
    with pytest.raises(ConfigError, match=match):
        select_experts(model, spec, [], seed=0)


def test_expert_mode_on_a_dense_model_and_anchor_without_it_are_refused(tiny_model_dir, moe_dir):
    with pytest.raises(ConfigError, match="dense"):
        _train(load_model(resolve_model(str(tiny_model_dir))))
    with pytest.raises(ConfigError, match="only applies to mode 'expert'"):
        _train(load_model(resolve_model(str(moe_dir))), mode="full", anchor=1.0)
    with pytest.raises(ConfigError, match="anchor must be a number"):
        _train(load_model(resolve_model(str(moe_dir))), anchor="high")


# ------------------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def mixtral_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("mixtral-cli"), seed=0, arch="mixtral")


def _cli(*args):
    from typer.testing import CliRunner

    from rwku.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_run_expert_mode_with_anchor_records_experts_and_routing(
    mixtral_dir, data_dir, tmp_path, isolated_cache
):
    out = tmp_path / "run.json"
    result = _cli(
        "run",
        "--model",
        mixtral_dir,
        "--target",
        "Stephen King",
        "--method",
        "ga",
        "--mode",
        "expert",
        "--experts",
        "1",
        "--option",
        "anchor=1.0",
        "--data",
        data_dir,
        "--corpus",
        "authors",
        "--corpus-size",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--suites",
        "forget",
        "--limit",
        "2",
        "--threads",
        "1",
        "--run-dir",
        tmp_path / "r",
        "--out",
        out,
        "-q",
    )
    assert result.exit_code == 0, result.output
    run = json.loads(out.read_text())["run"]
    assert run["mode"] == "expert" and run["hyperparameters"]["anchor"] == 1.0
    training = json.loads((tmp_path / "r" / "train_report.json").read_text())
    assert training["experts"]["trained"] == [training["experts"]["attribution"][0]["expert"]]
    assert set(training["routing"]) == {"forget", "retain"}


def test_experts_command_prints_the_attribution_table(mixtral_dir, data_dir, tmp_path, isolated_cache):
    result = _cli(
        "experts",
        "--model",
        mixtral_dir,
        "--target",
        "Stephen King",
        "--data",
        data_dir,
        "--corpus",
        "authors",
        "--corpus-size",
        "6",
        "--threads",
        "1",
        "--out",
        tmp_path / "e.json",
    )
    assert result.exit_code == 0, result.output
    assert "Expert attribution for Stephen King" in result.output and "top-1 agreement" in result.output
    table = json.loads((tmp_path / "e.json").read_text())
    assert table["passages"] == 6 and len(table["layers"]) == 2 and table["stability"]["halves"] == [3, 3]


@pytest.mark.parametrize(
    ("model", "args", "needle"),
    [
        ("dense", ["--mode", "expert"], "dense"),
        ("moe", ["--mode", "expert", "--experts", "0.9"], "layer 0 has experts 0..3"),
        ("moe", ["--mode", "expert", "--experts", "7.0"], "layer 7 has no routed experts"),
        ("moe", ["--mode", "full", "--option", "anchor=1"], "only applies to mode expert"),
    ],
)
def test_bad_expert_input_is_one_line_and_exit_2(
    model, args, needle, mixtral_dir, tiny_model_dir, data_dir, tmp_path, isolated_cache
):
    path = mixtral_dir if model == "moe" else tiny_model_dir
    result = _cli(
        "unlearn",
        "--model",
        path,
        "--target",
        "Stephen King",
        "--method",
        "ga",
        "--data",
        data_dir,
        "--corpus",
        "authors",
        "--corpus-size",
        "2",
        "--threads",
        "1",
        "--run-dir",
        tmp_path / "r",
        "-q",
        *args,
    )
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------ testbed


def test_upcycled_tiny_model_computes_what_the_dense_model_does(tiny_model_dir, isolated_cache):
    from rwku.models.testbed import MOE_ALIAS, build_testbed

    path, manifest = build_testbed(str(tiny_model_dir), log=lambda m: None)
    assert manifest["architecture"] == "MixtralForCausalLM" and manifest["num_experts"] == 4
    dense = load_model(resolve_model(str(tiny_model_dir)))
    moe = load_model(MOE_ALIAS)  # the alias names the last build
    assert type(moe.model).__name__ == "MixtralForCausalLM" and len(moe_layers(moe.model)) == 2
    b = _batch(dense.tokenizer, ["The writer grew up in a small town in Maine.", "Music"])
    with torch.no_grad():
        a = dense.model(**b).logits
        m = moe.model(**b).logits
    assert torch.allclose(a, m, atol=1e-5)
    with torch.no_grad(), RouterCapture(moe_layers(moe.model)) as cap:
        moe.model(**b)
    assert len(set(cap.topk[0][0].flatten().tolist())) > 2  # the random router spreads tokens
    assert build_testbed(str(tiny_model_dir), log=lambda m: None)[0] == path  # cached


def test_testbed_alias_before_building_says_how_to_build_it(isolated_cache):
    from rwku.errors import ModelError

    with pytest.raises(ModelError, match="rwku moe-testbed"):
        resolve_model("smollm2-135m-moe")


def test_expert_mode_under_sharded_training_is_refused(moe_dir):
    from types import SimpleNamespace

    from rwku.methods import Hyperparameters, get_method
    from rwku.methods.trainer import train

    loaded = load_model(resolve_model(str(moe_dir)))
    fake = SimpleNamespace(distributed_type="DEEPSPEED", device=torch.device("cpu"))
    hp = Hyperparameters(lr=1e-3, batch_size=2, epochs=1, warmup_steps=0, max_length=32)
    with pytest.raises(ConfigError, match="DeepSpeed/FSDP"):
        train(
            loaded.model, loaded.tokenizer, get_method("ga"), PASSAGES, hp=hp, mode="expert", accelerator=fake
        )


def test_packed_experts_compute_the_eager_loop_and_repack_after_an_update(moe_lm):
    """The engine's prepacked experts (rwku.models.packed) replace transformers' eager loop in
    every standard family, give its outputs, and follow an in-place update of the weights."""
    from rwku.models.packed import _available, packed_linears

    if not _available():
        pytest.skip("oneDNN prepacking is not available in this torch build")
    model = moe_lm.model
    experts = [ly.experts for ly in moe_layers(model)]
    batch = _batch(moe_lm.tokenizer, ["Stephen King wrote novels.", "Where was he born? In Maine"])
    with torch.no_grad():
        plain = model(**batch).logits
        with packed_linears(model):
            assert all("forward" in e.__dict__ for e in experts)  # every block packed
            packed = model(**batch).logits
        assert not any("forward" in e.__dict__ for e in experts)  # restored on exit
        torch.testing.assert_close(packed, plain, atol=1e-4, rtol=1e-4)
        first = experts[0]
        saved = first.down_proj.detach().clone()
        try:
            first.down_proj.mul_(3.0)  # as an optimiser step would: the version moves
            changed = model(**batch).logits
            with packed_linears(model):
                torch.testing.assert_close(model(**batch).logits, changed, atol=1e-4, rtol=1e-4)
        finally:
            first.down_proj.copy_(saved)
    assert not torch.allclose(changed, plain, atol=1e-3)  # the update mattered


def test_an_engine_that_evaluated_before_expert_training_evaluates_the_trained_expert(moe_dir):
    """The engine's packed experts are keyed on the 3-D tensors' versions: after expert-mode
    training (fused AdamW, counters bumped by the trainer) it must read the trained expert."""
    from rwku.models.backend import ScoreRequest

    loaded = load_model(resolve_model(str(moe_dir)))
    engine = HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, batch_size=4, progress=False)
    requests = [ScoreRequest(context="Stephen King wrote", continuation=" Carrie in Maine")]
    before = engine.score(requests)[0]
    _train(loaded)  # expert mode: one routed expert and its router
    loaded.model.eval()
    tok = loaded.tokenizer
    with torch.no_grad():  # plain transformers forward of the trained model (eager experts)
        ids = tok(
            "Stephen King wrote Carrie in Maine", return_tensors="pt", add_special_tokens=False
        ).input_ids
        n_ctx = len(tok("Stephen King wrote", add_special_tokens=False).input_ids)
        logp = torch.log_softmax(loaded.model(ids).logits[0].float(), -1)
        plain = sum(logp[i - 1, ids[0, i]].item() for i in range(n_ctx, ids.shape[1]))
    after = engine.score(requests)[0]
    assert abs(plain - before.sum) > 1e-4  # training changed the continuation's likelihood ...
    assert after.sum == pytest.approx(plain, abs=1e-4)  # ... and the engine sees it


def test_report_of_an_moe_sweep_has_the_routing_table_and_figure(
    mixtral_dir, data_dir, tmp_path, isolated_cache
):
    from rwku.experiments.grid import expand_grid
    from rwku.experiments.sweep import RunOptions, run_sweep
    from rwku.reporting.report import write_report

    grid = {
        "name": "moe-report",
        "model": str(mixtral_dir),
        "targets": ["Stephen King", "Confucius"],
        "methods": [
            {"name": "ga", "modes": ["full", "expert"], "lr": 1.0e-2},
            {"name": "ga", "modes": ["expert"], "lr": 1.0e-2, "options": {"anchor": 1.0}},
        ],
        "suites": "forget",
        "limit": 1,
        "corpus": "authors",
        "corpus_size": 4,
        "max_length": 32,
        "epochs": 1,
        "batch_size": 2,
        "threads": 1,
    }
    out = tmp_path / "out"
    assert run_sweep(expand_grid(grid), out, opts=RunOptions(data=str(data_dir), log=lambda m: None)).ok
    report = write_report(out)
    rows = {r["label"]: r for r in csv.DictReader(io.StringIO((report.out / "routing.csv").read_text()))}
    assert set(rows) == {"GA (full) lr=0.01", "GA (expert) lr=0.01", "GA (expert) anchor=1, lr=0.01"}
    # every value is the mean over the two targets of what the cells' training reports hold
    trainings: dict[str, list[dict]] = {}
    for f in sorted((out / "cells").glob("*.json")):
        cell = json.loads(f.read_text())
        training = cell["record"]["run"]["hyperparameters"]["training"]
        key = "anchor" if cell["cell"]["options"].get("anchor") else cell["cell"]["mode"]
        trainings.setdefault(key, []).append(training)
    label = {
        "full": "GA (full) lr=0.01",
        "expert": "GA (expert) lr=0.01",
        "anchor": "GA (expert) anchor=1, lr=0.01",
    }
    for key, ts in trainings.items():
        row = rows[label[key]]
        assert row["n"] == "2"
        forget = [t["routing"]["forget"]["shift"] for t in ts]
        assert float(row["F-chg%"]) == pytest.approx(
            100 * sum(s["mean"]["changed_tokens"] for s in forget) / 2, abs=1e-6
        )
        top = [max(v["changed_tokens"] for v in s["per_layer"].values()) for s in forget]
        assert float(row["F-chg% max"]) == pytest.approx(100 * sum(top) / 2, abs=1e-6)
        retain = [t["routing"]["retain"]["shift"]["mean"]["tv"] for t in ts]
        assert float(row["R-TV%"]) == pytest.approx(100 * sum(retain) / 2, abs=1e-6)
        share = [100 * t["trainable_params"] / t["total_params"] for t in ts]
        assert float(row["params %"]) == pytest.approx(sum(share) / 2, abs=1e-6)
    assert float(rows[label["full"]]["params %"]) == pytest.approx(100.0)
    assert float(rows[label["expert"]]["params %"]) < 50
    assert float(rows[label["full"]]["F-chg%"]) > 0  # lr 1e-2 on every parameter moves the routers
    md = (report.out / "report.md").read_text()
    assert "## Routing shift (mixture-of-experts runs)" in md and "routing_shift.png" in md
    assert (report.out / "plots" / "routing_shift.png").read_bytes().startswith(b"\x89PNG")
    assert "\\toprule" in (report.out / "routing.tex").read_text()
    assert "Routing shift (mixture-of-experts runs)" in (report.out / "report.html").read_text()
    # `rwku compare` pairs the routing columns per target, from the same training reports
    from rwku.reporting.aggregate import load_run
    from rwku.reporting.compare import compare

    cmp = compare(load_run(out), label["expert"], label["full"])
    shift = {r.column: r for r in cmp.rows}["F-chg%"]
    by_target: dict[tuple[str, str], float] = {}
    for f in sorted((out / "cells").glob("*.json")):
        cell = json.loads(f.read_text())
        if not cell["cell"]["options"].get("anchor"):
            training = cell["record"]["run"]["hyperparameters"]["training"]
            mean = training["routing"]["forget"]["shift"]["mean"]["changed_tokens"]
            by_target[(cell["cell"]["mode"], cell["cell"]["targets"][0])] = 100 * mean
    assert sorted(shift.per_target) == ["Confucius", "Stephen King"]
    for t, (a, b) in shift.per_target.items():
        assert a == pytest.approx(by_target[("expert", t)]) and b == pytest.approx(by_target[("full", t)])
