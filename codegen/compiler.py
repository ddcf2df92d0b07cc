"""The compiler driver and its on-disk cache.

A shared object is keyed by a hash of everything that determines its bytes: the C
text, the runtime header, the compiler's identity, the flags (with ``-march=native``
resolved to the host CPU), the BLAS it links and lantern's version. Entries are
written under a temporary name and renamed into place, so processes compiling the
same function at once all succeed and none ever loads half a file.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shlex
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from lantern.errors import CompileError

from lantern.runtime import RUNTIME_DIR, RUNTIME_HEADER

VERSION = "0.1.0"
DEFAULT_CFLAGS = "-O3 -march=native"
#: Always on: warnings we keep at zero, position-independent shared objects, C11 for
#: _Thread_local, and wrap-around signed arithmetic (as NumPy's integers behave).
BASE_FLAGS = ["-std=c11", "-fPIC", "-shared", "-Wall", "-Wextra", "-fwrapv", "-fno-math-errno", "-fopenmp-simd"]

STATS = {"compiles": 0, "disk_hits": 0}
_lock = threading.Lock()


def cache_dir() -> Path:
    """``$LANTERN_CACHE_DIR``, else ``$XDG_CACHE_HOME/lantern``, else ``~/.cache/lantern``."""
    explicit = os.environ.get("LANTERN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "lantern"


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc"))


def user_cflags() -> list[str]:
    """``$CFLAGS`` (default ``-O3 -march=native``); ``LANTERN_WERROR=1`` adds ``-Werror`` (the tests set it)."""
    flags = shlex.split(os.environ.get("CFLAGS", DEFAULT_CFLAGS))
    if os.environ.get("LANTERN_WERROR") == "1":
        flags.append("-Werror")
    return flags


@functools.lru_cache(maxsize=None)
def _compiler_identity(cc: tuple[str, ...], flags: tuple[str, ...]) -> str:
    """Compiler version plus what -march=native means on this host (it is part of the key)."""
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompileError(f"cannot run the C compiler {' '.join(cc)!r}: {exc}. Install gcc or clang, "
                           "or set CC") from None
    target = ""
    if any("native" in f for f in flags):
        probe = subprocess.run([*cc, *flags, "-E", "-v", "-x", "c", os.devnull], capture_output=True, text=True)
        target = " ".join(sorted(set(re.findall(r"-march=\S+|-mtune=\S+", probe.stderr))))
    return version.strip() + "\n" + target


@functools.lru_cache(maxsize=None)
def blas_paths() -> tuple[str, str, str]:
    """(include dir, library dir, library name) of the pip-installed OpenBLAS."""
    import scipy_openblas32 as ob
    return ob.get_include_dir(), ob.get_lib_dir(), ob.get_library()


@dataclass(frozen=True)
class Artifact:
    so_path: str
    c_path: str
    key: str
    from_cache: bool


def _command(c_path: str, so_path: str, uses_blas: bool) -> list[str]:
    cmd = [*compiler(), *BASE_FLAGS, *user_cflags(), f"-I{RUNTIME_DIR}"]
    if uses_blas:
        inc, lib, name = blas_paths()
        cmd += [f"-I{inc}"]
    cmd += ["-o", so_path, c_path]
    if uses_blas:
        cmd += [f"-L{lib}", f"-l{name}", f"-Wl,-rpath,{lib}"]
    return cmd + ["-lm"]


def _readable(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", name)[:48] or "fn"


#: Numbered names the emitter makes from IR variables (never the runtime's ``lt_``/``LT_`` names).
def cache_key(text: str, uses_blas: bool) -> str:
    """Hash of everything that determines the shared object's bytes (see the module docstring)."""
    cc, flags = compiler(), user_cflags()
    h = hashlib.sha256()
    for part in (VERSION, text, RUNTIME_HEADER.read_text(), " ".join(cc),
                 _compiler_identity(tuple(cc), tuple(flags)), " ".join(BASE_FLAGS + flags),
                 repr(blas_paths()) if uses_blas else ""):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def compile_c(text: str, name: str, uses_blas: bool) -> Artifact:
    """Compile ``text`` to a shared object (or find it in the cache); ``name`` makes file names readable."""
    key = cache_key(text, uses_blas)
    base = f"{_readable(name)}-{key}"
    directory = cache_dir() / key[:2]
    so_path, c_path = directory / f"{base}.so", directory / f"{base}.c"
    _dump(text, base)
    if so_path.exists():
        with _lock:
            STATS["disk_hits"] += 1
        if not c_path.exists():
            _write_atomic(c_path, text)
        return Artifact(str(so_path), str(c_path), key, True)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(c_path, text)
    fd, tmp_so = tempfile.mkstemp(prefix=f".{base}.", suffix=".so.tmp", dir=directory)
    os.close(fd)
    try:
        cmd = _command(str(c_path), tmp_so, uses_blas)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"the C compiler failed on code generated for {name} (C file kept at {c_path}):\n"
                               f"$ {' '.join(map(shlex.quote, cmd))}\n{proc.stderr.strip()}",
                               c_path=str(c_path), compiler_output=proc.stderr)
        os.replace(tmp_so, so_path)  # atomic: readers see no file or the whole file
    finally:
        if os.path.exists(tmp_so):
            os.unlink(tmp_so)
    with _lock:
        STATS["compiles"] += 1
    return Artifact(str(so_path), str(c_path), key, False)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _dump(text: str, base: str) -> None:
    """With ``LANTERN_DUMP_DIR`` set, keep a copy of every generated C file there."""
    directory = os.environ.get("LANTERN_DUMP_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        _write_atomic(Path(directory) / f"{base}.c", text)
