"""Run a sweep's cells so that no kill, crash or second runner can lose or duplicate a result.

Layout of an output directory ``OUT``::

    OUT/manifest.json        the grid: sweep config and every cell (id, spec), written at start
    OUT/cells/<id>.json      one finished cell: its spec, status and before/after/epoch scores
    OUT/errors/<id>.json     a cell that raised (traceback); retried by the next run
    OUT/locks/<id>.lock      held (flock) while a process runs the cell: pid, host, start time
    OUT/progress*.json       cells done/left, seconds per cell, estimated time left
    OUT/runs/<id>/           weights, corpus and run.json, only with ``save_runs: true``

Why it is safe:

* **Atomic results.** A cell's result is one JSON file written to a temporary file, fsynced and
  renamed (:func:`rwku.io.atomic_write_json`). A cell is finished exactly when its file exists
  and parses, so a process killed at any moment — SIGKILL included — leaves either the whole
  result or none; a re-run skips the finished cells and redoes the others from the start.
* **No duplicates.** A cell's file name is its id (:mod:`rwku.experiments.grid`), so the same
  cell always lands in the same file, and a runner never overwrites a finished one. Before it
  runs a cell a process takes an exclusive ``flock`` on the cell's lock file and checks again
  that no result exists; a second runner (an overlapping shard, a sweep started twice) skips a
  locked cell. The kernel drops the lock when its process dies, however it dies, so no stale
  lock ever needs cleaning up. (flock works on local disks and on NFSv4; with Ray the driver
  alone writes results and holds the locks, so workers need no shared disk at all.)
* **Shared original-model evaluation.** Every cell evaluates the original model through
  :class:`~rwku.evaluation.cache.ResultCache`, keyed by model fingerprint, target, suite,
  options and data: the first cell of a target computes it, every later cell reads it.
* **Model loading.** Training changes the weights, so each cell starts from freshly loaded
  weights. The first load of a process resolves, hashes and (for GGUF) converts the model once;
  later loads read the converted safetensors from the cache. Measured for SmolLM2-135M on the
  2-core machine: reload plus a forward pass 0.6–1.0 s, a deep copy of an in-memory original
  0.6–0.7 s (and twice the memory), ``load_state_dict`` from a CPU copy 2.5 s — so reloading
  it is (docs/sweeps.md).

Parallelism uses existing engines only: ``--shard i/n`` for job arrays (disjoint, covering
slices of the grid), and Ray (:func:`run_with_ray`) when a cluster address is given.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rwku.errors import RwkuError
from rwku.experiments.grid import Cell, SweepPlan
from rwku.io import atomic_write_json

CELLS_DIR = "cells"
ERRORS_DIR = "errors"
LOCKS_DIR = "locks"
RUNS_DIR = "runs"
MANIFEST = "manifest.json"

Log = Callable[[str], None]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The output directory
# --------------------------------------------------------------------------------------------


def cell_path(out: Path, cell_id: str) -> Path:
    return out / CELLS_DIR / f"{cell_id}.json"


def read_cell(path: Path) -> dict[str, Any] | None:
    """A finished cell's result, or ``None`` if the file is missing or not a whole result."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or "cell" not in result or "status" not in result:
        return None
    return result


def is_finished(out: Path, cell: Cell) -> bool:
    result = read_cell(cell_path(out, cell.id))
    return result is not None and result["cell"].get("id") == cell.id


def write_manifest(out: Path, plan: SweepPlan) -> None:
    """The whole grid, so reports know which cells belong to the sweep and which are missing."""
    from rwku import __version__

    atomic_write_json(
        out / MANIFEST,
        {
            "name": plan.name,
            "rwku_version": __version__,
            "config": plan.config,
            "n_cells": len(plan.cells),
            "cells": [c.to_dict() for c in plan.cells],
        },
    )


def read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def cell_lock(out: Path, cell_id: str) -> Iterator[bool]:
    """Hold an exclusive lock on one cell while the block runs; yields False if it is taken.

    ``flock`` rather than ``O_CREAT | O_EXCL`` lock files: the kernel releases it when the
    holder dies (SIGKILL included), so a lock can never go stale. The file keeps the holder's
    pid, host and start time for people looking at a running sweep.
    """
    path = out / LOCKS_DIR / f"{cell_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}).encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _remove_stale_temps(out: Path, cell: Cell) -> None:
    """What a killed run of this cell left behind (only called under the cell's lock): temporary
    files of a write killed before its rename, and the scratch run folder of a cell with attacks
    (``rwku-<digest>-*``: the unlearned weights, 0.5 GB on the default model), which the run
    removes itself when it ends in any way but SIGKILL or a machine going down."""
    for tmp in (out / CELLS_DIR).glob(f".{cell.id}.json.*.tmp"):
        tmp.unlink(missing_ok=True)
    for scratch in out.glob(f"rwku-{cell.digest}-*"):
        if scratch.is_dir():
            shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# One cell
# --------------------------------------------------------------------------------------------


def _strip_items(result: Any) -> Any:
    """Scores without per-item outputs (``keep_items: false``): reports only need scores."""
    if isinstance(result, dict):
        if "scores" in result and "items" in result:
            return {k: v for k, v in result.items() if k != "items"}
        return {k: _strip_items(v) for k, v in result.items()}
    if isinstance(result, list):
        return [_strip_items(v) for v in result]
    return result


@dataclass
class RunOptions:
    """How cells run on this machine; never part of a cell id."""

    data: str | None = None
    device: str | None = None
    threads: int | None = None
    progress: bool = False
    log: Log = _stderr


def run_cell(cell: Cell, out: Path | None, opts: RunOptions) -> dict[str, Any]:
    """Run one cell and return its result record (not written; the caller does that).

    A diverged training run (NaN loss) is a deterministic outcome of the cell, not a crash, so
    it is a finished cell with status ``diverged``; any other exception propagates.
    """
    from rwku.experiments.unlearn import run_unlearning
    from rwku.methods.trainer import TrainingError, rss_mb

    rss_before = rss_mb()
    run_dir = (out / RUNS_DIR / cell.id) if (out is not None and cell.save_runs) else None
    scratch = None
    if cell.attacks and run_dir is None:  # the attacks read the weights back from a run folder
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix=f"rwku-{cell.digest}-", dir=out))
        run_dir = scratch / "run"
    cfg = cell.unlearn_config(
        data=opts.data,
        device=opts.device,
        threads=opts.threads,
        progress=opts.progress,
        run_dir=str(run_dir) if run_dir is not None else None,
    )
    started = time.perf_counter()
    error = None
    try:
        record = run_unlearning(
            cfg,
            log=lambda m: opts.log(f"  [{cell.id}] {m}"),
            record_epochs=cell.record_epochs or None,
            save=run_dir is not None,
        )
        status = record["run"]["status"]
        release_memory()  # the trained model's memory, before the attacks load theirs
        if cell.attacks and status == "finished":
            record["attacks"] = run_cell_attacks(cell, Path(record["run"]["run_dir"]), opts)
    except TrainingError as err:
        record, status, error = None, "diverged", str(err)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        rss_after = rss_mb()
        release_memory()
    if record is not None and not cell.keep_items:
        record = _strip_items(record)
    return {
        "cell": cell.to_dict(),
        "status": status,
        "error": error,
        "record": record,
        "seconds": round(time.perf_counter() - started, 2),
        # what the process holds between cells (MiB): before the cell, after it, and after
        # release_memory() gave the freed heap back — the sweep's growth, measured per cell
        "resident_mb": {
            k: None if v is None else round(v, 1)
            for k, v in (("before", rss_before), ("after", rss_after), ("released", rss_mb()))
        },
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "finished_at": _now(),
    }


def run_cell_attacks(cell: Cell, run_dir: Path, opts: RunOptions) -> dict[str, Any]:
    """The cell's ``attacks`` on its freshly unlearned model, as ``{attack: record}``."""
    from rwku.attacks.relearn import RelearnOptions
    from rwku.attacks.runner import attack_run
    from rwku.methods import get_method

    out: dict[str, Any] = {}
    guards = get_method(cell.method, **cell.options).guards
    for name, options in cell.attacks.items():
        if name == "relearn" and guards:  # the original weights: nothing of the guard to relearn
            opts.log(
                f"  [{cell.id}] relearn skipped: {cell.method} is an inference-time guard (docs/guards.md)"
            )
            continue
        record = attack_run(
            name,
            run_dir,
            relearn=RelearnOptions.from_dict(options) if name == "relearn" else None,
            model=cell.shared.get("model"),
            data=opts.data,
            device=opts.device or "cpu",
            progress=opts.progress,
            log=lambda m: opts.log(f"  [{cell.id}] {m}"),
            write=cell.save_runs,
        )
        out[name] = record
        release_memory()
    return out


def release_memory() -> None:
    """Give what a finished cell freed back to the system: collect, empty the CUDA cache and
    (glibc) trim the heap.

    Why: a sweep runs every cell in one process, and freed tensors stay in the C allocator's
    heap, so the process's resident memory only grows from cell to cell (12.5 GB held between
    cells after ~27 cells of the MoE study, where one cell peaks at 7-10 GB) and a second
    process on the machine no longer fits. ``malloc_trim(0)`` returns the free pages of every
    arena; elsewhere (macOS, musl) only the collection runs.
    """
    gc.collect()
    _empty_cuda_cache()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort only
        pass


def _write_error(out: Path, cell: Cell, exc: BaseException) -> None:
    atomic_write_json(
        out / ERRORS_DIR / f"{cell.id}.json",
        {
            "cell": cell.to_dict(),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "host": socket.gethostname(),
            "time": _now(),
        },
    )


def _record_result(out: Path, cell: Cell, result: dict[str, Any]) -> None:
    atomic_write_json(cell_path(out, cell.id), result)
    (out / ERRORS_DIR / f"{cell.id}.json").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Cells done and left, seconds per cell and the time left, printed and saved as JSON."""

    total: int
    done_before: int
    parallel: int = 1
    path: Path | None = None
    log: Log = _stderr
    done: int = 0
    failed: int = 0
    busy: int = 0
    seconds: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @property
    def left(self) -> int:
        return self.total - self.done_before - self.done - self.failed - self.busy

    def eta(self) -> float | None:
        if not self.seconds:
            return None
        return sum(self.seconds) / len(self.seconds) * self.left / max(1, self.parallel)

    def start(self) -> None:
        self.log(
            f"sweep: {self.total} cells, {self.done_before} finished earlier, "
            f"{self.total - self.done_before} to run"
            + (f" on {self.parallel} workers" if self.parallel > 1 else "")
        )
        self.save()

    def cell_done(self, cell_id: str, seconds: float, status: str) -> None:
        self.done += 1
        self.seconds.append(seconds)
        eta = self.eta()
        mean = sum(self.seconds) / len(self.seconds)
        self.log(
            f"[{self.done_before + self.done}/{self.total}] {cell_id}: {status} in {_hms(seconds)}; "
            f"{self.left} left, {_hms(mean)}/cell"
            + (f", about {_hms(eta)} to go" if eta is not None and self.left else "")
        )
        self.save()

    def cell_failed(self, cell_id: str, message: str) -> None:
        self.failed += 1
        self.log(f"[failed] {cell_id}: {message}")
        self.save()

    def cell_busy(self, cell_id: str) -> None:
        self.busy += 1
        self.log(f"[skipped] {cell_id}: running in another process")

    def save(self) -> None:
        if self.path is None:
            return
        mean = sum(self.seconds) / len(self.seconds) if self.seconds else None
        atomic_write_json(
            self.path,
            {
                "total": self.total,
                "finished_before": self.done_before,
                "finished_now": self.done,
                "failed": self.failed,
                "running_elsewhere": self.busy,
                "left": self.left,
                "seconds_per_cell": mean,
                "eta_seconds": self.eta(),
                "elapsed_seconds": round(time.perf_counter() - self.started, 1),
                "updated": _now(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
            },
        )


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """What one invocation did; ``ok`` when every one of its cells is finished."""

    total: int
    finished_before: int
    finished_now: int
    failed: list[str]
    busy: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed and not self.busy


def check_cells(cells: list[Cell], opts: RunOptions) -> None:
    """Validate every cell with this machine's options before the first one runs, so a typo in
    one cell cannot surface hours into a sweep: the config of each cell (again, with the
    runtime options), and the partial-mode layer ranges against the model's number of layers
    where that is known without loading it (:func:`rwku.models.resolve.model_layer_count`).
    The first mistake is a ConfigError naming the cell and the option."""
    from rwku.experiments.unlearn import check_layers
    from rwku.models.resolve import model_layer_count

    layers: dict[str | None, int | None] = {}
    for cell in cells:
        cfg = cell.unlearn_config(data=opts.data, device=opts.device, threads=opts.threads)
        if cfg.mode == "partial" and cell.mode == "partial":
            if cfg.model not in layers:
                layers[cfg.model] = model_layer_count(cfg.model)
            check_layers(cfg, layers[cfg.model], source=f"cell {cell.id}")


def prepare_out(out: Path, plan: SweepPlan) -> None:
    for sub in (CELLS_DIR, ERRORS_DIR, LOCKS_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_manifest(out, plan)


def run_sweep(
    plan: SweepPlan,
    out: str | os.PathLike[str],
    *,
    shard: tuple[int, int] | None = None,
    opts: RunOptions | None = None,
) -> SweepSummary:
    """Run the cells of ``plan`` (or of one shard of it) that are not finished yet, in order."""
    opts = opts or RunOptions()
    out = Path(out)
    check_cells(plan.cells, opts)
    prepare_out(out, plan)
    cells = plan.shard(*shard) if shard else plan.cells
    todo = [c for c in cells if not is_finished(out, c)]
    tag = f"-shard{shard[0]}of{shard[1]}" if shard else ""
    progress = Progress(len(cells), len(cells) - len(todo), path=out / f"progress{tag}.json", log=opts.log)
    progress.start()
    failed: list[str] = []
    busy: list[str] = []
    t0 = time.perf_counter()
    for cell in todo:
        with cell_lock(out, cell.id) as mine:
            if not mine:
                busy.append(cell.id)
                progress.cell_busy(cell.id)
                continue
            if is_finished(out, cell):  # finished by another runner since we looked
                progress.done_before += 1
                continue
            _remove_stale_temps(out, cell)
            opts.log(f"running {cell.id} ({cell.label()}, targets: {', '.join(cell.targets)})")
            try:
                result = run_cell(cell, out, opts)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # one bad cell must not stop a night-long sweep
                _write_error(out, cell, exc)
                failed.append(cell.id)
                progress.cell_failed(cell.id, f"{type(exc).__name__}: {exc}")
                continue
            _record_result(out, cell, result)
            progress.cell_done(cell.id, result["seconds"], result["status"])
    return SweepSummary(
        total=len(cells),
        finished_before=progress.done_before,
        finished_now=progress.done,
        failed=failed,
        busy=busy,
        seconds=round(time.perf_counter() - t0, 1),
    )


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------


def _ray_cell(cell_dict: dict[str, Any], opts_dict: dict[str, Any]) -> dict[str, Any]:
    """What a Ray worker runs: one cell, from plain dictionaries, returning its result.

    Errors come back as values (``{"exception": ...}``) so that the driver knows which cell
    failed; the worker never writes to the output directory, so it needs no shared disk.
    """
    cell = Cell.from_dict(cell_dict)
    opts = RunOptions(**opts_dict, log=lambda m: print(m, file=sys.stderr, flush=True))
    try:
        return run_cell(cell, None, opts)
    except Exception as exc:
        return {"exception": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def ray_init(address: str, **kwargs: Any) -> None:
    """Connect to a Ray cluster (``auto``, ``ray://host:10001``, ``host:6379``) or start a
    local one (``local``); a missing ``ray`` is a clear error, not an ImportError."""
    try:
        import ray
    except ImportError:
        raise RwkuError("--ray needs the ray package: pip install 'rwku[ray]' (or pip install ray)") from None
    if ray.is_initialized():
        return
    env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("RWKU_", "HF_"))}}
    if address == "local":
        ray.init(include_dashboard=False, runtime_env=env, **kwargs)
    else:
        ray.init(address=address, runtime_env=env, **kwargs)


def run_with_ray(
    plan: SweepPlan,
    out: str | os.PathLike[str],
    *,
    address: str,
    shard: tuple[int, int] | None = None,
    opts: RunOptions | None = None,
    num_gpus: float = 0.0,
    num_cpus: float = 1.0,
    max_in_flight: int | None = None,
    init_kwargs: dict[str, Any] | None = None,
) -> SweepSummary:
    """Run the unfinished cells as Ray tasks, each asking for ``num_gpus``/``num_cpus``.

    Ray decides where and when each task runs (across GPUs and machines) and reuses worker
    processes between tasks. The driver (this process) takes each cell's lock before it
    submits it, keeps at most ``max_in_flight`` cells submitted (default: twice what the
    cluster can run at once, so the lock files stay few), and writes every result as it
    arrives. Killing the driver ends its tasks; their cells are simply run again next time.
    """
    import ray

    opts = opts or RunOptions()
    out = Path(out)
    check_cells(plan.cells, opts)
    ray_init(address, **(init_kwargs or {}))
    prepare_out(out, plan)
    cells = plan.shard(*shard) if shard else plan.cells
    todo = [c for c in cells if not is_finished(out, c)]
    resources = ray.cluster_resources()
    if num_gpus > 0:
        slots = int(resources.get("GPU", 0) // num_gpus)
    else:
        slots = int(resources.get("CPU", 1) // max(num_cpus, 1e-9))
    if slots < 1:
        raise RwkuError(
            f"the Ray cluster has {resources.get('GPU', 0):g} GPUs and {resources.get('CPU', 0):g} CPUs: "
            f"not enough for one cell ({num_gpus:g} GPUs, {num_cpus:g} CPUs per cell)"
        )
    limit = max_in_flight or 2 * slots
    # max_calls=0: keep GPU workers alive between tasks (Ray's default for GPU tasks is to
    # restart the worker after every task, which would reload torch each time).
    task = ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_calls=0, max_retries=1)(_ray_cell)
    tag = f"-shard{shard[0]}of{shard[1]}" if shard else ""
    progress = Progress(
        len(cells), len(cells) - len(todo), parallel=slots, path=out / f"progress-ray{tag}.json", log=opts.log
    )
    progress.start()
    opts_dict = {"data": opts.data, "device": opts.device, "threads": opts.threads, "progress": False}
    pending = iter(todo)
    in_flight: dict[Any, tuple[Cell, contextlib.ExitStack]] = {}
    failed: list[str] = []
    busy: list[str] = []
    t0 = time.perf_counter()

    def submit_one() -> bool:
        for cell in pending:
            stack = contextlib.ExitStack()
            if not stack.enter_context(cell_lock(out, cell.id)):
                stack.close()
                busy.append(cell.id)
                progress.cell_busy(cell.id)
                continue
            if is_finished(out, cell):
                stack.close()
                progress.done_before += 1
                continue
            _remove_stale_temps(out, cell)
            in_flight[task.remote(cell.to_dict(), opts_dict)] = (cell, stack)
            return True
        return False

    try:
        while len(in_flight) < limit and submit_one():
            pass
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            cell, stack = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # the worker died (OOM kill, node lost) after its retry
                result = {"exception": f"{type(exc).__name__}: {exc}", "traceback": ""}
            with stack:
                if "exception" in result:
                    atomic_write_json(
                        out / ERRORS_DIR / f"{cell.id}.json",
                        {
                            "cell": cell.to_dict(),
                            "error": result["exception"],
                            "traceback": result["traceback"],
                        },
                    )
                    failed.append(cell.id)
                    progress.cell_failed(cell.id, result["exception"])
                else:
                    _record_result(out, cell, result)
                    progress.cell_done(cell.id, result["seconds"], result["status"])
            while len(in_flight) < limit and submit_one():
                pass
    finally:
        for _cell, stack in in_flight.values():
            stack.close()
    return SweepSummary(
        total=len(cells),
        finished_before=progress.done_before,
        finished_now=progress.done,
        failed=failed,
        busy=busy,
        seconds=round(time.perf_counter() - t0, 1),
    )


def format_summary(summary: SweepSummary) -> str:
    parts = [
        f"{summary.finished_before + summary.finished_now}/{summary.total} cells finished "
        f"({summary.finished_now} now, in {_hms(summary.seconds)})"
    ]
    if summary.failed:
        parts.append(f"{len(summary.failed)} failed (see errors/; a re-run retries them)")
    if summary.busy:
        parts.append(f"{len(summary.busy)} running in another process")
    return "; ".join(parts)


__all__ = [
    "RunOptions",
    "SweepSummary",
    "cell_lock",
    "cell_path",
    "format_summary",
    "is_finished",
    "read_cell",
    "read_manifest",
    "run_cell",
    "run_sweep",
    "run_with_ray",
]
