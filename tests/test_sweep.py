"""`rwku sweep`: grid expansion and validation, resume, locks, SIGKILL safety, shards and Ray.

Every sweep here runs on the tiny random model with one item per probe list, one torch thread
and fixed seeds, so a cell takes about a second and its numbers are reproducible bit for bit:
that is what lets the tests compare a killed-and-restarted sweep with an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rwku.cli import app
from rwku.errors import ConfigError
from rwku.experiments.grid import Cell, expand_grid, parse_shard
from rwku.experiments.sweep import RunOptions, cell_lock, read_cell, run_sweep

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def tiny_grid(model_dir: Path, **extra) -> dict:
    """Two targets × (ICU, NPO LoRA with a recorded epoch): four cells of about a second."""
    grid = {
        "name": "tiny",
        "model": str(model_dir),
        "targets": ["Stephen King", 2],
        "methods": ["icu", {"name": "npo", "lr": 1.0e-3}],
        "modes": ["lora"],
        "suites": "forget,neighbor",
        "limit": 1,
        "corpus": "authors",
        "corpus_size": 4,
        "max_length": 48,
        "epochs": 2,
        "batch_size": 2,
        "record_epochs": [1],
        "threads": 1,
    }
    grid.update(extra)
    return grid


def numbers(result: dict) -> dict:
    """What must be identical between two runs of a cell: status, every score, the losses."""
    rec = result["record"]

    def scores(res: dict) -> dict:
        return res["scores"] if "scores" in res else {t: r["scores"] for t, r in res.items()}

    return {
        "status": result["status"],
        "before": scores(rec["before"]),
        "after": scores(rec["after"]),
        "epochs": [(e["epoch"], scores(e["after"])) for e in rec.get("epochs", [])],
        "losses": (rec["run"]["hyperparameters"] or {}).get("losses"),
    }


def cell_numbers(out: Path) -> dict[str, dict]:
    results = {}
    for f in sorted((out / "cells").glob("*.json")):
        result = read_cell(f)
        assert result is not None, f"{f} is not a whole result"
        assert result["cell"]["id"] == f.stem
        results[f.stem] = numbers(result)
    return results


def resolve(t):
    return {1: "Stephen King", 2: "Confucius", 3: "Bruce Lee"}.get(t, t) if isinstance(t, int) else t


# --------------------------------------------------------------------------------------------
# Grid expansion and validation (no model needed)
# --------------------------------------------------------------------------------------------


def test_grid_expands_every_axis_in_order():
    plan = expand_grid(
        {
            "targets": ["1-2", "Bruce Lee"],
            "methods": [
                "icu",
                {"name": "repe", "grid": {"alpha": [0.5, 1.5]}},
                {"name": "npo", "modes": ["full", "lora"], "grid": {"lr": [1e-5, 2e-5], "beta": [0.1]}},
                {"name": "ga", "modes": ["partial"], "grid": {"layers": ["0-4", "4-8"]}},
            ],
            "setting": ["single", "batch"],
            "batch_sizes": [2, 3],
            "seeds": [0, 1],
            "record_epochs": [2, 1],
        },
        resolve_target=resolve,
    )
    per_group = 1 + 2 + 2 * 2 + 2  # icu, repe α, npo mode×lr, ga layers
    assert len(plan.cells) == (3 + 2) * per_group * 2  # (3 targets + 2 batch sizes) × methods × seeds
    first = plan.cells[0]
    assert first.targets == ("Stephen King",) and first.method == "icu" and first.mode is None
    assert first.record_epochs == ()  # inference-time methods have no epochs
    npo = [c for c in plan.cells if c.method == "npo"]
    assert {c.mode for c in npo} == {"full", "lora"} and npo[0].record_epochs == (1.0, 2.0)
    assert {c.options["beta"] for c in npo} == {0.1} and {c.params["lr"] for c in npo} == {1e-5, 2e-5}
    batches = [c for c in plan.cells if c.setting == "batch"]
    assert {c.targets for c in batches} == {
        ("Stephen King", "Confucius"),
        ("Stephen King", "Confucius", "Bruce Lee"),
    }
    # a batch cell unlearns its k targets together; a single cell its one target
    assert {c.unlearn_config().setting for c in batches} == {"batch"}
    assert first.unlearn_config().setting == "single"
    ga = [c for c in plan.cells if c.method == "ga"]
    assert {c.params["layers"] for c in ga} == {"0-4", "4-8"}
    assert len({c.id for c in plan.cells}) == len(plan.cells)
    # run order keeps every cell of one target together (its original-model evaluation is cached once)
    single = [c.targets[0] for c in plan.cells if c.setting == "single"]
    assert single == sorted(single, key=["Stephen King", "Confucius", "Bruce Lee"].index)


def test_cell_ids_are_stable_and_depend_only_on_what_changes_numbers():
    base = {"targets": [1, 2], "methods": ["icu", {"name": "npo", "lr": 1e-3}], "limit": 3}
    a = expand_grid(base, resolve_target=resolve)
    # same grid written differently: other key order, ids instead of names, speed-only options
    b = expand_grid(
        {
            "limit": 3,
            "methods": [{"lr": 1e-3, "name": "npo"}, "icu"],
            "targets": ["Confucius", "Stephen King"],
            "threads": 7,
            "eval_batch_size": 3,
            "device": "cpu",
        },
        resolve_target=resolve,
    )
    assert {c.id for c in a.cells} == {c.id for c in b.cells}
    c = expand_grid({**base, "limit": 4}, resolve_target=resolve)
    assert not {x.id for x in a.cells} & {x.id for x in c.cells}
    d = expand_grid({**base, "methods": ["icu", {"name": "npo", "lr": 2e-3}]}, resolve_target=resolve)
    assert len({x.id for x in a.cells} & {x.id for x in d.cells}) == 2  # only ICU's cells are shared
    cell = a.cells[-1]
    assert Cell.from_dict(json.loads(json.dumps(cell.to_dict()))).id == cell.id
    assert cell.id.startswith("npo-lora-confucius-lr0.001-s0-")


def test_shards_are_disjoint_balanced_and_cover_the_grid():
    plan = expand_grid({"targets": ["1-3"], "methods": ["icu", "npo", "ga"]}, resolve_target=resolve)
    shards = [plan.shard(i, 4) for i in range(4)]
    ids = [c.id for s in shards for c in s]
    assert sorted(ids) == sorted(c.id for c in plan.cells) and len(set(ids)) == len(ids)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"targets": [1], "methods": ["icu"], "learning_rate": 1}, "unknown key(s) learning_rate"),
        ({"targets": [1], "methods": ["icu"], "method": "npo"}, "method is set per cell"),
        ({"targets": [1], "methods": ["icu"], "limit": "five"}, "limit must be int"),
        ({"targets": [1], "methods": ["icu"], "use_cache": 1}, "use_cache must be bool"),
        ({"targets": [1], "methods": [{"name": "npo", "lr": "fast"}]}, "lr must be float"),
        ({"targets": [1], "methods": [{"name": "npo", "grid": {"lr": 1e-3}}]}, "must be a non-empty list"),
        ({"targets": [1], "methods": [{"name": "npo", "grid": {"alpha": [1]}}]}, "cannot grid over 'alpha'"),
        ({"targets": [1], "methods": [{"name": "npo", "options": {"gamma": 1}}]}, "has no option gamma"),
        ({"targets": [1], "methods": [{"name": "icu", "lr": 1e-3}]}, "does not train"),
        ({"targets": [1], "methods": [{"name": "icu", "modes": ["lora"]}]}, "takes no modes"),
        ({"targets": [1], "methods": [{"name": "npo", "modes": ["sideways"]}]}, "mode must be"),
        ({"targets": [1], "methods": [{"name": "npo", "speed": 2}]}, "unknown key(s) speed"),
        ({"targets": [1], "methods": ["forgetful"]}, "unknown method"),
        ({"targets": [1]}, "no methods"),
        ({"methods": ["icu"]}, "no targets"),
        ({"targets": ["3-1"], "methods": ["icu"]}, "range"),
        ({"targets": [1, "Stephen King"], "methods": ["icu"]}, "listed twice"),
        ({"targets": [1], "methods": ["icu"], "setting": "batch"}, "needs batch_sizes"),
        ({"targets": [1, 2], "methods": ["icu"], "setting": "batch", "batch_sizes": [3]}, "larger than"),
        ({"targets": [1], "methods": ["icu"], "batch_sizes": [1]}, "needs setting: batch"),
        ({"targets": [1], "methods": ["icu"], "setting": "double"}, "setting must be"),
        ({"targets": [1], "methods": ["icu"], "record_epochs": [0]}, "positive number"),
        ({"targets": [1], "methods": ["icu"], "seed": 1, "seeds": [2]}, "not both"),
        ({"targets": [1], "methods": ["icu"], "suites": "forget,memory"}, "unknown suite"),
    ],
)
def test_grid_mistakes_are_one_clear_config_error(grid, message):
    with pytest.raises(ConfigError, match=None) as info:
        expand_grid(grid, resolve_target=resolve)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_config_errors_exit_2_with_one_line(tmp_path, data_dir):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump({"targets": [1], "methods": ["icu"], "lerning_rate": 1}))
    result = runner.invoke(app, ["sweep", str(cfg), "--out", str(tmp_path / "o"), "--data", str(data_dir)])
    assert result.exit_code == 2
    assert "lerning_rate" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    cfg.write_text(yaml.safe_dump({"targets": ["Nobody Atall"], "methods": ["icu"]}))
    result = runner.invoke(app, ["sweep", str(cfg), "--out", str(tmp_path / "o"), "--data", str(data_dir)])
    assert result.exit_code == 2 and "Nobody Atall" in result.output
    cfg.write_text("targets: [1\n")
    result = runner.invoke(app, ["sweep", str(cfg), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "invalid YAML" in result.output
    result = runner.invoke(app, ["sweep", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not found" in result.output
    cfg.write_text(yaml.safe_dump({"targets": [1], "methods": ["icu"]}))
    result = runner.invoke(
        app, ["sweep", str(cfg), "--out", str(tmp_path / "o"), "--data", str(data_dir), "--shard", "2/2"]
    )
    assert result.exit_code == 2 and "shard" in result.output


# --------------------------------------------------------------------------------------------
# Running, resuming, locks
# --------------------------------------------------------------------------------------------


def test_sweep_runs_every_cell_and_resume_redoes_only_unfinished(
    tiny_model_dir, data_dir, tmp_path, isolated_cache
):
    plan = expand_grid(tiny_grid(tiny_model_dir), resolve_target=resolve)
    out = tmp_path / "out"
    logs: list[str] = []
    opts = RunOptions(data=str(data_dir), log=logs.append)
    summary = run_sweep(plan, out, opts=opts)
    assert summary.ok and summary.finished_now == 4
    first = cell_numbers(out)
    assert set(first) == {c.id for c in plan.cells}
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["id"] for c in manifest["cells"]] == [c.id for c in plan.cells]
    npo = next(c for c in plan.cells if c.method == "npo")
    rec = read_cell(out / "cells" / f"{npo.id}.json")
    assert [e["epoch"] for e in rec["record"]["epochs"]] == [1.0, 2.0]
    assert rec["record"]["epochs"][-1]["after"]["scores"] == rec["record"]["after"]["scores"]
    assert "items" not in rec["record"]["after"]  # keep_items is off by default
    assert rec["record"]["run"]["run_dir"] is None and not (out / "runs").exists()
    held = rec["resident_mb"]  # what the process held around the cell (Linux)
    assert set(held) == {"before", "after", "released"} and all(v > 0 for v in held.values())
    progress = json.loads((out / "progress.json").read_text())
    assert progress["left"] == 0 and progress["finished_now"] == 4 and progress["seconds_per_cell"] > 0
    # the original model is evaluated once per target: the target's second cell reads the cache
    cached = {}
    for c in plan.cells:
        before = read_cell(out / "cells" / f"{c.id}.json")["record"]["before"]
        cached.setdefault(c.targets[0], []).append(before["cached_suites"])
    assert cached == {t: [[], ["forget", "neighbor"]] for t in ("Stephen King", "Confucius")}
    assert len(list((isolated_cache / "results").glob("*.json"))) == 2 * 2  # 2 targets × 2 suites

    # a finished cell is never rerun; a removed or damaged one is
    icu = next(c for c in plan.cells if c.method == "icu")
    (out / "cells" / f"{npo.id}.json").unlink()
    (out / "cells" / f"{icu.id}.json").write_text('{"cell": ')
    stamps = {f.name: f.stat().st_mtime_ns for f in (out / "cells").glob("*.json")}
    logs.clear()
    summary = run_sweep(plan, out, opts=opts)
    assert summary.ok and summary.finished_now == 2 and summary.finished_before == 2
    assert sorted(m.split()[1] for m in logs if m.startswith("running ")) == sorted([npo.id, icu.id])
    for name, stamp in stamps.items():
        if name not in (f"{icu.id}.json",):
            assert (out / "cells" / name).stat().st_mtime_ns == stamp
    assert cell_numbers(out) == first
    # a third run has nothing to do
    summary = run_sweep(plan, out, opts=opts)
    assert summary.ok and summary.finished_now == 0 and summary.finished_before == 4


def test_a_locked_cell_is_left_to_its_holder(tiny_model_dir, data_dir, tmp_path, isolated_cache):
    plan = expand_grid(tiny_grid(tiny_model_dir, methods=["icu"]), resolve_target=resolve)
    out = tmp_path / "out"
    taken = plan.cells[0]
    # what killed runs of both cells left: a scratch run folder each, a half-written result
    scratch = {c.id: out / f"rwku-{c.digest}-killed" / "run" for c in plan.cells[:2]}
    for folder in scratch.values():
        folder.mkdir(parents=True)
        (folder / "run.json").write_text("{}")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    stale_tmp = out / "cells" / f".{plan.cells[1].id}.json.123.tmp"
    stale_tmp.write_text("{")
    with cell_lock(out, taken.id) as mine:
        assert mine
        with cell_lock(out, taken.id) as again:  # flock is per open file: a second open is refused
            assert not again
        summary = run_sweep(plan, out, opts=RunOptions(data=str(data_dir), log=lambda m: None))
    assert summary.busy == [taken.id] and not summary.ok
    assert not (out / "cells" / f"{taken.id}.json").exists()
    assert (out / "cells" / f"{plan.cells[1].id}.json").exists()
    # the cell it ran had its leftovers removed; the locked cell's scratch belongs to its holder
    assert not scratch[plan.cells[1].id].parent.exists() and not stale_tmp.exists()
    assert (scratch[taken.id] / "run.json").exists()
    holder = json.loads((out / "locks" / f"{taken.id}.lock").read_text())
    assert holder["pid"] == os.getpid()
    summary = run_sweep(plan, out, opts=RunOptions(data=str(data_dir), log=lambda m: None))
    assert summary.ok and summary.finished_now == 1
    assert not scratch[taken.id].parent.exists()


def test_a_failing_cell_is_recorded_and_retried_without_stopping_the_sweep(
    tiny_model_dir, data_dir, tmp_path, isolated_cache, monkeypatch
):
    # the cell on layers 1-2 raises while it runs (a layer range the model lacks is now caught
    # before any cell runs, see below): that cell fails, the others run
    import rwku.experiments.unlearn as unlearn

    real = unlearn.run_unlearning

    def flaky(cfg, **kwargs):
        if cfg.mode == "partial" and cfg.layers == "1-2":
            raise RuntimeError("layer 1 exploded")
        return real(cfg, **kwargs)

    monkeypatch.setattr(unlearn, "run_unlearning", flaky)
    grid = tiny_grid(
        tiny_model_dir,
        targets=[1],
        methods=["icu", {"name": "ga", "modes": ["partial"], "grid": {"layers": ["1-2", "0-1"]}}],
        record_epochs=None,
    )
    plan = expand_grid(grid, resolve_target=resolve)
    out = tmp_path / "out"
    summary = run_sweep(plan, out, opts=RunOptions(data=str(data_dir), log=lambda m: None))
    assert len(summary.failed) == 1 and "layers1-2" in summary.failed[0]
    assert summary.finished_now == 2 and not summary.ok
    error = json.loads((out / "errors" / f"{summary.failed[0]}.json").read_text())
    assert "layer" in error["error"] and error["traceback"]
    again = run_sweep(plan, out, opts=RunOptions(data=str(data_dir), log=lambda m: None))
    assert again.failed == summary.failed and again.finished_now == 0


# --------------------------------------------------------------------------------------------
# SIGKILL at random moments, in a real subprocess
# --------------------------------------------------------------------------------------------


def _sweep_cmd(cfg: Path, out: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rwku.cli",
        "sweep",
        str(cfg),
        "--out",
        str(out),
        "--data",
        str(data_dir),
        "-q",
        *extra,
    ]


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["RWKU_CACHE"] = str(cache)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_sweep_killed_five_times_with_sigkill_ends_like_an_uninterrupted_one(
    tiny_model_dir, data_dir, tmp_path
):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(tiny_grid(tiny_model_dir, targets=[1, 2, 3])))
    ref_out = tmp_path / "reference"
    done = subprocess.run(
        _sweep_cmd(cfg, ref_out, data_dir), env=_env(tmp_path / "cache-ref"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reference = cell_numbers(ref_out)
    assert len(reference) == 6

    out = tmp_path / "killed"
    rng = random.Random(1234)
    lines_per_cell = max(1, len(done.stderr.splitlines()) // len(reference))
    history = []
    for _ in range(5):
        # A random moment of the remaining work: after the n-th line of the log (0 = still
        # importing), plus up to half a second, so kills land in imports, evaluation, training
        # and result writing alike, whatever the speed of the machine.
        left = len(reference) - len(list(out.glob("cells/*.json")))
        target_line = rng.randint(0, max(0, lines_per_cell * left - 2))
        jitter = rng.uniform(0.0, 0.5)
        proc = subprocess.Popen(
            _sweep_cmd(cfg, out, data_dir),
            env=_env(tmp_path / "cache-killed"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        for _line in range(target_line):
            if not proc.stderr.readline():
                break
        time.sleep(jitter)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        history.append((target_line, round(jitter, 2), proc.returncode, len(list(out.glob("cells/*.json")))))
    print("kills (after log line, + s, return code, cells finished):", history)
    assert [rc for *_, rc, _ in history] == [-signal.SIGKILL] * 5, history
    done = subprocess.run(
        _sweep_cmd(cfg, out, data_dir), env=_env(tmp_path / "cache-killed"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert cell_numbers(out) == reference
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(f"{c}.json" for c in reference)


# --------------------------------------------------------------------------------------------
# Shards and Ray give the plain run's cells
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_run(tiny_model_dir, data_dir, tmp_path_factory):
    """The plain, sequential run of the tiny grid that shards and Ray are compared with."""
    tmp = tmp_path_factory.mktemp("plain")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RWKU_CACHE", str(tmp / "cache"))
        plan = expand_grid(tiny_grid(tiny_model_dir), resolve_target=resolve)
        assert run_sweep(plan, tmp / "out", opts=RunOptions(data=str(data_dir), log=lambda m: None)).ok
    return plan, cell_numbers(tmp / "out")


def test_shards_together_give_the_plain_run(plain_run, data_dir, tmp_path, tiny_model_dir):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(tiny_grid(tiny_model_dir)))
    out = tmp_path / "out"
    env = _env(tmp_path / "cache")
    procs = [
        subprocess.Popen(
            _sweep_cmd(cfg, out, data_dir, "--shard", f"{i}/2"), env=env, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err[-2000:]
    plan, reference = plain_run
    assert cell_numbers(out) == reference
    assert (out / "progress-shard0of2.json").exists() and (out / "progress-shard1of2.json").exists()


def test_ray_local_cluster_gives_the_plain_run(plain_run, data_dir, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'rwku[ray]')")
    from rwku.experiments.sweep import run_with_ray

    plan, reference = plain_run
    monkeypatch.setenv("RWKU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "out"
    logs: list[str] = []
    try:
        summary = run_with_ray(
            plan,
            out,
            address="local",
            opts=RunOptions(data=str(data_dir), threads=1, log=logs.append),
            num_cpus=1,
            init_kwargs={"num_cpus": 2, "log_to_driver": False},
        )
    finally:
        ray.shutdown()
    assert summary.ok, logs
    assert "on 2 workers" in logs[0]
    assert cell_numbers(out) == reference
    hosts = {read_cell(f)["pid"] for f in (out / "cells").glob("*.json")}
    assert os.getpid() not in hosts  # the cells ran in Ray's worker processes, not here


def test_one_invalid_cell_fails_the_sweep_before_any_cell_runs(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    """A layer range the (2-layer) model does not have, in one cell among valid ones: the sweep
    stops before the first cell, naming that cell and the option, and exits 2 from the CLI."""
    import rwku.experiments.sweep as sweep_mod

    def no_cell(*args, **kwargs):
        raise AssertionError("a cell ran before every cell was validated")

    monkeypatch.setattr(sweep_mod, "run_cell", no_cell)
    grid = {
        "model": str(tiny_model_dir),
        "targets": [1],
        "methods": ["icu", {"name": "ga", "modes": ["partial"], "grid": {"layers": ["0-1", "1-3"]}}],
    }
    plan = expand_grid(grid, resolve_target=resolve)  # valid as a config: the model is not read
    bad = next(c for c in plan.cells if c.params.get("layers") == "1-3")
    with pytest.raises(ConfigError) as info:
        run_sweep(plan, tmp_path / "out", opts=RunOptions(data=str(data_dir), log=lambda m: None))
    message = str(info.value)
    assert f"cell {bad.id}" in message and "layers '1-3'" in message and "2 layers" in message
    assert not (tmp_path / "out").exists()

    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(grid))
    result = runner.invoke(app, ["sweep", str(cfg), "--out", str(tmp_path / "o"), "--data", str(data_dir)])
    assert result.exit_code == 2 and bad.id in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_release_memory_gives_a_fragmented_heap_back():
    """A sweep's cells free their tensors into the C heap; collecting alone keeps the pages."""
    from rwku.experiments.sweep import release_memory
    from rwku.methods.trainer import rss_mb

    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        libc = ""
    if rss_mb() is None or not libc.startswith("glibc"):
        pytest.skip("resident memory and malloc_trim are glibc/Linux only")
    # 64 KiB blocks stay below glibc's mmap threshold, so they live in the heap; the last one is
    # kept, so the heap's top cannot shrink: only trimming the free pages below it returns them
    blocks = [bytearray(64 * 1024) for _ in range(4096)]  # 256 MiB, touched
    keep = blocks[-1]
    del blocks
    import gc

    gc.collect()
    held = rss_mb()
    release_memory()
    released = rss_mb()
    assert held - released > 128, (held, released)
    assert len(keep) == 64 * 1024


def test_layer_count_of_the_default_model_is_read_without_loading_it():
    from rwku.models.resolve import model_layer_count

    if not (ROOT.parent / "shared" / "models").is_dir() and not os.environ.get("RWKU_MODEL"):
        pytest.skip("the default model is not beside this checkout")
    assert model_layer_count(None) == 30
