"""What the inference-time guards (ECO, GUARD) share: model-written text, the prompt classifier,
and the wrapper that applies a guard to the flagged requests of every evaluation call.

Nothing here sees an evaluation probe. The classifier learns from text the original model
writes itself (the corpus machinery of :mod:`rwku.data.corpus`, cached there by model, target
and settings):

* **positives**: questions about the target (the RT question prompt: "{intro} Please generate
  a question about {target} ...") and the sentences of the model's biographies of the target;
* **negatives**: the same kinds of text about other RWKU targets (``others`` of them, chosen
  by a seeded draw; they need not be the target's evaluation neighbours) and
  :data:`GENERIC_INSTRUCTIONS`, written for this module.

Every text is seen in two forms, as the user turn of a chat prompt and as raw text, because an
evaluation asks both ways (probes and utility prompts are chat prompts, the MIA texts are raw).
Features are the mean of decoder layer ``layer``'s output (the middle layer by default) over
the last ``MAX_TOKENS`` tokens after the chat template's header: the model itself, no second
model. A standardised logistic regression (scikit-learn) is fitted on three quarters of the
texts; the threshold is chosen on the held-out quarter so that at most ``fpr`` of the held-out
negatives are flagged. Too few held-out negatives to resolve ``fpr``, or fewer than
``MIN_RECALL`` of the held-out positives flagged at that threshold, is a guard rail
(:class:`GuardRail`: the run is recorded as stopped, not evaluated).

:class:`GuardedModel` wraps the engine for the evaluation: every call's prompts are classified,
and the flagged ones get the method's :class:`rwku.models.engine.hooks.RowHook` in the same
engine call as the others; flag counts are kept per suite for the run record.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rwku.errors import ConfigError, RwkuError
from rwku.methods.base import UnlearningMethod, layer_output
from rwku.models.backend import GenerationRequest, ScoreRequest
from rwku.models.engine.hooks import RowHook

#: Tokens per text the classifier reads (the end of the text: where a question is asked).
MAX_TOKENS = 128
#: Fewest held-out positives the classifier must flag at its threshold.
MIN_RECALL = 0.5
#: Sizes of the model-written text: (questions, passages) about the target and about each other.
TARGET_SIZES = (48, 32)
OTHER_SIZES = (16, 8)
#: Passage length in new tokens, question length (the corpus module's CPU sizes).
PASSAGE_TOKENS = 128
QUESTION_TOKENS = 50

GENERIC_INSTRUCTIONS: tuple[str, ...] = (
    "What is the capital of Australia?",
    "Explain how photosynthesis works in simple terms.",
    "Write a short poem about the sea at night.",
    "How many minutes are there in a day?",
    "Give me three tips for learning a new language.",
    "What is the boiling point of water at sea level?",
    "Summarise the causes of the French Revolution.",
    "Translate 'good morning' into Spanish.",
    "Which is larger, 0.7 or 0.65?",
    "Describe the water cycle.",
    "What does a CPU do in a computer?",
    "Suggest a name for a small bakery.",
    "How do vaccines train the immune system?",
    "Write a haiku about autumn leaves.",
    "What is the square root of 144?",
    "List the planets of the solar system in order.",
    "Why is the sky blue?",
    "How should I store fresh basil?",
    "What is the difference between weather and climate?",
    "Explain what a prime number is.",
    "Recommend a stretching routine for office workers.",
    "What causes tides in the ocean?",
    "Write a polite email declining a meeting invitation.",
    "Which gas do plants absorb from the air?",
    "What is the past tense of 'swim'?",
    "How does a bicycle stay upright?",
    "Name three mammals that live in the ocean.",
    "What year did the Second World War end?",
    "Explain compound interest with an example.",
    "How many sides does a hexagon have?",
    "Give a recipe for a simple tomato soup.",
    "What is the chemical symbol for gold?",
    "Why do cats purr?",
    "Describe the rules of chess in a few sentences.",
    "What is machine learning?",
    "Which continent is Kenya in?",
    "How do I convert Celsius to Fahrenheit?",
    "Write a sentence using the word 'ephemeral'.",
    "What are the primary colours?",
    "Answer with A, B, C or D: which of these is a fruit? A. carrot B. apple C. potato D. onion",
)


class GuardRail(RwkuError):
    """The classifier cannot meet its false-positive target: the run is recorded, not evaluated."""

    exit_code = 1

    def __init__(self, message: str, info: dict | None = None) -> None:
        super().__init__(message)
        self.info = info or {}


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------

#: Options both guards take, with defaults.
GUARD_DEFAULTS: dict[str, Any] = {"fpr": 0.05, "layer": None, "others": 8, "gate": "classifier"}
#: What decides a flag: the classifier alone, or the classifier on prompts that name the target.
GATES = ("classifier", "name")


def check_range(
    method: str, options: dict[str, Any], key: str, lo: float, hi: float, *, open_lo=True
) -> float:
    """``options[key]`` as a float within (lo, hi] (``[lo, hi]`` when not ``open_lo``), or a ConfigError."""
    value = options[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"method {method!r}: option {key} must be a number, not {value!r}") from None
    if not ((lo < number if open_lo else lo <= number) and number <= hi):
        bounds = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
        raise ConfigError(f"method {method!r}: option {key}={value!r} is outside {bounds}")
    return number


def check_guard_options(method: str, options: dict[str, Any]) -> None:
    check_range(method, options, "fpr", 0.0, 0.5)
    check_range(method, options, "others", 1, 50, open_lo=False)
    if options["layer"] is not None:
        check_range(method, options, "layer", -1000, 1000)
    if options["gate"] not in GATES:
        raise ConfigError(
            f"method {method!r}: option gate={options['gate']!r} is not one of {', '.join(GATES)}"
        )


def names_target(name: str) -> Callable[[str], bool]:
    """Whether a text names the target: a whole-word, case-insensitive match of its name or surname
    (:func:`name_variants`). The ``gate=name`` rule: RWKU's neighbour probes seldom name the target
    (560 of 5,556 over the 100 targets), its forget probes of levels 1-2 almost always do (2,885 of
    3,090; counts in docs/guards.md)."""
    forms = sorted({v.strip() for v in name_variants(name)}, key=len, reverse=True)
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(f) for f in forms) + r")(?!\w)", re.IGNORECASE)
    return lambda text: bool(pattern.search(text))


# --------------------------------------------------------------------------------------------
# Model-written text
# --------------------------------------------------------------------------------------------


def statements(passages: Sequence[str]) -> list[str]:
    """The sentences of passages that read as statements (4 to 60 words)."""
    out = []
    for text in passages:
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(str(text).split())):
            words = sentence.split()
            if 4 <= len(words) <= 60:
                out.append(sentence)
    return out


def other_targets(data, target, n: int, seed: int) -> list:
    """``n`` other RWKU targets, drawn with a seed derived from the target (never the target)."""
    pool = [t for t in data.targets() if t.name != target.name]
    random.Random(f"{seed}:{target.name}").shuffle(pool)
    return pool[:n]


def written_text(
    lm,
    target,
    *,
    fingerprint: str,
    seed: int,
    sizes: tuple[int, int],
    resources,
    progress: bool,
    generate=None,
) -> dict[str, list[str]]:
    """The model's questions about ``target`` and its passages (cached by the corpus module)."""
    from rwku.data.corpus import get_or_generate

    written = {}
    for kind, n, tokens, resource in (
        ("refusals", sizes[0], QUESTION_TOKENS, {"refusals": resources.refusals}),
        ("passages", sizes[1], PASSAGE_TOKENS, {"openings": resources.openings}),
    ):
        written[kind] = get_or_generate(
            lm.model,
            lm.tokenizer,
            target,
            kind=kind,
            n=n,
            max_new_tokens=tokens,
            model_fingerprint=fingerprint,
            seed=seed,
            progress=progress,
            generate=generate,
            **resource,
        )
    questions, passages = written["refusals"], written["passages"]
    return {
        "questions": [q["question"].strip() for q in questions if len(q["question"].split()) >= 3],
        "passages": [p["text"] for p in passages if p["text"].strip()],
    }


# --------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------


def _header_length(lm) -> int:
    """Tokens of the chat template before the user text (the same for every chat prompt)."""
    a, b = lm.encode(lm.chat_prompt("x"), True), lm.encode(lm.chat_prompt("y"), True)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class FeatureCache:
    """The classifier's feature matrices on disk, one ``.npy`` per (model, layer, text list).

    Why: GUARD and ECO on the same target fit the same classifier on the same model-written text
    and classify the same evaluation prompts, and that forward pass (up to the middle layer, over
    every distinct prompt) is a fixed cost of each run — on a 1.5B model on a CPU, an estimated
    tens of minutes. A whole list is one entry, computed in the batches an uncached call would use, so a
    hit is bit-identical to recomputing it. Keyed by the model's fingerprint (weights), dtype and
    device type, layer, :data:`MAX_TOKENS`, batch size and the texts in order; a model without a fingerprint
    is never cached. ``<$RWKU_CACHE or the user cache dir>/guards/features``."""

    def __init__(self, model_key: str | None, root: Path | None = None, enabled: bool = True) -> None:
        if root is None:
            from rwku.evaluation.cache import cache_root

            root = cache_root().parent / "guards" / "features"
        self.root = root
        self.model_key = model_key
        self.enabled = enabled and bool(model_key)
        self.hits = 0
        self.misses = 0

    def model_key_of(self, lm) -> dict[str, str | None]:
        """What identifies the computing model in a key: fingerprint (weights), dtype, device type."""
        p = next(lm.model.parameters())
        return {"model": self.model_key, "dtype": str(p.dtype), "device": p.device.type}

    def path(self, lm, layer: int, texts: Sequence[str], batch_size: int = 16) -> Path:
        key = {
            **self.model_key_of(lm),
            "layer": layer,
            "max_tokens": MAX_TOKENS,
            "batch_size": batch_size,  # the batches decide the last bits of the floats
            "texts": list(texts),
        }
        digest = hashlib.sha256(json.dumps(key, ensure_ascii=False).encode()).hexdigest()
        return self.root / digest[:2] / f"{digest[:40]}.npy"

    def get(self, path: Path, shape: tuple[int, int]) -> np.ndarray | None:
        if not self.enabled or not path.exists():
            return None
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed, never trusted
        return x if x.shape == shape and x.dtype == np.float32 else None

    def put(self, path: Path, x: np.ndarray) -> None:
        if not self.enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, x, allow_pickle=False)
        os.replace(tmp, path)

    def record(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "hits": self.hits, "misses": self.misses}


class PromptClassifier:
    """Mean-pooled layer-``layer`` states of the model → logistic regression → flag."""

    def __init__(self, lm, layer: int | None = None, cache: FeatureCache | None = None) -> None:
        n_layers = lm.model.config.num_hidden_layers
        self.layer = n_layers // 2 if layer is None else int(layer) % n_layers
        self.header = lm.encode(lm.chat_prompt("x"), True)[: _header_length(lm)]
        self.model = None
        self.threshold = 0.5
        self.cache = cache

    def features(self, lm, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """[N, hidden]: the mean of the layer's output over each text's last MAX_TOKENS tokens
        after the chat header (read from the feature cache when this list was seen before)."""
        if self.cache is None or not self.cache.enabled:
            return self._features(lm, texts, batch_size)
        path = self.cache.path(lm, self.layer, texts, batch_size)
        x = self.cache.get(path, (len(texts), lm.model.config.hidden_size))
        if x is not None:
            self.cache.hits += 1
            return x
        self.cache.misses += 1
        x = self._features(lm, texts, batch_size)
        self.cache.put(path, x)
        return x

    @torch.no_grad()
    def _features(self, lm, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        rows = []
        h = len(self.header)
        for text in texts:
            ids = lm.encode(text, True)
            if h and ids[:h] == self.header and len(ids) > h:
                ids = ids[h:]
            rows.append(ids[-MAX_TOKENS:] or [lm.pad_id])
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = np.zeros((len(rows), lm.model.config.hidden_size), dtype=np.float32)
        device = lm.device
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(rows[i]) for i in idx)
            ids = torch.full((len(idx), width), lm.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for k, i in enumerate(idx):
                ids[k, : len(rows[i])] = torch.tensor(rows[i])
                mask[k, : len(rows[i])] = 1
            batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            hidden = layer_output(lm.model, batch, self.layer).float()
            m = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1)
            out[idx] = pooled.cpu().numpy()
        return out

    def probabilities(self, lm, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        return self.model.predict_proba(self.features(lm, texts))[:, 1]

    def fit(self, lm, positives: Sequence[str], negatives: Sequence[str], *, fpr: float, seed: int) -> dict:
        """Fit on 3/4 of the texts, choose the threshold on the rest; return what was measured."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        texts = list(positives) + list(negatives)
        labels = np.array([1] * len(positives) + [0] * len(negatives))
        held = np.zeros(len(texts), dtype=bool)
        rng = np.random.default_rng(seed)
        for label in (0, 1):
            idx = np.flatnonzero(labels == label)
            held[rng.permutation(idx)[: len(idx) // 4]] = True
        x = self.features(lm, texts)
        self.model = make_pipeline(
            StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced")
        )
        self.model.fit(x[~held], labels[~held])
        p = self.model.predict_proba(x[held])[:, 1]
        neg = np.sort(p[labels[held] == 0])[::-1]
        pos = p[labels[held] == 1]
        info = {
            "layer": self.layer,
            "train": {
                "positives": int((labels[~held] == 1).sum()),
                "negatives": int((labels[~held] == 0).sum()),
            },
            "held_out": {"positives": int(len(pos)), "negatives": int(len(neg))},
            "fpr_target": fpr,
        }
        if len(neg) * fpr < 1:
            raise GuardRail(
                f"the classifier cannot reach a false-positive rate of {fpr:g}: {len(neg)} held-out negatives "
                f"resolve rates of 1/{len(neg)} at best (ask for fpr ≥ {1 / max(len(neg), 1):.3g} or more text)",
                info,
            )
        allowed = int(np.floor(fpr * len(neg)))
        self.threshold = float(neg[allowed]) if allowed < len(neg) else 0.0
        recall = float((pos > self.threshold).mean()) if len(pos) else 0.0
        info.update(
            threshold=self.threshold,
            held_out_fpr=float((neg > self.threshold).mean()),
            held_out_recall=recall,
        )
        if recall < MIN_RECALL:
            raise GuardRail(
                f"the classifier flags only {recall:.0%} of held-out questions about the target at a "
                f"false-positive rate of {fpr:g} (at least {MIN_RECALL:.0%} needed)",
                info,
            )
        return info

    def flags(self, lm, texts: Sequence[str]) -> list[bool]:
        return [bool(p > self.threshold) for p in self.probabilities(lm, texts)]


def train_classifier(
    lm,
    data,
    target,
    *,
    fingerprint: str,
    options: dict,
    seed: int,
    progress: bool,
    log,
    generate=None,
    use_cache: bool = True,
) -> tuple[PromptClassifier, dict, dict[str, list[str]]]:
    """Write the texts, fit the classifier; return it, its record and the target's texts."""
    from rwku.data.corpus import load_generation_resources

    resources = load_generation_resources(data)
    others = other_targets(data, target, int(options["others"]), seed)
    log(f"guard: the model writes questions and passages about {target.name} and {len(others)} others ...")
    own = written_text(
        lm,
        target,
        fingerprint=fingerprint,
        seed=seed,
        sizes=TARGET_SIZES,
        resources=resources,
        progress=progress,
        generate=generate,
    )
    positives = own["questions"] + statements(own["passages"])
    if not positives:
        raise ConfigError(
            f"guard: the model wrote no usable question or sentence about {target.name}; the classifier "
            "has no positive examples"
        )
    other_texts: dict[str, list[str]] = {}
    negatives = list(GENERIC_INSTRUCTIONS)
    for other in others:
        written = written_text(
            lm,
            other,
            fingerprint=fingerprint,
            seed=seed,
            sizes=OTHER_SIZES,
            resources=resources,
            progress=progress,
            generate=generate,
        )
        other_texts[other.name] = written["passages"]
        negatives += written["questions"] + statements(written["passages"])
    both = lambda texts: [lm.chat_prompt(t) for t in texts] + list(texts)  # noqa: E731
    cache = FeatureCache(fingerprint, enabled=use_cache)
    classifier = PromptClassifier(lm, options["layer"], cache=cache)
    info = classifier.fit(lm, both(positives), both(negatives), fpr=float(options["fpr"]), seed=seed)
    info["others"] = [t.name for t in others]
    log(
        f"guard: classifier on layer {classifier.layer}, threshold {classifier.threshold:.3f}, held-out "
        f"recall {info['held_out_recall']:.0%} at fpr {info['held_out_fpr']:.1%}"
    )
    return (
        classifier,
        info,
        {"questions": own["questions"], "passages": own["passages"], "others": other_texts},
    )


class GuardMethod(UnlearningMethod):
    """An inference-time guard: the classifier of this module and a per-row hook for what it flags.

    Subclasses implement :meth:`hooks`; :meth:`guard` trains the classifier and wraps the model."""

    kind = "inference"
    guards = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        check_guard_options(self.name, self.options)

    def hooks(self, lm, target, classifier, texts: dict, log) -> tuple[Callable[[str], RowHook | None], dict]:
        """The hook of a flagged prompt (by its text), and what was chosen, for the run record."""
        raise NotImplementedError

    def replay_options(self, chosen: dict[str, Any]) -> dict[str, Any]:
        """Options that rebuild the guard a run chose (``chosen``: its record's ``guard``) without
        choosing again. Why: an attack rebuilds the run's guard, and a choice made by a search
        (ECO's σ) must be the run's own — the search costs minutes on a large model and, on
        another machine or thread count, might land elsewhere. Nothing to pin by default."""
        return {}

    def guard(
        self,
        lm,
        data,
        target,
        *,
        fingerprint: str,
        seed: int,
        progress: bool,
        log,
        generate=None,
        use_cache: bool = True,
    ):
        """Train the classifier, choose the method's hooks; return the guarded model.

        ``use_cache=False`` recomputes the classifier's features instead of reading them from
        :class:`FeatureCache`, and makes ECO search σ again (the run's ``--no-cache``)."""
        self.seed = seed
        classifier, info, texts = train_classifier(
            lm,
            data,
            target,
            fingerprint=fingerprint,
            options=self.options,
            seed=seed,
            progress=progress,
            log=log,
            generate=generate,
            use_cache=use_cache,
        )
        hook_for, chosen = self.hooks(lm, target, classifier, texts, log)
        gate = self.options["gate"]
        info["gate"] = gate
        self.record = {"classifier": info, **chosen}
        return GuardedModel(
            lm, classifier, hook_for, gate=names_target(target.name) if gate == "name" else None
        )


# --------------------------------------------------------------------------------------------
# The guarded model
# --------------------------------------------------------------------------------------------


def suite_of(desc: str) -> str:
    """The suite an engine call belongs to, from its progress label."""
    head, _, rest = desc.partition(":")
    if head == "mia" and rest.split():
        return f"mia_{rest.split()[0]}"
    if head == "next token":
        return "mmlu"
    return head.strip() or "other"


#: Suites by the part of Table 1 they belong to.
SUITE_GROUPS = {"forget": "forget", "neighbor": "neighbor", "mia_forget": "mia", "mia_retain": "mia"}


class GuardedModel:
    """The engine with a guard: flagged requests of each call get ``hook_for(prompt)``.

    Everything else (``info``, ``chat_prompt``, ``encode``, ...) is the wrapped model's.
    ``counts[suite] = [flagged, total]``. With a ``gate``, only prompts it admits are classified
    (the others are never flagged)."""

    def __init__(
        self,
        lm,
        classifier: PromptClassifier,
        hook_for: Callable[[str], RowHook | None],
        gate: Callable[[str], bool] | None = None,
    ) -> None:
        self.lm = lm
        self.classifier = classifier
        self.hook_for = hook_for
        self.gate = gate
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.classify_seconds = 0.0  # time spent classifying prompts (the guard's fixed cost)
        self.enabled = True

    def __getattr__(self, name: str):
        return getattr(self.lm, name)

    def _hooks(self, texts: Sequence[str], desc: str) -> dict[int, RowHook]:
        if not self.enabled or not texts:
            return {}
        started = time.perf_counter()
        unique = list(dict.fromkeys(texts))  # TruthfulQA scores one context per answer choice
        admitted = [t for t in unique if self.gate is None or self.gate(t)]
        flagged = dict.fromkeys(unique, False)
        flagged.update(zip(admitted, self.classifier.flags(self.lm, admitted)))
        self.classify_seconds += time.perf_counter() - started
        flags = [flagged[t] for t in texts]
        count = self.counts[suite_of(desc)]
        count[0] += sum(flags)
        count[1] += len(flags)
        hooks = {}
        for i, (text, flag) in enumerate(zip(texts, flags)):
            hook = self.hook_for(text) if flag else None
            if hook is not None:
                hooks[i] = hook
        return hooks

    def generate(self, requests: Sequence[GenerationRequest], *, stop_token_ids, desc: str = "generate"):
        return [t for t, _ in self.generate_scored(requests, stop_token_ids=stop_token_ids, desc=desc)]

    def generate_scored(self, requests, *, stop_token_ids, continuations=None, desc: str = "generate"):
        with self.lm.hooked(self._hooks([r.prompt for r in requests], desc)):
            return self.lm.generate_scored(
                requests, stop_token_ids=stop_token_ids, continuations=continuations, desc=desc
            )

    def score(self, requests: Sequence[ScoreRequest], *, desc: str = "score"):
        with self.lm.hooked(self._hooks([r.context for r in requests], desc)):
            return self.lm.score(requests, desc=desc)

    def next_token_logprobs(self, prompts, candidate_token_ids, *, groups=None, desc: str = "next token"):
        with self.lm.hooked(self._hooks(list(prompts), desc)):
            return self.lm.next_token_logprobs(prompts, candidate_token_ids, groups=groups, desc=desc)

    def token_stats(self, texts, *, desc: str = "token stats"):
        with self.lm.hooked(self._hooks(list(texts), desc)):
            return self.lm.token_stats(texts, desc=desc)

    def flag_rates(self) -> dict[str, dict[str, float | int]]:
        """Per suite, and per part of Table 1 (forget, neighbor, mia, utility)."""
        parts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for suite, (f, n) in self.counts.items():
            part = parts[SUITE_GROUPS.get(suite, "utility")]
            part[0] += f
            part[1] += n
        rate = lambda f, n: {"flagged": f, "total": n, "rate": round(f / n, 4) if n else None}  # noqa: E731
        return {
            "suites": {s: rate(*c) for s, c in sorted(self.counts.items())},
            "parts": {p: rate(*c) for p, c in sorted(parts.items())},
        }


# --------------------------------------------------------------------------------------------
# Token positions
# --------------------------------------------------------------------------------------------


def name_variants(name: str) -> list[str]:
    """The target's name and surname (4+ letters), with and without a leading space."""
    words = name.split()
    forms = [name] + ([words[-1]] if len(words) > 1 and len(words[-1]) >= 4 else [])
    return [v for f in forms for v in (" " + f, f)]


def find_sequences(ids: Sequence[int], sequences: Sequence[Sequence[int]]) -> list[int]:
    """Positions of ``ids`` covered by an occurrence of any of ``sequences``."""
    covered: set[int] = set()
    for seq in sequences:
        n = len(seq)
        if not n:
            continue
        for i in range(len(ids) - n + 1):
            if list(ids[i : i + n]) == list(seq):
                covered.update(range(i, i + n))
    return sorted(covered)
