"""Load a compiled module with cffi and call its entry point on NumPy arrays without copies."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import io
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

import cffi
import numpy as np

from lantern.errors import NativeError, NonFiniteError, OutOfBoundsError, RecursionDepthError
from lantern.ir.symbolic import evaluate_shape
from lantern.ir.types import TensorType
from lantern.runtime import ERROR_CODES

from . import process
from .cache import Artifact, active_cache_dir, make_private_dir, private_problem
from .toolchain import blas_paths, debug_mode

if TYPE_CHECKING:  # the emitter is not needed to load code the trace cache found
    from .emit_c import CSource

_blas_lock = threading.Lock()
_blas_configured = False
_blas_threads_holder: ctypes.CDLL | None = None  # the module whose callback runs OpenBLAS's threads: kept loaded
#: OpenMP threads ran in this process (a module with threaded loops was loaded), and this process is a
#: fork of one where they did: GNU OpenMP's threads do not survive fork(), so its modules get one thread
_openmp_loaded = False
_forked_after_openmp = False


def _after_fork_in_child() -> None:
    global _forked_after_openmp
    _forked_after_openmp = _forked_after_openmp or _openmp_loaded


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def num_threads() -> int:
    """``LANTERN_NUM_THREADS``, else the cores this process may use."""
    value = os.environ.get("LANTERN_NUM_THREADS")
    if value:
        return max(1, int(value))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _configure_blas() -> None:
    """Give OpenBLAS the thread count lantern uses (once per process)."""
    global _blas_configured
    with _blas_lock:
        if _blas_configured:
            return
        _, lib_dir, name = blas_paths()
        lib = ctypes.CDLL(os.path.join(lib_dir, f"lib{name}.so"))  # ctypes: no C parser for one call
        lib.scipy_openblas_set_num_threads(ctypes.c_int(num_threads()))
        _blas_configured = True


def _set_threads(so_path: str, uses_blas: bool) -> None:
    """Give a module compiled with OpenMP its thread count (``lantern_set_num_threads``; one in a process
    forked after OpenMP ran), and let OpenBLAS run its threaded products on those threads (one pool for
    the cores) through the first such module with BLAS (``lantern_share_blas_threads``), which then stays
    loaded for good. A module compiled without OpenMP has neither function."""
    global _blas_threads_holder, _openmp_loaded
    import _ctypes
    lib = ctypes.CDLL(so_path)  # a second reference to the module cffi loaded: closed below, unless kept
    try:
        set_threads = getattr(lib, "lantern_set_num_threads", None)
        if set_threads is None:
            return
        set_threads(ctypes.c_int(1 if _forked_after_openmp else num_threads()))
        _openmp_loaded = True
        if not uses_blas or _forked_after_openmp:  # (a forked child keeps OpenBLAS on its own threads)
            return
        with _blas_lock:
            if _blas_threads_holder is None:
                lib.lantern_share_blas_threads()
                _blas_threads_holder = lib
    finally:
        if lib is not _blas_threads_holder:
            _ctypes.dlclose(lib._handle)


@functools.lru_cache(maxsize=None)
def _ffi(num_params: int) -> Any:
    """One FFI per entry-point arity (each module is its own dlopen of it).

    cffi parses declarations with pycparser, whose import alone is ~30 ms of a cache hit; so the
    parsed form is kept in the cache directory as cffi's out-of-line ABI module (plain Python data,
    no parser needed to load it) and built once per arity and cffi version.
    """
    import _cffi_backend
    name = f"_lantern_ffi4_{num_params}_{_cffi_backend.__version__.replace('.', '_')}"
    path = active_cache_dir() / "ffi" / f"{name}.py"
    try:
        if not private_problem(path, os.lstat(path)) and not private_problem(path.parent, os.stat(path.parent)):
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.ffi
    except Exception:  # missing or unreadable: build it
        pass
    import tempfile
    builder = cffi.FFI()
    params = ", ".join(["void *"] * num_params) or "void"
    builder.cdef(f"int lantern_entry({params}); const char *lantern_error(void); size_t lantern_arena_in_use(void); "
                 "size_t lantern_arena_high(int); "
                 "void lantern_use_process(const void *);")
    builder.set_source(name, None)
    try:
        make_private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".py.tmp", dir=path.parent)
        os.close(fd)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # cffi announces "generating ..."
                builder.emit_python_code(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # only a later process's start-up is slower
    return builder


def _require_sanitizer_runtime() -> None:
    """``LANTERN_DEBUG=1`` modules are built with AddressSanitizer, whose runtime must be in the process from
    its start: loading one without it aborts the interpreter. Say how to start Python instead."""
    if not hasattr(ctypes.CDLL(None), "__asan_init"):
        raise NativeError(
            "LANTERN_DEBUG=1 builds use AddressSanitizer, whose runtime must be loaded when Python starts. Run "
            "LD_PRELOAD=$(cc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 "
            "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 python ... (see docs/RELIABILITY.md), "
            "or unset LANTERN_DEBUG")


def arena_high_water(reset: bool = False) -> int:
    """The largest :meth:`NativeFunction.arena_high_water` of the modules loaded in this process."""
    return max((f.arena_high_water(reset) for f in list(_LOADED)), default=0)


class NativeFunction:
    """The loaded entry point of one compiled module. Call it with a list of input arrays."""

    def __init__(self, artifact: Artifact, source: CSource, out_types: list[TensorType]):
        self.source, self.out_types = source, out_types  # what recompiling it with other flags needs
        self.c_source = source.text
        self.c_path = artifact.c_path
        self.so_path = artifact.so_path
        self.from_cache = artifact.from_cache
        # what the trace cache records to rebuild this object in another process without tracing
        self.artifact_key = artifact.key
        self.entry, self.num_inputs, self.uses_blas = source.entry, source.num_inputs, source.uses_blas
        self._out_specs = [(t.shape, np.dtype(t.dtype)) for t in out_types]
        #: run-time sizes: (name, input, axis) where each one's value is read (``CSource.sizes``)
        self._sizes = source.sizes
        self._per_sizes: dict[tuple[int, ...], tuple[list, np.ndarray]] = {}
        if source.uses_blas:
            _configure_blas()
        ffi = self._ffi = _ffi(source.num_inputs + source.num_outputs + bool(source.sizes))
        if debug_mode():
            _require_sanitizer_runtime()
        self._lib = ffi.dlopen(artifact.so_path)
        self._lib.lantern_use_process(ffi.cast("const void *", process.table(artifact.so_path)))
        _set_threads(artifact.so_path, source.uses_blas)
        self._entry = self._lib.lantern_entry
        _LOADED.add(self)
        self._from_buffer = ffi.from_buffer

    def arena_in_use(self) -> int:
        """Bytes of intermediates this module's arena holds now (on this thread); 0 between calls."""
        return int(self._lib.lantern_arena_in_use())

    def arena_high_water(self, reset: bool = False) -> int:
        """The most bytes of intermediates this module's arena has held at once on this thread (since the
        last reset; ``reset`` starts again from now)."""
        return int(self._lib.lantern_arena_high(int(reset)))

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Run on C-contiguous, aligned, native-order ``arrays`` (the caller checked them); fresh results."""
        fb = self._from_buffer
        if self._sizes:
            return self._call_with_sizes(arrays)
        if len(self._out_specs) == 1:  # the common case, without a second list
            shape, dtype = self._out_specs[0]
            out = np.empty(shape, dtype)
            code = self._entry(*map(fb, arrays), fb(out))
            outs = [out]
        else:
            outs = [np.empty(shape, dtype) for shape, dtype in self._out_specs]
            code = self._entry(*map(fb, arrays), *map(fb, outs))
        return self._finish(code, arrays, outs)

    def _call_with_sizes(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A module with run-time sizes: their values come from the arrays' shapes (the caller checked that
        the arrays fit the signature) and go to C after the results; results are allocated at their size."""
        fb = self._from_buffer
        key = tuple(arrays[i].shape[axis] for _, i, axis in self._sizes)
        known = self._per_sizes.get(key)
        if known is None:  # the results' shapes and the sizes' buffer, once per set of sizes
            values = dict(zip((name for name, _, _ in self._sizes), key))
            known = ([(evaluate_shape(shape, values), dtype) for shape, dtype in self._out_specs],
                     np.array(key, np.int64))
            if len(self._per_sizes) > 4096:
                self._per_sizes.clear()
            self._per_sizes[key] = known
        out_specs, sizes = known
        outs = [np.empty(shape, dtype) for shape, dtype in out_specs]
        code = self._entry(*map(fb, arrays), *map(fb, outs), fb(sizes))
        return self._finish(code, arrays, outs)

    def _finish(self, code: int, arrays: list[np.ndarray], outs: list[np.ndarray]) -> list[np.ndarray]:
        if code:
            if code == _INTERRUPTED:
                # Python's SIGINT handler raises KeyboardInterrupt here; a handler of the user's that does not
                # raise gets the call run again from the start (it has no effects but its results)
                process.raise_pending()
                return self(arrays)
            message = self._ffi.string(self._lib.lantern_error()).decode(errors="replace")
            raise _ERRORS.get(code, NativeError)(message)
        return outs


_LOADED: weakref.WeakSet[NativeFunction] = weakref.WeakSet()
_INTERRUPTED = ERROR_CODES["LT_ERR_INTERRUPT"]
#: What each error code of the runtime raises (anything else, out of memory included: NativeError).
_ERRORS = {ERROR_CODES["LT_ERR_INDEX"]: OutOfBoundsError, ERROR_CODES["LT_ERR_STACK"]: RecursionDepthError,
           ERROR_CODES["LT_ERR_NONFINITE"]: NonFiniteError}
