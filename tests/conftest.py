"""Shared fixtures: the real RWKU data and default model from ../shared, and a tiny random model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA_DIR = SHARED / "data" / "rwku"
CONFORMANCE = SHARED / "conformance" / "stephen-king-smollm2"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "eval").exists():
        pytest.skip("../shared/data/rwku is not available")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from rwku.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Result and model caches in a temporary folder, so tests never see each other's results."""
    monkeypatch.setenv("RWKU_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
