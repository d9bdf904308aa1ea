"""Forget corpora: the model writing its own training text, or the authors' Llama-3 corpora.

RWKU gives a method only the target's name and one-line intro, so the methods that train
(GA, NPO, DPO, RT) first make a *synthetic forget corpus* from the original model itself
(PROTOCOL.md, "Synthetic forget corpus"). :func:`generate_corpus` does that exactly as the
authors' ``generation/pair_generation.py`` and ``generation/question_generation.py`` do:

* ``"passages"`` (GA, NPO) and ``"pairs"`` (DPO): for opening *i* of the 582 assistant-turn
  openings in ``generation/all_truncated_outputs.json`` (cycling when ``n`` > 582), the
  chat-templated prompt with the opening appended after the generation prompt is sampled
  (T = 1.0, top-p 0.9, top-k 50: the transformers default the reference ran with) and the
  opening is prepended to the decoded output. *Factual*: system "{intro} You know {target}
  very well.", user "Please write a short biography of {target}."; *counterfactual*: system
  "{intro} You don't know {target} at all.", user "Please make up a short biography of
  {target}.", then :func:`clean_counterfactual`. ``"passages"`` samples the factual prompts
  only (half the cost of pairs), so its texts are not the ``rejected`` texts of a pairs corpus
  with the same seed. Some openings are complete utterances ("Hello? Is someone here?") after
  which the model may end its turn at once; such a record is the bare opening. The reference
  keeps them (11 of the authors' 582 Stephen King pairs are a bare opening on both sides), and
  so does this module.
* ``"neighbors"`` (retain text for GradDiff, KL, RMU; beyond the paper, which has no retain
  term): the same sampling as ``"passages"``, no system turn, user "Please write a short
  introduction to {neighbor}." for neighbour *i* mod the number of neighbours given, opening
  *i* prepended. The model writes about what the target's neighbours are, so a retain loss on
  this text protects the model's own view of them without ever seeing an evaluation answer.
* ``"refusals"`` (RT): questions sampled from the user text "{intro}\\nPlease generate a
  question about {target} based on what you know about {target}\\n" with the assistant turn
  started by "Question:", cut to the first line; answer *i* is refusal line *i* mod 100 of
  ``generation/idontknow.jsonl``.

Record shapes (the same for :func:`authors_corpus`): passages ``{"text"}``; pairs
``{"prompt", "chosen", "rejected"}`` (chosen = counterfactual, rejected = factual, prompt
"{intro} Please write a short biography of {target}."); refusals ``{"question", "answer"}``.

Deliberate, documented choices where the reference is silent or model-specific:

* Chat templates without a system role (the template raises, or drops the system text): the
  system text is prefixed to the user turn, joined by one space (as the DPO prompt joins the
  intro and the instruction).
* Prompts are tokenised as the reference does (``tokenizer(prompts)``, special tokens on) and
  outputs decoded as it does (the whole row with special tokens skipped, minus the decoded
  prompt), so SentencePiece tokenizers keep the space a bare continuation decode would drop.
  Generation stops at eos and at ``convert_tokens_to_ids("<|eot_id|>")``, the reference's
  terminators.
* Questions: the reference keeps ``output.split("\\n")[0].strip()``, which is empty when the
  model starts with a newline; here the first *non-empty* line is kept (identical otherwise).
  The reference sampled questions with the model's own generation config (for
  Llama-3-8B-Instruct T = 0.6, top-p 0.9); here the same T/top-p as the passages is used by
  default (both are arguments).
* Reproducibility: each batch is sampled under its own seed derived from ``(seed, kind,
  batch index)`` in a forked RNG, so the caller's RNG is untouched and identical prompts in
  different batches (every question prompt is the same) get different samples. The same
  seed, batch size, model and software give the same corpus; ``batch_size`` is therefore part
  of the cache key.

Caching (:func:`get_or_generate`): a corpus is saved as JSON Lines under
``<$RWKU_CACHE or the user cache dir>/corpora/`` with a first metadata line, keyed by the model
fingerprint, target, kind, size, seed and every sampling setting, so repeated runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from rwku.data.loader import HubData, LocalJoinedData, LocalPerTargetData, RwkuData
from rwku.data.records import Target
from rwku.errors import ConfigError, DataError, ModelError
from rwku.io import atomic_write_text

__all__ = [
    "AUTHORS_KINDS",
    "COUNTERFACTUAL_PHRASES",
    "CPU_SIZES",
    "GENERATED_KINDS",
    "PAPER_SIZES",
    "CorpusSize",
    "GenerationResources",
    "authors_corpus",
    "clean_counterfactual",
    "clean_question",
    "corpus_cache_dir",
    "corpus_cache_path",
    "corpus_prompts",
    "generate_corpus",
    "get_or_generate",
    "load_corpus_file",
    "load_generation_resources",
    "save_corpus",
]

log = logging.getLogger(__name__)

GENERATED_KINDS: tuple[str, ...] = ("passages", "pairs", "refusals", "neighbors")
"""Corpora :func:`generate_corpus` writes: GA/NPO text, DPO pairs, RT refusal data, and
passages about the target's neighbours (retain text)."""

AUTHORS_KINDS: tuple[str, ...] = ("passages", "wiki_passages", "pairs", "refusals")
"""Corpora :func:`authors_corpus` reads; ``wiki_passages`` is the Wikipedia text GA* trains on."""


class CorpusSize(NamedTuple):
    """How many records, and how many new tokens each generation may have."""

    n: int
    max_new_tokens: int


PAPER_SIZES: dict[str, CorpusSize] = {
    "passages": CorpusSize(582, 512),
    "pairs": CorpusSize(582, 512),
    "refusals": CorpusSize(300, 50),
    "neighbors": CorpusSize(582, 512),
}
"""The paper's sizes: one passage/pair per opening of up to 512 tokens, 300 questions of ≤ 50."""

CPU_SIZES: dict[str, CorpusSize] = {
    "passages": CorpusSize(32, 128),
    "pairs": CorpusSize(32, 128),
    "refusals": CorpusSize(48, 50),
    "neighbors": CorpusSize(32, 128),
}
"""Defaults small enough for a CPU. Cost is one decoding step per token per batch of 16:
refusals 3 × 50 steps, passages 2 × 128, pairs 4 × 128 (two generations per pair). With
SmolLM2-135M on 2 CPU cores a step takes about 0.2 s on an idle machine, so about 30 s,
45 s and 90 s (measured: passages 45 s); on a busy shared machine 3–6 times that (measured
there: refusals 166–358 s, passages 306 s, pairs 257 s)."""

COUNTERFACTUAL_PHRASES: tuple[str, ...] = (
    "totally fabricated ",
    "completely fabricated ",
    "totally made-up ",
    "completely made-up ",
    "totally fictional ",
    "completely fictional ",
)
"""Deleted from counterfactual texts, in this order, case-sensitively, as the reference's
``replace_chosen`` does: only these two-word phrases (with their trailing space), never
"fictional " or "fabricated " on their own, nor "Totally ..." at a sentence start."""

FACTUAL_SYSTEM = "{intro} You know {target} very well."
FACTUAL_USER = "Please write a short biography of {target}."
COUNTERFACTUAL_SYSTEM = "{intro} You don't know {target} at all."
COUNTERFACTUAL_USER = "Please make up a short biography of {target}."
PAIR_PROMPT = "{intro} Please write a short biography of {target}."
NEIGHBOR_USER = "Please write a short introduction to {neighbor}."
QUESTION_USER = "{intro}\nPlease generate a question about {target} based on what you know about {target}\n"
QUESTION_ASSISTANT_START = "Question:"

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 50
"""transformers' default top-k, which the reference's sampling ran with; set explicitly so a
model's own generation config cannot change it."""

GENERATION_DIR = "generation"
OPENINGS_FILE = "all_truncated_outputs.json"
REFUSALS_FILE = "idontknow.jsonl"
INTROS_FILE = "all_intro.json"

CACHE_ENV = "RWKU_CACHE"
_CACHE_FORMAT = "rwku-corpus-1"  # bump when prompts, decoding or the file format change
_META_KEY = "_rwku_corpus_meta"
_SYSTEM_PROBE = "\x00rwku-system-probe\x00"


# =========================================================================== text rules


def clean_counterfactual(text: str) -> str:
    """Delete the reference's six "totally/completely fabricated/made-up/fictional " phrases.

    The counterfactual prompt invites the model to announce that it is inventing ("Here's a
    completely fabricated biography"), which would teach DPO to prefer the announcement rather
    than the invented facts; the reference removes these phrases and nothing else.
    """
    for phrase in COUNTERFACTUAL_PHRASES:
        text = text.replace(phrase, "")
    return text


def clean_question(generated: str) -> str:
    """The question in a sampled continuation of "Question:": its first non-empty line, stripped.

    The model often goes on with an answer or more questions on later lines; only the first
    line is the question. (The reference takes line 0 even when it is empty.)
    """
    for line in generated.split("\n"):
        if line.strip():
            return line.strip()
    return ""


# =========================================================================== resources


class GenerationResources(NamedTuple):
    """The authors' generation inputs: assistant-turn openings, refusal lines, and intros
    (target name -> the three intros of ``all_intro.json``; empty when that file is absent)."""

    openings: list[str]
    refusals: list[str]
    intros: dict[str, list[str]]


def _generation_dir(source: RwkuData | str | os.PathLike[str]) -> Path:
    """The folder holding the generation files for a data source or an explicit path."""
    if isinstance(source, HubData):
        raise DataError(
            f"the corpus-generation files ({OPENINGS_FILE}, {REFUSALS_FILE}) are not part of the "
            f"HuggingFace dataset {source.repo}; they are in the GitHub repository jinzhuoran/RWKU "
            f"under {GENERATION_DIR}/. Pass --data DIR (or set RWKU_DATA) to a local RWKU copy with a "
            f"{GENERATION_DIR}/ folder, or use the authors' corpora instead of generating"
        )
    if isinstance(source, (LocalJoinedData, LocalPerTargetData)):
        roots = [source.root]
        if isinstance(source, LocalPerTargetData):
            roots.append(source.base)
    elif isinstance(source, RwkuData):
        raise DataError(f"cannot locate corpus-generation files for {source.describe()}")
    else:
        roots = [Path(os.fspath(source)).expanduser()]
    candidates = [c for r in roots for c in (r / GENERATION_DIR, r)]
    for folder in candidates:
        if (folder / OPENINGS_FILE).is_file() or (folder / REFUSALS_FILE).is_file():
            return folder
    return candidates[0]


def _read_text(path: Path) -> str:
    try:
        if path.name.endswith(".xz"):
            with lzma.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, lzma.LZMAError, EOFError) as e:
        raise DataError(f"{path}: cannot read file: {e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _missing(path: Path, what: str) -> DataError:
    return DataError(
        f"missing corpus-generation file {path} ({what}); copy {GENERATION_DIR}/{path.name} from the "
        f"GitHub repository jinzhuoran/RWKU into the data directory's {GENERATION_DIR}/ folder"
    )


def _load_openings(folder: Path) -> list[str]:
    path = folder / OPENINGS_FILE
    if not path.is_file():
        raise _missing(path, "the assistant-turn openings")
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}: expected a JSON list of strings")
    if not value:
        raise DataError(f"{path}: the list of openings is empty")
    return value


def _load_refusals(folder: Path) -> list[str]:
    path = folder / REFUSALS_FILE
    if not path.is_file():
        raise _missing(path, "the refusal lines")
    # Plain text despite the name: one refusal per line, stripped as the reference strips them.
    lines = [line.strip() for line in _read_text(path).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{path}: no refusal lines")
    return lines


def _load_intros(folder: Path) -> dict[str, list[str]]:
    path = folder / INTROS_FILE
    if not path.is_file():
        return {}
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object of target name -> list of intros")
    out: dict[str, list[str]] = {}
    for name, intros in value.items():
        if isinstance(intros, str):
            intros = [intros]
        if not isinstance(intros, list) or not all(isinstance(i, str) for i in intros):
            raise DataError(f"{path}: intros of {name!r} must be a list of strings")
        out[name] = list(intros)
    return out


def load_generation_resources(source: RwkuData | str | os.PathLike[str]) -> GenerationResources:
    """Read ``generation/all_truncated_outputs.json``, ``generation/idontknow.jsonl`` (and
    ``all_intro.json`` when present) from a local RWKU data directory.

    ``source`` is an opened :class:`RwkuData` or a path: the data directory (files in its
    ``generation/`` folder) or the generation folder itself. The files come from the authors'
    GitHub repository; the HuggingFace dataset does not have them, so a hub source raises a
    :class:`DataError` that says to pass ``--data``. A missing or malformed file is a
    DataError naming it.
    """
    folder = _generation_dir(source)
    return GenerationResources(_load_openings(folder), _load_refusals(folder), _load_intros(folder))


def _default_resources(kind: str) -> GenerationResources:
    """Resources from the default data source ($RWKU_DATA), for callers that pass none."""
    from rwku.data.loader import open_data

    folder = _generation_dir(open_data())
    if kind == "refusals":
        return GenerationResources([], _load_refusals(folder), {})
    return GenerationResources(_load_openings(folder), [], {})


# =========================================================================== prompts


def _check_kind(kind: str, allowed: tuple[str, ...]) -> None:
    if kind not in allowed:
        raise ConfigError(f"unknown corpus kind {kind!r}: expected one of {', '.join(allowed)}")


def _supports_system(tokenizer: Any) -> bool:
    """Whether the chat template renders a system turn (some raise, some silently drop it)."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "hi"}],
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception:
        return False
    return _SYSTEM_PROBE in text


def _chat(tokenizer: Any, system: str | None, user: str, with_system: bool) -> str:
    if system is not None and not with_system:
        user, system = f"{system} {user}", None
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}
    ]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:
        raise ModelError(
            "corpus generation needs a chat model: applying the tokenizer's chat template failed "
            f"({type(e).__name__}: {e})"
        ) from None


def _opening(openings: Sequence[str], i: int) -> str:
    return openings[i % len(openings)]


def corpus_prompts(
    tokenizer: Any,
    target: Target,
    kind: str,
    n: int,
    *,
    openings: Sequence[str] | None = None,
    neighbors: Sequence[str] | None = None,
) -> list[str]:
    """The exact model inputs :func:`generate_corpus` samples, in order.

    passages: the factual prompt of openings 0..n-1; pairs: factual and counterfactual
    interleaved (2n prompts, as the reference orders them); refusals: n copies of the question
    prompt; neighbors: the introduction prompt of neighbour i mod len(neighbors) with opening
    i. Exposed so that prompt text can be inspected and tested without a model.
    """
    _check_kind(kind, GENERATED_KINDS)
    name, intro = target.name, target.intro
    with_system = _supports_system(tokenizer)
    if kind == "refusals":
        prompt = _chat(tokenizer, None, QUESTION_USER.format(intro=intro, target=name), with_system)
        return [prompt + QUESTION_ASSISTANT_START] * n
    if not openings:
        raise ConfigError(f"generating {kind} needs the assistant-turn openings ({OPENINGS_FILE})")
    if kind == "neighbors":
        if not neighbors:
            raise ConfigError("generating neighbors needs the names of the target's neighbours")
        return [
            _chat(tokenizer, None, NEIGHBOR_USER.format(neighbor=neighbors[i % len(neighbors)]), with_system)
            + _opening(openings, i)
            for i in range(n)
        ]
    factual = _chat(
        tokenizer,
        FACTUAL_SYSTEM.format(intro=intro, target=name),
        FACTUAL_USER.format(target=name),
        with_system,
    )
    counter = _chat(
        tokenizer,
        COUNTERFACTUAL_SYSTEM.format(intro=intro, target=name),
        COUNTERFACTUAL_USER.format(target=name),
        with_system,
    )
    prompts: list[str] = []
    for i in range(n):
        opening = _opening(openings, i)
        prompts.append(factual + opening)
        if kind == "pairs":
            prompts.append(counter + opening)
    return prompts


# =========================================================================== sampling


def _batch_seed(seed: int, kind: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{kind}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _stop_ids(tokenizer: Any) -> list[int]:
    """eos, and what ``convert_tokens_to_ids("<|eot_id|>")`` returns: the reference's terminators."""
    ids: list[int] = []
    for value in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")):
        if isinstance(value, int) and value >= 0 and value not in ids:
            ids.append(value)
    return ids


def _sample(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    kind: str,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
    temperature: float,
    top_p: float,
    progress: bool,
) -> list[str]:
    """Sample one continuation per prompt in batches of ``batch_size`` (left padding)."""
    import torch
    from tqdm.auto import tqdm

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # the reference's pad = eos
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    stop = _stop_ids(tokenizer)
    device = next(model.parameters()).device
    # Fork the accelerator's RNG too, so sampling there leaves the caller's stream alone.
    fork: dict[str, Any] = (
        {"devices": []} if device.type == "cpu" else {"devices": [device], "device_type": device.type}
    )
    outputs: list[str] = []
    bar = tqdm(total=len(prompts), desc=f"corpus {kind}", unit="seq", disable=not progress, leave=False)
    try:
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            batch = list(prompts[start : start + batch_size])
            enc = tokenizer(batch, padding="longest", return_tensors="pt", add_special_tokens=True)
            input_ids = enc.input_ids.to(device)
            attention_mask = enc.attention_mask.to(device)
            with torch.random.fork_rng(**fork), torch.no_grad():
                torch.manual_seed(_batch_seed(seed, kind, b))
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=DEFAULT_TOP_K,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=stop or None,
                )
            width = input_ids.shape[1]
            for row in range(len(batch)):
                full = tokenizer.decode(out[row], skip_special_tokens=True)
                shown = tokenizer.decode(input_ids[row], skip_special_tokens=True)
                if full.startswith(shown):
                    outputs.append(full[len(shown) :])
                else:  # decoding merged across the boundary: fall back to the new tokens alone
                    outputs.append(tokenizer.decode(out[row, width:], skip_special_tokens=True))
            bar.update(len(batch))
    finally:
        bar.close()
        tokenizer.padding_side = old_side
    return outputs


def _resolve_size(kind: str, n: int | None, max_new_tokens: int | None) -> CorpusSize:
    default = CPU_SIZES[kind]
    size = CorpusSize(
        default.n if n is None else n, default.max_new_tokens if max_new_tokens is None else max_new_tokens
    )
    if isinstance(size.n, bool) or not isinstance(size.n, int) or size.n < 0:
        raise ConfigError(f"corpus size n must be a non-negative integer, got {size.n!r}")
    if (
        isinstance(size.max_new_tokens, bool)
        or not isinstance(size.max_new_tokens, int)
        or size.max_new_tokens < 1
    ):
        raise ConfigError(f"max_new_tokens must be a positive integer, got {size.max_new_tokens!r}")
    return size


def generate_corpus(
    model: Any,
    tokenizer: Any,
    target: Target,
    *,
    kind: str,
    n: int | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    openings: Sequence[str] | None = None,
    refusals: Sequence[str] | None = None,
    neighbors: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
) -> list[dict[str, str]]:
    """Sample a corpus of ``kind`` ("passages", "pairs", "refusals" or "neighbors") from ``model``.

    ``n`` and ``max_new_tokens`` default to :data:`CPU_SIZES` (use :data:`PAPER_SIZES` for the
    paper's 582 × 512 / 300 × 50). ``neighbors`` (the neighbour names) is needed for
    "neighbors". ``openings`` (passages, pairs, neighbors) and ``refusals`` (refusals)
    default to the generation files of the default data source (``$RWKU_DATA``); pass
    :func:`load_generation_resources` output to choose. See the module docstring for the exact
    prompts and sampling. The model's weights are not changed; the caller's RNG state is kept.
    """
    _check_kind(kind, GENERATED_KINDS)
    size = _resolve_size(kind, n, max_new_tokens)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if kind == "refusals" and refusals is None:
        refusals = _default_resources(kind).refusals
    if kind != "refusals" and openings is None:
        openings = _default_resources(kind).openings
    if kind == "refusals" and not refusals:
        raise ConfigError(f"generating refusals needs the refusal lines ({REFUSALS_FILE})")
    if size.n == 0:
        return []
    prompts = corpus_prompts(tokenizer, target, kind, size.n, openings=openings, neighbors=neighbors)
    texts = _sample(
        model,
        tokenizer,
        prompts,
        kind=kind,
        max_new_tokens=size.max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        temperature=temperature,
        top_p=top_p,
        progress=progress,
    )
    if kind == "refusals":
        assert refusals is not None
        return [
            {"question": clean_question(q), "answer": refusals[i % len(refusals)]}
            for i, q in enumerate(texts)
        ]
    assert openings is not None
    if kind in ("passages", "neighbors"):
        return [{"text": _opening(openings, i) + t} for i, t in enumerate(texts)]
    prompt = PAIR_PROMPT.format(intro=target.intro, target=target.name)
    return [
        {
            "prompt": prompt,
            "chosen": clean_counterfactual(_opening(openings, i) + texts[2 * i + 1]),
            "rejected": _opening(openings, i) + texts[2 * i],
        }
        for i in range(size.n)
    ]


# =========================================================================== authors' corpora


def authors_corpus(data: RwkuData, target: str | int | Target, kind: str) -> list[dict[str, str]]:
    """The authors' Llama-3-8B-Instruct corpora (``train_llama3/``) in :func:`generate_corpus`'s
    record shapes, so every method can train on either.

    passages: ``positive`` texts; wiki_passages: ``passage`` (Wikipedia, for GA*); pairs:
    rebuilt as the authors' ``pair`` file is (positive and negative at the same position, same
    ``id``; prompt from the record's own ``intro`` and ``subject``; chosen = negative, i.e.
    counterfactual, already cleaned by the authors); refusals: ``reject`` instruction/output.
    """
    _check_kind(kind, AUTHORS_KINDS)
    t = data.target(target)
    if kind in ("passages", "wiki_passages"):
        source = "positive" if kind == "passages" else "passage"
        return [{"text": r["text"]} for r in data.load_corpus(source, t)]
    if kind == "refusals":
        return [{"question": r["instruction"], "answer": r["output"]} for r in data.load_corpus("reject", t)]
    pos = data.load_corpus("positive", t)
    neg = data.load_corpus("negative", t)
    if len(pos) != len(neg):
        raise DataError(
            f"{data.describe()}: target {t.name!r} has {len(pos)} positive but {len(neg)} negative "
            "records; pairs need one of each per position"
        )
    out = []
    for i, (p, q) in enumerate(zip(pos, neg)):
        if p.get("id") != q.get("id"):
            raise DataError(
                f"{data.describe()}: target {t.name!r}, record {i}: positive id {p.get('id')!r} "
                f"does not match negative id {q.get('id')!r}"
            )
        intro = p.get("intro") if isinstance(p.get("intro"), str) else t.intro
        subject = p.get("subject") if isinstance(p.get("subject"), str) else t.name
        out.append(
            {
                "prompt": PAIR_PROMPT.format(intro=intro, target=subject),
                "chosen": q["text"],
                "rejected": p["text"],
            }
        )
    return out


# =========================================================================== caching


def corpus_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<cache_dir or $RWKU_CACHE or the platform user cache dir>/corpora``."""
    if cache_dir is not None:
        root = Path(cache_dir).expanduser()
    elif os.environ.get(CACHE_ENV, "").strip():
        root = Path(os.environ[CACHE_ENV].strip()).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("rwku"))
    return root / "corpora"


def _slug(text: str, limit: int = 80) -> str:
    return re.sub(r"[^\w.,-]+", "_", text).strip("_")[:limit] or "_"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def corpus_cache_path(
    model_fingerprint: str,
    target: Target | str,
    kind: str,
    n: int,
    max_new_tokens: int,
    seed: int,
    *,
    settings: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where a generated corpus is cached: ``corpora/<model>/<target>/<kind>-n…-t…-s…-<hash>.jsonl``.

    ``<model>`` is the first 16 hex digits of a sha256 fingerprint (or a hash of any other
    fingerprint string, such as ``hub:owner/name@rev``). The trailing hash covers the target's
    intro and ``settings`` (sampling, batch size, the openings/refusals used), so changing any
    input that changes the text selects a different file.
    """
    fp = model_fingerprint.lower()
    model_key = fp[:16] if re.fullmatch(r"[0-9a-f]{64}", fp) else _digest(model_fingerprint)[:16]
    name = target.name if isinstance(target, Target) else str(target)
    key = {
        "format": _CACHE_FORMAT,
        "intro": target.intro if isinstance(target, Target) else None,
        "settings": dict(settings or {}),
    }
    stem = f"{kind}-n{n}-t{max_new_tokens}-s{seed}-{_digest(key)[:12]}.jsonl"
    return corpus_cache_dir(cache_dir) / model_key / _slug(name) / stem


def save_corpus(
    path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]
) -> Path:
    """Write ``records`` as JSON Lines after one metadata line, atomically (temp file + rename),
    so an interrupted run never leaves a truncated corpus that a later run would reuse."""
    lines = [json.dumps({_META_KEY: dict(meta)}, ensure_ascii=False)]
    lines += [json.dumps(dict(r), ensure_ascii=False) for r in records]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def load_corpus_file(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(records, meta)`` of a file written by :func:`save_corpus` (DataError if malformed)."""
    path = Path(path)
    text = _read_text(path)
    records: list[dict[str, Any]] = []
    meta: dict[str, Any] | None = None
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(value, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        if meta is None:
            if not isinstance(value.get(_META_KEY), dict):
                raise DataError(f"{path}:{lineno}: not a corpus file (first line is not its metadata)")
            meta = value[_META_KEY]
            continue
        records.append(value)
    if meta is None:
        raise DataError(f"{path}: empty corpus file")
    return records, meta


def get_or_generate(
    model: Any,
    tokenizer: Any,
    target: Target,
    *,
    kind: str,
    model_fingerprint: str,
    n: int | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    openings: Sequence[str] | None = None,
    refusals: Sequence[str] | None = None,
    neighbors: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    cache_dir: str | os.PathLike[str] | None = None,
    refresh: bool = False,
    generate: Callable[..., list[dict[str, str]]] | None = None,
) -> list[dict[str, str]]:
    """The cached corpus for these settings if there is one, else :func:`generate_corpus` and save.

    ``model_fingerprint`` identifies the weights (``LoadedModel.info["fingerprint"]``): a corpus
    belongs to the model that wrote it. A cached file whose metadata does not match (or that is
    corrupt) is regenerated; ``refresh=True`` always regenerates. ``generate`` replaces
    :func:`generate_corpus` (for tests and alternative engines).
    """
    _check_kind(kind, GENERATED_KINDS)
    size = _resolve_size(kind, n, max_new_tokens)
    if kind == "refusals":
        refusals = list(refusals) if refusals is not None else _default_resources(kind).refusals
        used = {"refusals": _digest(refusals)}
    else:
        openings = list(openings) if openings is not None else _default_resources(kind).openings
        used = {"openings": _digest(openings)}
        if kind == "neighbors":
            used["neighbors"] = list(neighbors or [])
    settings = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": DEFAULT_TOP_K,
        "batch_size": batch_size,
        **used,
    }
    path = corpus_cache_path(
        model_fingerprint,
        target,
        kind,
        size.n,
        size.max_new_tokens,
        seed,
        settings=settings,
        cache_dir=cache_dir,
    )
    key = {
        "format": _CACHE_FORMAT,
        "model_fingerprint": model_fingerprint,
        "target": target.name,
        "intro": target.intro,
        "kind": kind,
        "n": size.n,
        "max_new_tokens": size.max_new_tokens,
        "seed": seed,
        "settings": settings,
    }
    if path.is_file() and not refresh:
        try:
            records, meta = load_corpus_file(path)
        except DataError as e:
            log.warning("ignoring unreadable cached corpus (%s); generating it again", e)
        else:
            if meta.get("key") == key and len(records) == size.n:
                log.info("using cached %s corpus %s", kind, path)
                return records
            log.warning("cached corpus %s does not match the requested settings; generating it again", path)
    started = time.perf_counter()
    records = (generate or generate_corpus)(
        model,
        tokenizer,
        target,
        kind=kind,
        n=size.n,
        max_new_tokens=size.max_new_tokens,
        seed=seed,
        openings=openings,
        refusals=refusals,
        batch_size=batch_size,
        progress=progress,
        temperature=temperature,
        top_p=top_p,
        **({"neighbors": neighbors} if kind == "neighbors" else {}),
    )
    meta = {
        "key": key,
        "seconds": round(time.perf_counter() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
    }
    save_corpus(path, records, meta)
    return records


def _versions() -> dict[str, str]:
    """Software versions, recorded because sampled text depends on them."""
    out: dict[str, str] = {}
    for module in ("rwku", "torch", "transformers"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # a version is provenance only; never fail a run over it
            continue
    return out
