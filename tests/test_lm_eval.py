"""lm-evaluation-harness tasks on rwku's engine equal lm-eval's own transformers backend (HFLM).

Local task YAMLs over small JSON files (tests/lm_eval_tasks.py) cover the four request types:
multiple choice with a 2-shot header, greedy generation with stop strings, a loglikelihood
task with ``is_greedy`` and rolling log-likelihoods over several windows. Log-likelihoods must
agree within 1e-4, greedy outputs and ``is_greedy`` exactly.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from lm_eval_tasks import write_tasks
from rwku.cli import app, run_evaluation
from rwku.evaluation import lm_eval_backend
from rwku.evaluation.config import EvalConfig
from rwku.models.hf import HFLanguageModel
from rwku.models.resolve import load_model, resolve_model

lm_eval = pytest.importorskip("lm_eval")
TOL = 1e-4
TASKS = ["rwku_t_mc", "rwku_t_gen", "rwku_t_ll"]
GREEDY = ["rwku_t_ll"]  # output type loglikelihood: its `acc` reads is_greedy


@pytest.fixture(scope="module", autouse=True)
def _offline(tmp_path_factory):
    """Datasets cache in a temporary folder, and no attempt to reach the hub."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-datasets")))
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("lm-eval-tasks"))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(resolve_model(str(tiny_model_dir)))


def _run(model, tasks, task_dir):
    manager = lm_eval_backend.task_manager([str(task_dir)], tasks)
    return lm_eval.simple_evaluate(
        model=model, tasks=tasks, task_manager=manager, bootstrap_iters=0, log_samples=True
    )


def _hflm(loaded, **kwargs):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1, **kwargs)


def compare(ours: dict, ref: dict, tasks) -> dict[str, float]:
    """Assert per-request equality; return the largest log-likelihood difference per task."""
    worst = {}
    for task in tasks:
        worst[task] = 0.0
        a, b = ours["samples"][task], ref["samples"][task]
        assert len(a) == len(b) > 0
        for sa, sb in zip(a, b):
            assert sa["doc_id"] == sb["doc_id"]
            for ra, rb in zip(sa["resps"], sb["resps"]):
                ra, rb = ra[0], rb[0]
                if isinstance(ra, str):  # greedy generation: exactly equal
                    assert ra == rb
                elif isinstance(ra, tuple):  # (loglikelihood, is_greedy)
                    # is_greedy only where metrics read it (multiple-choice ones never do)
                    assert ra[1] == rb[1] or task not in GREEDY
                    worst[task] = max(worst[task], abs(ra[0] - rb[0]))
                else:  # rolling loglikelihood
                    worst[task] = max(worst[task], abs(ra - rb))
        for key, value in ref["results"][task].items():
            if isinstance(value, float):
                assert math.isclose(ours["results"][task][key], value, rel_tol=TOL, abs_tol=TOL), key
    assert all(w < TOL for w in worst.values()), worst
    return worst


def test_tiny_model_equals_lm_eval_hf_backend(tiny, task_dir):
    lm = HFLanguageModel(tiny.model, tiny.tokenizer, tiny.info, batch_size=4, progress=False)
    ours = _run(lm_eval_backend.make_lm(lm, greedy_tasks=GREEDY), TASKS, task_dir)
    ref = _run(_hflm(tiny), TASKS, task_dir)
    worst = compare(ours, ref, TASKS)
    print("max |Δ loglikelihood|:", worst)
    # the tiny model repeats its last token: one continuation is greedy, the rest are not
    greedy = [s["resps"][0][0][1] for s in ref["samples"]["rwku_t_ll"]]
    assert any(greedy) and not all(greedy)
    # the stop string cut generation short on both sides (the model writes ':' forever)
    assert all(s["resps"][0][0] == "" for s in ref["samples"]["rwku_t_gen"])


def test_rolling_windows_equal_lm_eval_hf_backend(tiny, task_dir):
    """A 32-token context splits the longer texts into several rolling windows."""
    lm = HFLanguageModel(tiny.model, tiny.tokenizer, tiny.info, batch_size=4, progress=False)
    assert max(len(lm.encode(t)) for t in __import__("lm_eval_tasks").TEXTS) > 64
    ours = _run(lm_eval_backend.make_lm(lm, max_length=32), ["rwku_t_roll"], task_dir)
    ref = _run(_hflm(tiny, max_length=32), ["rwku_t_roll"], task_dir)
    print("max |Δ rolling loglikelihood|:", compare(ours, ref, ["rwku_t_roll"]))


def test_evaluation_result_and_cache(tiny_model_dir, tiny, data_dir, task_dir, isolated_cache):
    kwargs = dict(
        model=str(tiny_model_dir),
        target="1",
        parts=["mmlu"],
        cfg=EvalConfig(limit=2, lm_eval_tasks=("rwku_t_mc", "rwku_t_gen"), lm_eval_include=(str(task_dir),)),
        data=str(data_dir),
        progress=False,
    )
    first = run_evaluation(**kwargs)
    utility = first["scores"]["utility"]
    assert {"gen", "details", "lm_eval"} <= set(utility)
    assert set(utility["lm_eval"]) == {"rwku_t_mc", "rwku_t_gen"}
    # --limit 2 applies to lm-eval tasks too
    assert utility["lm_eval"]["rwku_t_mc"]["n"] == 2 and len(first["items"]["lm_eval:rwku_t_mc"]) == 2
    ref = _run(_hflm(tiny), ["rwku_t_mc"], task_dir)  # all 6 items
    per_item = [s["acc"] for s in ref["samples"]["rwku_t_mc"][:2]]
    assert utility["lm_eval"]["rwku_t_mc"]["acc"] == pytest.approx(sum(per_item) / 2)
    assert "lm_eval:rwku_t_mc" in first["timings"]
    second = run_evaluation(**kwargs)
    assert sorted(second["cached_suites"]) == ["lm_eval:rwku_t_gen", "lm_eval:rwku_t_mc", "mmlu"]
    assert second["scores"] == json.loads(json.dumps(first["scores"]))
    # the lm-eval entry does not depend on the target: another target reads it from the cache
    other = run_evaluation(**{**kwargs, "target": "2"})
    assert sorted(other["cached_suites"]) == ["lm_eval:rwku_t_gen", "lm_eval:rwku_t_mc"]


def test_cli_eval_with_local_task(tiny_model_dir, data_dir, task_dir, isolated_cache, tmp_path):
    out = tmp_path / "r.json"
    args = ["eval", "--target", "1", "--model", str(tiny_model_dir), "--data", str(data_dir)]
    args += ["--suites", "mmlu", "--limit", "2", "--out", str(out), "-q"]
    result = CliRunner().invoke(
        app, [*args, "--lm-eval-tasks", "rwku_t_mc", "--lm-eval-include", str(task_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "rwku_t_mc:acc" in result.output and "Gen" in result.output
    saved = json.loads(out.read_text())
    assert set(saved["scores"]["utility"]["lm_eval"]["rwku_t_mc"]) >= {"acc", "acc_norm", "n"}
    assert saved["config"]["lm_eval_tasks"] == ["rwku_t_mc"]


def test_cli_unknown_task_is_one_line(data_dir, task_dir, monkeypatch):
    # index only the local folder (lm-eval's full index of ~15k names takes half a minute)
    real = lm_eval_backend._manager
    monkeypatch.setattr(lm_eval_backend, "_manager", lambda include, defaults: real(include, False))
    result = CliRunner().invoke(
        app,
        ["eval", "-t", "1", "--data", str(data_dir), "--lm-eval-tasks", "rwku_t_mc,nope"]
        + ["--lm-eval-include", str(task_dir)],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "unknown lm-eval task 'nope'" in result.output


def test_missing_lm_eval_is_a_config_error(monkeypatch, data_dir):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval → ImportError
    result = CliRunner().invoke(app, ["eval", "-t", "1", "--data", str(data_dir), "--lm-eval-tasks", "x"])
    assert result.exit_code == 2 and "pip install 'rwku[lmeval]'" in result.output


def test_yaml_key_reaches_the_evaluation_options(tmp_path):
    from rwku.experiments.unlearn import UnlearnConfig

    path = tmp_path / "c.yaml"
    path.write_text("lm_eval_tasks: arc_easy, winogrande\nlm_eval_include: [a, b]\n")
    cfg = UnlearnConfig.from_yaml(path).eval_config()
    assert cfg.lm_eval_tasks == ("arc_easy", "winogrande") and cfg.lm_eval_include == ("a", "b")
    # the built-in suites' cache key does not change when lm-eval tasks are added
    assert cfg.key() == EvalConfig().key()


@pytest.mark.slow
def test_default_model_equals_lm_eval_hf_backend(task_dir, data_dir, isolated_cache):
    loaded = load_model(None)
    lm = HFLanguageModel(loaded.model, loaded.tokenizer, loaded.info, progress=False)
    ours = _run(lm_eval_backend.make_lm(lm, greedy_tasks=GREEDY), TASKS, task_dir)
    ref = _run(_hflm(loaded), TASKS, task_dir)
    print("max |Δ loglikelihood| (default model):", compare(ours, ref, TASKS))
    print("generations:", [s["resps"][0][0] for s in ours["samples"]["rwku_t_gen"]])
    # and through `rwku eval` (its own model load, the engine's default batch size)
    cfg = EvalConfig(limit=1, lm_eval_tasks=tuple(TASKS), lm_eval_include=(str(task_dir),))
    result = run_evaluation(
        model=None, target="1", parts=["mmlu"], cfg=cfg, data=str(data_dir), progress=False
    )
    for task in TASKS:
        got = result["scores"]["utility"]["lm_eval"][task]
        assert got["n"] == 1
        # the reference ran all items, rwku eval the first (--limit 1): compare the per-item
        # metrics that aggregate by a mean (perplexity aggregates differently)
        for metric in {"acc", "acc_norm", "exact_match"} & set(got):
            first = ref["samples"][task][0][metric]
            assert got[metric] == pytest.approx(first, rel=TOL, abs=TOL), (task, metric)


def test_run_evaluates_lm_eval_tasks_before_and_after(
    tiny_model_dir, data_dir, task_dir, tmp_path, isolated_cache
):
    config = tmp_path / "c.yaml"
    config.write_text(f"lm_eval_tasks: rwku_t_mc\nlm_eval_include: {task_dir}\n")
    args = ["run", "--config", str(config), "--model", str(tiny_model_dir), "--data", str(data_dir)]
    args += ["--epochs", "1", "--batch-size", "2", "--lr", "1e-3", "--suites", "forget", "--limit", "1"]
    args += ["--run-dir", str(tmp_path / "r"), "--out", str(tmp_path / "r.json"), "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "rwku_t_mc:acc" in result.output and "Δ" in result.output
    record = json.loads((tmp_path / "r.json").read_text())
    for side in ("before", "after"):
        assert record[side]["scores"]["utility"]["lm_eval"]["rwku_t_mc"]["n"] == 1
