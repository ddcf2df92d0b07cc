"""Across processes: from a staged function's fingerprint straight to its compiled code.

The compile cache is keyed by the C text, so finding an entry needs the trace, the AD, the
passes and the emitter first (0.1-0.2 s for a training step). This cache records, for a
*fingerprint* of everything a trace can depend on, which compile-cache entry the trace
produced, so that a fresh process can load the shared object without tracing.

A stale hit would silently run the wrong program, so the fingerprint is conservative. It
covers: the function's code objects (recursively: bytecode, constants, names, line tables),
closure cells, defaults and every global it reads (functions by their own fingerprint,
staged functions with their options, modules by the attributes the code names, numbers,
strings and containers by value, NumPy arrays by content, lantern's own functions, classes
and layer/optimizer objects by name and state); the signature; lantern's source and the
plain values of its modules' globals; Python, NumPy, the compiler, the OpenBLAS installation and
every ``LANTERN_*`` setting. Anything it cannot fingerprint (objects of the user's classes, ``numpy.random``,
``getattr``, open files, ...), or a lantern function replaced at run time (monkeypatching),
makes the lookup a miss, and the function is traced as usual.

``LANTERN_TRACE_CACHE``: ``1`` (default) on; ``0`` off; ``verify`` traces anyway and raises
if a recorded entry differs from what tracing produces (the test suite runs this way).
"""
from __future__ import annotations

import builtins
import dis
import functools
import hashlib
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IRVerificationError
from .ir.symbolic import Guard, Size
from .ir.types import TensorType
from .tree import TreeDef

FORMAT = 1
STATS = {"hits": 0, "misses": 0, "unsupported": 0, "stores": 0, "verified": 0}

#: Roots of the libraries whose module-level functions and classes are fingerprinted by name.
_LIBRARIES = {"lantern", "numpy", "math", "cmath", "operator", "_operator", "functools", "_functools",
              "itertools", "builtins", "typing", "collections", "dataclasses"}
#: Builtins a traced function may call: their results depend only on their arguments.
_PURE_BUILTINS = {
    "abs", "all", "any", "bool", "callable", "chr", "complex", "dict", "divmod", "enumerate", "filter", "float",
    "format", "frozenset", "int", "isinstance", "issubclass", "iter", "len", "list", "map", "max", "min", "next",
    "ord", "pow", "print", "range", "repr", "reversed", "round", "set", "slice", "sorted", "str", "sum", "tuple",
    "type", "zip", "True", "False", "None", "NotImplemented", "Ellipsis"}
#: NumPy functions whose result depends on more than their arguments (files, global random state).
_NUMPY_IMPURE = {"load", "loadtxt", "genfromtxt", "fromfile", "fromregex", "memmap", "DataSource", "random"}
_SIMPLE = (bool, int, float, complex, str, bytes, type(None))
#: Settings that do not change what a trace produces (every other ``LANTERN_*`` variable is in the key).
_NOT_IN_KEY = {"LANTERN_CACHE_DIR", "LANTERN_TRACE_CACHE", "LANTERN_CC_TIMEOUT"}


class _Unsupported(Exception):
    """Something the fingerprint cannot vouch for: trace instead."""


def mode() -> str:
    """``"on"``, ``"off"`` or ``"verify"`` (from ``LANTERN_TRACE_CACHE``; off while ``LANTERN_DUMP_DIR`` is set,
    since dumping needs the C text)."""
    value = os.environ.get("LANTERN_TRACE_CACHE", "1").strip().lower()
    if value in ("0", "off", "no", "false") or os.environ.get("LANTERN_DUMP_DIR"):
        return "off"
    return "verify" if value == "verify" else "on"


# ------------------------------------------------------------------ what does not depend on the function

@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """Hash of lantern's own source (Python, C runtime): a changed lantern traces differently."""
    import lantern
    from lantern import codegen, runtime
    h = hashlib.sha256()
    for module, suffix in ((lantern, ".py"), (codegen, ".py"), (runtime, ".h")):
        root = os.path.dirname(module.__file__)
        for dirpath, dirnames, filenames in sorted(os.walk(root)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(f for f in filenames if f.endswith(suffix)):
                with open(os.path.join(dirpath, name), "rb") as f:
                    h.update(os.path.relpath(f.name, root).encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


#: The modules that trace, differentiate, emit and compile (all loaded by ``import lantern``): the plain
#: values of their globals are part of every fingerprint (a program may set a threshold at run time).
_CORE = ("lantern", "lantern.ops", "lantern.nn", "lantern.optim", "lantern.control", "lantern.staging",
         "lantern.tracing", "lantern.tensor", "lantern.source", "lantern.tree", "lantern.ad", "lantern.ir",
         "lantern.ir.passes", "lantern.codegen", "lantern.codegen.passes", "lantern.codegen.kernels",
         "lantern.runtime")


def _environment(fp: _Fingerprinter) -> None:
    from .codegen import toolchain
    fp.feed("env", FORMAT, sys.version, np.__version__, _source_digest())
    fp.feed(sorted((k, v) for k, v in os.environ.items() if k.startswith("LANTERN_") and k not in _NOT_IN_KEY))
    cc = toolchain.resolve_compiler()
    st = os.stat(cc[0])
    fp.feed("cc", cc, st.st_mtime_ns, st.st_size, os.environ.get("CFLAGS"), toolchain.user_cflags())
    # The compile key names the OpenBLAS installation (another virtual environment: another entry).
    fp.feed("blas", toolchain.blas_paths())
    for name, module in sorted(sys.modules.items()):
        if name == "lantern" or name.startswith("lantern."):
            _check_untouched(module)
            if name in _CORE or name.rsplit(".", 1)[0] in _CORE:
                fp.module_globals(module)


def _check_untouched(module: types.ModuleType) -> None:
    """A function of ``module`` replaced at run time (by code outside lantern, NumPy and the standard
    library: a monkeypatch) is not in lantern's source hash: refuse."""
    for name, value in vars(module).items():
        _check_original(f"{module.__name__}.{name}", value)
        if isinstance(value, type) and value.__module__ == module.__name__:
            for attr, member in vars(value).items():  # methods of lantern's classes (Tensor, layers, ...)
                _check_original(f"{module.__name__}.{name}.{attr}", member)


def _check_original(where: str, value: Any) -> None:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, types.FunctionType) and not _trusted_file(value.__code__.co_filename):
        # methods that dataclass and namedtuple write with exec() for lantern's own classes are not patches
        generated = value.__code__.co_filename == "<string>" and str(value.__module__).startswith(
            ("lantern.", "namedtuple_"))
        if not generated:
            raise _Unsupported(f"{where} was replaced by {value.__module__}.{value.__qualname__}")
    if type(value).__module__.startswith("unittest.mock"):
        raise _Unsupported(f"{where} is a mock")


@functools.lru_cache(maxsize=None)
def _trusted_file(filename: str) -> bool:
    return filename.startswith("<frozen ") or filename.startswith(_trusted_roots())


@functools.lru_cache(maxsize=1)
def _trusted_roots() -> tuple[str, ...]:
    """Where lantern, the standard library and installed packages live."""
    import sysconfig
    import lantern
    from lantern import codegen, runtime
    paths = sysconfig.get_paths()
    roots = [str(Path(module.__file__).parent) for module in (lantern, codegen, runtime)]
    roots += [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(k)]
    return tuple(r + os.sep for r in roots)


# ------------------------------------------------------------------ the fingerprint

class _Fingerprinter:
    """Feeds a description of values into one SHA-256; raises :class:`_Unsupported` where it cannot."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.seen: dict[int, int] = {}
        self.keep: list[Any] = []  # what ``seen`` refers to stays alive (ids are not reused)
        self.modules_done: set[str] = set()

    def feed(self, *parts: Any) -> None:
        self.h.update(repr(parts).encode())
        self.h.update(b"\x00")

    def digest(self) -> str:
        return self.h.hexdigest()

    def _once(self, v: Any) -> bool:
        """True the first time ``v`` is seen; later, feed a back reference (cycles, shared objects)."""
        if id(v) in self.seen:
            self.feed("ref", self.seen[id(v)])
            return False
        self.seen[id(v)] = len(self.seen)
        self.keep.append(v)
        return True

    def module_globals(self, module: types.ModuleType) -> None:
        """The plain values among a lantern module's public globals (thresholds a program may set at run
        time; private ones are lantern's own lazily filled caches and counters)."""
        if module.__name__ in self.modules_done:
            return
        self.modules_done.add(module.__name__)
        plain = [(k, sorted(map(repr, v)) if isinstance(v, frozenset) else v)  # sets: no hash-seed order
                 for k, v in vars(module).items() if not k.startswith("_") and _plain(v)]
        self.feed("globals", module.__name__, sorted(plain, key=lambda kv: kv[0]))

    # -------------------------------------------------------------- values
    def value(self, v: Any, names: frozenset[str] = frozenset()) -> None:
        t = type(v)
        if v is None or t in _SIMPLE:
            self.feed(t.__name__, v)
        elif t in (tuple, list, dict, set, frozenset):
            if not self._once(v):
                return
            if t is dict:
                self.feed("dict", len(v))
                for k, x in v.items():
                    self.value(k)
                    self.value(x, names)
            elif t in (set, frozenset):
                if not all(type(x) in _SIMPLE for x in v):
                    raise _Unsupported("a set of non-plain values")
                self.feed(t.__name__, sorted(map(repr, v)))
            else:
                self.feed(t.__name__, len(v))
                for x in v:
                    self.value(x, names)
        elif isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                raise _Unsupported("an object array")
            self.feed("ndarray", type(v).__name__, v.dtype.str, v.shape,
                      hashlib.sha256(np.ascontiguousarray(v).data).hexdigest())
        elif isinstance(v, np.generic):
            self.feed("npscalar", v.dtype.str, v.tobytes())
        elif isinstance(v, np.dtype):
            self.feed("dtype", v.str)
        elif isinstance(v, types.CodeType):
            self.code(v)
        elif isinstance(v, types.ModuleType):
            self.module(v, names)
        elif _is_staged(v):
            if self._once(v):
                self.feed("staged", v.name, sorted(v.options.items()))
                if isinstance(v.fn, types.MethodType):  # stage(obj.method): the object's state too
                    self.value(v.fn, names)
                else:
                    self.function(v.fn)
        elif isinstance(v, functools.partial):
            if self._once(v):
                self.feed("partial")
                self.value(v.func, names)
                self.value(v.args, names)
                self.value(v.keywords, names)
        elif isinstance(v, types.MethodType):
            if self._once(v):
                self.feed("method")
                self.value(v.__self__, names)
                self.value(v.__func__, names)
        elif self.library(v):
            pass
        elif isinstance(v, types.FunctionType):
            self.function(v)
        elif t.__module__.split(".")[0] == "lantern" and not isinstance(v, type):
            # a lantern object (layer, optimizer): its class by name, its state by value
            if self._once(v):
                state = getattr(v, "__dict__", None)
                if state is None:
                    raise _Unsupported(f"a {t.__qualname__} without __dict__")
                self.feed("object", t.__module__, t.__qualname__)
                self.value(dict(sorted(state.items())), names)
        else:
            raise _Unsupported(f"a {t.__module__}.{t.__qualname__}")

    def library(self, v: Any) -> bool:
        """Module-level functions and classes of lantern, NumPy and pure standard modules: by name."""
        if isinstance(v, np.ufunc):
            self.feed("ufunc", v.__name__)
            return True
        module_name = getattr(v, "__module__", None)
        qualname = getattr(v, "__qualname__", None) or getattr(v, "__name__", None)
        if not isinstance(module_name, str) or not isinstance(qualname, str):
            return False
        root = module_name.split(".")[0]
        if root not in _LIBRARIES:
            return False
        module = sys.modules.get(module_name)
        found: Any = module
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if found is not v:
            return False  # made at run time (a closure from lantern.grad, say): fingerprint it fully
        if root == "builtins" and not isinstance(v, type) and qualname not in _PURE_BUILTINS:
            raise _Unsupported(f"builtin {qualname}")
        if root == "numpy" and (module_name.startswith("numpy.random") or qualname in _NUMPY_IMPURE):
            raise _Unsupported(f"numpy {qualname}")
        if root == "lantern" and module is not None:
            self.module_globals(module)
        self.feed("library", module_name, qualname)
        return True

    def module(self, m: types.ModuleType, names: frozenset[str]) -> None:
        name = m.__name__
        if name.startswith("numpy.random") or name in ("os", "sys", "time", "random", "io", "socket"):
            raise _Unsupported(f"module {name}")
        if not self._once(m):
            return
        self.feed("module", name)
        if name.split(".")[0] == "lantern":
            self.module_globals(m)
        # the attributes the code may read from it
        namespace = vars(m)
        lazy = "__getattr__" in namespace  # PEP 562: numpy.random is not in vars(numpy) until used
        for attr in sorted(names):
            if attr in namespace:
                self.feed("attr", attr)
                self.value(namespace[attr], names)
            elif lazy:
                try:
                    value = getattr(m, attr)
                except AttributeError:
                    continue
                except Exception as exc:
                    raise _Unsupported(f"{name}.{attr}: {exc}") from None
                self.feed("attr", attr)
                self.value(value, names)

    def code(self, c: types.CodeType) -> None:
        self.feed("code", c.co_name, getattr(c, "co_qualname", c.co_name), c.co_filename, c.co_firstlineno,
                  c.co_argcount, c.co_posonlyargcount, c.co_kwonlyargcount, c.co_flags, c.co_names, c.co_varnames,
                  c.co_freevars, c.co_cellvars)
        self.h.update(c.co_code)
        self.h.update(c.co_linetable)
        self.h.update(getattr(c, "co_exceptiontable", b""))
        for const in c.co_consts:
            self.value(const)

    def function(self, f: types.FunctionType) -> None:
        if not isinstance(f, types.FunctionType):
            raise _Unsupported(f"a {type(f).__qualname__} as a function")
        if not self._once(f):
            return
        code = f.__code__
        globals_read, names = _names(code)
        self.feed("function", f.__module__, f.__qualname__)
        self.code(code)
        self.value(f.__defaults__, names)
        self.value(f.__kwdefaults__, names)
        for cell in f.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:
                self.feed("empty cell")
                continue
            self.value(contents, names)
        namespace = f.__globals__
        builtin_names = vars(builtins)
        for name in sorted(globals_read):
            if name in namespace:
                self.feed("global", name)
                self.value(namespace[name], names)
            elif name in builtin_names:
                self.feed("builtin", name)
                self.value(builtin_names[name], names)
            else:
                raise _Unsupported(f"global {name} is not defined")


@functools.lru_cache(maxsize=4096)
def _names(code: types.CodeType) -> tuple[frozenset[str], frozenset[str]]:
    """(globals the code tree reads, every name it uses: attributes included)."""
    globals_read: set[str] = set()
    names: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        for ins in dis.get_instructions(c):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"):
                globals_read.add(ins.argval)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return frozenset(globals_read), frozenset(names)


def _plain(v: Any) -> bool:
    if type(v) in _SIMPLE:
        return True
    return type(v) in (tuple, frozenset) and len(v) <= 64 and all(type(x) in _SIMPLE for x in v)


def _is_staged(v: Any) -> bool:
    from .staging import Staged
    return isinstance(v, Staged)


def fingerprint(staged: Any, treedef: TreeDef, keys: list[tuple]) -> str | None:
    """The fingerprint of ``staged`` traced for this signature, or None (cache off, or not fingerprintable)."""
    if mode() == "off":
        return None
    fp = _Fingerprinter()
    try:
        if not _treedef_plain(treedef):
            raise _Unsupported("a namedtuple argument")
        _environment(fp)
        fp.feed("signature", str(treedef), repr(treedef), staged.name, sorted(staged.options.items()))
        for key in keys:
            fp.value(key)
        fp.value(staged)
    except Exception:  # _Unsupported, a structure too deep, an object that fails when looked at: trace
        STATS["unsupported"] += 1
        return None
    return fp.digest()


def _treedef_plain(td: TreeDef) -> bool:
    return td.kind != "namedtuple" and all(_treedef_plain(c) for c in td.children)


# ------------------------------------------------------------------ records

def _encode_treedef(td: TreeDef) -> Any:
    if td.kind == "namedtuple":
        raise _Unsupported("namedtuple results")
    aux = None
    if td.kind == "dict":
        if not all(type(k) in (str, int, bool, float, type(None)) for k in td.aux):
            raise _Unsupported("dict keys that JSON cannot hold")
        aux = [[type(k).__name__, k] for k in td.aux]
    return {"kind": td.kind, "children": [_encode_treedef(c) for c in td.children], "aux": aux}


_KEY_TYPES = {"str": str, "int": int, "bool": bool, "float": float, "NoneType": lambda v: None}


def _decode_treedef(obj: Any) -> TreeDef:
    aux = tuple(_KEY_TYPES[t](k) for t, k in obj["aux"]) if obj["aux"] is not None else None
    return TreeDef(obj["kind"], tuple(_decode_treedef(c) for c in obj["children"]), aux)


def _record_path(fingerprint_: str) -> Path:
    from .codegen import cache
    return cache.active_cache_dir() / "traces" / fingerprint_[:2] / f"{fingerprint_}.json"


def store(fingerprint_: str, exe: Any) -> None:
    """Record which compiled entry ``exe`` (just traced and compiled) uses, for later processes."""
    from .codegen import cache
    native = exe.native
    try:
        record = {"format": FORMAT, "fingerprint": fingerprint_, "key": native.artifact_key,
                  "so": Path(native.so_path).name, "entry": native.entry, "num_inputs": native.num_inputs,
                  "uses_blas": native.uses_blas,
                  "out_types": [[[_encode_dim(d) for d in t.shape], t.dtype] for t in exe.out_types],
                  "out_treedef": _encode_treedef(exe.out_treedef),
                  "sizes": [list(s) for s in native.source.sizes],
                  "guards": [[_encode_dim(g.expression), g.relation] for g in exe.pattern.guards] if exe.pattern else []}
    except _Unsupported:
        return
    path = _record_path(fingerprint_)
    try:
        cache.make_private_dir(path.parent.parent)
        cache.make_private_dir(path.parent)
        cache.write_atomic(path, json.dumps(record).encode())
    except OSError:
        return  # a record is an optimisation: tracing again is always right
    STATS["stores"] += 1


def load(fingerprint_: str) -> dict | None:
    """The record for ``fingerprint_`` if there is a trustworthy one whose compiled entry is whole."""
    from .codegen import cache
    path = _record_path(fingerprint_)
    try:
        st = os.lstat(path)
        if cache.private_problem(path, st) or cache.private_problem(path.parent, os.stat(path.parent)):
            return None
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("fingerprint") != fingerprint_:
        return None
    return record


def native_from_record(record: dict) -> tuple[Any, list[TensorType], TreeDef] | None:
    """Load the compiled code a record names: (native function, result types, result structure), or None."""
    from .codegen import cache
    from .codegen.emit_c import CSource
    from .codegen.loader import NativeFunction
    try:
        artifact = cache.lookup(record["key"], record["so"])
        if artifact is None:
            return None
        text = Path(artifact.c_path).read_text()
        out_types = [TensorType(tuple(_decode_dim(d) for d in shape), dtype) for shape, dtype in record["out_types"]]
        source = CSource(text, record["entry"], record["num_inputs"], len(out_types), record["uses_blas"],
                         tuple((str(n), int(i), int(a)) for n, i, a in record.get("sizes", [])))
        out_treedef = _decode_treedef(record["out_treedef"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return NativeFunction(artifact, source, out_types), out_types, out_treedef


def _encode_dim(d: Any) -> Any:
    """A dimension for JSON: an int, or a run-time size as ``{"size": [[variables, coefficient], ...]}``."""
    return {"size": [[list(m), c] for m, c in d.terms]} if isinstance(d, Size) else d


def _decode_dim(d: Any) -> Any:
    if isinstance(d, dict):
        return Size(tuple((tuple(str(v) for v in m), int(c)) for m, c in d["size"]))
    return int(d)


def guards_from_record(record: dict) -> tuple[Guard, ...] | None:
    """The guards a record's code assumes (for a signature with run-time sizes), or None if unreadable."""
    try:
        return tuple(Guard(_decode_dim(e), str(rel)) for e, rel in record.get("guards", []))
    except (KeyError, TypeError, ValueError):
        return None


def check_same(fingerprint_: str, exe: Any) -> None:
    """``verify`` mode: a record for this fingerprint must name the entry tracing just produced."""
    record = load(fingerprint_)
    if record is None:
        return
    STATS["verified"] += 1
    if record.get("key") != exe.native.artifact_key:
        raise IRVerificationError(
            f"trace cache: the record {fingerprint_} for {exe.name} names compiled entry {record.get('so')}, "
            f"but tracing produced {Path(exe.native.so_path).name}: the fingerprint missed something the "
            "trace depends on (a stale hit would have run the wrong code); please report it")
