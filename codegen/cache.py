"""The compile cache: a directory of compiled modules keyed by a hash of everything that determines
their bytes.

An entry is three files in ``<cache>/<key[:2]>/``: ``<name>-<key>.c`` (for people and error
messages), ``.so`` and ``.json`` (metadata: the key and the SHA-256 of the .so). Files are written
under a temporary name and renamed into place once complete, so a killed writer leaves no entry and
concurrent writers of one entry all succeed. Before an entry is used its .so is hashed and compared
with the metadata, and the directory and files must belong to this user; anything else is rebuilt,
with a :class:`~lantern.errors.CacheWarning`. A cache directory that cannot be created, is not the
user's, is read-only or full is replaced by a temporary one for the rest of the process (with a
warning). The trace cache (``lantern/trace_cache.py``) keeps its records here through the same API.
"""
from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import stat
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from lantern.errors import CacheWarning

#: Version of the metadata format; entries of another format are rebuilt.
META_FORMAT = 1
#: Temporary files older than this (seconds) are left over from killed compiles and removed.
STALE_TMP_AGE = 3600.0

#: Compiles and cache hits in this process (``lantern.cache_stats()``).
STATS = {"compiles": 0, "disk_hits": 0, "rebuilt": 0}
_lock = threading.Lock()
#: configured cache directory -> the temporary directory used instead in this process
_fallbacks: dict[Path, Path] = {}
#: configured cache directories already checked in this process
_checked_roots: set[Path] = set()


def count(event: str) -> None:
    """Count a compile, a disk hit or a rebuilt entry in :data:`STATS` (thread-safe)."""
    with _lock:
        STATS[event] += 1


def cache_dir() -> Path:
    """The configured cache: ``$LANTERN_CACHE_DIR``, else ``$XDG_CACHE_HOME/lantern``, else ``~/.cache/lantern``."""
    explicit = os.environ.get("LANTERN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "lantern"


def uid() -> int:
    return os.geteuid()


def private_problem(path: Path, st: os.stat_result) -> str | None:
    """Why a cache directory or file may not be trusted (another owner; others may write it), or None."""
    if st.st_uid != uid():
        return f"{path} belongs to uid {st.st_uid}, not to this user (uid {uid()})"
    if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022:
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _prepare_root(root: Path) -> str | None:
    """Create ``root`` private to the user (0700) if needed and check that it can be used; else why not."""
    try:
        root.mkdir(parents=True, mode=0o700, exist_ok=True)
        st = root.stat()
    except OSError as exc:
        return f"cannot create {root} ({exc.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return f"{root} is not a directory"
    problem = private_problem(root, st)
    if problem:
        return problem
    if st.st_mode & 0o077:
        try:
            os.chmod(root, 0o700)  # compiled code other users can read or replace is not ours to keep
        except OSError as exc:
            return f"cannot make {root} private ({exc.strerror})"
    # read-only file systems and full disks show here rather than halfway through a compile
    problem = write_problem(root, 4096)
    return f"cannot write in {root} ({problem})" if problem else None


def fall_back(root: Path, problem: str) -> Path:
    """The temporary cache used instead of ``root`` for the rest of this process (warns once)."""
    with _lock:
        existing = _fallbacks.get(root)
        if existing is not None:
            return existing
        import tempfile
        temp = Path(tempfile.mkdtemp(prefix="lantern-cache-"))  # 0700
        import shutil
        atexit.register(shutil.rmtree, temp, True)
        _fallbacks[root] = temp
    warnings.warn(f"lantern: the compile cache {root} cannot be used: {problem}. Compiled code goes to {temp} "
                  "for the rest of this process and is not kept; set LANTERN_CACHE_DIR to a writable directory "
                  "of your own to keep it", CacheWarning, stacklevel=4)
    return temp


def active_cache_dir() -> Path:
    """The directory entries are read from and written to: :func:`cache_dir`, or its temporary stand-in."""
    root = cache_dir()
    with _lock:
        fallback = _fallbacks.get(root)
        if fallback is not None:
            return fallback
        if root in _checked_roots:
            return root
    problem = _prepare_root(root)
    if problem:
        return fall_back(root, problem)
    with _lock:
        _checked_roots.add(root)
    return root


class CacheWriteError(Exception):
    """Writing an entry failed for a reason of the directory (read-only, full), not of the code."""


#: What the compiler prints when it cannot write its output (strerror texts, English and this locale).
WRITE_FAILURES = tuple(sorted({os.strerror(e) for e in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES)} |
                        {"No space left on device", "Read-only file system", "Disk quota exceeded",
                         "Permission denied"}))


# ------------------------------------------------------------------ entries

@dataclass(frozen=True)
class Artifact:
    so_path: str
    c_path: str
    key: str
    from_cache: bool


@dataclass(frozen=True)
class Entry:
    """A cache entry: ``<base>.c``, the compiled ``<base><suffix>`` (a shared object, or a translation
    unit's object file) and ``<base>.json``, in ``directory``."""

    directory: Path
    base: str
    suffix: str = ".so"

    @property
    def so(self) -> Path:
        return self.directory / f"{self.base}{self.suffix}"

    @property
    def c(self) -> Path:
        return self.directory / f"{self.base}.c"

    @property
    def meta(self) -> Path:
        return self.directory / f"{self.base}.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_entry(entry: Entry, key: str) -> tuple[bool, str | None]:
    """(usable, why not): an entry is usable when its directory and files are the user's and the .so's
    hash matches the metadata. ``why not`` is None for a plain miss (no entry, or a .so without metadata
    from an older lantern), else the damage found."""
    try:
        so_st = os.lstat(entry.so)
    except FileNotFoundError:
        return False, None
    except OSError as exc:
        return False, f"{entry.so} cannot be read ({exc.strerror})"
    for path, st in ((entry.directory, os.stat(entry.directory)), (entry.so, so_st)):
        problem = private_problem(path, st)
        if problem:
            return False, problem
    if not stat.S_ISREG(so_st.st_mode):
        return False, f"{entry.so} is not a regular file"
    for attempt in range(2):  # a writer may be between renaming the .so and its metadata: look twice
        try:
            meta_st = os.lstat(entry.meta)
        except FileNotFoundError:
            return False, None
        problem = private_problem(entry.meta, meta_st)
        if problem:
            return False, problem
        try:
            meta = json.loads(entry.meta.read_bytes())
            data = entry.so.read_bytes()
        except (OSError, ValueError) as exc:
            return False, f"{entry.meta} is damaged ({exc})"
        if not isinstance(meta, dict) or meta.get("format") != META_FORMAT or meta.get("key") != key:
            return False, f"{entry.meta} does not describe this entry"
        if meta.get("so_size") == len(data) and meta.get("so_sha256") == sha256(data):
            return True, None
        if attempt == 0:
            time.sleep(0.05)
    return False, (f"{entry.so} does not match its recorded hash (truncated or corrupted: {len(data)} bytes, "
                   f"{meta.get('so_size')} recorded)")


def lookup(key: str, so_name: str) -> Artifact | None:
    """The whole, trusted entry ``so_name`` (``<name>-<key>.so``) if it is in the cache, else None."""
    if not so_name.endswith(f"-{key}.so") or "/" in so_name:
        return None
    entry = Entry(active_cache_dir() / key[:2], so_name[:-3])
    try:
        usable, _ = check_entry(entry, key)
    except OSError:
        return None
    if not usable or not entry.c.is_file():
        return None
    count("disk_hits")
    return Artifact(str(entry.so), str(entry.c), key, True)


def make_private_dir(path: Path) -> None:
    """``path`` as a directory of this user's that others cannot write (created ``0700``, and its parent
    too if the cache was removed while this process runs); ``PermissionError`` if it is someone else's."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    problem = private_problem(path, path.stat())
    if problem:
        # not ours: write nothing into it (the caller falls back to a temporary cache)
        raise PermissionError(errno.EACCES, problem)


def write_problem(directory: Path, size: int) -> str | None:
    """Why ``size`` bytes cannot be written in ``directory`` now (a full disk still takes empty files), or None."""
    probe = os.path.join(directory, f".probe-{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        if os.write(fd, bytes(size)) != size:
            return os.strerror(errno.ENOSPC)
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(fd)
        os.unlink(probe)


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporaries that compiles killed long ago left behind (current ones are younger)."""
    cutoff = time.time() - STALE_TMP_AGE
    for item in os.scandir(directory):
        if item.name.startswith(".") and item.name.endswith(".tmp"):
            try:
                if item.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(item.path)
            except OSError:
                pass


def write_atomic(path: Path, data: bytes) -> None:
    import tempfile
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def dump(text: str, base: str) -> None:
    """With ``LANTERN_DUMP_DIR`` set, keep a copy of every generated C file there."""
    directory = os.environ.get("LANTERN_DUMP_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        write_atomic(Path(directory) / f"{base}.c", text.encode())
