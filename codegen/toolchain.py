"""The C toolchain: which compiler, with which flags, linking which BLAS, and what it is (its identity
is part of every cache key: a changed compiler or host CPU is a different build).

``CC`` and ``CFLAGS`` are honoured (default ``cc`` and ``-O3 -march=native``); ``LANTERN_WERROR=1``
adds ``-Werror``; ``LANTERN_DEBUG=1`` builds with AddressSanitizer and UBSan. The compiler runs in a
session of its own, stopped with everything it started after ``LANTERN_CC_TIMEOUT`` seconds.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

from lantern.errors import CompileError, CompilerNotFoundError, CompilerTimeoutError
from lantern.runtime import RUNTIME_DIR

DEFAULT_CFLAGS = "-O3 -march=native"
#: Always on: warnings we keep at zero, position-independent shared objects, C11 for
#: _Thread_local, and wrap-around signed arithmetic (as NumPy's integers behave).
BASE_FLAGS = ["-std=c11", "-fPIC", "-shared", "-Wall", "-Wextra", "-fwrapv", "-fno-math-errno", "-fopenmp-simd"]
#: ``LANTERN_DEBUG=1``: AddressSanitizer and UndefinedBehaviorSanitizer, stopping at the first report.
SANITIZE_FLAGS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                  "-fno-sanitize-recover=all"]
#: Seconds a compile may take before it is stopped (``LANTERN_CC_TIMEOUT`` overrides).
DEFAULT_TIMEOUT = 300.0


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
    cc = resolve_compiler()
    probe = run([*cc, "-print-file-name=libasan.so"], min(60.0, compile_timeout()), "locating libasan")
    runtime = probe.stdout.strip()
    if probe.returncode != 0 or not os.path.isabs(runtime):
        raise CompileError(f"the C compiler {cc[0]!r} has no AddressSanitizer runtime (libasan.so) for "
                           "LANTERN_DEBUG=1 builds: install it (Debian/Ubuntu: apt install libasan8 or gcc)")
    env.update(LANTERN_DEBUG="1", LD_PRELOAD=" ".join(filter(None, [runtime, env.get("LD_PRELOAD", "")])),
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    return env


def resolve_compiler() -> list[str]:
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


def run(cmd: list[str], timeout: float, what: str, c_path: str | None = None) -> subprocess.CompletedProcess:
    """Run the compiler; stop it and everything it started after ``timeout`` seconds, or when this thread is
    interrupted (``KeyboardInterrupt``)."""
    import signal
    import subprocess
    try:
        # a session of its own, so a timeout kills the driver's children (cc1, as, ld) too
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=_compiler_env())
    except OSError as exc:
        raise CompilerNotFoundError(f"cannot run the C compiler {cmd[0]!r} ({exc.strerror}); set CC to a working "
                                    "C compiler (gcc or clang)") from None
    def stop() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.communicate()

    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop()
        kept = f" (C file kept at {c_path})" if c_path else ""
        raise CompilerTimeoutError(
            f"the C compiler {cmd[0]!r} did not finish {what} within {timeout:g} s and was stopped{kept}. "
            "Set LANTERN_CC_TIMEOUT to a larger number of seconds if the machine is just slow, or set CC to "
            "another compiler", c_path=c_path) from None
    except BaseException:  # Ctrl-C (in a session of its own, the compiler did not get the SIGINT): stop it too
        stop()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def identity(cc: list[str], flags: list[str]) -> str:
    """Compiler version plus what -march=native means on this host (part of the key)."""
    st = os.stat(cc[0])
    return _identity(tuple(cc), tuple(flags), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=None)
def _identity(cc: tuple[str, ...], flags: tuple[str, ...], mtime_ns: int, size: int) -> str:
    timeout = min(60.0, compile_timeout())
    probe = run([*cc, "--version"], timeout, "printing its version")
    # A compiler whose --version fails is reported by the compile itself, with its messages.
    version = f"{probe.stdout.strip()}\n{probe.stderr.strip()}\nexit {probe.returncode}"
    target = ""
    if any("native" in f for f in flags):
        probe = run([*cc, *flags, "-E", "-v", "-x", "c", os.devnull], timeout, "resolving -march=native")
        target = " ".join(sorted(set(re.findall(r"-march=\S+|-mtune=\S+", probe.stderr))))
    return version + "\n" + target


def openmp_flags(cc: list[str]) -> list[str]:
    """``["-fopenmp"]`` when ``cc`` accepts it and finds ``omp.h`` (which ships with the OpenMP runtime it
    links: libgomp for gcc, libomp for clang) and ``LANTERN_OPENMP`` is not ``0``; else none: parallel loops
    then run on one thread (their pragmas are ignored), with the same results."""
    if os.environ.get("LANTERN_OPENMP", "") == "0":
        return []
    st = os.stat(cc[0])
    return ["-fopenmp"] if _has_openmp(tuple(cc), st.st_mtime_ns, st.st_size) else []


@functools.lru_cache(maxsize=None)
def _has_openmp(cc: tuple[str, ...], mtime_ns: int, size: int) -> bool:
    # Preprocessing only (fast, and what wrappers of a compiler pass through): -fopenmp is accepted and
    # omp.h is found, which ships with the OpenMP runtime (libgomp for gcc, libomp for clang).
    import tempfile
    with tempfile.TemporaryDirectory(prefix="lantern-openmp-") as tmp:
        c_path = os.path.join(tmp, "probe.c")
        with open(c_path, "w") as f:
            f.write("#include <omp.h>\n#ifndef _OPENMP\n#error no OpenMP\n#endif\n")
        try:
            probe = run([*cc, "-fopenmp", "-E", "-o", os.devnull, c_path], min(60.0, compile_timeout()),
                        "checking for OpenMP")
        except CompileError:  # (it hung or could not start: the compile itself will say so)
            return False
        return probe.returncode == 0


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


def _includes(uses_blas: bool) -> list[str]:
    return [f"-I{RUNTIME_DIR}"] + ([f"-I{blas_paths()[0]}"] if uses_blas else [])


def _libraries(uses_blas: bool) -> list[str]:
    if not uses_blas:
        return ["-lm"]
    _, lib, name = blas_paths()
    return [f"-L{lib}", f"-l{name}", f"-Wl,-rpath,{lib}", "-lm"]


def command(cc: list[str], flags: list[str], c_path: str, so_path: str, uses_blas: bool) -> list[str]:
    """A module of one file into a shared object."""
    return [*cc, *BASE_FLAGS, *flags, *_includes(uses_blas), "-o", so_path, c_path, *_libraries(uses_blas)]


def object_command(cc: list[str], flags: list[str], c_path: str, o_path: str, uses_blas: bool) -> list[str]:
    """One translation unit of a module into an object file."""
    return [*cc, *BASE_FLAGS, *flags, *_includes(uses_blas), "-c", "-o", o_path, c_path]


def link_command(cc: list[str], flags: list[str], objects: list[str], so_path: str, uses_blas: bool) -> list[str]:
    """Object files into one shared object (the flags again: sanitizers need their runtime linked)."""
    return [*cc, *BASE_FLAGS, *flags, "-o", so_path, *objects, *_libraries(uses_blas)]


@dataclass(frozen=True)
class Toolchain:
    """A C compiler (resolved on ``PATH``) and the flags it compiles with."""

    cc: tuple[str, ...]
    flags: tuple[str, ...]

    @classmethod
    def configured(cls, flags: list[str] | None = None) -> Toolchain:
        """``CC`` with ``CFLAGS`` (:func:`user_cflags`), or with ``flags`` instead; plus ``-fopenmp`` where the
        compiler has OpenMP (:func:`openmp_flags`)."""
        cc = tuple(resolve_compiler())
        return cls(cc, tuple(user_cflags() if flags is None else flags) + tuple(openmp_flags(list(cc))))

    def at_most_O1(self) -> Toolchain:
        """These flags with the optimisation level lowered to ``-O1`` (kept where it is lower already)."""
        levels = [f for f in self.flags if re.fullmatch(r"-O\S*", f)]
        if not levels or levels[-1] in ("-O0", "-O1", "-Og", "-O"):
            return self
        return Toolchain(self.cc, (*self.flags, "-O1"))

    def key_parts(self, uses_blas: bool) -> list[str]:
        """What makes its output differ: the compiler, its identity, the flags, and the BLAS it links."""
        return [" ".join(self.cc), identity(list(self.cc), list(self.flags)), " ".join(BASE_FLAGS + list(self.flags)),
                repr(blas_paths()) if uses_blas else ""]

    def compile(self, c_path: str, so_path: str, uses_blas: bool,
                what: str) -> tuple[list[str], subprocess.CompletedProcess]:
        """Compile ``c_path`` into the shared object ``so_path``; the command and the finished process."""
        cmd = command(list(self.cc), list(self.flags), c_path, so_path, uses_blas)
        return cmd, run(cmd, compile_timeout(), what, c_path)

    def compile_object(self, c_path: str, o_path: str, uses_blas: bool,
                       what: str) -> tuple[list[str], subprocess.CompletedProcess]:
        """Compile the translation unit ``c_path`` into the object file ``o_path``."""
        cmd = object_command(list(self.cc), list(self.flags), c_path, o_path, uses_blas)
        return cmd, run(cmd, compile_timeout(), what, c_path)

    def link(self, objects: list[str], so_path: str, uses_blas: bool,
             what: str) -> tuple[list[str], subprocess.CompletedProcess]:
        """Link ``objects`` into the shared object ``so_path``."""
        cmd = link_command(list(self.cc), list(self.flags), objects, so_path, uses_blas)
        return cmd, run(cmd, compile_timeout(), what)
