"""The compiler driver and its on-disk cache.

A shared object is keyed by a hash of everything that determines its bytes: the C
text, the runtime header, the compiler's identity, the flags (with ``-march=native``
resolved to the host CPU, and the sanitizer flags of ``LANTERN_DEBUG=1``), the BLAS it
links and lantern's version.

An entry is three files in ``<cache>/<key[:2]>/``: ``<name>-<key>.c`` (for people and
error messages), ``.so`` and ``.json`` (metadata: the key and the SHA-256 of the .so).
The compiler writes a temporary file that is renamed into place only once it is
complete, so a killed compile leaves no entry, and concurrent processes compiling the
same function all succeed. Before an entry is loaded its .so is hashed and compared
with the metadata, and the directory and files must belong to this user; anything else
is rebuilt, with a :class:`~lantern.errors.CacheWarning`. A cache directory that cannot
be created, is not the user's, is read-only or full is replaced by a temporary one for
the rest of the process (with a warning).
"""
from __future__ import annotations

import atexit
import errno
import functools
import hashlib
import json
import os
import re
import shlex
import stat
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

from lantern.errors import CacheWarning, CompileError, CompilerNotFoundError, CompilerTimeoutError

from lantern.runtime import RUNTIME_DIR, RUNTIME_HEADER

VERSION = "0.1.0"
DEFAULT_CFLAGS = "-O3 -march=native"
#: Always on: warnings we keep at zero, position-independent shared objects, C11 for
#: _Thread_local, and wrap-around signed arithmetic (as NumPy's integers behave).
BASE_FLAGS = ["-std=c11", "-fPIC", "-shared", "-Wall", "-Wextra", "-fwrapv", "-fno-math-errno", "-fopenmp-simd"]
#: ``LANTERN_DEBUG=1``: AddressSanitizer and UndefinedBehaviorSanitizer, stopping at the first report.
SANITIZE_FLAGS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                  "-fno-sanitize-recover=all"]
#: Seconds a compile may take before it is stopped (``LANTERN_CC_TIMEOUT`` overrides).
DEFAULT_TIMEOUT = 300.0
#: Version of the metadata format; entries of another format are rebuilt.
META_FORMAT = 1
#: Temporary files older than this (seconds) are left over from killed compiles and removed.
STALE_TMP_AGE = 3600.0

STATS = {"compiles": 0, "disk_hits": 0, "rebuilt": 0}
_lock = threading.Lock()
#: configured cache directory -> the temporary directory used instead in this process
_fallbacks: dict[Path, Path] = {}
#: configured cache directories already checked in this process
_checked_roots: set[Path] = set()


def cache_dir() -> Path:
    """The configured cache: ``$LANTERN_CACHE_DIR``, else ``$XDG_CACHE_HOME/lantern``, else ``~/.cache/lantern``."""
    explicit = os.environ.get("LANTERN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "lantern"


def debug_mode() -> bool:
    """``LANTERN_DEBUG`` set to anything but empty or ``0``: sanitized builds (see :data:`SANITIZE_FLAGS`)."""
    return os.environ.get("LANTERN_DEBUG", "") not in ("", "0")


def compiler() -> list[str]:
    """``$CC`` (default ``cc``) split into the program and its leading arguments."""
    return shlex.split(os.environ.get("CC", "cc"))


def user_cflags() -> list[str]:
    """``$CFLAGS`` (default ``-O3 -march=native``); ``LANTERN_WERROR=1`` adds ``-Werror`` (the tests set it);
    ``LANTERN_DEBUG=1`` appends :data:`SANITIZE_FLAGS` (its ``-O1`` overrides the optimisation level)."""
    flags = shlex.split(os.environ.get("CFLAGS", DEFAULT_CFLAGS))
    if os.environ.get("LANTERN_WERROR") == "1":
        flags.append("-Werror")
    if debug_mode():
        flags += SANITIZE_FLAGS
    return flags


def compile_timeout() -> float:
    """``$LANTERN_CC_TIMEOUT`` seconds (default 300) for one run of the compiler."""
    text = os.environ.get("LANTERN_CC_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise CompileError(f"LANTERN_CC_TIMEOUT={text!r}: expected a positive number of seconds")
    return value


def sanitizer_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) set up for ``LANTERN_DEBUG=1``: the compiler's ASan runtime preloaded
    (instrumented modules cannot be loaded into a Python started without it), leak checking off (CPython
    keeps memory until exit on purpose), and every report fatal. :class:`CompileError` when the compiler
    has no AddressSanitizer runtime."""
    env = dict(os.environ if env is None else env)
    cc = _resolve_compiler()
    probe = _run([*cc, "-print-file-name=libasan.so"], min(60.0, compile_timeout()), "locating libasan")
    runtime = probe.stdout.strip()
    if probe.returncode != 0 or not os.path.isabs(runtime):
        raise CompileError(f"the C compiler {cc[0]!r} has no AddressSanitizer runtime (libasan.so) for "
                           "LANTERN_DEBUG=1 builds: install it (Debian/Ubuntu: apt install libasan8 or gcc)")
    env.update(LANTERN_DEBUG="1", LD_PRELOAD=" ".join(filter(None, [runtime, env.get("LD_PRELOAD", "")])),
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    return env


# ------------------------------------------------------------------ running the compiler

def _resolve_compiler() -> list[str]:
    """``compiler()`` with its program resolved on ``PATH``, or :class:`CompilerNotFoundError` saying what to do."""
    cc = compiler()
    given = os.environ.get("CC")
    if not cc:
        raise CompilerNotFoundError(f"CC={given!r} names no program: set CC to a C compiler (gcc or clang), "
                                    "or unset it to use cc")
    path = _which(cc[0])
    if path is None:
        if given is None:
            raise CompilerNotFoundError(
                "no C compiler found: 'cc' is not on PATH. Lantern compiles generated C; install gcc or clang "
                "(Debian/Ubuntu: apt install gcc, Fedora: dnf install gcc, macOS: xcode-select --install), "
                "or set CC to the compiler's path")
        raise CompilerNotFoundError(f"CC={given!r}: {cc[0]!r} is not an executable file on PATH; set CC to an "
                                    "installed C compiler (gcc or clang), or unset it to use cc")
    return [path, *cc[1:]]


def _which(program: str) -> str | None:
    """``shutil.which`` without importing shutil (and the compression modules it loads) on a cache hit."""
    def runnable(path: str) -> bool:
        return os.path.isfile(path) and os.access(path, os.X_OK)
    if os.sep in program:
        return program if runnable(program) else None
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or os.curdir, program)
        if runnable(candidate):
            return candidate
    return None


def _compiler_env() -> dict[str, str]:
    """The environment for the compiler: this one, without a preloaded sanitizer runtime (the compiler is
    not instrumented; the runtime is preloaded only so that instrumented modules can load in Python)."""
    env = dict(os.environ)
    preload = env.get("LD_PRELOAD")
    if preload:
        kept = [p for p in re.split(r"[:\s]+", preload) if p and not re.search(r"lib(a|ub|t|l)san", p)]
        if kept:
            env["LD_PRELOAD"] = " ".join(kept)
        else:
            del env["LD_PRELOAD"]
    return env


def _run(cmd: list[str], timeout: float, what: str, c_path: str | None = None) -> subprocess.CompletedProcess:
    """Run the compiler; stop it and everything it started after ``timeout`` seconds."""
    import signal
    import subprocess
    try:
        # a session of its own, so a timeout kills the driver's children (cc1, as, ld) too
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=_compiler_env())
    except OSError as exc:
        raise CompilerNotFoundError(f"cannot run the C compiler {cmd[0]!r} ({exc.strerror}); set CC to a working "
                                    "C compiler (gcc or clang)") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.communicate()
        kept = f" (C file kept at {c_path})" if c_path else ""
        raise CompilerTimeoutError(
            f"the C compiler {cmd[0]!r} did not finish {what} within {timeout:g} s and was stopped{kept}. "
            "Set LANTERN_CC_TIMEOUT to a larger number of seconds if the machine is just slow, or set CC to "
            "another compiler", c_path=c_path) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _compiler_identity(cc: list[str], flags: list[str]) -> str:
    """Compiler version plus what -march=native means on this host (part of the key)."""
    st = os.stat(cc[0])
    return _identity(tuple(cc), tuple(flags), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=None)
def _identity(cc: tuple[str, ...], flags: tuple[str, ...], mtime_ns: int, size: int) -> str:
    timeout = min(60.0, compile_timeout())
    probe = _run([*cc, "--version"], timeout, "printing its version")
    # A compiler whose --version fails is reported by the compile itself, with its messages.
    version = f"{probe.stdout.strip()}\n{probe.stderr.strip()}\nexit {probe.returncode}"
    target = ""
    if any("native" in f for f in flags):
        probe = _run([*cc, *flags, "-E", "-v", "-x", "c", os.devnull], timeout, "resolving -march=native")
        target = " ".join(sorted(set(re.findall(r"-march=\S+|-mtune=\S+", probe.stderr))))
    return version + "\n" + target


@functools.lru_cache(maxsize=None)
def blas_paths() -> tuple[str, str, str]:
    """(include dir, library dir, library name) of the pip-installed OpenBLAS."""
    import importlib.util
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is not None and spec.origin and os.name == "posix":
        # its layout, without importing it (the import reads package metadata: 15 ms of a cache hit)
        here = os.path.dirname(os.path.realpath(spec.origin))
        lib_dir = os.path.join(here, "lib")
        libs = sorted(f for f in os.listdir(lib_dir) if f.startswith("libscipy_openblas") and ".so" in f)
        if libs:
            return os.path.join(here, "include"), lib_dir, libs[0].split(".so")[0][3:]
    import scipy_openblas32 as ob
    return ob.get_include_dir(), ob.get_lib_dir(), ob.get_library()


def _command(cc: list[str], flags: list[str], c_path: str, so_path: str, uses_blas: bool) -> list[str]:
    cmd = [*cc, *BASE_FLAGS, *flags, f"-I{RUNTIME_DIR}"]
    if uses_blas:
        inc, lib, name = blas_paths()
        cmd += [f"-I{inc}"]
    cmd += ["-o", so_path, c_path]
    if uses_blas:
        cmd += [f"-L{lib}", f"-l{name}", f"-Wl,-rpath,{lib}"]
    return cmd + ["-lm"]


def _readable(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", name)[:48] or "fn"


def cache_key(text: str, uses_blas: bool) -> str:
    """Hash of everything that determines the shared object's bytes (see the module docstring)."""
    cc, flags = _resolve_compiler(), user_cflags()
    return _key(text, uses_blas, cc, flags)


def _key(text: str, uses_blas: bool, cc: list[str], flags: list[str]) -> str:
    h = hashlib.sha256()
    for part in (VERSION, text, RUNTIME_HEADER.read_text(), " ".join(cc), _compiler_identity(cc, flags),
                 " ".join(BASE_FLAGS + flags), repr(blas_paths()) if uses_blas else ""):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


# ------------------------------------------------------------------ the cache directory

def _uid() -> int:
    return os.geteuid()


def _private_problem(path: Path, st: os.stat_result) -> str | None:
    """Why a cache directory or file may not be trusted (another owner; others may write it), or None."""
    if st.st_uid != _uid():
        return f"{path} belongs to uid {st.st_uid}, not to this user (uid {_uid()})"
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
    problem = _private_problem(root, st)
    if problem:
        return problem
    if st.st_mode & 0o077:
        try:
            os.chmod(root, 0o700)  # compiled code other users can read or replace is not ours to keep
        except OSError as exc:
            return f"cannot make {root} private ({exc.strerror})"
    # read-only file systems and full disks show here rather than halfway through a compile
    problem = _write_problem(root, 4096)
    return f"cannot write in {root} ({problem})" if problem else None


def _fall_back(root: Path, problem: str) -> Path:
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
        return _fall_back(root, problem)
    with _lock:
        _checked_roots.add(root)
    return root


class _CacheWriteError(Exception):
    """Writing an entry failed for a reason of the directory (read-only, full), not of the code."""


#: What the compiler prints when it cannot write its output (strerror texts, English and this locale).
_WRITE_FAILURES = tuple(sorted({os.strerror(e) for e in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES)} |
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
class _Entry:
    directory: Path
    base: str

    @property
    def so(self) -> Path:
        return self.directory / f"{self.base}.so"

    @property
    def c(self) -> Path:
        return self.directory / f"{self.base}.c"

    @property
    def meta(self) -> Path:
        return self.directory / f"{self.base}.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_entry(entry: _Entry, key: str) -> tuple[bool, str | None]:
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
        problem = _private_problem(path, st)
        if problem:
            return False, problem
    if not stat.S_ISREG(so_st.st_mode):
        return False, f"{entry.so} is not a regular file"
    for attempt in range(2):  # a writer may be between renaming the .so and its metadata: look twice
        try:
            meta_st = os.lstat(entry.meta)
        except FileNotFoundError:
            return False, None
        problem = _private_problem(entry.meta, meta_st)
        if problem:
            return False, problem
        try:
            meta = json.loads(entry.meta.read_bytes())
            data = entry.so.read_bytes()
        except (OSError, ValueError) as exc:
            return False, f"{entry.meta} is damaged ({exc})"
        if not isinstance(meta, dict) or meta.get("format") != META_FORMAT or meta.get("key") != key:
            return False, f"{entry.meta} does not describe this entry"
        if meta.get("so_size") == len(data) and meta.get("so_sha256") == _sha256(data):
            return True, None
        if attempt == 0:
            time.sleep(0.05)
    return False, (f"{entry.so} does not match its recorded hash (truncated or corrupted: {len(data)} bytes, "
                   f"{meta.get('so_size')} recorded)")


def lookup(key: str, so_name: str) -> Artifact | None:
    """The whole, trusted entry ``so_name`` (``<name>-<key>.so``) if it is in the cache, else None."""
    if not so_name.endswith(f"-{key}.so") or "/" in so_name:
        return None
    entry = _Entry(active_cache_dir() / key[:2], so_name[:-3])
    try:
        usable, _ = _check_entry(entry, key)
    except OSError:
        return None
    if not usable or not entry.c.is_file():
        return None
    with _lock:
        STATS["disk_hits"] += 1
    return Artifact(str(entry.so), str(entry.c), key, True)


def compile_c(text: str, name: str, uses_blas: bool, flags: list[str] | None = None) -> Artifact:
    """Compile ``text`` to a shared object (or find it in the cache); ``name`` makes file names readable.
    ``flags`` replace :func:`user_cflags` (the fuzzer compiles each program a second time at ``-O0``)."""
    cc = _resolve_compiler()
    flags = user_cflags() if flags is None else flags
    key = _key(text, uses_blas, cc, flags)
    _dump(text, f"{_readable(name)}-{key}")
    root = active_cache_dir()
    try:
        return _compile_in(root, text, name, key, cc, flags, uses_blas)
    except _CacheWriteError as exc:
        temp = _fall_back(cache_dir(), str(exc))
        if temp == root:
            raise CompileError(f"cannot write compiled code for {name}: {exc}") from None
        try:
            return _compile_in(temp, text, name, key, cc, flags, uses_blas)
        except _CacheWriteError as again:
            raise CompileError(f"cannot write compiled code for {name} in the cache {root} nor in the "
                               f"temporary directory {temp}: {again}") from None


def _compile_in(root: Path, text: str, name: str, key: str, cc: list[str], flags: list[str],
                uses_blas: bool) -> Artifact:
    entry = _Entry(root / key[:2], f"{_readable(name)}-{key}")
    usable, damage = (False, None)
    if entry.directory.exists():
        usable, damage = _check_entry(entry, key)
    if usable:
        with _lock:
            STATS["disk_hits"] += 1
        if not entry.c.exists():
            try:
                _write_atomic(entry.c, text.encode())
            except OSError:
                pass  # the C file is for people; the entry is whole without it
        return Artifact(str(entry.so), str(entry.c), key, True)
    if damage:
        warnings.warn(f"lantern: compile cache entry for {name} not used: {damage}; compiling it again",
                      CacheWarning, stacklevel=4)
        with _lock:
            STATS["rebuilt"] += 1

    import tempfile  # (only to compile: a cache hit does without it)
    try:
        _make_private_dir(entry.directory)
        _remove_stale_temporaries(entry.directory)
        _write_atomic(entry.c, text.encode())
        fd, tmp_so = tempfile.mkstemp(prefix=f".{entry.base}.", suffix=".so.tmp", dir=entry.directory)
        os.close(fd)
    except OSError as exc:
        raise _CacheWriteError(f"cannot write in {entry.directory} ({exc.strerror})") from None
    tmp_meta = None
    try:
        cmd = _command(cc, flags, str(entry.c), tmp_so, uses_blas)
        proc = _run(cmd, compile_timeout(), f"compiling {name}", str(entry.c))
        if proc.returncode != 0:
            if any(m in proc.stderr for m in _WRITE_FAILURES) and _write_problem(entry.directory, 1 << 20):
                raise _CacheWriteError(f"the compiler could not write its output in {entry.directory}: "
                                       f"{proc.stderr.strip()[-300:]}")
            raise CompileError(f"the C compiler failed on code generated for {name} (C file kept at {entry.c}):\n"
                               f"$ {' '.join(map(shlex.quote, cmd))}\n{proc.stderr.strip()}\n"
                               "If the compiler itself is broken or wrong, set CC to a working C compiler "
                               "(gcc or clang); if CFLAGS are wrong, fix or unset them",
                               c_path=str(entry.c), compiler_output=proc.stderr)
        data = Path(tmp_so).read_bytes()
        meta = {"format": META_FORMAT, "key": key, "so_sha256": _sha256(data), "so_size": len(data),
                "lantern": VERSION, "name": name, "command": cmd[:1] + flags, "created": time.time()}
        try:
            fd, tmp_meta = tempfile.mkstemp(prefix=f".{entry.base}.", suffix=".json.tmp", dir=entry.directory)
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(meta, indent=1).encode())
            # the .so first, then the metadata that vouches for it: a reader sees a whole entry or none
            os.replace(tmp_so, entry.so)
            os.replace(tmp_meta, entry.meta)
        except OSError as exc:
            raise _CacheWriteError(f"cannot write in {entry.directory} ({exc.strerror})") from None
    finally:
        for leftover in (tmp_so, tmp_meta):
            if leftover and os.path.exists(leftover):
                os.unlink(leftover)
    with _lock:
        STATS["compiles"] += 1
    return Artifact(str(entry.so), str(entry.c), key, False)


def _make_private_dir(path: Path) -> None:
    """``path`` as a directory of this user's that others cannot write (created ``0700``, and its parent
    too if the cache was removed while this process runs); ``PermissionError`` if it is someone else's."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    problem = _private_problem(path, path.stat())
    if problem:
        # not ours: write nothing into it (the caller falls back to a temporary cache)
        raise PermissionError(errno.EACCES, problem)


def _write_problem(directory: Path, size: int) -> str | None:
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


def _remove_stale_temporaries(directory: Path) -> None:
    """Delete temporaries that compiles killed long ago left behind (current ones are younger)."""
    cutoff = time.time() - STALE_TMP_AGE
    for item in os.scandir(directory):
        if item.name.startswith(".") and item.name.endswith(".tmp"):
            try:
                if item.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(item.path)
            except OSError:
                pass


def _write_atomic(path: Path, data: bytes) -> None:
    import tempfile
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _dump(text: str, base: str) -> None:
    """With ``LANTERN_DUMP_DIR`` set, keep a copy of every generated C file there."""
    directory = os.environ.get("LANTERN_DUMP_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        _write_atomic(Path(directory) / f"{base}.c", text.encode())
