"""The in-context re-introduction attack: the forget probes again, with the knowledge in the prompt.

Reads top to bottom (:func:`run_incontext`): build the three contexts of every forget probe
(:mod:`rwku.attacks.contexts`), then for the original and the unlearned model score every
probe plainly and with each context, and report per context the metrics on the probes that
have one beside the same probes' plain metrics, and the gain. No training.

The original model's half of the record is the same for every run attacked on a target (same
weights, probes and contexts), so it is kept in the result cache: on the default model it was
about half of the attack's time, and a sweep attacks eight methods per target.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rwku.attacks.contexts import CONTEXT_KINDS, build_contexts
from rwku.attacks.data import DATA_RULE, target_passages
from rwku.attacks.recovery import METRICS, probe_metrics
from rwku.data.records import FORGET_LEVELS


def _metrics_of(items: list[dict]) -> dict[str, float | None]:
    """The attack metrics over a list of probe items (the suite's own scoring, re-aggregated)."""
    from collections import defaultdict

    from rwku.evaluation.suites.base import mean100

    by_level: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        by_level[item["level"]].append(item)
    scores: dict[str, Any] = {lv: mean100(i["score"] for i in v) for lv, v in by_level.items()}
    scores["all"] = mean100(i["score"] for i in items) if items else None
    scores["likelihood"] = {"all": mean100(i["likelihood_prob"] for i in items) if items else None}
    return probe_metrics(scores)


def _delta(a: dict, b: dict) -> dict[str, float | None]:
    return {m: (None if a.get(m) is None or b.get(m) is None else a[m] - b[m]) for m in METRICS}


#: Bumped when cached original-model results computed by an earlier version are wrong.
ORIGINAL_CACHE_VERSION = 1


def _contexts_key(probes: list, contexts: list, renamed: list) -> str:
    """What the original model's in-context results depend on besides the model and protocol."""
    blob = json.dumps(
        [
            [p.level, p.type, p.query, p.answer, c.answer, c.related, c.renamed, r.query, r.answer]
            for p, c, r in zip(probes, contexts, renamed, strict=True)
        ]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cached_original(cache: Any, subject, target: str, data_key: str, compute: Callable[[], Any]) -> Any:
    from rwku import PROTOCOL

    if cache is None:
        return compute()
    key = cache.key(
        model=subject.fingerprint,
        target=target,
        suite="incontext:original",
        protocol=PROTOCOL,
        version=str(ORIGINAL_CACHE_VERSION),
        data=data_key,
    )
    return cache.value(key, compute)


def run_incontext(
    subject,
    rwku_data,
    target_data,
    *,
    log: Callable[[str], None] = print,
    progress: bool = True,
    cache: Any = None,
) -> dict[str, Any]:
    """The in-context attack on one target of ``subject``; the record.

    ``cache`` (a :class:`rwku.evaluation.cache.ResultCache`): where the original model's
    results are kept between runs; None computes them every time."""
    from rwku.evaluation.config import EvalConfig
    from rwku.evaluation.suites.probes import run_probes

    started = time.perf_counter()
    target = target_data.target
    passages = target_passages(rwku_data, target.name)
    probes = [p for lv in sorted(FORGET_LEVELS) for p in target_data.forget.get(lv, [])]
    if not probes:
        raise ValueError(f"{target.name} has no forget probes")
    all_answers = list(dict.fromkeys(p.answer for p in probes))
    contexts = build_contexts(probes, passages, target.name, all_answers)
    renamed = [replace(p, query=c.renamed_query, answer=c.renamed_gold) for p, c in zip(probes, contexts)]
    log(f"in-context attack on {target.name}: {len(probes)} probes")

    def score(model, which: str, plist, ctxs) -> list[dict]:
        lm = subject.lm
        lm.model = model
        undo = subject.guard(model, which, target)
        try:
            cfg = EvalConfig(prompt_prefix=subject.prefix_for(which))
            # one level dict keeps the given order (run_probes flattens levels in sorted order)
            asked = subject.asked(which, rwku_data, target, log)  # a guard run: its classifier and hook
            return run_probes(asked, {"all": list(plist)}, cfg, "forget", contexts=ctxs).items["forget"]
        finally:
            if undo is not None:
                undo()

    def attack(which: str, model) -> dict[str, Any]:
        plain = score(model, which, probes, None)
        out: dict[str, Any] = {"plain": _metrics_of(plain), "contexts": {}}
        for kind in CONTEXT_KINDS:
            idx = [i for i, c in enumerate(contexts) if getattr(c, kind)]
            plist = [(renamed if kind == "renamed" else probes)[i] for i in idx]
            items = score(model, which, plist, [getattr(contexts[i], kind) for i in idx]) if idx else []
            with_ctx = _metrics_of(items)
            base = _metrics_of([plain[i] for i in idx])
            out["contexts"][kind] = {
                "probes": len(idx),
                "with_context": with_ctx,
                "plain_same_probes": base,
                "gain": _delta(with_ctx, base),
            }
        return out

    models = {
        "original": _cached_original(
            cache,
            subject,
            target.name,
            _contexts_key(probes, contexts, renamed),
            lambda: attack("original", subject.original),
        ),  # fmt: skip
        "unlearned": attack("unlearned", subject.unlearned),
    }
    return {
        "attack": "incontext",
        "data_rule": DATA_RULE,
        "target": target.name,
        "run": subject.run.describe(),
        "model": {k: subject.info.get(k) for k in ("name", "fingerprint", "num_parameters")},
        "probes": len(probes),
        "coverage": {k: sum(1 for c in contexts if getattr(c, k)) for k in CONTEXT_KINDS},
        "metrics": list(METRICS),
        "models": models,
        "examples": [
            {"query": p.query, "gold": p.answer, "answer_context": c.answer, "related_context": c.related}
            for p, c in list(zip(probes, contexts))[:3]
        ],
        "timings": {"total": round(time.perf_counter() - started, 1)},
    }
