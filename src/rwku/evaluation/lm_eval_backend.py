"""lm-evaluation-harness tasks as extra utility columns, run on rwku's own engine.

Unlearning papers after RWKU report utility with lm-eval tasks (MMLU, ARC, HellaSwag,
Winogrande, ...). :class:`RwkuLM` is an ``lm_eval.api.model.LM`` over any
:class:`rwku.models.backend.LanguageModel`, so those tasks get the engine's batching and
shared-prefix caches: the choices of one multiple-choice question share their context, and the
requests of one task share their few-shot header. :func:`run_lm_eval_task` runs one task (or
group) through ``lm_eval.simple_evaluate`` and returns ``{metric: value}`` as lm-eval reports it
(0-1 scale, filter name appended when it is not ``none``).

Requests are built the way lm-eval's own transformers backend (``HFLM``) builds them, so the
numbers equal HFLM's up to floating-point noise: the same context/continuation split (trailing
spaces of the context move to the continuation, the continuation's tokens are those of the
joint tokenisation after the context's), the BOS (else EOS) token as context of an empty
context and of rolling log-likelihoods, EOS added to the stop strings, greedy decoding to
``max_gen_toks`` and the cut at the first stop string. Deliberate differences (docs/protocol.md):
the engine takes text, not token ids, so contexts are never left-truncated to the model's
length; a rolling window after the first is scored from its decoded text (exact whenever the
window's tokens survive a decode/encode round trip); ``is_greedy`` is computed only for tasks
of output type ``loglikelihood`` (multiple-choice metrics never read it) and compares decoded
text; sampling is refused (the engine decodes greedily).

lm-eval is an optional dependency (``pip install 'rwku[lmeval]'``); without it, asking for a
task is a :class:`~rwku.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from rwku.errors import ConfigError
from rwku.models.backend import GenerationRequest, LanguageModel, ScoreRequest

INSTALL_HINT = "lm-eval tasks need lm-evaluation-harness: pip install 'rwku[lmeval]'"


def require_lm_eval():
    """Import lm_eval or raise a one-line ConfigError."""
    try:
        import lm_eval
        from lm_eval.api.model import LM  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return lm_eval


def split_names(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """'arc_easy, winogrande' → ('arc_easy', 'winogrande'); a list is kept (stripped, no empties)."""
    if not text:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    return tuple(p.strip() for p in parts if str(p).strip())


_MANAGERS: dict[tuple, object] = {}


def _manager(include: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    key = (include, defaults)
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=list(include) or None, include_defaults=defaults)
    return _MANAGERS[key]


def task_manager(include: Sequence[str] = (), tasks: Sequence[str] = ()):
    """lm-eval's task index for ``tasks``, built once per process.

    Indexing lm-eval's ~15k built-in task names takes half a minute on a small CPU, so when every
    task is found in the ``include`` folders alone, only those are indexed.
    """
    require_lm_eval()
    for path in include:
        if not Path(path).is_dir():
            raise ConfigError(f"lm-eval include folder not found: {path}")
    folders = tuple(str(Path(p).resolve()) for p in include)
    if folders and tasks:
        local = _manager(folders, defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    return _manager(folders, defaults=True)


def check_tasks(tasks: Sequence[str], include: Sequence[str] = ()) -> None:
    """Raise a ConfigError naming the first task lm-eval does not know."""
    if not tasks:
        return
    known = set(task_manager(include, tasks).all_tasks)
    for name in tasks:
        if name not in known:
            hint = "" if include else "; a local task needs --lm-eval-include DIR (its YAML's folder)"
            raise ConfigError(f"unknown lm-eval task {name!r} (list them with `lm-eval ls tasks`){hint}")


def task_fingerprint(name: str, include: Sequence[str] = ()) -> str:
    """A hash of everything lm-eval will run for ``name``: its task configs and local data files."""
    import lm_eval

    loaded = task_manager(include, [name]).load([name])
    parts: dict = {"lm_eval": lm_eval.__version__, "tasks": {}}
    for task_name, task in sorted(loaded["tasks"].items()):
        config = task.dump_config()
        parts["tasks"][task_name] = config
        files = (config.get("dataset_kwargs") or {}).get("data_files")
        for path in _paths(files):
            if Path(path).is_file():
                parts.setdefault("files", {})[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _paths(files) -> list[str]:
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [p for v in files.values() for p in _paths(v)]
    if isinstance(files, (list, tuple)):
        return [p for v in files for p in _paths(v)]
    return []


def make_lm(lm: LanguageModel, **kwargs):
    """An ``lm_eval`` LM over ``lm`` (see :class:`RwkuLM`); lm-eval must be installed."""
    require_lm_eval()
    return _lm_class()(lm, **kwargs)


_CLASS = None


def _lm_class():
    """Define the LM subclass on first use, so importing this module never needs lm-eval."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from lm_eval.api.model import LM
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    class RwkuLM(LM):
        """lm-eval's three request types over rwku's ``score`` and ``generate`` calls."""

        def __init__(
            self,
            lm: LanguageModel,
            *,
            greedy_tasks: Sequence[str] = (),
            max_length: int | None = None,
            max_gen_toks: int = 256,
        ) -> None:
            super().__init__()
            tokenizer = getattr(lm, "tokenizer", None)
            if tokenizer is None:
                raise ConfigError("lm-eval tasks need a backend with a Hugging Face tokenizer (--backend hf)")
            self.lm = lm
            self.tokenizer = tokenizer
            #: tasks of output type ``loglikelihood``, whose metrics read ``is_greedy``
            self.greedy_tasks = set(greedy_tasks)
            self._max_length = max_length
            self.max_gen_toks = max_gen_toks

        # -------------------------------------------------------------- tokens (as HFLM)
        @property
        def prefix_token_id(self) -> int:
            tok = self.tokenizer
            return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

        @property
        def max_length(self) -> int:
            if self._max_length:
                return self._max_length
            from lm_eval.models.utils import resolve_max_length

            model = getattr(self.lm, "model", None)
            return resolve_max_length(getattr(model, "config", None), self.tokenizer)

        def _text(self, ids: Sequence[int]) -> str:
            return self.tokenizer.decode(
                list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
            )

        def _pair(self, context: str, continuation: str) -> tuple[str, str]:
            """The (context, continuation) text whose joint tokenisation HFLM scores."""
            if context == "":
                cont_ids = self.lm.encode(continuation, add_special_tokens=False)
                prefix = self._text([self.prefix_token_id])
                if cont_ids and cont_ids[0] == self.prefix_token_id and continuation.startswith(prefix):
                    return prefix, continuation[len(prefix) :]
                return prefix, continuation
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                return context[:-n_spaces], context[-n_spaces:] + continuation
            return context, continuation

        # -------------------------------------------------------------- request types
        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            pairs = [self._pair(*req.args) for req in requests]
            scores = self.lm.score(
                [
                    ScoreRequest(ctx, cont, group=(req.task_name, req.doc_id, ctx))
                    for req, (ctx, cont) in zip(requests, pairs)
                ],
                desc="lm-eval: loglikelihood",
            )
            greedy = [False] * len(requests)
            wanted = [i for i, req in enumerate(requests) if req.task_name in self.greedy_tasks]
            if wanted:
                targets, gen = [], []
                for i in wanted:
                    ctx, cont = pairs[i]
                    ids = self.lm.encode(ctx + cont, add_special_tokens=True)
                    cont_ids = ids[len(self.lm.encode(ctx, add_special_tokens=True)) :]
                    targets.append(self.tokenizer.decode(cont_ids, skip_special_tokens=True))
                    gen.append(GenerationRequest(ctx, max(1, len(cont_ids)), group=requests[i].task_name))
                outputs = self.lm.generate(gen, stop_token_ids=[], desc="lm-eval: is_greedy")
                for i, target, out in zip(wanted, targets, outputs):
                    greedy[i] = out == target
            return [(s.sum, g) for s, g in zip(scores, greedy)]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            windows: list[tuple[int, str, str]] = []
            for i, req in enumerate(requests):
                (string,) = req.args
                ids = self.lm.encode(string, add_special_tokens=True)
                for w, (ctx_ids, cont_ids) in enumerate(
                    map(
                        make_disjoint_window,
                        get_rolling_token_windows(ids, self.prefix_token_id, self.max_length, context_len=1),
                    )
                ):
                    if w == 0:  # the whole text when it fits: the original string, exactly
                        cont = string if len(cont_ids) == len(ids) else self._text(cont_ids)
                        windows.append((i, self._text(ctx_ids), cont))
                    else:
                        windows.append((i, self._text(ctx_ids), self._text(cont_ids)))
            scores = self.lm.score(
                [ScoreRequest(ctx, cont, group=i) for i, ctx, cont in windows], desc="lm-eval: rolling"
            )
            totals = [0.0] * len(requests)
            for (i, _, _), score in zip(windows, scores):
                totals[i] += score.sum
            return totals

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            eos = (
                self._text([self.tokenizer.eos_token_id]) if self.tokenizer.eos_token_id is not None else None
            )
            gen, stops = [], []
            for req in requests:
                context, gen_kwargs = req.args
                kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
                if kwargs.get("do_sample") and kwargs.get("temperature", 0) > 0:
                    raise ConfigError(
                        f"lm-eval task {req.task_name!r} asks for sampling; rwku's engine decodes greedily"
                    )
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                strings = [u for u in until if u]
                stops.append(until)
                gen.append(
                    GenerationRequest(
                        context,
                        int(kwargs["max_gen_toks"]),
                        group=req.task_name,
                        stop_when=(lambda text, s=strings: any(u in text for u in s)) if strings else None,
                    )
                )
            outputs = self.lm.generate(gen, stop_token_ids=[], desc="lm-eval: generate")
            return [
                postprocess_generated_text(generation=out, stop=until, think_end_token=None)
                for out, until in zip(outputs, stops)
            ]

    _CLASS = RwkuLM
    return RwkuLM


def _metrics(values: dict) -> dict:
    """lm-eval's ``{"acc,none": x, "acc_stderr,none": ...}`` → ``{"acc": x}`` (no stderr, alias)."""
    out = {}
    for key, value in values.items():
        metric, _, filt = key.partition(",")
        if (
            metric in ("alias", "sample_len")
            or metric.endswith("_stderr")
            or not isinstance(value, (int, float))
        ):
            continue
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[metric if filt in ("", "none") else f"{metric},{filt}"] = value
    return out


def run_lm_eval_task(
    lm,
    name: str,
    *,
    include: Sequence[str] = (),
    limit: int | None = None,
    log_samples: bool = True,
) -> tuple[dict, list[dict]]:
    """Run one lm-eval task or group on ``lm`` (an lm-eval LM); return (scores, per-item records).

    ``scores`` is ``{metric: value, "n": items}`` for a task; a group adds ``"subtasks":
    {name: {...}}``. Records keep what the result JSON needs per item: the task, doc id, target,
    the model's (filtered) responses and the item's metrics.
    """
    require_lm_eval()
    from lm_eval import simple_evaluate

    manager = task_manager(include, [name])
    loaded = manager.load([name])
    greedy = [t for t, task in loaded["tasks"].items() if task.get_config("output_type") == "loglikelihood"]
    if hasattr(lm, "greedy_tasks"):
        lm.greedy_tasks |= set(greedy)
    previous = logging.getLogger("lm_eval").level
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-task notes on default aggregations
    if not getattr(getattr(lm, "lm", None), "progress", True):
        import datasets

        datasets.disable_progress_bars()
    try:
        out = simple_evaluate(
            model=lm,
            tasks=[name],
            task_manager=manager,
            limit=limit,
            bootstrap_iters=0,
            log_samples=log_samples,
            # leave the process's random state alone (training after evaluation seeds its own);
            # the few-shot sampler keeps lm-eval's default seed
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    finally:
        logging.getLogger("lm_eval").setLevel(previous)
    results = out["results"]
    scores = _metrics(results.get(name, {}))
    n = out.get("n-samples", {})
    subtasks = {t: _metrics(v) for t, v in results.items() if t != name}
    if name in n:
        scores["n"] = n[name].get("effective")
    if subtasks:
        scores["subtasks"] = subtasks
        scores.setdefault("n", sum(v.get("effective", 0) for v in n.values()))
    records = []
    for task_name, samples in (out.get("samples") or {}).items():
        for s in samples:
            records.append(
                {
                    "task": task_name,
                    "doc_id": s.get("doc_id"),
                    "target": _plain(s.get("target")),
                    "filtered_resps": _plain(s.get("filtered_resps")),
                    **{m: _plain(s[m]) for m in s.get("metrics", []) if m in s},
                }
            )
    return scores, records


def _plain(value):
    """JSON-safe copy of lm-eval's per-sample values (tuples, numpy numbers)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
