"""Membership inference on forget-member (FM) and retain-member (RM) texts.

Each text is scored alone as raw text (no chat template) with the reference's LOSS, Zlib,
Min-K% and Min-K%++ (k = 10..100%). Per-text values are stored exactly as the reference
computes them (higher = more member-like). Suite means are reported on the paper's scale:
negated and ×100, so LOSS is the mean NLL ×100 as in Table 1, and for every score a higher
FM value after unlearning means the target's texts look less familiar.

Beyond RWKU: ``auc`` holds, per score, the ROC AUC of telling FM from RM texts (FM as the
positive class, on the raw member-likeness scores). Before unlearning both sets are familiar;
a method that forgets the target pushes the AUC down.
"""

from __future__ import annotations

import numpy as np

from rwku.evaluation.config import EvalConfig
from rwku.evaluation.metrics import mia_scores, roc_auc
from rwku.evaluation.suites.base import SuiteResult
from rwku.models.backend import LanguageModel

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def public_name(key: str) -> str:
    """'mink++_0.2' → 'minkpp_20', 'mink_0.1' → 'mink_10'; loss and zlib unchanged."""
    if key.startswith("mink"):
        base, ratio = key.rsplit("_", 1)
        return f"{base.replace('++', 'pp')}_{round(float(ratio) * 100)}"
    return key


def _score_texts(lm: LanguageModel, texts: list, cfg: EvalConfig, desc: str) -> list[dict]:
    raw = [(cfg.prompt_prefix.format(subject=t.subject) if cfg.prompt_prefix else "") + t.text for t in texts]
    stats = lm.token_stats(raw, desc=desc)
    return [mia_scores(s.token_logprobs, s.mu, s.sigma2, text) for s, text in zip(stats, raw)]


def _means(rows: list[dict]) -> dict[str, float | None]:
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None and not np.isnan(r[key])]
        out[public_name(key)] = float(-np.mean(values) * 100) if values else None
    return out


def run(lm: LanguageModel, data, cfg: EvalConfig) -> SuiteResult:
    fm = _score_texts(lm, data.forget_mia, cfg, "mia: forget members")
    rm = _score_texts(lm, data.retain_mia, cfg, "mia: retain members")
    auc = {}
    if fm and rm:
        for key in fm[0]:
            auc[public_name(key)] = roc_auc([r[key] for r in fm], [r[key] for r in rm])
    return SuiteResult(
        scores={"fm": _means(fm), "rm": _means(rm), "auc": auc, "n": {"fm": len(fm), "rm": len(rm)}},
        items={"forget_mia": fm, "retain_mia": rm},
    )
