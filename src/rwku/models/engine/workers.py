"""Workers: a call's batches on parallel threads, and decoding work handed between them.

With ``workers`` > 1 (the CPU default: one per torch thread) batches run in that many Python
threads with one torch thread each: PyTorch releases the GIL inside its kernels, so two
single-threaded forward passes on two cores run at ~1.95x one, with no OpenMP barrier in
between to stall when another process holds a core. Output lengths are unknown when batches
are planned, so a thread whose batches are done waits in :class:`_Helpers` and is handed
live rows of a batch that another thread is still decoding (the handing-over itself is in
:meth:`rwku.models.engine.decoding.Decoding._decode`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

#: A decoding worker shares its rows with an idle one only while some row may still take at
#: least this many tokens (copying the rows' cache must be paid back).
MIN_SHARED_STEPS = 16


class _Helpers:
    """Decoding work handed between the worker threads of one call (work sharing).

    Output lengths are unknown when batches are planned, so one worker may still be decoding
    its longest outputs while the other has nothing left. A worker without work waits here; a
    worker that is decoding gives half of its live rows (with their cache rows) to a waiting
    one, so both cores decode until the end. Every task is given to a worker that is already
    waiting for one (``waiting`` counts them), so none is left behind in the queue.
    """

    def __init__(self, workers: int) -> None:
        self.cond = threading.Condition()
        self.tasks: deque[tuple[Callable[[], None], threading.Event]] = deque()
        self.waiting = 0
        self.busy = workers

    def wanted(self) -> bool:
        """Whether a worker waits for work (read without the lock: a hint, rechecked by give)."""
        return self.waiting > len(self.tasks)

    def give(self, task: Callable[[], None]) -> threading.Event | None:
        """Queue ``task`` for a waiting worker; the event is set when it has run (or failed)."""
        with self.cond:
            if self.waiting <= len(self.tasks):
                return None
            done = threading.Event()
            self.tasks.append((task, done))
            self.cond.notify_all()
            return done

    def wait(self, until: Callable[[], bool], final: bool = False) -> None:
        """Run given tasks until ``until()`` holds; ``final``: the caller then has no work left."""
        with self.cond:
            self.busy -= 1
            self.waiting += 1
            self.cond.notify_all()
            try:
                while not until():
                    if not self.tasks:
                        self.cond.wait()
                        continue
                    task, done = self.tasks.popleft()
                    self.waiting -= 1
                    self.busy += 1
                    self.cond.release()
                    try:
                        task()
                    finally:
                        self.cond.acquire()
                        self.busy -= 1
                        self.waiting += 1
                        done.set()
                        self.cond.notify_all()
            finally:
                self.waiting -= 1
                if not final:
                    self.busy += 1

    def finished(self) -> bool:
        """Nothing runs and nothing is queued (call with the lock held, as ``wait`` does)."""
        return self.busy == 0 and not self.tasks


class Workers:
    """The thread pools of :class:`rwku.models.hf.HFLanguageModel` (a mixin); while a call's
    batches run on :meth:`_run_workers`, ``self._helpers`` is that call's :class:`_Helpers`."""

    _helpers: _Helpers | None = None

    @staticmethod
    def _parallel(workers: int, fn: Callable, items: Sequence) -> None:
        """``fn(item)`` for every item on ``workers`` threads of one torch thread each."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rwku-engine") as pool:
                for future in [pool.submit(fn, item) for item in items]:
                    future.result()
        finally:
            torch.set_num_threads(threads)

    def _run_workers(self, workers: int, fn: Callable, items: Sequence) -> None:
        """``fn(item)`` for every item on ``workers`` threads of one torch thread each; a thread
        whose items are done helps the others decode (:class:`_Helpers`) until all are done."""
        queue = deque(items)
        lock = threading.Lock()
        helpers = _Helpers(workers)
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                while True:
                    with lock:
                        item = queue.popleft() if queue else None
                    if item is None:
                        break
                    fn(item)
            except BaseException as error:  # re-raised in the calling thread
                errors.append(error)
                with lock:
                    queue.clear()
            try:
                helpers.wait(helpers.finished, final=True)
            except BaseException as error:
                errors.append(error)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self._helpers = helpers
        try:
            pool = [threading.Thread(target=worker, name=f"rwku-engine_{i}") for i in range(workers)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
        finally:
            self._helpers = None
            torch.set_num_threads(threads)
        if errors:
            raise errors[0]
