"""Evaluate one model on one target: run the chosen suites and assemble the public JSON.

Reads top to bottom: expand the suite names, run (or fetch from the cache) each suite in a
fixed order, then map the raw suite scores onto the paper's Table 1 columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace

from rwku import PROTOCOL
from rwku.errors import ConfigError
from rwku.evaluation.cache import ResultCache
from rwku.evaluation.config import SUITES, UTILITY_PARTS, EvalConfig
from rwku.evaluation.suites import bbh, fluency, forget, mia, mmlu, neighbor, triviaqa, truthfulqa
from rwku.evaluation.suites.base import SuiteResult
from rwku.models.backend import LanguageModel

#: Result, timing and item keys of an lm-evaluation-harness task: "lm_eval:arc_easy".
LM_EVAL_PREFIX = "lm_eval:"

#: Every runnable part, in the order the reference's workflow evaluates them.
PARTS: dict[str, Callable[..., SuiteResult]] = {
    "forget": forget.run,
    "neighbor": neighbor.run,
    "mmlu": mmlu.run,
    "bbh": bbh.run,
    "truthfulqa": truthfulqa.run,
    "triviaqa": triviaqa.run,
    "mia": mia.run,
    "fluency": fluency.run,
}

#: The ``TargetData`` lists each part reads: its cache entry is keyed by their fingerprint only.
PART_DATA: dict[str, tuple[str, ...]] = {
    "forget": ("forget",),
    "neighbor": ("neighbor",),
    "mmlu": ("mmlu",),
    "bbh": ("bbh",),
    "truthfulqa": ("truthful",),
    "triviaqa": ("triviaqa",),
    "mia": ("forget_mia", "retain_mia"),
    "fluency": ("fluency",),
}


def expand_suites(suites: Sequence[str] | str | None) -> list[str]:
    """'forget,utility' → the runnable parts; unknown names are a ConfigError listing the valid ones."""
    if suites is None:
        suites = list(SUITES)
    if isinstance(suites, str):
        suites = [s.strip() for s in suites.split(",") if s.strip()]
    wanted: set[str] = set()
    for name in suites:
        if name == "utility":
            wanted.update(UTILITY_PARTS)
        elif name in PARTS:
            wanted.add(name)
        else:
            valid = ", ".join(list(SUITES) + list(UTILITY_PARTS))
            raise ConfigError(f"unknown suite {name!r}; choose from: {valid}")
    if not wanted:
        raise ConfigError("no suite selected")
    return [p for p in PARTS if p in wanted]


def evaluate(
    lm: LanguageModel,
    data,
    *,
    suites: Sequence[str] | str | None = None,
    cfg: EvalConfig | None = None,
    cache: ResultCache | None = None,
    model_fingerprint: str | None = None,
    on_part: Callable[[str, float, bool], None] | None = None,
) -> dict:
    """Run the suites on ``data`` (a TargetData) and return the public result dictionary.

    Then the lm-eval tasks of ``cfg.lm_eval_tasks``, each a part of its own (cached by model,
    task configuration and data files, limit; not by target).
    """
    cfg = cfg or EvalConfig()
    parts = expand_suites(suites)
    data = data.limited(cfg.limit) if cfg.limit is not None else data
    if cfg.utility_limit is not None:
        n = cfg.utility_limit
        data = replace(
            data,
            mmlu=data.mmlu[:n],
            bbh=data.bbh[:n],
            truthful=data.truthful[:n],
            triviaqa=data.triviaqa[:n],
            fluency=data.fluency[:n],
        )
    data_fp = data.fingerprint()
    results: dict[str, SuiteResult] = {}
    timings: dict[str, float] = {}
    cached: list[str] = []

    def run_part(
        part: str, compute: Callable[[], SuiteResult], legacy: dict | None = None, **key_parts
    ) -> None:
        key = cache.key(model=model_fingerprint, protocol=PROTOCOL, **key_parts) if cacheable else None
        # another process computing the same entry (a parallel sweep shard) is waited for
        with cache.lock(key) if key is not None else nullcontext():
            hit = cache.get(key) if key is not None else None
            if hit is None and key is not None and legacy is not None:
                # written before parts were keyed by their own items: adopt it under the new key
                hit = cache.get(cache.key(model=model_fingerprint, protocol=PROTOCOL, **legacy))
                if hit is not None:
                    cache.put(key, hit)
            if hit is not None:
                results[part] = SuiteResult(scores=hit["scores"], items=hit["items"])
                timings[part] = hit["seconds"]
                cached.append(part)
            else:
                start = time.perf_counter()
                results[part] = compute()
                timings[part] = round(time.perf_counter() - start, 3)
                if key is not None:
                    cache.put(
                        key,
                        {
                            "scores": results[part].scores,
                            "items": results[part].items,
                            "seconds": timings[part],
                        },
                    )
        if on_part:
            on_part(part, timings[part], hit is not None)

    cacheable = cache is not None and bool(model_fingerprint)
    for part in parts:
        run_part(
            part,
            lambda part=part: PARTS[part](lm, data, cfg),
            target=data.target.name,
            suite=part,
            config=cfg.key(),
            data=data.fingerprint(PART_DATA[part]),
            legacy=dict(target=data.target.name, suite=part, config=cfg.legacy_key(), data=data_fp),
        )
    if cfg.lm_eval_tasks:
        from rwku.evaluation import lm_eval_backend

        # lm-eval's items do not depend on the target: one cache entry serves every target
        limit = cfg.utility_limit if cfg.utility_limit is not None else cfg.limit
        adapter = None
        for task in cfg.lm_eval_tasks:
            part = f"{LM_EVAL_PREFIX}{task}"

            def compute(task=task) -> SuiteResult:
                nonlocal adapter
                adapter = adapter or lm_eval_backend.make_lm(lm)
                scores, records = lm_eval_backend.run_lm_eval_task(
                    adapter, task, include=cfg.lm_eval_include, limit=limit
                )
                return SuiteResult(scores=scores, items={f"{LM_EVAL_PREFIX}{task}": records})

            run_part(
                part,
                compute,
                suite=part,
                config=f"limit={limit}",
                data=lm_eval_backend.task_fingerprint(task, cfg.lm_eval_include) if cacheable else None,
            )
    return assemble(lm, data, results, timings, cached, cfg)


def assemble(lm, data, results: dict[str, SuiteResult], timings, cached, cfg: EvalConfig) -> dict:
    scores: dict = {}
    for name in ("forget", "neighbor", "mia"):
        if name in results:
            scores[name] = results[name].scores
    utility_parts = {p: results[p].scores for p in UTILITY_PARTS if p in results}
    lm_eval = {p[len(LM_EVAL_PREFIX) :]: r.scores for p, r in results.items() if p.startswith(LM_EVAL_PREFIX)}
    if utility_parts:
        columns = {
            "gen": ("mmlu", "acc"),
            "rea": ("bbh", "em"),
            "tru": ("truthfulqa", "mc1"),
            "fac": ("triviaqa", "f1"),
            "flu": ("fluency", "entropy"),
        }
        scores["utility"] = {
            col: utility_parts[p][k] for col, (p, k) in columns.items() if p in utility_parts
        } | {"details": utility_parts}
    if lm_eval:  # lm-evaluation-harness tasks: {task: {metric: value as lm-eval reports it}}
        scores.setdefault("utility", {})["lm_eval"] = lm_eval
    items: dict = {}
    for result in results.values():
        items.update(result.items)
    return {
        "model": dict(lm.info),
        "target": data.target.name,
        "target_id": data.target.id,
        "protocol": PROTOCOL,
        "config": {k: v for k, v in cfg.__dict__.items()},
        "data_fingerprint": data.fingerprint(),
        "scores": scores,
        "items": items,
        "timings": timings,
        "cached_suites": cached,
    }
