"""rwku.methods: the unlearning methods, one small file each, behind a registry.

``get_method("npo", beta=0.2)`` returns a configured method; ``list_methods()`` lists them.
See :mod:`rwku.methods.base` for the interface and the precompute/ctx contract the trainer
follows, :mod:`rwku.methods.batches` for how corpus records become tensors, and
:mod:`rwku.methods.losses` for the formulas.
"""

from rwku.methods import (  # noqa: F401  (registration)
    dpo,
    eco,
    ga,
    graddiff,
    guard,
    icu,
    kl,
    npo,
    repe,
    rmu,
    rt,
    simnpo,
)
from rwku.methods.base import (
    CORPUS_KINDS,
    Hyperparameters,
    UnlearningMethod,
    get_method,
    list_methods,
    register,
)

__all__ = ["CORPUS_KINDS", "Hyperparameters", "UnlearningMethod", "get_method", "list_methods", "register"]
