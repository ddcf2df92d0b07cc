"""NumPy as the oracle: random programs over the NumPy API that lantern mirrors, run by NumPy and by ``lantern.stage``.

A program is data (JSON): input arrays (dtype, shape, values, memory layout) and a list of
statements, each one expression over earlier values written once for both libraries
(``{xp}.sum({0}, axis=(0, -1), keepdims=True)``, ``{0}[::-1, None] // {1}``; lantern's own ops such
as ``sigmoid`` or ``one_hot`` through ``{ext}``, which is ``lantern`` or :data:`npx`, their NumPy
meaning). The generator runs NumPy as it goes, so every statement is one NumPy accepts, with the
dtype and shape NumPy gives; some programs end in a statement NumPy rejects (a bad axis, shapes that
do not broadcast, an index out of range), which lantern must reject too, with a lantern error.

Every dtype (bool, int32, int64, float32, float64), broadcasting of shape pairs with 0-d, size-1
and zero-size dimensions, negative and tuple axes, ``keepdims``; inputs C-ordered, Fortran-ordered,
strided and negatively strided (views), NaN, infinities and signed zeros among the floats, integers
that wrap.

A value is *exact* when every op on its way is exactly rounded in both libraries (integer and
bool arithmetic, ``+ - * /`` and ``sqrt`` on floats, comparisons, ``floor``, data movement, casts):
it must equal NumPy's exactly. Discontinuous ops (comparisons, ``floor``, ``//``, ``%``, casts to
integers, ``argmax``) only read exact values, so a last-bit difference upstream cannot flip them.
Other floats (transcendentals, float sums and products) are compared with a relative tolerance
scaled by the magnitudes on their way.

Checks (:func:`check_programs`): native equals NumPy and the reference interpreter; a second call
gives the same bits; inputs are left as they were; the arena is empty after a call; and the same C
compiled at ``-O0`` gives the same bits for integers, bools and exact floats (other floats within
the tolerance: a float sum is vectorized, so reassociated, at ``-O3``, and gcc folds libm calls on
constants with correctly rounded results where glibc may be an ulp off).

    python -m lantern.fuzz --oracle numpy --count 2000 --seed 1 [--jobs 2] [--save-dir tests/fuzz_regressions]
"""
from __future__ import annotations

import copy
import linecache
import math
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import LanternError
from ..staging import stage
from . import flags, regressions
from .report import Failure, Report, describe

Program = dict[str, Any]
Shape = tuple[int, ...]

DTYPES = ("bool", "int32", "int64", "float32", "float64")
FLOATS = ("float32", "float64")
#: How inputs are laid out in memory (lantern copies what is not C-contiguous; NumPy reads views).
LAYOUTS = ("C", "C", "C", "F", "strided", "reversed")
#: Relative tolerance of a value that is not exact, by the dtypes on its way.
RTOL = {"float32": 2e-4, "float64": 1e-10}
#: Values stay this small (elements), so a batch compiles and runs fast.
MAX_SIZE = 1024
#: Transcendental ops read operands at most this large (beyond it, argument reduction differs).
MAX_MATH_ARG = 50.0


# ------------------------------------------------------------------ lantern's own ops, in NumPy

def _unary_float(x: Any) -> np.ndarray:
    """What lantern's float-only unary ops compute in: bool as float32, integers as float64."""
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float32 if x.dtype == bool else np.float64)


def _as_float(x: Any) -> np.ndarray:
    """What lantern's softmax, logsumexp and silu compute in: floats as they are, anything else float64."""
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float64)


class _NumpyExtras:
    """The NumPy meaning of lantern's ops that NumPy does not name (``{ext}`` in a template)."""

    @staticmethod
    def sigmoid(x: Any) -> np.ndarray:
        x = _unary_float(x)
        return (1 / (1 + np.exp(-x))).astype(x.dtype)

    @staticmethod
    def relu(x: Any) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype == bool:
            raise TypeError("relu of bool")
        return np.where(x < 0, np.zeros((), x.dtype), x)

    @staticmethod
    def silu(x: Any) -> np.ndarray:
        x = _as_float(x)
        return x * _NumpyExtras.sigmoid(x)

    @staticmethod
    def rsqrt(x: Any) -> np.ndarray:
        x = _unary_float(x)
        return (1 / np.sqrt(x)).astype(x.dtype)

    @staticmethod
    def logsumexp(x: Any, axis: Any = None, keepdims: bool = False) -> np.ndarray:
        x = _as_float(x)
        m = np.max(x, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
        return out if keepdims else np.squeeze(out, axis=axis)

    @staticmethod
    def softmax(x: Any, axis: int = -1) -> np.ndarray:
        x = _as_float(x)
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)

    @staticmethod
    def log_softmax(x: Any, axis: int = -1) -> np.ndarray:
        x = _as_float(x)
        return x - _NumpyExtras.logsumexp(x, axis=axis, keepdims=True)

    @staticmethod
    def erf(x: Any) -> np.ndarray:
        x = _unary_float(x)
        return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)

    @staticmethod
    def sort(x: Any, axis: int = -1) -> np.ndarray:
        return np.sort(x, axis=axis, kind="stable")  # lantern's sort is stable (ties: -0.0 and 0.0 in order)

    @staticmethod
    def argsort(x: Any, axis: int = -1) -> np.ndarray:
        return np.argsort(x, axis=axis, kind="stable")

    @staticmethod
    def one_hot(idx: Any, n: int, dtype: str = "float32") -> np.ndarray:
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError("one_hot of non-integers")
        if np.any((idx < 0) | (idx >= n)):
            raise IndexError("one_hot: index out of range")
        return (idx[..., None] == np.arange(n)).astype(dtype)

    @staticmethod
    def stop_gradient(x: Any) -> np.ndarray:
        return np.array(x, copy=True)


npx = _NumpyExtras()


# ------------------------------------------------------------------ generation

@dataclass
class _Val:
    name: str
    value: np.ndarray
    exact: bool       # equal to NumPy's exactly (see the module docstring)
    reassoc: bool     # a float sum or product on its way: -O0 and -O3 may round differently
    rtol: float       # relative tolerance when not exact
    scale: float      # magnitude of the values on its way (the tolerance is relative to it)
    hot: bool = False  # a one_hot result (or moved/cast from one): lantern's product with it is a gather

    @property
    def dtype(self) -> str:
        return self.value.dtype.name

    @property
    def shape(self) -> Shape:
        return self.value.shape

    @property
    def ndim(self) -> int:
        return self.value.ndim


@dataclass
class _Cand:
    """A statement to try: the op's coverage key, its template, operands and what kind of op it is."""

    op: str
    tmpl: str
    args: list[_Val]
    exact: bool = True        # exactly rounded in both libraries (for exact operands)
    reassoc: bool = False     # a float sum or product (rounds differently when vectorized)
    needs_exact: bool = False  # discontinuous: its float operands must be exact
    grow: float = 1.0         # the tolerance's scale grows by this factor (terms summed)
    ext: bool = False         # uses a lantern op with no NumPy name (not an authority on errors)


def _maxabs(v: np.ndarray) -> float:
    if v.dtype.kind not in "fiu" or v.size == 0:
        return 1.0
    finite = np.abs(v[np.isfinite(v)].astype(np.float64)) if v.dtype.kind == "f" else np.abs(v.astype(np.float64))
    return float(np.max(finite, initial=1.0))


def _evaluate(tmpl: str, names: list[str], env: dict[str, Any]) -> np.ndarray:
    """``tmpl`` run by NumPy on the values ``env`` names (warnings silenced: NumPy's, as C's, results stand)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return eval(tmpl.format(*names, xp="np", ext="npx"), {"np": np, "npx": npx}, env)  # noqa: S307


class _Gen:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.vals: list[_Val] = []
        self.inputs: list[dict] = []
        self.body: list[dict] = []
        self.env: dict[str, Any] = {}
        self.counter = 0
        self.wild = False  # drawing statements NumPy may reject (the last one of an error program)

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}{self.counter}"

    # -- inputs
    def rand_shape(self, nd: int | None = None) -> Shape:
        r = self.rng
        nd = r.choice([0, 1, 1, 2, 2, 2, 3, 3, 4]) if nd is None else nd
        # sometimes past a vector's width (16 floats), so main loops, remainders and BLAS are reached
        dims = [r.choices([0, 1, 2, 3, 4, 5, 7, 16, 17], [1, 4, 6, 6, 4, 3, 1, 0.4, 0.4])[0] for _ in range(nd)]
        while math.prod(dims) > MAX_SIZE // 2:
            dims[dims.index(max(dims))] = 2
        return tuple(dims)

    def input(self, dtype: str, shape: Shape) -> _Val:
        r = self.rng
        g = np.random.default_rng(r.getrandbits(32))
        n = math.prod(shape)
        if dtype == "bool":
            values = g.random(n) < 0.5
        elif dtype in ("int32", "int64"):
            values = g.integers(-6, 7, n)
            if r.random() < 0.15:  # values that wrap around when added or multiplied
                info = np.iinfo(dtype)
                values = g.integers(info.min // 2, info.max // 2, n, dtype=dtype, endpoint=True)
        else:
            values = np.round(g.standard_normal(n) * r.choice([0.5, 2.0, 30.0]), 3)
            if r.random() < 0.15 and n:  # special values
                k = g.integers(0, n, max(1, n // 4))
                values[k] = g.choice([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, 0.5], len(k))
        arr = np.asarray(values).astype(dtype).reshape(shape)
        layout = r.choice(LAYOUTS) if len(shape) >= 1 else ("scalar" if r.random() < 0.2 else "C")
        name = self.name("a")
        self.inputs.append({"name": name, "dtype": dtype, "shape": list(shape), "layout": layout,
                            "values": arr.ravel().tolist()})
        self.env[name] = make_input(self.inputs[-1])
        v = _Val(name, arr, True, False, 0.0, _maxabs(arr))
        self.vals.append(v)
        return v

    def rand_dtype(self) -> str:
        return self.rng.choices(DTYPES, [2, 2, 2, 3, 3])[0]

    # -- operands
    def pick(self, pred: Callable[[_Val], bool] = lambda v: True) -> _Val | None:
        cands = [v for v in self.vals if pred(v)]
        if not cands:
            return None
        return cands[-1 - min(int(self.rng.expovariate(0.5)), len(cands) - 1)]  # recent values first

    def partner(self, x: _Val, dtype: str | None = None, exact: bool = False) -> _Val:
        """A value whose shape broadcasts against ``x``'s (an existing one or a new input)."""
        r = self.rng
        s = x.shape
        c = r.random()
        if self.wild and c < 0.5:
            shape = self.rand_shape()
        elif c < 0.35 or not s:
            shape = s if r.random() < 0.8 else ()
        elif c < 0.55:
            shape = s[r.randint(1, len(s)):]
        elif c < 0.8:
            shape = tuple(1 if r.random() < 0.5 else d for d in s)
        else:
            shape = (r.choice([1, 2, 3, 0]),) + s if len(s) < 4 else s
        dtype = dtype or (x.dtype if r.random() < 0.5 else self.rand_dtype())
        same = [v for v in self.vals if v.shape == shape and v.dtype == dtype and (v.exact or not exact)]
        if same and r.random() < 0.5:
            return r.choice(same)
        return self.input(dtype, shape)

    def axis_arg(self, x: _Val, allow_tuple: bool = True) -> tuple[Any, tuple[int, ...]]:
        """A random ``axis`` argument for ``x`` and the axes it names."""
        r, nd = self.rng, x.ndim
        if self.wild and r.random() < 0.5:
            a = r.randint(-nd - 2, nd + 1)
            return (a, (a,)) if r.random() < 0.6 or not allow_tuple else ((a, a % max(nd, 1)), ())
        if nd == 0 or r.random() < 0.2:
            return None, tuple(range(nd))
        if allow_tuple and nd > 1 and r.random() < 0.3:
            axes = tuple(sorted(r.sample(range(nd), r.randint(1, nd))))
            return tuple(a - nd if r.random() < 0.4 else a for a in axes), axes
        a = r.randrange(nd)
        return (a - nd if r.random() < 0.4 else a), (a,)

    # -- statements
    def unary(self) -> _Cand | None:
        r = self.rng
        x = self.pick()
        if x is None:
            return None
        op = r.choice(["exp", "log", "log1p", "expm1", "sin", "cos", "tanh", "sqrt", "sigmoid", "silu", "rsqrt",
                       "abs", "negative", "sign", "floor", "square", "relu", "stop_gradient", "neg_op", "abs_op",
                       "pos_op"])
        math_ops = {"exp", "log", "log1p", "expm1", "sin", "cos", "tanh", "sqrt", "sigmoid", "silu", "rsqrt"}
        ext = op in ("sigmoid", "silu", "rsqrt", "relu", "stop_gradient")
        fn = f"{{ext}}.{op}" if ext else f"{{xp}}.{op}"
        if op in math_ops:
            if x.exact and x.scale <= MAX_MATH_ARG:
                tmpl = f"{fn}({{0}})"
            elif op in ("log", "log1p", "sqrt", "rsqrt"):  # inexact operands: bounded, in the domain
                tmpl = f"{fn}({{0}} * {{0}} + 1.0)"
            else:
                tmpl = f"{fn}({{xp}}.tanh({{0}} * 0.01))" if op != "tanh" else f"{fn}({{0}})"
            return _Cand(op, tmpl, [x], exact=op == "sqrt" and x.exact and x.scale <= MAX_MATH_ARG, ext=ext)
        operators = {"neg_op": "-{0}", "abs_op": "abs({0})", "pos_op": "+{0}", "square": "{xp}.square({0})"}
        tmpl = operators.get(op, f"{fn}({{0}})")
        return _Cand(op, tmpl, [x], needs_exact=op in ("sign", "floor"), ext=ext)

    _BINARY = {  # op -> (template, exactly rounded for floats, discontinuous)
        "add": ("{0} + {1}", True, False), "subtract": ("{xp}.subtract({0}, {1})", True, False),
        "sub_op": ("{0} - {1}", True, False), "multiply": ("{0} * {1}", True, False),
        "divide": ("{0} / {1}", True, False), "floor_divide": ("{0} // {1}", True, True),
        "mod": ("{xp}.mod({0}, {1})", True, True), "mod_op": ("{0} % {1}", True, True),
        "power": ("{0} ** {1}", False, False), "maximum": ("{xp}.maximum({0}, {1})", True, False),
        "minimum": ("{xp}.minimum({0}, {1})", True, False),
        "equal": ("{0} == {1}", True, True), "not_equal": ("{xp}.not_equal({0}, {1})", True, True),
        "less": ("{0} < {1}", True, True), "less_equal": ("{xp}.less_equal({0}, {1})", True, True),
        "greater": ("{0} > {1}", True, True), "greater_equal": ("{0} >= {1}", True, True),
        "logical_and": ("{xp}.logical_and({0}, {1})", True, True),
        "logical_or": ("{xp}.logical_or({0}, {1})", True, True),
        "and_op": ("{0} & {1}", True, True), "or_op": ("{0} | {1}", True, True),
    }

    def binary(self) -> _Cand | None:
        r = self.rng
        op = r.choice(list(self._BINARY))
        tmpl, exact, disc = self._BINARY[op]
        bools = op in ("and_op", "or_op")
        x = self.pick((lambda v: v.dtype == "bool") if bools and not self.wild else
                      (lambda v: v.exact) if disc else (lambda v: True))
        if x is None:
            return None
        if r.random() < 0.2 and not bools:  # a Python scalar operand (weak: the array's dtype wins)
            k = r.choice([2, -3, 0, 1.5, -0.25, True, 0.1, 7])
            if isinstance(k, float) and x.dtype not in FLOATS and disc:
                k = 3
            args = [x]
            if r.random() < 0.7:
                tmpl = tmpl.replace("{1}", repr(k))
            else:  # the scalar on the left
                tmpl = tmpl.replace("{0}", "\0").replace("{1}", "{0}").replace("\0", repr(k))
        else:
            y = self.partner(x, "bool" if bools and not self.wild else None, exact=disc)
            args = [x, y] if r.random() < 0.7 else [y, x]
        if op == "power":
            if len(args) == 2 and all(a.dtype not in FLOATS for a in args):  # small, non-negative exponents
                tmpl = tmpl.replace("{1}", "({1} % 3)")
                exact = True
            elif len(args) == 2:
                tmpl = "({0} * {0} + 1.0) ** {xp}.tanh({1} * 0.1)"
            else:  # a Python scalar exponent (or base)
                exact = x.dtype not in FLOATS and not isinstance(k, float)
        if op in ("divide",) and len(args) == 2 and not args[1].exact:
            tmpl = "{0} / ({1} * {1} + 1.0)"
        return _Cand(op, tmpl, args, exact=exact, needs_exact=disc)

    def select(self) -> _Cand | None:
        c = self.pick(lambda v: v.dtype == "bool")
        if c is None:
            return self.binary()
        a = self.partner(c)
        r = self.rng
        if r.random() < 0.3:
            return _Cand("where", f"{{xp}}.where({{0}}, {{1}}, {r.choice([0, 1.5, -2, False])!r})", [c, a])
        b = self.partner(c)
        return _Cand("where", "{xp}.where({0}, {1}, {2})", [c, a, b])

    def clip(self) -> _Cand | None:
        x = self.pick()
        if x is None:
            return None
        lo, hi = self.rng.choice([(-1, 2), (-0.5, 0.5), (0, 3), (None, 1), (-2, None)])
        form = self.rng.random()
        tmpl = (f"{{xp}}.clip({{0}}, {lo!r}, {hi!r})" if form < 0.7 else f"{{0}}.clip({lo!r}, {hi!r})")
        return _Cand("clip", tmpl, [x])

    def logical_not(self) -> _Cand | None:
        x = self.pick(lambda v: v.dtype == "bool" and v.exact) if not self.wild else self.pick()
        if x is None:
            return None
        return _Cand("logical_not", self.rng.choice(["~{0}", "{xp}.logical_not({0})"]), [x], needs_exact=True)

    def reduce(self) -> _Cand | None:
        r = self.rng
        op = r.choice(["sum", "mean", "max", "min", "argmax", "argmin", "logsumexp", "softmax", "log_softmax"])
        x = self.pick((lambda v: v.exact) if op in ("argmax", "argmin") else (lambda v: True))
        if x is None:
            return None
        floaty = x.dtype in FLOATS
        if op in ("softmax", "log_softmax"):
            if not x.ndim and not self.wild:
                return None
            a = r.randrange(-x.ndim, x.ndim) if x.ndim else 0
            src = "{0}" if x.scale <= MAX_MATH_ARG else "{xp}.tanh({0} * 0.01)"
            return _Cand(op, f"{{ext}}.{op}({src}, axis={a})", [x], exact=False, reassoc=True, ext=True,
                         grow=max(x.shape[a], 1) if x.ndim else 1)
        if op in ("argmax", "argmin"):
            if self.wild and r.random() < 0.3:
                axis = (0,)
            else:
                axis = None if not x.ndim or r.random() < 0.25 else r.randrange(-x.ndim, x.ndim)
            kw = f"axis={axis!r}" + (", keepdims=True" if r.random() < 0.3 else "")
            tmpl = f"{{xp}}.{op}({{0}}, {kw})" if r.random() < 0.6 else f"{{0}}.{op}({kw})"
            return _Cand(op, tmpl, [x], needs_exact=True)
        axis, axes = self.axis_arg(x)
        n = math.prod(x.shape[a] for a in axes if -x.ndim <= a < x.ndim) if x.ndim else 1
        kw = "" if axis is None and r.random() < 0.5 else f"axis={axis!r}"
        if r.random() < 0.3:
            kw += (", " if kw else "") + "keepdims=True"
        if op == "logsumexp":
            src = "{0}" if x.scale <= MAX_MATH_ARG else "{xp}.tanh({0} * 0.01)"
            return _Cand(op, f"{{ext}}.logsumexp({src}{', ' + kw if kw else ''})", [x], exact=False, reassoc=True,
                         grow=max(n, 1), ext=True)
        tmpl = f"{{xp}}.{op}({{0}}{', ' + kw if kw else ''})" if r.random() < 0.6 else f"{{0}}.{op}({kw})"
        summed = op in ("sum", "mean")
        exact = not summed or (not floaty and (op == "sum" or x.scale * max(n, 1) < 2.0 ** 50))
        # A float max/min is exact, but its vectorized order decides which of -0.0 and 0.0 it returns.
        return _Cand(op, tmpl, [x], exact=exact, reassoc=not exact or (floaty and not summed), grow=max(n, 1))

    def matmul(self) -> _Cand | None:
        r = self.rng
        x = self.pick(lambda v: v.ndim >= 1)
        if x is None:
            return None
        k = x.shape[-1] if not self.wild or r.random() < 0.5 else r.choice([0, 1, 2, 3])
        n = r.choice([1, 2, 3, 4, 0])
        shapes = [(k,), (k, n), (r.choice([1, 2]), k, n)]
        if x.ndim >= 3:
            shapes.append(x.shape[:-2] + (k, n))
        y = self.partner_of_shape(r.choice(shapes), x.dtype if r.random() < 0.7 else None)
        args = [x, y] if r.random() < 0.8 else [y, x]
        if args[0].ndim == 1 and args[1].ndim == 1 and args[0].shape != args[1].shape and not self.wild:
            return None
        form = r.random()
        tmpl = ("{0} @ {1}" if form < 0.5 else "{xp}.matmul({0}, {1})" if form < 0.8 or max(a.ndim for a in args) > 2
                else "{xp}.dot({0}, {1})")
        floaty = any(a.dtype in FLOATS for a in args)
        return _Cand("matmul", tmpl, args, exact=not floaty, reassoc=floaty, grow=max(k, 1))

    def partner_of_shape(self, shape: Shape, dtype: str | None = None) -> _Val:
        dtype = dtype or self.rand_dtype()
        same = [v for v in self.vals if v.shape == shape and v.dtype == dtype]
        if same and self.rng.random() < 0.5:
            return self.rng.choice(same)
        return self.input(dtype, shape)

    def shape_op(self) -> _Cand | None:
        r = self.rng
        x = self.pick()
        if x is None:
            return None
        s, nd = x.shape, x.ndim
        op = r.choice(["reshape", "reshape_method", "flatten", "transpose", "transpose_method", "T", "swapaxes",
                       "moveaxis", "moveaxis_many", "expand_dims", "squeeze", "broadcast_to", "slice", "index",
                       "astype", "astype_method"])
        if op in ("reshape", "reshape_method"):
            shape = self._reshape_target(s)
            if op == "reshape":
                return _Cand("reshape", f"{{xp}}.reshape({{0}}, {shape!r})", [x])
            return _Cand("reshape", f"{{0}}.reshape({', '.join(map(str, shape)) or '()'})", [x])
        if op == "flatten":
            return _Cand("reshape", r.choice(["{0}.flatten()", "{0}.ravel()"]), [x])
        if op in ("transpose", "transpose_method", "T"):
            perm = list(range(nd))
            r.shuffle(perm)
            perm = [p - nd if r.random() < 0.3 else p for p in perm]
            if self.wild:
                perm = [r.randint(-nd - 1, nd) for _ in range(r.randint(0, nd + 1))]
            if op == "T" or (op == "transpose" and r.random() < 0.2):
                return _Cand("transpose", "{0}.T" if op == "T" else "{xp}.transpose({0})", [x])
            if op == "transpose":
                return _Cand("transpose", f"{{xp}}.transpose({{0}}, {tuple(perm)!r})", [x])
            return _Cand("transpose", f"{{0}}.transpose({', '.join(map(str, perm))})", [x])
        if op == "swapaxes":
            if not nd and not self.wild:
                return None
            a, b = (r.randint(-nd - 1, nd) for _ in range(2)) if self.wild else (r.randrange(-nd, nd) for _ in range(2))
            return _Cand("swapaxes", f"{{xp}}.swapaxes({{0}}, {a}, {b})" if r.random() < 0.5
                         else f"{{0}}.swapaxes({a}, {b})", [x])
        if op in ("moveaxis", "moveaxis_many"):
            if not nd and not self.wild:
                return None
            k = 1 if op == "moveaxis" else r.randint(1, max(nd, 1))
            src = r.sample(range(-nd, nd), min(k, 2 * nd)) if nd else [0]
            dst = r.sample(range(-nd, nd), len(src)) if nd else [0]
            if op == "moveaxis":
                return _Cand("moveaxis", f"{{xp}}.moveaxis({{0}}, {src[0]}, {dst[0]})", [x])
            return _Cand("moveaxis", f"{{xp}}.moveaxis({{0}}, {src!r}, {dst!r})", [x])
        if op == "expand_dims":
            k = r.choice([1, 1, 2])
            axes = [r.randrange(-(nd + k), nd + k) for _ in range(k)]
            arg = axes[0] if k == 1 and r.random() < 0.6 else tuple(axes)
            return _Cand("expand_dims", f"{{xp}}.expand_dims({{0}}, {arg!r})", [x])
        if op == "squeeze":
            ones = [i for i, d in enumerate(s) if d == 1]
            if self.wild:
                arg = r.randint(-nd - 1, nd) if nd else 0
            elif not ones or r.random() < 0.3:
                return _Cand("squeeze", r.choice(["{xp}.squeeze({0})", "{0}.squeeze()"]), [x])
            else:
                arg = tuple(a - nd if r.random() < 0.3 else a for a in r.sample(ones, r.randint(1, len(ones))))
                arg = arg[0] if len(arg) == 1 and r.random() < 0.5 else arg
            return _Cand("squeeze", f"{{xp}}.squeeze({{0}}, {arg!r})", [x])
        if op == "broadcast_to":
            if self.wild:
                shape = self.rand_shape()
            else:
                shape = tuple(r.choice([d, 2, 3]) if d == 1 else d for d in s)
                shape = tuple(r.choice([1, 2, 3, 0]) for _ in range(r.randint(0, 2))) + shape
            return _Cand("broadcast_to", f"{{xp}}.broadcast_to({{0}}, {shape!r})", [x])
        if op == "slice":
            if not nd:
                return None
            return _Cand("slice", f"{{0}}[{self._slice_key(s)}]", [x])
        if op == "index":
            if not nd:
                return None
            key = []
            for d in s[:r.randint(1, nd)]:
                key.append(str(r.randrange(-d, d)) if d and r.random() < 0.6 else ":")
            if self.wild:
                key[0] = str(s[0] + r.randint(0, 2))
            if r.random() < 0.3:
                key.insert(r.randint(0, len(key)), r.choice(["None", "..."]))
            return _Cand("index", f"{{0}}[{', '.join(key)}]", [x])
        dtype = self.rand_dtype()
        if x.dtype in FLOATS and dtype not in FLOATS:
            if not x.exact:
                return None
            if dtype != "bool":  # float -> int: only values that fit (C and NumPy differ beyond)
                info = np.iinfo(dtype)
                v = x.value.astype(np.float64)
                if not (np.all(np.isfinite(v)) and np.all((v > info.min) & (v < info.max))):
                    return None
        if op == "astype":
            return _Cand("astype", f"{{xp}}.astype({{0}}, {dtype!r})", [x], needs_exact=dtype not in FLOATS)
        return _Cand("astype", f"{{0}}.astype({dtype!r})", [x], needs_exact=dtype not in FLOATS)

    def _reshape_target(self, s: Shape) -> Shape:
        r = self.rng
        if self.wild:
            return self.rand_shape()
        size = math.prod(s)
        if size == 0:
            dims = [0] + [r.choice([1, 2, 3]) for _ in range(r.randint(0, 2))]
        else:
            dims, rest = [], size
            for f in (2, 3, 2, 5):
                if rest % f == 0 and r.random() < 0.5:
                    dims.append(f)
                    rest //= f
            dims.append(rest)
            if r.random() < 0.2:
                dims.append(1)
        r.shuffle(dims)
        if size and r.random() < 0.3:
            dims[r.randrange(len(dims))] = -1
        return tuple(dims)

    def _slice_key(self, s: Shape) -> str:
        r = self.rng
        parts = []
        for d in s[:r.randint(1, len(s))]:
            start = r.choice([None, 0, 1, -1, -2, d, d + 2])
            stop = r.choice([None, 0, 2, -1, d, d + 3, -d - 1])
            step = r.choice([None, None, 1, 2, -1, -2, 3])
            parts.append(":".join("" if v is None else str(v) for v in (start, stop)) +
                         ("" if step is None else f":{step}"))
        if r.random() < 0.3:
            parts.insert(r.randint(0, len(parts)), r.choice(["None", "..."]))
        return ", ".join(parts)

    def gather(self) -> _Cand | None:
        r = self.rng
        x = self.pick(lambda v: v.ndim >= 1)
        if x is None:
            return None
        axis = r.randrange(x.ndim)
        d = x.shape[axis]
        shape = r.choice([(r.choice([0, 1, 2, 3, 5]),), (), (2, r.choice([0, 2])), (1,)])
        n = math.prod(shape)
        g = np.random.default_rng(r.getrandbits(32))
        hi = d + (r.randint(1, 3) if self.wild else 0)
        if d == 0 and not self.wild:
            n, shape = 0, (0,) if shape == () else (shape[0], 0) if len(shape) == 2 else (0,)
        values = g.integers(-hi, hi, n) if hi else np.zeros(n, np.int64)
        dtype = r.choice(["int64", "int32"])
        if r.random() < 0.2 and n:  # a constant index list in the program text
            tmpl = (f"{{0}}[{values.tolist()!r}]" if axis == 0 else
                    f"{{xp}}.take({{0}}, {values.tolist()!r}, axis={axis})")
            return _Cand("take", tmpl, [x])
        idx = self.input_with(dtype, shape, values)
        if axis == 0 and r.random() < 0.4:
            return _Cand("take", "{0}[{1}]", [x, idx])
        if axis == 1 and r.random() < 0.4:
            return _Cand("take", "{0}[:, {1}]", [x, idx])
        return _Cand("take", f"{{xp}}.take({{0}}, {{1}}, axis={axis - x.ndim if r.random() < 0.3 else axis})",
                     [x, idx])

    def input_with(self, dtype: str, shape: Shape, values: np.ndarray) -> _Val:
        name = self.name("i")
        arr = np.asarray(values, dtype).reshape(shape)
        self.inputs.append({"name": name, "dtype": dtype, "shape": list(shape), "layout": "C",
                            "values": arr.ravel().tolist()})
        self.env[name] = make_input(self.inputs[-1])
        v = _Val(name, arr, True, False, 0.0, 1.0)
        self.vals.append(v)
        return v

    def join(self) -> _Cand | None:
        r = self.rng
        x = self.pick(lambda v: v.ndim >= 1 or self.wild)
        if x is None:
            return None
        op = r.choice(["concatenate", "stack", "concatenate_flat"])
        parts = [x]
        along = r.randrange(x.ndim) if x.ndim else 0
        for _ in range(r.randint(1, 2)):
            shape = list(x.shape)
            if op == "concatenate" and shape:
                shape[along] = r.choice([0, 1, 2])
            if op == "concatenate_flat" or self.wild and r.random() < 0.5:
                shape = list(self.rand_shape())
            parts.append(self.partner_of_shape(tuple(shape), x.dtype if r.random() < 0.7 else None))
        r.shuffle(parts)
        refs = ", ".join(f"{{{k}}}" for k in range(len(parts)))
        if op == "concatenate_flat":
            return _Cand("concatenate", f"{{xp}}.concatenate([{refs}], axis=None)", parts)
        # the axis where the shapes differ, when they do (else any)
        diff = [a for a in range(x.ndim) if len({p.shape[a] for p in parts if p.ndim == x.ndim}) > 1]
        nd = x.ndim + (op == "stack")
        axis = diff[0] if diff and not self.wild else (r.randrange(nd) if nd else 0)
        if self.wild:
            axis = r.randint(-nd - 1, nd)
        axis = axis - nd if r.random() < 0.3 else axis
        return _Cand(op, f"{{xp}}.{op}([{refs}], axis={axis})", parts)

    def create(self) -> _Cand | None:
        r = self.rng
        shape = self.rand_shape(r.randint(0, 3))
        dtype = self.rand_dtype()
        op = r.choice(["zeros", "ones", "full", "arange", "arange_float", "zeros_like", "full_like"])
        if op in ("zeros_like", "full_like"):
            x = self.pick()
            if x is None:
                return None
            value = r.choice([0, 1, -2, 2.5, True]) if op == "full_like" else None
            text = f"{{xp}}.zeros_like({{0}}, dtype={dtype!r})" if op == "zeros_like" else \
                f"{{xp}}.full_like({{0}}, {value!r}, dtype={dtype!r})"
            return _Cand(op, text, [x])
        if op == "full":
            value = r.choice([0, 1, -2, 2.5, True, -0.0])
            if dtype not in FLOATS and isinstance(value, float):
                value = 3
            return _Cand("full", f"{{xp}}.full({shape!r}, {value!r}, dtype={dtype!r})", [])
        if op == "arange":
            start, stop, step = r.choice([(0, 5, 1), (2, 9, 3), (5, 0, -1), (0, 0, 1), (-3, 4, 2)])
            dt = "" if r.random() < 0.5 else f", dtype={r.choice(['int32', 'int64', 'float64', 'float32'])!r}"
            return _Cand("arange", f"{{xp}}.arange({start}, {stop}, {step}{dt})", [])
        if op == "arange_float":
            start, stop, step = r.choice([(0.0, 1.0, 0.25), (-1.5, 1.5, 0.5), (0.5, 3.0, 0.75)])
            return _Cand("arange", f"{{xp}}.arange({start}, {stop}, {step}, dtype={r.choice(FLOATS)!r})", [])
        return _Cand(op, f"{{xp}}.{op}({shape!r}, dtype={dtype!r})", [])

    def one_hot(self) -> _Cand | None:
        r = self.rng
        x = self.pick(lambda v: v.dtype in ("int32", "int64"))
        if x is None:
            return None
        n = r.choice([1, 3, 5])  # (an index out of range is an error, as in PyTorch: not generated here)
        return _Cand("one_hot", f"{{ext}}.one_hot({{0}} % {n}, {n}, dtype={r.choice(DTYPES)!r})", [x], ext=True,
                     needs_exact=True)

    _MORE_MATH = ("tan", "arcsin", "arccos", "arctan", "sinh", "cosh")

    def more(self) -> _Cand | None:
        """The functions of issue 13 point 12: more math, reductions and scans, sorting, rearrangement."""
        r = self.rng
        x = self.pick()
        if x is None:
            return None
        nd = x.ndim
        axis = r.randrange(-nd, nd) if nd else None
        op = r.choice(self._MORE_MATH + ("erf", "round", "round_decimals", "isnan", "isinf", "isfinite", "prod",
                                         "any", "all", "var", "std", "cumsum", "cumprod", "sort", "argsort", "flip",
                                         "roll", "tile", "repeat", "tril", "triu", "pad"))
        if op in self._MORE_MATH or op == "erf":
            fn = "{ext}.erf" if op == "erf" else f"{{xp}}.{op}"
            src = "{0}" if x.exact and x.scale <= MAX_MATH_ARG else "{xp}.tanh({0} * 0.01)"
            return _Cand(op, f"{fn}({src})", [x], exact=False, ext=op == "erf")
        if op in ("round", "isnan", "isinf", "isfinite"):
            return _Cand(op, f"{{xp}}.{op}({{0}})", [x], needs_exact=True)
        if op == "round_decimals":  # rint(x * 10) / 10 in both
            return _Cand(op, "{xp}.round({0}, 1)", [x], needs_exact=True)
        if op in ("any", "all"):
            return _Cand(op, f"{{xp}}.{op}({{0}}, axis={axis!r})", [x], needs_exact=True)
        n = x.shape[axis] if nd else 1
        floaty = x.dtype in FLOATS
        if op in ("prod", "var", "std"):
            extra = f", ddof={r.choice([0, 1])}" if op != "prod" else ""
            return _Cand(op, f"{{xp}}.{op}({{0}}, axis={axis!r}{extra})", [x], exact=op == "prod" and not floaty,
                         reassoc=True, grow=max(n, 1) ** (2 if op != "prod" else 1))
        if op in ("cumsum", "cumprod"):  # sequential in both: exactly NumPy's order of operations
            return _Cand(op, f"{{xp}}.{op}({{0}}, axis={axis!r})", [x])
        if op in ("sort", "argsort"):
            return _Cand(op, f"{{ext}}.{op}({{0}}, axis={axis if nd else -1!r})", [x], needs_exact=op == "argsort",
                         ext=True)
        if op == "flip":
            return _Cand(op, f"{{xp}}.flip({{0}}, axis={axis!r})", [x])
        if op == "roll":
            return _Cand(op, f"{{xp}}.roll({{0}}, {r.randint(-5, 5)}, axis={axis!r})", [x])
        if op == "tile":
            reps = tuple(r.choice([1, 2, 3]) for _ in range(r.randint(1, 3)))
            return _Cand(op, f"{{xp}}.tile({{0}}, {reps!r})", [x])
        if op == "repeat":
            return _Cand(op, f"{{xp}}.repeat({{0}}, {r.choice([0, 1, 2, 3])}, axis={axis!r})", [x])
        if op in ("tril", "triu"):
            return _Cand(op, f"{{xp}}.{op}({{0}}, {r.randint(-2, 2)})", [x])
        widths = r.choice([1, (0, 2), ((1, 0),) * max(nd, 1)])
        mode = r.choice(["constant", "edge", "reflect", "symmetric", "wrap"])
        return _Cand(op, f"{{xp}}.pad({{0}}, {widths!r}, mode={mode!r})", [x])

    # -- the loop
    _KINDS = [("unary", 6), ("binary", 9), ("select", 2), ("clip", 1), ("logical_not", 1), ("reduce", 5),
              ("matmul", 3), ("shape_op", 7), ("gather", 3), ("join", 2), ("create", 1), ("one_hot", 1),
              ("more", 6)]

    def statement(self) -> bool:
        """Try one random statement; True if it was added (False: NumPy or the filters said no)."""
        kinds = [k for k, _ in self._KINDS]
        kind = self.rng.choices(kinds, [w for _, w in self._KINDS])[0]
        cand = getattr(self, kind)()
        if cand is None or (self.wild and cand.ext):
            return False
        if cand.needs_exact and not all(a.exact for a in cand.args if a.dtype in FLOATS):
            return False
        names = [a.name for a in cand.args]
        try:
            value = _evaluate(cand.tmpl, names, self.env)
        except Exception as exc:  # noqa: BLE001 (NumPy rejected it)
            if not self.wild:
                return False
            self.body.append({"k": "error", "op": cand.op, "tmpl": cand.tmpl, "args": names,
                              "numpy_error": f"{type(exc).__name__}: {exc}"[:200]})
            return True
        if self.wild:
            return False  # accepted: not what an error program needs
        value = np.asarray(value)
        if value.dtype.name not in DTYPES or value.size > MAX_SIZE:
            return False  # float16/int8 results (lantern has neither) or too big
        exact = cand.exact and all(a.exact for a in cand.args)
        hot = cand.op == "one_hot" or (cand.op not in ("matmul", "sum", "mean", "max", "min") and
                                       any(a.hot for a in cand.args))
        if cand.op == "matmul" and any(a.hot for a in cand.args) and not all(
                np.all(np.isfinite(a.value)) for a in cand.args if a.dtype in FLOATS):
            return False  # documented: one_hot(i) @ W reads row i only, so inf elsewhere in W gives no NaN
        if not exact and value.dtype.kind == "f":
            finite_in = all(np.all(np.isfinite(a.value)) for a in cand.args if a.value.dtype.kind == "f")
            if (finite_in and not np.all(np.isfinite(value))) or _maxabs(value) > 1e15:
                return False  # overflow near a threshold: the libraries may round to either side
        rtol = max([RTOL.get(value.dtype.name, 0.0)] + [a.rtol for a in cand.args] +
                   [RTOL[a.dtype] for a in cand.args if a.dtype in FLOATS and not exact])
        prod_scale = math.prod(a.scale for a in cand.args) if cand.op in ("multiply", "matmul") else 0.0
        scale = max([_maxabs(value), prod_scale] + [a.scale for a in cand.args]) * cand.grow
        name = self.name("v")
        self.env[name] = value
        self.vals.append(_Val(name, value, exact, cand.reassoc or any(a.reassoc for a in cand.args),
                              0.0 if exact else rtol, scale, hot))
        self.body.append({"k": "let", "op": cand.op, "out": name, "tmpl": cand.tmpl, "args": names,
                          "dtype": value.dtype.name, "shape": list(value.shape), "exact": exact,
                          "reassoc": self.vals[-1].reassoc, "rtol": self.vals[-1].rtol, "scale": scale})
        return True


def generate(seed: int, index: int, size: int | None = None, error_share: float = 0.1) -> Program:
    """Program ``index`` of campaign ``seed`` (deterministic). About ``error_share`` of them end in a
    statement NumPy rejects."""
    rng = random.Random(f"lantern-numpy-fuzz:{seed}:{index}")
    g = _Gen(rng)
    for _ in range(rng.randint(1, 3)):
        g.input(g.rand_dtype(), g.rand_shape())
    want = size or rng.randint(2, 8)
    added = tries = 0
    while added < want and tries < 20 * want:
        tries += 1
        added += g.statement()
    if rng.random() < error_share:
        g.wild = True
        for _ in range(60):
            if g.statement():
                break
        g.wild = False
    lets = [s["out"] for s in g.body if s["k"] == "let"]
    if g.body and g.body[-1]["k"] == "error":
        res: list[str] = []
    elif lets:
        res = [lets[-1]] + rng.sample(lets[:-1], min(len(lets) - 1, rng.randint(0, 2)))
    else:
        res = [g.inputs[0]["name"]]
    return {"kind": "numpy", "seed": seed, "index": index, "inputs": g.inputs, "body": g.body, "res": res}


def make_input(spec: dict) -> Any:
    """An input array from its spec, in its memory layout (a view where the layout asks for one)."""
    arr = np.asarray(spec["values"], dtype=np.float64 if spec["dtype"] in FLOATS else None)
    arr = arr.astype(spec["dtype"]).reshape(spec["shape"])
    layout = spec["layout"]
    if layout == "F":
        return np.asfortranarray(arr)
    if layout == "strided":  # every other element of a buffer twice as long in the last axis
        wide = np.zeros(arr.shape[:-1] + (2 * arr.shape[-1],), arr.dtype)
        wide[..., ::2] = arr
        return wide[..., ::2]
    if layout == "reversed":  # negative strides on every axis
        return np.ascontiguousarray(arr[(slice(None, None, -1),) * arr.ndim])[(slice(None, None, -1),) * arr.ndim]
    if layout == "scalar":
        return arr[()]  # a NumPy scalar (np.float32(...)), not an array
    return arr


# ------------------------------------------------------------------ rendering

def _is_error(p: Program) -> bool:
    return bool(p["body"]) and p["body"][-1]["k"] == "error"


def _render_fn(p: Program, lib: str) -> list[str]:
    xp, ext = ("lantern", "lantern") if lib == "lantern" else ("np", "npx")
    name = f"{lib}_{p['seed']}_{p['index']}"
    out = [f"def {name}({', '.join(i['name'] for i in p['inputs'])}):"]
    res = list(p["res"])
    for s in p["body"]:
        lhs = s["out"] if s["k"] == "let" else "rejected"
        out.append(f"    {lhs} = {s['tmpl'].format(*s['args'], xp=xp, ext=ext)}")
    if _is_error(p):
        res.append("rejected")  # returned, so that it is computed (NumPy computes every statement)
    out.append(f"    return ({''.join(r + ', ' for r in res)})")
    return out


def render(programs: list[Program]) -> str:
    """Python source: per program a lantern and a NumPy function of its inputs, and ``batch(*inputs)`` (staged)
    and ``numpy_batch(*inputs)`` returning every program's results."""
    lines = ["import numpy as np", "import lantern", "from lantern.fuzz.numpy_programs import npx", ""]
    for p in programs:
        lines += _render_fn(p, "lantern") + [""] + _render_fn(p, "numpy") + [""]
    params = [f"p{j}" for j in range(len(programs))]
    for lib, deco in (("lantern", "@lantern.stage\n"), ("numpy", "")):
        calls = ", ".join(f"{lib}_{p['seed']}_{p['index']}(*p{j})" for j, p in enumerate(programs))
        lines.append(f"{deco}def {'batch' if lib == 'lantern' else 'numpy_batch'}({', '.join(params)}):")
        lines.append(f"    return ({calls},)")
        lines.append("")
    return "\n".join(lines)


def load_batch(programs: list[Program]) -> dict[str, Any]:
    """Render and run (as Python) the source of ``programs``; its namespace."""
    src = render(programs)
    fname = f"<lantern-numpy-fuzz {programs[0]['seed']}:{programs[0]['index']}+{len(programs)}>"
    linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)  # source lines in error messages
    ns: dict[str, Any] = {"__name__": "lantern_numpy_fuzz_batch"}
    exec(compile(src, fname, "exec"), ns)  # noqa: S102 (the source is generated here)
    return ns


def arguments(programs: list[Program]) -> tuple:
    """Per program, the tuple of its inputs (fresh arrays, in their layouts)."""
    return tuple(tuple(make_input(i) for i in p["inputs"]) for p in programs)


# ------------------------------------------------------------------ checking

def _result_flags(p: Program) -> list[dict]:
    """Per result: exact, reassoc, rtol, scale (inputs are exact)."""
    info = {i["name"]: {"exact": True, "reassoc": False, "rtol": 0.0, "scale": 1.0} for i in p["inputs"]}
    info.update({s["out"]: s for s in p["body"] if s["k"] == "let"})
    return [info[r] for r in p["res"]]


def _mismatch(actual: Any, expected: Any, flag: dict, bitwise: bool = False) -> str | None:
    """Why ``actual`` is not ``expected`` (None if it is): dtype, shape, then values (exactly, bit for bit,
    or within the value's tolerance)."""
    a, e = np.asarray(actual), np.asarray(expected)
    if a.dtype != e.dtype or a.shape != e.shape:
        return f"got {a.dtype}{list(a.shape)}, expected {e.dtype}{list(e.shape)}"
    if bitwise:
        ok = flags.same_bits(a, e)
    elif e.dtype.kind != "f":
        ok = bool(np.array_equal(a, e))
    elif flag["exact"]:
        ok = bool(np.array_equal(a, e, equal_nan=True))
    else:
        with np.errstate(all="ignore"):
            close = np.abs(a.astype(np.float64) - e) <= flag["rtol"] * (flag["scale"] + np.abs(e))
        same = (a == e) | (np.isnan(a) & np.isnan(e))
        ok = bool(np.all(close | same))
    if ok:
        return None
    with np.printoptions(threshold=40, precision=17):
        if a.dtype.kind != "f":
            same = a == e
        elif bitwise:
            same = (a.view(f"u{a.itemsize}") == e.view(f"u{e.itemsize}")) | (np.isnan(a) & np.isnan(e))
        else:
            same = (a == e) | (np.isnan(a) & np.isnan(e))
        diff = np.argwhere(~same)
        return (f"{'bits' if bitwise else 'values'} differ at {len(diff)} of {a.size} elements, first at "
                f"{tuple(diff[0]) if len(diff) else ()}:\n got {a!r}\n expected {e!r}")


def check_programs(programs: list[Program], dynamic: bool = False) -> Report:
    """Check ``programs`` (see the module docstring): the ones NumPy runs as one staged function, the ones
    NumPy rejects one at a time. A batch that fails as a whole is checked one program at a time.

    ``dynamic``: the batch is staged with ``dynamic=True`` (every dimension of size 2 or more a run-time
    size; a batch whose code needs a size as a number is compiled per shape, as users' code would be)."""
    report = Report(programs=len(programs))
    good = [p for p in programs if not _is_error(p)]
    for p in programs:
        if _is_error(p) and not dynamic:
            report.failures += _check_rejected(p)
    if good:
        failures, report.with_sizes = _check_batch(good, dynamic)
        report.failures += failures
    return report


def _check_rejected(p: Program) -> list[Failure]:
    """NumPy rejects the last statement: lantern must raise a lantern error naming the program's line."""
    ns = load_batch([p])
    fn = ns[f"lantern_{p['seed']}_{p['index']}"]
    try:
        stage(fn)(*arguments([p])[0])
    except LanternError as exc:
        if "lantern-numpy-fuzz" not in str(exc):
            return [Failure(p["seed"], p["index"], "error-location", f"{describe(exc)} does not name the line")]
        return []
    except Exception as exc:  # noqa: BLE001
        return [Failure(p["seed"], p["index"], "error-kind", f"NumPy: {p['body'][-1]['numpy_error']}; lantern: "
                        f"{describe(exc)} (not a lantern error)")]
    return [Failure(p["seed"], p["index"], "no-error", f"NumPy raised {p['body'][-1]['numpy_error']}; "
                    "lantern returned a result")]


def _check_batch(programs: list[Program], dynamic: bool = False) -> tuple[list[Failure], int]:
    """The failures of ``programs`` run as one staged function, and whether it had run-time sizes."""
    args = arguments(programs)
    try:
        ns = load_batch(programs)
        exe = (stage(ns["batch"], dynamic=True) if dynamic else ns["batch"]).lower(*args)
    except Exception as exc:  # noqa: BLE001
        return _one_by_one(programs, type(exc).__name__, describe(exc), dynamic), 0
    return _check_executable(programs, ns, exe, args, dynamic), int(exe.pattern is not None)


def _check_executable(programs: list[Program], ns: dict[str, Any], exe: Any, args: tuple,
                      dynamic: bool) -> list[Failure]:
    pristine = copy.deepcopy(args)
    try:
        native = exe(*args)
    except Exception as exc:  # noqa: BLE001
        return _one_by_one(programs, type(exc).__name__, describe(exc), dynamic)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ns["numpy_batch"](*args)
    checks: list[tuple[str, Any, bool]] = [("NumPy", expected, False)]
    try:
        checks.append(("the reference interpreter", exe.interpret(*args), False))
    except Exception as exc:  # noqa: BLE001
        return _one_by_one(programs, "interpret", describe(exc), dynamic)
    try:
        twin = flags.unoptimized(exe)
        if twin is not None:
            checks.append(("the same C compiled at -O0", twin(*args), True))
    except Exception as exc:  # noqa: BLE001
        return _one_by_one(programs, "-O0", describe(exc), dynamic)
    again = exe(*args)
    checks.append(("a second call", again, True))
    if exe.native.arena_in_use() != 0:
        return _one_by_one(programs, "arena", f"{exe.native.arena_in_use()} arena bytes held after the call", dynamic)
    failures = []
    for j, p in enumerate(programs):
        if not all(flags.same_bits(a, b) for a, b in zip(args[j], pristine[j])):
            failures.append(Failure(p["seed"], p["index"], "inputs", "an input was modified by the call"))
            continue
        for what, ref, bits in checks:
            found = None
            for k, flag in enumerate(_result_flags(p)):
                # floats: bit for bit where exactly defined (libm calls may be constant-folded at -O3)
                floaty = np.asarray(native[j][k]).dtype.kind == "f"
                bitwise = bits and (not floaty or (flag["exact"] and not flag["reassoc"]) or what == "a second call")
                problem = _mismatch(native[j][k], ref[j][k], flag, bitwise)
                if problem:
                    found = Failure(p["seed"], p["index"], "numpy" if what == "NumPy" else what.split()[-1],
                                    f"result {k} ({p['res'][k]}): native vs {what}: {problem}")
                    break
            if found:
                failures.append(found)
                break
    return failures


def _one_by_one(programs: list[Program], stage: str, message: str, dynamic: bool) -> list[Failure]:
    if len(programs) == 1:
        p = programs[0]
        return [Failure(p["seed"], p["index"], stage, message)]
    return [f for p in programs for f in _check_batch([p], dynamic)[0]]


def coverage(programs: list[Program]) -> Counter:
    """How often each op, input dtype and layout, zero-size value and rejected program occurs."""
    c: Counter = Counter()
    for p in programs:
        for i in p["inputs"]:
            c[f"input {i['dtype']}"] += 1
            c[f"layout {i['layout']}"] += 1
            c["zero-size input"] += 0 in i["shape"]
            c["0-d input"] += not i["shape"]
        for s in p["body"]:
            c[s["op"]] += 1
            if s["k"] == "error":
                c["rejected by NumPy"] += 1
            else:
                c[f"result {s['dtype']}"] += 1
                c["zero-size result"] += 0 in s["shape"]
    return c


# ------------------------------------------------------------------ shrinking and saving

def _values(p: Program) -> dict[str, Any]:
    """Every value of ``p`` as NumPy computes it."""
    env = {i["name"]: make_input(i) for i in p["inputs"]}
    for s in p["body"]:
        if s["k"] == "let":
            env[s["out"]] = np.asarray(_evaluate(s["tmpl"], s["args"], env))
    return env


def _prune(p: Program) -> Program:
    """Drop statements nobody reads (the rejected one stays) and inputs nothing reads."""
    used = set(p["res"])
    kept = []
    for s in reversed(p["body"]):
        if s["k"] == "error" or s["out"] in used:
            used.update(s["args"])
            kept.append(s)
    p["body"] = kept[::-1]
    p["inputs"] = [i for i in p["inputs"] if i["name"] in used]
    return p


def _candidates(p: Program):
    """Smaller variants: one result fewer; one statement's value made an input instead (cutting what fed it)."""
    for k in range(len(p["res"])):
        if len(p["res"]) > 1:
            q = copy.deepcopy(p)
            del q["res"][k]
            yield q
    try:
        env = _values(p)
    except Exception:  # noqa: BLE001
        return
    for k in range(len(p["body"]) - 1, -1, -1):
        s = p["body"][k]
        if s["k"] != "let" or not s["args"]:
            continue
        v = np.asarray(env[s["out"]])
        q = copy.deepcopy(p)
        q["inputs"].append({"name": s["out"], "dtype": v.dtype.name, "shape": list(v.shape), "layout": "C",
                            "values": v.ravel().tolist()})
        del q["body"][k]
        yield q


def _size(p: Program) -> int:
    return 2 * len(p["body"]) + len(p["res"]) + len(p["inputs"])


def shrink(p: Program, still_fails: Callable[[Program], bool], budget_s: float = 120.0) -> Program:
    return regressions.shrink(p, still_fails, _candidates, _prune, _size, budget_s)


def same_failure(failure: Failure) -> Callable[[Program], bool]:
    return regressions.same_failure(failure, check_programs)


def save_regression(p: Program, failure: Failure, directory: Path) -> Path:
    return regressions.save_regression(p, failure, directory, render([p]))
