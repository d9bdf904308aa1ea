"""Forget set: FB, QA and nine adversarial-attack probes about the target (lower is better)."""

from __future__ import annotations

from rwku.evaluation.config import EvalConfig
from rwku.evaluation.suites.base import SuiteResult
from rwku.evaluation.suites.probes import run_probes
from rwku.models.backend import LanguageModel


def run(lm: LanguageModel, data, cfg: EvalConfig) -> SuiteResult:
    return run_probes(lm, data.forget, cfg, "forget")
