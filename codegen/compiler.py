"""The compiler driver: generated C into a shared object, through the compile cache.

A shared object is keyed by a hash of everything that determines its bytes: the C text, the
runtime header, the toolchain (compiler, its identity, the flags with ``-march=native`` resolved
to the host CPU and the sanitizer flags of ``LANTERN_DEBUG=1``, the BLAS it links) and lantern's
version. ``codegen/toolchain.py`` runs the compiler; ``codegen/cache.py`` keeps the entries.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from lantern.errors import CacheWarning, CompileError
from lantern.runtime import RUNTIME_HEADERS

from . import cache
from .cache import Artifact, CacheWriteError, Entry
from .loader import num_threads
from .toolchain import Toolchain
from .units import Unit

VERSION = "0.1.0"


def _readable(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", name)[:48] or "fn"


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def cache_key(text: str, uses_blas: bool, tc: Toolchain | None = None) -> str:
    """Hash of everything that determines the shared object's bytes (see the module docstring)."""
    return _digest(VERSION, text, *(h.read_text() for h in RUNTIME_HEADERS),
                   *(tc or Toolchain.configured()).key_parts(uses_blas))


def compile_c(text: str, name: str, uses_blas: bool, flags: list[str] | None = None) -> Artifact:
    """Compile ``text`` to a shared object (or find it in the cache); ``name`` makes file names readable.
    ``flags`` replace ``CFLAGS`` (the fuzzer compiles each program a second time at ``-O0``)."""
    tc = Toolchain.configured(flags)
    key = cache_key(text, uses_blas, tc)
    cache.dump(text, f"{_readable(name)}-{key}")

    def build(c_path: str, out: str) -> tuple[list[str], Any]:
        return tc.compile(c_path, out, uses_blas, f"compiling {name}")
    return _build_cached(text, name, key, build, ".so", tc)


def compile_units(units: tuple[Unit, ...], text: str, name: str, uses_blas: bool,
                  timings: dict[str, float] | None = None) -> Artifact:
    """Compile the translation units ``units`` (``codegen/units.py``) in parallel, each through the cache as
    an object file of its own, and link them into a shared object, cached under ``text`` (the whole module as
    one file, kept with it for people). Glue units compile at ``-O1``. ``timings`` receives each unit's
    seconds (``unit 0``, ...: the compiler's, or the cache lookup's) and the link's."""
    tc = Toolchain.configured()
    glue_tc = tc.at_most_O1()
    tcs = [glue_tc if u.glue else tc for u in units]
    unit_keys = [_digest("object", cache_key(u.text, uses_blas, t)) for u, t in zip(units, tcs)]
    key = _digest("linked", cache_key(text, uses_blas, tc), *unit_keys)
    cache.dump(text, f"{_readable(name)}-{key}")

    def compile_unit(k: int) -> str:
        start = time.perf_counter()

        def build(c_path: str, out: str) -> tuple[list[str], Any]:
            return tcs[k].compile_object(c_path, out, uses_blas, f"compiling unit {k} of {name}")
        artifact = _build_cached(units[k].text, f"{name} unit {k}", unit_keys[k], build, ".o", tcs[k])
        if timings is not None:
            timings[f"unit {k}"] = time.perf_counter() - start
        return artifact.so_path

    def link(c_path: str, out: str) -> tuple[list[str], Any]:
        # (only when the linked module is not in the cache: then each unit is looked up, or compiled)
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=min(num_threads(), len(units))) as pool:
            objects = list(pool.map(compile_unit, range(len(units))))
        start = time.perf_counter()
        try:
            return tc.link(objects, out, uses_blas, f"linking {name}")
        finally:
            if timings is not None:
                timings["link"] = time.perf_counter() - start
    return _build_cached(text, name, key, link, ".so", tc)


Build = Callable[[str, str], tuple[list[str], Any]]


def _build_cached(text: str, name: str, key: str, build: Build, suffix: str, tc: Toolchain) -> Artifact:
    root = cache.active_cache_dir()
    try:
        return _build_in(root, text, name, key, build, suffix, tc)
    except CacheWriteError as exc:
        temp = cache.fall_back(cache.cache_dir(), str(exc))
        if temp == root:
            raise CompileError(f"cannot write compiled code for {name}: {exc}") from None
        try:
            return _build_in(temp, text, name, key, build, suffix, tc)
        except CacheWriteError as again:
            raise CompileError(f"cannot write compiled code for {name} in the cache {root} nor in the "
                               f"temporary directory {temp}: {again}") from None


def _build_in(root: Path, text: str, name: str, key: str, build: Build, suffix: str,
              tc: Toolchain) -> Artifact:
    """The entry ``key`` in ``root``: found, or made by ``build`` (C file, output file) from ``text``."""
    entry = Entry(root / key[:2], f"{_readable(name)}-{key}", suffix)
    usable, damage = (False, None)
    if entry.directory.exists():
        usable, damage = cache.check_entry(entry, key)
    if usable:
        cache.count("disk_hits")
        if not entry.c.exists():
            try:
                cache.write_atomic(entry.c, text.encode())
            except OSError:
                pass  # the C file is for people; the entry is whole without it
        return Artifact(str(entry.so), str(entry.c), key, True)
    if damage:
        warnings.warn(f"lantern: compile cache entry for {name} not used: {damage}; compiling it again",
                      CacheWarning, stacklevel=5)
        cache.count("rebuilt")

    import tempfile  # (only to compile: a cache hit does without it)
    try:
        cache.make_private_dir(entry.directory)
        cache.remove_stale_temporaries(entry.directory)
        cache.write_atomic(entry.c, text.encode())
        fd, tmp_so = tempfile.mkstemp(prefix=f".{entry.base}.", suffix=f"{suffix}.tmp", dir=entry.directory)
        os.close(fd)
    except OSError as exc:
        raise CacheWriteError(f"cannot write in {entry.directory} ({exc.strerror})") from None
    tmp_meta = None
    try:
        cmd, proc = build(str(entry.c), tmp_so)
        if proc.returncode != 0:
            if any(m in proc.stderr for m in cache.WRITE_FAILURES) and cache.write_problem(entry.directory, 1 << 20):
                raise CacheWriteError(f"the compiler could not write its output in {entry.directory}: "
                                      f"{proc.stderr.strip()[-300:]}")
            raise CompileError(f"the C compiler failed on code generated for {name} (C file kept at {entry.c}):\n"
                               f"$ {' '.join(map(shlex.quote, cmd))}\n{proc.stderr.strip()}\n"
                               "If the compiler itself is broken or wrong, set CC to a working C compiler "
                               "(gcc or clang); if CFLAGS are wrong, fix or unset them",
                               c_path=str(entry.c), compiler_output=proc.stderr)
        data = Path(tmp_so).read_bytes()
        meta = {"format": cache.META_FORMAT, "key": key, "so_sha256": cache.sha256(data), "so_size": len(data),
                "lantern": VERSION, "name": name, "command": cmd[:1] + list(tc.flags), "created": time.time()}
        try:
            fd, tmp_meta = tempfile.mkstemp(prefix=f".{entry.base}.", suffix=".json.tmp", dir=entry.directory)
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(meta, indent=1).encode())
            # the output first, then the metadata that vouches for it: a reader sees a whole entry or none
            os.replace(tmp_so, entry.so)
            os.replace(tmp_meta, entry.meta)
        except OSError as exc:
            raise CacheWriteError(f"cannot write in {entry.directory} ({exc.strerror})") from None
    finally:
        for leftover in (tmp_so, tmp_meta):
            if leftover and os.path.exists(leftover):
                os.unlink(leftover)
    cache.count("compiles")
    return Artifact(str(entry.so), str(entry.c), key, False)
