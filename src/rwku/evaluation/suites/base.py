"""What every suite returns, and small helpers they share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SuiteResult:
    """Scores on the paper's scale plus one record per item, in the reference's item order."""

    scores: dict
    items: dict[str, list[dict]] = field(default_factory=dict)


def mean100(values) -> float | None:
    """Mean ×100 (the paper's scale); None for an empty list so JSON shows a gap, not a fake 0."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values) * 100) if values else None


def cut_at_newline(text: str) -> str:
    """The optional newline stop: keep text up to the first line break after any content."""
    stripped = text.lstrip()
    lead = len(text) - len(stripped)
    cut = stripped.find("\n")
    return text if cut < 0 else text[: lead + cut]


def has_content_line(text: str) -> bool:
    return "\n" in text.lstrip()
