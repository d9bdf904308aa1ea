"""A result cache keyed by everything that determines a suite's numbers.

Key = (model fingerprint, target, suite, protocol, evaluation options, data fingerprint).
The original model of a study is then evaluated once, however many methods are compared
against it. A model without a fingerprint (e.g. weights changed in memory) is never cached.

Several processes may want the same entry at once (the shards of a sweep start on the same
target together): :meth:`ResultCache.lock` serialises them on a lock file beside the entry,
so the second one waits and then reads what the first wrote instead of computing it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from rwku.io import atomic_write_json


def cache_root() -> Path:
    return Path(os.environ.get("RWKU_CACHE") or user_cache_dir("rwku")) / "results"


class ResultCache:
    def __init__(self, root: Path | None = None, enabled: bool = True) -> None:
        self.root = root or cache_root()
        self.enabled = enabled

    @staticmethod
    def key(**parts: str | None) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: str) -> dict | None:
        path = self.root / f"{key}.json"
        if not self.enabled or not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged entry is recomputed, never trusted

    def put(self, key: str, value: dict) -> None:
        atomic_write_json(self.root / f"{key}.json", value)

    def value(self, key: str, compute: Callable[[], Any]) -> Any:
        """The JSON value cached under ``key``, computed (once across processes) and stored if
        missing: ``lock``, ``get`` and ``put`` for a value that is not a suite result."""
        with self.lock(key):
            hit = self.get(key)
            if hit is not None:
                return hit["value"]
            value = compute()
            self.put(key, {"value": value})
            return value

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock on ``key`` across processes (flock; a no-op where unavailable).

        Used as ``with cache.lock(key): hit = cache.get(key) ...compute and put``; the lock is
        released when the process dies, so a killed run never blocks the next one.
        """
        if not self.enabled:
            yield
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock, at worst a duplicate computation
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{key}.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
