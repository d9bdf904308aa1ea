"""ICU, in-context unlearning: no training, an instruction in front of every prompt.

RWKU's ICU baseline (Jin et al. 2024, after Pawelczyk et al. 2023's in-context unlearning)
prepends the reference's unlearning instruction to the user message of every evaluation input
— forget, neighbor and utility probes and the MIA texts alike. The evaluator fills
``{subject}`` with ``str.format``.
"""

from __future__ import annotations

from typing import ClassVar

from rwku.evaluation.prompts import ICU_PREFIX
from rwku.methods.base import UnlearningMethod, register


@register("icu")
class InContextUnlearning(UnlearningMethod):
    description: ClassVar[str] = (
        "In-context unlearning: tell the model, in the prompt, to act as if it never knew the target."
    )
    kind: ClassVar[str] = "inference"

    def prompt_prefix(self) -> str:
        """The reference ICU text (one string, shared with the evaluator's prompt module)."""
        return ICU_PREFIX
