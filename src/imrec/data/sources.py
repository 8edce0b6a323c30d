"""Where dataset files live and how they get there: cache, mirror, download, checksums.

Every file goes through one path: look in the cache (trusting a small marker written after a
successful check), else copy it from the mirror named by ``IMREC_DATA_MIRROR``, else download it
from its official addresses. Files are written to a temporary name in the cache folder, checked,
then renamed into place, so a half-written or corrupt file is never used.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

try:
    import fcntl
except ImportError:  # not on Windows: processes there may each build a cache file
    fcntl = None

import numpy as np
from safetensors.numpy import load_file, save_file

from imrec.core.errors import DatasetError  # noqa: F401

T = TypeVar("T")

HOME_ENV = "IMREC_HOME"
MIRROR_ENV = "IMREC_DATA_MIRROR"
# Seconds to wait before the 2nd and 3rd try of one address (3 tries in all).
RETRY_DELAYS: tuple[float, ...] = (2.0, 5.0)
TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_FILE_MODE = 0o644  # mkstemp makes 0600 files; cached data is not secret


@dataclass(frozen=True)
class SourceFile:
    """One file a dataset is built from.

    Attributes:
        name: file name inside the dataset folder (cache and mirror alike).
        sha256: expected SHA-256, or ``None`` when no trusted hash is published.
        md5: expected MD5, only for files whose publisher gives nothing stronger.
        urls: official download addresses, tried in order; empty when there is none.
    """

    name: str
    sha256: str | None = None
    md5: str | None = None
    urls: tuple[str, ...] = ()


def imrec_home() -> Path:
    """The imrec cache root: ``$IMREC_HOME``, else ``$XDG_CACHE_HOME/imrec`` or ``~/.cache/imrec``.

    Example:
        >>> isinstance(imrec_home(), Path)
        True
    """
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "imrec"


def dataset_dir(folder: str) -> Path:
    """The cache folder of one dataset, ``imrec_home()/datasets/<folder>``.

    Example:
        >>> dataset_dir("mnist").parts[-2:]
        ('datasets', 'mnist')
    """
    return imrec_home() / "datasets" / folder


def mirror_root() -> Path | None:
    """The mirror folder from ``IMREC_DATA_MIRROR``, or ``None`` when it is not set."""
    env = os.environ.get(MIRROR_ENV)
    return Path(env).expanduser() if env else None


@contextmanager
def one_at_a_time(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s cache entry while the block makes it.

    Processes that share the cache (torchrun's ranks on one machine, two commands started
    together, test workers) then fetch or prepare each file once: the others wait here with a
    note on stderr, and should look for the file again once inside. The lock file
    (``.<name>.lock`` beside ``path``) is removed on the way out; a process that finds the
    lock of a removed file (its maker failed) at worst makes the file a second time, which
    the atomic renames keep harmless. Where the file system has no locks (some network
    mounts) each process goes on without one, as where ``fcntl`` is missing.

    Example:
        >>> with one_at_a_time(tmp / "made.bin", "an example"):
        ...     _ = (tmp / "made.bin").write_bytes(b"1")
        >>> sorted(p.name for p in tmp.iterdir() if p.name.startswith(".made"))
        []
    """
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"imrec: another process is preparing {what}; waiting for it",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system: make the file unguarded, as before
            pass
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


def made_once(path: Path, what: str, find: Callable[[], T | None], make: Callable[[], T]) -> T:
    """``find()`` when ``path``'s cache entry is there, else ``make()`` under
    :func:`one_at_a_time`, after looking again inside the lock (a process that waited for
    another finds what that one made).

    Example (the second call finds the file of the first and makes nothing):
        >>> entry = tmp / "once.txt"
        >>> def find():
        ...     return entry.read_text() if entry.is_file() else None
        >>> def make():
        ...     _ = entry.write_text("made")
        ...     return "made"
        >>> made_once(entry, "an example", find, make), made_once(entry, "an example", find, None)
        ('made', 'made')
    """
    found = find()
    if found is not None:
        return found
    with one_at_a_time(path, what):
        found = find()
        return found if found is not None else make()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_marker(path: Path) -> dict | None:
    """The stored hashes of ``path`` if the file has not changed since they were written."""
    try:
        marker = json.loads(_marker_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if marker.get("size") != st.st_size or marker.get("mtime_ns") != st.st_mtime_ns:
        return None
    return marker


def _write_marker(path: Path, sha256: str, md5: str) -> None:
    st = path.stat()
    record = {"sha256": sha256, "md5": md5, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    _marker_path(path).write_text(json.dumps(record) + "\n")


def _forget(path: Path) -> None:
    path.unlink(missing_ok=True)
    _marker_path(path).unlink(missing_ok=True)


def _mismatch(spec: SourceFile, sha256: str, md5: str) -> str | None:
    """Why the hashes do not match ``spec``, or ``None`` when they do."""
    if spec.sha256 and sha256 != spec.sha256:
        return f"SHA-256 is {sha256}, expected {spec.sha256}"
    if spec.md5 and md5 != spec.md5:
        return f"MD5 is {md5}, expected {spec.md5}"
    return None


def verify_file(path: Path, spec: SourceFile) -> str:
    """Check ``path`` against ``spec`` and return its SHA-256.

    A marker next to the file (``<file>.sha256``: hashes, size, mtime) saves re-hashing on
    later calls; a changed size or mtime makes it hash again.

    Raises:
        DatasetError: the file does not match its published hash.

    Example:
        >>> path = tmp / "t10k-labels-idx1-ubyte.gz"
        >>> _ = path.write_bytes(b"imrec")
        >>> verify_file(path, SourceFile(path.name, sha256=hashlib.sha256(b"imrec").hexdigest()))
        '1b8ca5de...'
        >>> verify_file(path, SourceFile(path.name, sha256="0" * 64))
        Traceback (most recent call last):
        ...
        imrec.core.errors.DatasetError: ...: checksum mismatch: SHA-256 is 1b8ca5de...
    """
    marker = _read_marker(path)
    if marker is None:
        sha, md5 = hashlib.sha256(), hashlib.md5()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                sha.update(chunk)
                md5.update(chunk)
        marker = {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}
        if _mismatch(spec, marker["sha256"], marker["md5"]) is None:
            _write_marker(path, marker["sha256"], marker["md5"])
    problem = _mismatch(spec, marker["sha256"], marker["md5"])
    if problem:
        raise DatasetError(f"{path}: checksum mismatch: {problem}")
    return marker["sha256"]


def _stream_into(reader: BinaryIO, dest: Path, spec: SourceFile, source: str) -> str:
    """Copy ``reader`` to ``dest`` atomically, checking the hashes before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    sha, md5 = hashlib.sha256(), hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := reader.read(_CHUNK):
                out.write(chunk)
                sha.update(chunk)
                md5.update(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, _FILE_MODE)
        problem = _mismatch(spec, sha.hexdigest(), md5.hexdigest())
        if problem:
            raise DatasetError(
                f"{source}: checksum mismatch: {problem}. The file was not used or kept; "
                "replace it with the original file."
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _write_marker(dest, sha.hexdigest(), md5.hexdigest())
    return sha.hexdigest()


def _download(url: str, dest: Path, spec: SourceFile) -> str:
    """Download ``url`` into ``dest`` with up to ``1 + len(RETRY_DELAYS)`` tries."""
    last: Exception | None = None
    for attempt in range(1 + len(RETRY_DELAYS)):
        if attempt:
            time.sleep(RETRY_DELAYS[attempt - 1])
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                return _stream_into(response, dest, spec, url)
        except urllib.error.HTTPError as e:
            last = e
            if 400 <= e.code < 500:  # the address is wrong, not flaky: no point retrying
                break
        except (OSError, http.client.HTTPException, ValueError) as e:
            last = e
    raise DatasetError(f"{last}")


def fetch_file(folder: str, spec: SourceFile, dataset: str, hint: str = "") -> tuple[Path, str]:
    """Make sure ``spec`` is in the cache folder of ``folder``; return its path and SHA-256.

    Order: verified cache copy, then the mirror (``$IMREC_DATA_MIRROR/<folder>/<name>``), then
    the official URLs. A file failing its checksum is deleted and never used.

    Raises:
        DatasetError: no source worked; the message lists every address tried and how to fix it.

    Usage (copies from the mirror or downloads unless the file is in the cache)::

        spec = SourceFile("t10k-labels-idx1-ubyte.gz", sha256="f7ae...")
        fetch_file("mnist", spec, "mnist")
        # (PosixPath('~/.cache/imrec/datasets/mnist/t10k-labels-idx1-ubyte.gz'), 'f7ae...')
    """
    dest = dataset_dir(folder) / spec.name
    tried: list[str] = []
    sha = made_once(
        dest,
        f"{spec.name} of {dataset!r}",
        lambda: _verified(dest, spec, tried),
        lambda: _fetch(folder, spec, dataset, hint, dest, tried),
    )
    return dest, sha


def _verified(dest: Path, spec: SourceFile, tried: list[str]) -> str | None:
    """The SHA-256 of the cached copy when it is there and right; a wrong one is deleted."""
    if not dest.is_file():
        return None
    try:
        return verify_file(dest, spec)
    except DatasetError as e:
        _forget(dest)
        tried.append(f"{dest}: {e} (deleted)")
        return None


def _fetch(
    folder: str, spec: SourceFile, dataset: str, hint: str, dest: Path, tried: list[str]
) -> str:
    """Copy ``spec`` from the mirror or download it into ``dest`` (the lock held); its SHA-256."""
    mirror = mirror_root()
    if mirror is not None:
        src = mirror / folder / spec.name
        if src.is_file():
            # A corrupt mirror is an error to fix there, not a reason to go to the network.
            with open(src, "rb") as f:
                return _stream_into(f, dest, spec, str(src))
        tried.append(f"{src}: not found in the mirror")
    for url in spec.urls:
        try:
            return _download(url, dest, spec)
        except DatasetError as e:
            tried.append(f"{url}: {e}")
    raise DatasetError(_not_found_message(folder, spec, dataset, dest, tried, hint))


def _not_found_message(
    folder: str, spec: SourceFile, dataset: str, dest: Path, tried: list[str], hint: str
) -> str:
    lines = [f"could not get {spec.name} for dataset {dataset!r}."]
    if tried:
        lines.append("Tried:")
        lines += [f"  - {t}" for t in tried]
    if not spec.urls:
        lines.append("This file has no public download address.")
    if hint:
        lines.append(hint)
    check = f" (SHA-256 {spec.sha256})" if spec.sha256 else ""
    lines.append(
        f"Fix: set {MIRROR_ENV}=DIR where DIR/{folder}/{spec.name} exists (one folder per "
        f"dataset, as in the mirror layout), or place the file{check} manually at {dest}."
    )
    return "\n".join(lines)


def dataset_checksum(hashes: dict[str, str]) -> str:
    """SHA-256 over the source files' SHA-256s (sorted by file name): names the exact data.

    Example:
        >>> len(dataset_checksum({"a.gz": "00" * 32}))
        64
    """
    text = "".join(f"{name}  {hashes[name]}\n" for name in sorted(hashes))
    return hashlib.sha256(text.encode()).hexdigest()


def cached_arrays(
    folder: str, key: str, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Decoded arrays from ``decoded-<key>.safetensors`` in the dataset cache, built once.

    ``key`` must change whenever the source files or the decoding change (hash + version).

    Example (the second call finds the arrays of the first in the cache):
        >>> cached_arrays("example", "abc123-v1", lambda: {"x": np.arange(3)})["x"]
        array([0, 1, 2])
        >>> cached_arrays("example", "abc123-v1", lambda: {})["x"]
        array([0, 1, 2])
    """
    path = dataset_dir(folder) / f"decoded-{key}.safetensors"
    return made_once(
        path,
        f"the images of {folder!r}",
        lambda: _load_cached(path),
        lambda: _build_cached(path, build),
    )


def _load_cached(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        return load_file(path)
    except Exception:  # a damaged cache file is rebuilt, never trusted
        path.unlink(missing_ok=True)
        return None


def _build_cached(path: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    arrays = {k: np.ascontiguousarray(v) for k, v in build().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        save_file(arrays, tmp_name)
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return arrays
