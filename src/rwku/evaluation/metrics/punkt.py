"""Offline provisioning of nltk's Punkt sentence model, needed by ``nltk.word_tokenize``.

The fluency metric tokenizes with ``nltk.word_tokenize``, which first splits sentences with
the Punkt model (``tokenizers/punkt_tab/english/``, four small text files). nltk does not
ship that data and ``nltk.download`` needs nltk's own server, which is not reachable
everywhere (and the reference's ``nltk.download('punkt')`` fetches the older pickle format
that current nltk no longer reads). The conformance fixture was made with the copy that the
PyPI wheel ``llama-index-core`` 0.14.25 bundles, so that is the copy we install: PyPI is
reachable wherever ``pip`` works, and the file hashes are pinned below.

:func:`ensure_punkt` tries, in order, and stops at the first that works:

1. data nltk already finds (``NLTK_DATA``, ``~/nltk_data``, ...);
2. our cache, ``platformdirs.user_cache_dir("rwku")/nltk_data``;
3. the copy inside an installed ``llama_index.core`` (``_static/nltk_cache``);
4. ``pip download`` of the pinned wheel, extracting only ``punkt_tab`` into our cache, after
   checking the sha256 of the four English files.

``python -m rwku.evaluation.metrics.punkt`` does the same and prints where the data is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import nltk
import platformdirs

from rwku.errors import RwkuError

__all__ = [
    "PUNKT_ENGLISH_SHA256",
    "PUNKT_WHEEL",
    "cache_nltk_dir",
    "ensure_punkt",
    "punkt_files_match",
]

#: The PyPI wheel the reference's punkt data came from (see the conformance fixture's meta).
PUNKT_WHEEL = "llama-index-core==0.14.25"
_WHEEL_PREFIX = "llama_index/core/_static/nltk_cache/"
_RESOURCE = "tokenizers/punkt_tab/english/"

#: sha256 of the English punkt_tab files the reference was run with.
PUNKT_ENGLISH_SHA256: dict[str, str] = {
    "abbrev_types.txt": "92a3e070f43d9b4c5534758ca40ad7343b04e7e29bfe0c2eb658a39445a4f779",
    "collocations.tab": "8e2da1225e4dd2cc9dba261ee231ccb134859e21b46006e7f472c5ee269af0cf",
    "ortho_context.tab": "4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c",
    "sent_starters.txt": "f3f8535483e1dba487241b764945168123bca3209a9645e59acd1225dc76edac",
}

_HOW_TO_FIX = (
    "nltk's Punkt data (tokenizers/punkt_tab/english/) is needed for the fluency metric and "
    "could not be found or fetched. Provide it offline: run `python -m "
    "rwku.evaluation.metrics.punkt` on a machine that can reach PyPI and copy its printed "
    "nltk_data folder here, then point the environment variable NLTK_DATA at it (or put it "
    f"in {{cache}}). The files come from the PyPI wheel {PUNKT_WHEEL}, under "
    f"{_WHEEL_PREFIX}tokenizers/punkt_tab/."
)

_ready: Path | None = None


def cache_nltk_dir() -> Path:
    """Our own nltk data folder: ``platformdirs.user_cache_dir("rwku")/nltk_data``."""
    return Path(platformdirs.user_cache_dir("rwku")) / "nltk_data"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def punkt_files_match(english_dir: Path) -> bool:
    """Whether ``english_dir`` holds the four English punkt_tab files with the pinned hashes."""
    try:
        return all(_sha256(english_dir / name) == digest for name, digest in PUNKT_ENGLISH_SHA256.items())
    except OSError:
        return False


def _find_english_dir() -> Path | None:
    """The English punkt_tab folder nltk finds on its current search path, if any."""
    try:
        found = nltk.data.find(_RESOURCE)
    except LookupError:
        return None
    return Path(str(found))


def _use_root(root: Path) -> Path | None:
    """Put ``root`` first on nltk's path if it holds the data; return the English folder."""
    english = root / _RESOURCE
    if not all((english / name).is_file() for name in PUNKT_ENGLISH_SHA256):
        return None
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return _find_english_dir()


def _llama_index_root() -> Path | None:
    """``_static/nltk_cache`` of an installed ``llama_index.core``, found without importing it."""
    try:
        spec = importlib.util.find_spec("llama_index.core")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location) / "_static" / "nltk_cache"
        if (root / _RESOURCE).is_dir():
            return root
    return None


def _download_into(cache_root: Path) -> None:
    """Fetch the pinned wheel with pip and extract only ``punkt_tab`` into ``cache_root``.

    The English files are hash-checked before anything is moved into place; the extraction
    goes to a temporary folder beside the target and is renamed in, so a failed or
    concurrent run never leaves a half-written model.
    """
    with tempfile.TemporaryDirectory(prefix="rwku-punkt-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            tmp,
            PUNKT_WHEEL,
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or str(error)
            raise RwkuError(f"could not download {PUNKT_WHEEL} from PyPI: {detail.strip()[-500:]}") from error
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RwkuError(f"pip download of {PUNKT_WHEEL} produced no wheel")

        staging = Path(tmp) / "nltk_data"
        member_prefix = _WHEEL_PREFIX + "tokenizers/punkt_tab/"
        with zipfile.ZipFile(wheels[0]) as wheel:
            for info in wheel.infolist():
                if info.is_dir() or not info.filename.startswith(member_prefix):
                    continue
                relative = PurePosixPath(info.filename[len(_WHEEL_PREFIX) :])
                if relative.is_absolute() or ".." in relative.parts:
                    raise RwkuError(f"unsafe path in {wheels[0].name}: {info.filename}")
                target = staging.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
        if not punkt_files_match(staging / _RESOURCE):
            raise RwkuError(
                f"the punkt_tab files in {wheels[0].name} do not have the expected sha256; "
                "refusing to install them"
            )

        destination = cache_root / "tokenizers" / "punkt_tab"
        destination.parent.mkdir(parents=True, exist_ok=True)
        incoming = Path(tempfile.mkdtemp(prefix=".punkt_tab-", dir=destination.parent))
        try:
            shutil.copytree(staging / "tokenizers" / "punkt_tab", incoming, dirs_exist_ok=True)
            if destination.exists():
                # Another process won the race, or an incomplete copy is in the way.
                if punkt_files_match(destination / "english"):
                    return
                shutil.rmtree(destination)
            os.replace(incoming, destination)
        finally:
            if incoming.exists():
                shutil.rmtree(incoming, ignore_errors=True)


def ensure_punkt(download: bool = True) -> Path:
    """Make ``nltk.word_tokenize`` work offline; return the English punkt_tab folder used.

    Runs the search described in the module docstring once per process (later calls return
    the cached answer). Data that nltk already finds is used as it is, with a warning if its
    files differ from the pinned ones (fluency values may then differ from the reference's).
    ``download=False`` skips the network step.

    Raises :class:`rwku.errors.RwkuError`, saying how to provide the data, if all fail.
    """
    global _ready
    if _ready is not None:
        return _ready

    english = _find_english_dir()
    if english is not None and not punkt_files_match(english):
        warnings.warn(
            f"nltk's punkt_tab data in {english} differs from the copy the RWKU reference used "
            f"({PUNKT_WHEEL}); fluency (n-gram entropy) may differ slightly from the reference",
            stacklevel=2,
        )
    cache_root = cache_nltk_dir()
    if english is None:
        english = _use_root(cache_root)
    if english is None:
        llama_root = _llama_index_root()
        if llama_root is not None:
            english = _use_root(llama_root)
    if english is None and download:
        error: RwkuError | None = None
        try:
            _download_into(cache_root)
        except RwkuError as caught:
            error = caught
        english = _use_root(cache_root)
        if english is None:
            message = _HOW_TO_FIX.format(cache=cache_root)
            if error is not None:
                message += f" (download failed: {error})"
            raise RwkuError(message) from error
    if english is None:
        raise RwkuError(_HOW_TO_FIX.format(cache=cache_root))
    _ready = english
    return english


def main() -> int:
    """``python -m rwku.evaluation.metrics.punkt``: provision the data, print where it is."""
    try:
        english = ensure_punkt()
    except RwkuError as error:
        print(f"error: {error}", file=sys.stderr)
        return RwkuError.exit_code
    nltk_data = english.parents[2]
    print(f"punkt_tab (english): {english}")
    print(f"nltk data folder: {nltk_data}")
    print(f"matches the reference's files ({PUNKT_WHEEL}): {punkt_files_match(english)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
