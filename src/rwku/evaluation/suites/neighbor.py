"""Neighbor set: FB and QA probes about entities near the target (higher is better)."""

from __future__ import annotations

from rwku.evaluation.config import EvalConfig
from rwku.evaluation.suites.base import SuiteResult
from rwku.evaluation.suites.probes import run_probes
from rwku.models.backend import LanguageModel


def run(lm: LanguageModel, data, cfg: EvalConfig) -> SuiteResult:
    return run_probes(lm, data.neighbor, cfg, "neighbor")
