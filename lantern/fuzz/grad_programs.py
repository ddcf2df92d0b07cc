"""Random well-typed staged programs with control flow and gradients, checked native vs interpreter vs finite
differences.

A program is data (a JSON-able dict): float and integer inputs with their values, a list
of helper functions (staged; some recursive) and a main function, each a list of
statements. A statement is either ``let`` (one Python expression template over earlier
variables: one op of the API, with the safe input ranges built in, e.g. ``log(x*x+1)``)
or a control-flow form (``cond``, ``fori``, ``while``, ``call``) holding nested statement
lists. :func:`render` turns a batch of programs into Python source with one staged
function; one compile checks them all:

* native outputs, per-program losses and gradients equal the reference interpreter's on
  the traced and on the optimized IR (float64: rtol 1e-9; float32: rtol 1e-4);
* for float64 programs the gradient of each program's loss, along a random direction,
  equals a central finite difference (skipped where the difference quotient itself is not
  stable, i.e. the direction crosses a kink or a branch); ``order=2`` programs (straight
  line) also compare the Hessian-vector product with differences of the gradient;
* the same C compiled at ``-O0`` gives the same results (within the tolerances above: float sums
  are vectorized, so reassociated, only in the optimized build);
* a second call gives the same bits, the arena is empty after a call, the C compiles
  (warning-free where ``LANTERN_WERROR=1``) and nothing raises.

A failing program is found by checking the batch's programs one at a time, shrunk by
replacing statements with zeros of their type while the same check still fails, and saved
as JSON under ``tests/fuzz_regressions/`` (``tests/test_fuzz.py`` replays those files).

    python -m lantern.fuzz --oracle interpreter --count 2000 --seed 1 [--jobs 2] [--save-dir tests/fuzz_regressions]
"""
from __future__ import annotations

import copy
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import flags, regressions
from ..staging import stage
from .report import Failure, Report, describe

Program = dict[str, Any]
Shape = tuple[int, ...]

#: Bounds the generator keeps values under (a rough interval estimate per variable), so
#: nothing overflows and finite differences stay accurate.
_MAX_BOUND = 1e3


# ------------------------------------------------------------------ generation

@dataclass
class _Var:
    name: str
    shape: Shape
    dtype: str
    bound: float


@dataclass
class _Scope:
    """Variables visible at one point; ``main`` scopes may add program inputs."""

    vars: list[_Var]
    main: bool
    depth: int = 0

    def child(self) -> "_Scope":
        return _Scope(list(self.vars), self.main, self.depth + 1)


@dataclass
class _Gen:
    rng: random.Random
    fdt: str  # the program's float dtype
    inputs: list[dict] = field(default_factory=list)
    functions: list[dict] = field(default_factory=list)
    counter: int = 0
    prefix: str = "p"
    control: bool = True  # False: straight-line programs (for second-order checks)
    max_depth: int = 2    # control flow nests this deep at most

    # -- names and inputs
    def name(self, base: str = "v") -> str:
        self.counter += 1
        return f"{base}{self.counter}"

    def fresh_input(self, blk: list, scope: _Scope, shape: Shape) -> _Var:
        name = self.name("a")
        vals = np.random.default_rng(self.rng.getrandbits(32)).standard_normal(shape)
        # away from the kinks of abs/relu/sign at 0, by a shift that keeps the values distinct (equal ones tie
        # in max/min, where the gradient is split but a finite difference is one-sided)
        vals = np.where(np.abs(vals) < 0.05, vals + np.where(vals < 0, -0.3, 0.3), vals)
        self.inputs.append({"name": name, "kind": "float", "shape": list(shape), "value": np.round(vals, 6).tolist()})
        v = _Var(name, shape, "float64", 3.0)
        if self.fdt != "float64":
            v = self.let(blk, scope, "cast", f"lantern.astype({{0}}, '{self.fdt}')", [v], shape, self.fdt, 3.0)
        else:
            scope.vars.append(v)
        return v

    def int_input(self, value: Any, shape: Shape = ()) -> _Var:
        name = self.name("n")
        dtype = "int32" if not shape and self.rng.random() < 0.3 else "int64"  # a loop bound or depth
        self.inputs.append({"name": name, "kind": "int", "shape": list(shape), "value": value, "dtype": dtype})
        return _Var(name, shape, dtype, 0.0)

    def let(self, blk: list, scope: _Scope | None, op: str, expr: str, args: list[_Var], shape: Shape,
            dtype: str, bound: float, pin: bool = False) -> _Var:
        v = _Var(self.name(), tuple(shape), dtype, min(bound, _MAX_BOUND))
        blk.append({"k": "let", "op": op, "out": v.name, "shape": list(shape), "dtype": dtype,
                    "expr": expr, "args": [a.name for a in args], **({"pin": True} if pin else {})})
        if scope is not None:
            scope.vars.append(v)
        return v

    # -- picking operands
    def floats(self, scope: _Scope) -> list[_Var]:
        return [v for v in scope.vars if v.dtype == self.fdt]

    def pick(self, scope: _Scope) -> _Var:
        fs = self.floats(scope)
        # prefer recent values so programs form chains rather than many independent leaves
        return fs[-1 - min(int(self.rng.expovariate(0.6)), len(fs) - 1)]

    def of_shape(self, blk: list, scope: _Scope, shape: Shape) -> _Var:
        cands = [v for v in self.floats(scope) if v.shape == shape]
        if cands and self.rng.random() < 0.7:
            return self.rng.choice(cands)
        if scope.main and self.rng.random() < 0.7:
            return self.fresh_input(blk, scope, shape)
        src = self.pick(scope)
        if src.shape != shape and math.prod(src.shape) == math.prod(shape) and self.rng.random() < 0.6:
            return self.let(blk, scope, "reshape", f"lantern.reshape({{0}}, {tuple(shape)})", [src], shape,
                            self.fdt, src.bound)
        return self.let(blk, scope, "broadcast_to", f"lantern.broadcast_to(lantern.mean({{0}}), {tuple(shape)})",
                        [src], shape, self.fdt, src.bound)

    def bcast_partner(self, shape: Shape) -> Shape:
        r = self.rng.random()
        if r < 0.4 or not shape:
            return shape if self.rng.random() < 0.8 else ()
        if r < 0.6:
            return shape[self.rng.randint(1, len(shape)):]
        if r < 0.85:
            return tuple(1 if self.rng.random() < 0.5 else d for d in shape)
        return (2,) + shape if len(shape) < 3 else shape

    def rand_shape(self) -> Shape:
        nd = self.rng.choice([0, 1, 1, 2, 2, 2, 3])
        dims = [1, 2, 3, 4] if self.rng.random() < 0.85 else [5, 7, 9, 17]  # past vector widths sometimes
        return tuple(self.rng.choice(dims) for _ in range(nd))

    # -- statements
    def statement(self, blk: list, scope: _Scope) -> None:
        r = self.rng.random()
        control = self.control and scope.depth < self.max_depth and r < 0.22
        if control:
            self.rng.choice([self.cond, self.fori, self.fori, self.while_, self.call])(blk, scope)
            return
        kinds = [(self.unary, 5), (self.binary, 6), (self.reduce, 3), (self.matmul, 2), (self.shape_op, 4),
                 (self.gather, 2), (self.select, 2), (self.intcast, 1), (self.combine, 1)]
        fn = self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        fn(blk, scope)

    _UNARY = [  # (op, template, bound(b))
        ("exp", "lantern.exp(lantern.tanh({0}))", lambda b: 2.72),
        ("log", "lantern.log({0} * {0} + 1.0)", lambda b: math.log(b * b + 1) + 1e-3),
        ("log1p", "lantern.log1p({0} * {0})", lambda b: math.log1p(b * b) + 1e-3),
        ("expm1", "lantern.expm1(lantern.sin({0}))", lambda b: 1.72),
        ("sin", "lantern.sin({0})", lambda b: 1.0), ("cos", "lantern.cos({0})", lambda b: 1.0),
        ("tanh", "lantern.tanh({0})", lambda b: 1.0), ("sigmoid", "lantern.sigmoid({0})", lambda b: 1.0),
        ("silu", "lantern.silu({0})", lambda b: b), ("relu", "lantern.relu({0})", lambda b: b),
        ("sqrt", "lantern.sqrt({0} * {0} + 0.5)", lambda b: b + 1.0),
        ("rsqrt", "lantern.rsqrt({0} * {0} + 0.5)", lambda b: 1.5),
        ("abs", "lantern.abs({0})", lambda b: b), ("neg", "-{0}", lambda b: b),
        ("sign", "lantern.sign({0}) * {0}", lambda b: b), ("floor", "lantern.floor({0} * 2.0)", lambda b: 2 * b + 1),
        ("square", "lantern.square({0})", lambda b: b * b), ("pow", "{0} ** 3", lambda b: b ** 3),
        ("clip", "lantern.clip({0}, -0.8, 0.9)", lambda b: 0.9),
        ("mul_const", "{0} * 0.7 - 0.2", lambda b: 0.7 * b + 0.2),
        ("rdiv_const", "1.5 / ({0} * {0} + 1.0)", lambda b: 1.5),
        ("mod", "{0} % 1.5", lambda b: 1.5), ("floor_divide", "({0} // 0.7) * {0}", lambda b: b * (b / 0.7 + 1)),
        ("divide", "lantern.divide({0}, 1.0 + lantern.exp(-{0} * {0}))", lambda b: b),
        ("tan", "lantern.tan(lantern.tanh({0}))", lambda b: 1.56), ("arctan", "lantern.arctan({0})", lambda b: 1.58),
        ("arcsin", "lantern.arcsin(lantern.tanh({0}) * 0.9)", lambda b: 1.12),
        ("arccos", "lantern.arccos(lantern.tanh({0}) * 0.9)", lambda b: 2.7),
        ("sinh", "lantern.sinh(lantern.tanh({0}))", lambda b: 1.18),
        ("cosh", "lantern.cosh(lantern.tanh({0}))", lambda b: 1.55), ("erf", "lantern.erf({0})", lambda b: 1.0),
        ("gelu", "lantern.gelu({0})", lambda b: b), ("gelu_tanh", "lantern.gelu({0}, approximate='tanh')", lambda b: b),
        ("softplus", "lantern.softplus({0})", lambda b: b + 0.7), ("elu", "lantern.elu({0})", lambda b: b + 1),
        ("leaky_relu", "lantern.leaky_relu({0}, 0.1)", lambda b: b),
        ("log_sigmoid", "lantern.log_sigmoid({0})", lambda b: b + 0.7),
    ]

    def unary(self, blk: list, scope: _Scope) -> None:
        x = self.pick(scope)
        op, tmpl, bound = self.rng.choice(self._UNARY)
        if bound(x.bound) > _MAX_BOUND:
            op, tmpl, bound = self._UNARY[6]  # tanh
        self.let(blk, scope, op, tmpl, [x], x.shape, self.fdt, bound(x.bound))

    _BINARY = [
        ("add", "{0} + {1}", lambda a, b: a + b), ("sub", "{0} - {1}", lambda a, b: a + b),
        ("mul", "{0} * {1}", lambda a, b: a * b), ("div", "{0} / ({1} * {1} + 1.0)", lambda a, b: a),
        ("maximum", "lantern.maximum({0}, {1})", max), ("minimum", "lantern.minimum({0}, {1})", max),
        ("pow", "({0} * {0} + 1.0) ** lantern.tanh({1})", lambda a, b: a * a + 1),
        ("subtract", "lantern.subtract({0}, {1})", lambda a, b: a + b),
        ("multiply", "lantern.multiply({0}, {1})", lambda a, b: a * b),
        ("logaddexp", "lantern.logaddexp({0}, {1})", lambda a, b: max(a, b) + 0.7),
        ("arctan2", "lantern.arctan2({0}, {1} * {1} + 0.5)", lambda a, b: 1.58),
    ]

    def binary(self, blk: list, scope: _Scope) -> None:
        x = self.pick(scope)
        y = self.of_shape(blk, scope, self.bcast_partner(x.shape))
        if self.rng.random() < 0.3:
            x, y = y, x
        op, tmpl, bound = self.rng.choice(self._BINARY)
        if bound(x.bound, y.bound) > _MAX_BOUND:
            op, tmpl, bound = self._BINARY[0]
        out = np.broadcast_shapes(x.shape, y.shape)
        self.let(blk, scope, op, tmpl, [x, y], out, self.fdt, bound(x.bound, y.bound))

    def _axis(self, shape: Shape) -> tuple[Any, Shape, Shape]:
        """A random ``axis`` argument; the result shape without and with keepdims."""
        nd = len(shape)
        if nd == 0 or self.rng.random() < 0.25:
            return None, (), (1,) * nd
        if nd > 1 and self.rng.random() < 0.25:
            axes = tuple(sorted(self.rng.sample(range(nd), 2)))
            arg: Any = tuple(a - nd if self.rng.random() < 0.3 else a for a in axes)
        else:
            axes = (self.rng.randrange(nd),)
            arg = axes[0] - nd if self.rng.random() < 0.3 else axes[0]
        return (arg, tuple(d for i, d in enumerate(shape) if i not in axes),
                tuple(1 if i in axes else d for i, d in enumerate(shape)))

    def reduce(self, blk: list, scope: _Scope) -> None:
        x = self.pick(scope)
        op = self.rng.choice(["sum", "mean", "max", "min", "logsumexp", "softmax", "log_softmax", "sum_method",
                              "argmax", "prod", "var", "norm"])
        n = max(math.prod(x.shape), 1)
        if op == "prod" and n > 12:
            op = "var"  # (a product of many factors in (-0.5, 1.5) would underflow or grow past the bounds)
        if op in ("prod", "var", "norm"):
            axis, out, kept = self._axis(x.shape)
            kw = f", axis={axis!r}" if axis is not None else ""
            if op == "norm" and isinstance(axis, tuple):
                kw = ""
                out = ()
            tmpl = {"prod": f"lantern.prod(lantern.tanh({{0}}) + 0.5{kw})", "var": f"lantern.var({{0}}{kw})",
                    "norm": f"lantern.norm({{0}}{kw})"}[op]
            bound = 1.5 ** n if op == "prod" else x.bound * x.bound if op == "var" else n * x.bound
            if bound > _MAX_BOUND:
                return self.unary(blk, scope)
            self.let(blk, scope, op, tmpl, [x], out, self.fdt, bound)
            return
        if op in ("softmax", "log_softmax"):
            if not x.shape:
                return self.unary(blk, scope)
            ax = self.rng.randrange(-len(x.shape), len(x.shape))
            self.let(blk, scope, op, f"lantern.{op}({{0}}, axis={ax})", [x], x.shape, self.fdt,
                     1.0 if op == "softmax" else 2 * x.bound + math.log(n))
            return
        if op == "argmax":  # an int64 index from data, used for a gather whose gradient flows
            if not x.shape:
                return self.unary(blk, scope)
            a = self.rng.randrange(len(x.shape))
            which = self.rng.choice(["argmax", "argmin"])
            rest = x.shape[:a] + x.shape[a + 1:]
            self.let(blk, scope, which, f"lantern.take({{0}}, lantern.{which}({{0}}, axis={a}), axis={a})", [x],
                     x.shape[:a] + rest + x.shape[a + 1:], self.fdt, x.bound)
            return
        axis, out, kept = self._axis(x.shape)
        keep = self.rng.random() < 0.3
        kw = f", axis={axis!r}" if axis is not None else ""
        kw += ", keepdims=True" if keep else ""
        bound = {"sum": n * x.bound, "sum_method": n * x.bound, "logsumexp": x.bound + math.log(n)}.get(op, x.bound)
        tmpl = f"{{0}}.sum({kw[2:]})" if op == "sum_method" else f"lantern.{op}({{0}}{kw})"
        self.let(blk, scope, "sum" if op == "sum_method" else op, tmpl, [x], kept if keep else out, self.fdt, bound)

    def matmul(self, blk: list, scope: _Scope) -> None:
        cands = [v for v in self.floats(scope) if 1 <= len(v.shape) <= 3]
        if not cands:
            return self.unary(blk, scope)
        x = self.rng.choice(cands)
        k = x.shape[-1]
        n = self.rng.choice([1, 2, 3])
        yshape = self.rng.choice([(k,), (k, n)] + ([(x.shape[0], k, n)] if len(x.shape) == 3 else []))
        y = self.of_shape(blk, scope, yshape)
        out = np.matmul(np.zeros(x.shape), np.zeros(yshape)).shape
        tmpl = self.rng.choice(["{0} @ {1}", "lantern.matmul({0}, {1})"])
        if len(x.shape) <= 2 and len(yshape) <= 2 and self.rng.random() < 0.3:
            tmpl = "lantern.dot({0}, {1})"
        self.let(blk, scope, "matmul", tmpl, [x, y], out, self.fdt, k * x.bound * y.bound)

    def shape_op(self, blk: list, scope: _Scope) -> None:
        x = self.pick(scope)
        s, nd, rng = x.shape, len(x.shape), self.rng
        choice = rng.choice(["reshape", "transpose", "slice", "index", "concatenate", "stack", "expand_dims",
                             "squeeze", "broadcast_to", "swapaxes", "moveaxis", "arange", "one_hot", "rearrange",
                             "rearrange", "rearrange", "conv2d"])
        if choice == "rearrange" and nd >= 1:
            return self.rearrange(blk, scope, x)
        if choice == "reshape":
            size = math.prod(s)
            dims, rest = [], size
            for f in (2, 3, 2):
                if rest % f == 0 and rng.random() < 0.5:
                    dims.append(f)
                    rest //= f
            dims.append(rest)
            rng.shuffle(dims)
            shape = tuple(dims)
            arg = tuple(-1 if i == 0 and rng.random() < 0.3 else d for i, d in enumerate(shape))
            self.let(blk, scope, "reshape", f"{{0}}.reshape({arg})", [x], shape, self.fdt, x.bound)
        elif choice in ("transpose", "swapaxes") and nd >= 2:
            if choice == "swapaxes":
                a, b = rng.sample(range(nd), 2)
                perm = list(range(nd))
                perm[a], perm[b] = b, a
                tmpl = f"lantern.swapaxes({{0}}, {a}, {b})"
            else:
                perm = list(range(nd))
                rng.shuffle(perm)
                tmpl = "{0}.T" if nd == 2 and rng.random() < 0.5 else f"lantern.transpose({{0}}, {tuple(perm)})"
                perm = [1, 0] if tmpl == "{0}.T" else perm
            self.let(blk, scope, choice, tmpl, [x], tuple(s[p] for p in perm), self.fdt, x.bound)
        elif choice == "slice" and nd >= 1:
            key, out = [], []
            for d in s:
                start, stop = sorted(rng.sample(range(-d, d + 1), 2)) if d > 1 else (0, d)
                step = rng.choice([1, 1, 2, -1])
                sl = slice(start, stop, step) if step > 0 else slice(stop - 1 if stop > 0 else None, None, -1)
                n = len(range(d)[sl])
                if n == 0:
                    sl, n = slice(None), d
                key.append(sl)
                out.append(n)
            text = ", ".join(_slice_text(k) for k in key)
            self.let(blk, scope, "slice", f"{{0}}[{text}]", [x], tuple(out), self.fdt, x.bound)
        elif choice == "index" and nd >= 1:
            i = rng.randrange(-s[0], s[0])
            if nd >= 2 and rng.random() < 0.5:
                j = rng.randrange(s[1])
                self.let(blk, scope, "index", f"{{0}}[:, {j}]", [x], (s[0],) + s[2:], self.fdt, x.bound)
            else:
                self.let(blk, scope, "index", f"{{0}}[{i}]", [x], s[1:], self.fdt, x.bound)
        elif choice in ("concatenate", "stack") and nd >= 1:
            ax = rng.randrange(nd + (choice == "stack"))
            oshape = list(s)
            if choice == "concatenate":
                oshape[ax] = rng.choice([1, 2])
            y = self.of_shape(blk, scope, tuple(oshape))
            xs = [x, y] if rng.random() < 0.5 else [y, x, y]
            if choice == "concatenate":
                out = list(s)
                out[ax] = sum(v.shape[ax] for v in xs)
            else:
                out = list(s)
                out.insert(ax, len(xs))
            refs = ", ".join("{%d}" % i for i in range(len(xs)))
            self.let(blk, scope, choice, f"lantern.{choice}([{refs}], axis={ax})", xs, tuple(out), self.fdt,
                     max(x.bound, y.bound))
        elif choice == "expand_dims":
            ax = rng.randrange(nd + 1)
            out = s[:ax] + (1,) + s[ax:]
            tmpl = f"lantern.expand_dims({{0}}, {ax})" if rng.random() < 0.6 else \
                "{0}[" + ", ".join([":"] * ax + ["None"]) + "]"
            self.let(blk, scope, "expand_dims", tmpl, [x], out, self.fdt, x.bound)
        elif choice == "squeeze" and 1 in s:
            ax = s.index(1)
            self.let(blk, scope, "squeeze", f"lantern.squeeze({{0}}, {ax})", [x], s[:ax] + s[ax + 1:], self.fdt,
                     x.bound)
        elif choice == "moveaxis" and nd >= 2:
            a, b = rng.sample(range(nd), 2)
            perm = [d for d in range(nd) if d != a]
            perm.insert(b, a)
            self.let(blk, scope, "moveaxis", f"lantern.moveaxis({{0}}, {a}, {b})", [x], tuple(s[p] for p in perm),
                     self.fdt, x.bound)
        elif choice == "arange" and nd >= 1:
            self.let(blk, scope, "arange", f"{{0}} * lantern.arange({s[-1]}, dtype='{self.fdt}') * 0.5", [x], s,
                     self.fdt, x.bound * s[-1] / 2)
        elif choice == "one_hot" and nd >= 1:
            hot = f"lantern.one_hot(lantern.argmax({{0}}, axis=-1), {s[-1]}, dtype='{self.fdt}')"
            if rng.random() < 0.5:  # a product with a one-hot matrix (a gather after lantern/ir/passes/one_hot.py)
                n = rng.choice([1, 2, 3])
                linear = rng.random() < 0.5
                w = self.of_shape(blk, scope, (n, s[-1]) if linear else (s[-1], n))
                self.let(blk, scope, "one_hot_matmul", f"lantern.nn.linear({hot}, {{1}})" if linear
                         else f"{hot} @ {{1}}", [x, w], s[:-1] + (n,), self.fdt, w.bound)
            else:
                self.let(blk, scope, "one_hot", f"{hot} * {{0}}", [x], s, self.fdt, x.bound)
        elif choice == "conv2d" and nd >= 2 and math.prod(s[:-1]) >= 2 and s[-1] >= 2:
            # x seen as one image [1, 1, H, W]; weights [O, 1, k, k]; a stride and zero padding
            h, w, k, o = math.prod(s[:-1]), s[-1], rng.choice([1, 2]), rng.choice([1, 2, 3])
            stride, pad = rng.choice([1, 2]), rng.choice([0, 1])
            kernel = self.of_shape(blk, scope, (o, 1, k, k))
            out = (1, o, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
            self.let(blk, scope, "conv2d", f"lantern.nn.Conv2d(1, {o}, {k}, stride={stride}, padding={pad}, bias=False, "
                     f"dtype='{self.fdt}')({{{{'weight': {{1}}}}}}, lantern.reshape({{0}}, (1, 1, {h}, {w})))",
                     [x, kernel], out, self.fdt, k * k * x.bound * kernel.bound)
        elif choice == "broadcast_to" and nd < 3:
            out = (rng.choice([1, 2, 3]),) + tuple(rng.choice([2, 3]) if d == 1 else d for d in s)
            self.let(blk, scope, "broadcast_to", f"lantern.broadcast_to({{0}}, {out})", [x], out, self.fdt, x.bound)
        else:
            self.unary(blk, scope)

    def rearrange(self, blk: list, scope: _Scope, x: Any) -> None:
        """Issue 13's shape-keeping and shape-changing functions: scans, sorting, flips, padding, tiling."""
        s, nd, rng = x.shape, len(x.shape), self.rng
        ax = rng.randrange(nd)
        op = rng.choice(["cumsum", "cumprod", "sort", "topk", "flip", "roll", "tile", "repeat", "pad", "tril",
                         "einsum"])
        if op in ("cumsum", "cumprod", "sort", "flip", "roll"):
            tmpl = {"cumsum": f"lantern.cumsum({{0}}, axis={ax})",
                    "cumprod": f"lantern.cumprod(lantern.tanh({{0}}) + 0.5, axis={ax})",
                    "sort": f"lantern.sort({{0}}, axis={ax}, descending={rng.random() < 0.5})",
                    "flip": f"lantern.flip({{0}}, axis={ax})", "roll": f"lantern.roll({{0}}, {rng.randint(-3, 3)}, axis={ax})"}[op]
            bound = s[ax] * x.bound if op == "cumsum" else 1.5 ** min(s[ax], 64) if op == "cumprod" else x.bound
            if bound > _MAX_BOUND:
                return self.unary(blk, scope)
            self.let(blk, scope, op, tmpl, [x], s, self.fdt, bound)
        elif op == "topk":
            k = rng.randint(1, s[ax])
            self.let(blk, scope, op, f"lantern.topk({{0}}, {k}, axis={ax}, largest={rng.random() < 0.5})[0]", [x],
                     s[:ax] + (k,) + s[ax + 1:], self.fdt, x.bound)
        elif op == "tile":
            reps = tuple(rng.choice([1, 2]) for _ in range(rng.randint(1, 2)))
            nd2 = max(nd, len(reps))
            full_reps = (1,) * (nd2 - len(reps)) + reps
            shape = (1,) * (nd2 - nd) + s
            self.let(blk, scope, op, f"lantern.tile({{0}}, {reps!r})", [x], tuple(r * d for r, d in zip(full_reps, shape)),
                     self.fdt, x.bound)
        elif op == "repeat":
            r = rng.choice([1, 2])
            self.let(blk, scope, op, f"lantern.repeat({{0}}, {r}, axis={ax})", [x], s[:ax] + (s[ax] * r,) + s[ax + 1:],
                     self.fdt, x.bound)
        elif op == "pad":
            before, after = rng.randint(0, 2), rng.randint(0, 2)
            mode = rng.choice(["constant", "edge", "wrap", "reflect"]) if s[ax] > 2 else "constant"
            widths = tuple((before, after) if d == ax else (0, 0) for d in range(nd))
            self.let(blk, scope, op, f"lantern.pad({{0}}, {widths!r}, mode={mode!r})", [x],
                     s[:ax] + (s[ax] + before + after,) + s[ax + 1:], self.fdt, x.bound)
        elif op == "tril" and nd >= 2:
            self.let(blk, scope, op, f"lantern.{rng.choice(['tril', 'triu'])}({{0}}, {rng.randint(-1, 1)})", [x], s,
                     self.fdt, x.bound)
        elif op == "einsum" and nd >= 2:  # a contraction with a fresh operand over the last axis
            y = self.of_shape(blk, scope, (s[-1], 2))
            if s[-1] * x.bound * y.bound > _MAX_BOUND:
                return self.unary(blk, scope)
            letters = "abcd"[:nd]
            self.let(blk, scope, op, f"lantern.einsum('{letters},{letters[-1]}z->{letters[:-1]}z', {{0}}, {{1}})",
                     [x, y], s[:-1] + (2,), self.fdt, s[-1] * x.bound * y.bound)
        else:
            self.unary(blk, scope)

    def gather(self, blk: list, scope: _Scope) -> None:
        cands = [v for v in self.floats(scope) if v.shape]
        if not cands:
            return self.unary(blk, scope)
        x = self.rng.choice(cands)
        ax = self.rng.randrange(len(x.shape))
        d = x.shape[ax]
        idx = [self.rng.randrange(-d, d) for _ in range(self.rng.choice([1, 2, 3, 4]))]
        if ax == 0 and self.rng.random() < 0.3:
            tmpl = f"{{0}}[{idx}]"
        else:
            tmpl = f"lantern.take({{0}}, {idx}, axis={ax})"
        out = x.shape[:ax] + (len(idx),) + x.shape[ax + 1:]
        self.let(blk, scope, "take", tmpl, [x], out, self.fdt, x.bound)

    def select(self, blk: list, scope: _Scope) -> None:
        x = self.pick(scope)
        c = self.of_shape(blk, scope, self.bcast_partner(x.shape))
        y = self.of_shape(blk, scope, self.bcast_partner(x.shape))
        cmp = self.rng.choice([">", "<", ">=", "<="])
        if self.rng.random() < 0.5:
            tmpl = f"lantern.where({{1}} {cmp} 0.1, {{0}}, {{2}})"
        else:
            fn = self.rng.choice(["greater", "less", "greater_equal", "less_equal"])
            # Offset, so two values that are equal in exact arithmetic (a value and the mean of its
            # broadcast copies) never meet in the comparison, where a last-bit difference between
            # summation orders (-O0, -O3, NumPy) would pick the other branch.
            tmpl = f"lantern.where(lantern.{fn}({{1}}, {{0}} + 0.0137), {{0}}, {{2}} * 0.5)"
        out = np.broadcast_shapes(x.shape, c.shape, y.shape)
        self.let(blk, scope, "where", tmpl, [x, c, y], out, self.fdt, max(x.bound, y.bound))

    def intcast(self, blk: list, scope: _Scope) -> None:
        x = self.pick(scope)
        y = self.of_shape(blk, scope, self.bcast_partner(x.shape))
        out = np.broadcast_shapes(x.shape, y.shape)
        tmpl = self.rng.choice([
            f"lantern.astype(lantern.astype({{0}} * 3.0, 'int64') % 3, '{self.fdt}') * {{1}}",
            f"lantern.astype(lantern.astype({{0}} * 2.0, 'int32') // 2 + 1, '{self.fdt}') * {{1}}",
            f"lantern.astype(lantern.logical_or({{0}} > 0.3, {{1}} < -0.2), '{self.fdt}') * {{1}}",
            f"lantern.astype(lantern.logical_and({{0}} < 0.5, lantern.logical_not({{1}} > 1.0)), '{self.fdt}') + {{1}}",
            f"lantern.astype(lantern.equal(lantern.sign({{0}}), 1.0), '{self.fdt}') * {{1}}",
        ])
        self.let(blk, scope, "cast", tmpl, [x, y], out, self.fdt, 4 * y.bound + 1)

    def combine(self, blk: list, scope: _Scope) -> None:
        """Mix in a value of another shape: the sum of one, broadcast into the other."""
        x, y = self.pick(scope), self.rng.choice(self.floats(scope))
        self.let(blk, scope, "sum", "{0} + lantern.sum({1}) * 0.1", [x, y], x.shape, self.fdt,
                 x.bound + 0.1 * max(math.prod(y.shape), 1) * y.bound)

    # -- producing a value of a given type at the end of a block
    def coerce(self, blk: list, scope: _Scope, target: _Var, bounded: bool = False) -> _Var:
        """A value of ``target``'s type that depends on the block's last values (and ``target``)."""
        w = self.floats(scope)[-1]
        if w is target or (w.shape != target.shape and _broadcasts(w.shape, target.shape)):
            mix = "{1}"
        else:
            mix = "lantern.mean({1})"
        if bounded:  # a loop state: contracts, so iterating cannot blow up
            return self.let(blk, scope, "tanh", f"0.5 * {{0}} + 0.5 * lantern.tanh({mix})", [target, w],
                            target.shape, self.fdt, max(target.bound, 1.0))
        tmpl = self.rng.choice([f"{{0}} + {mix}", f"{{0}} * lantern.tanh({mix})", f"lantern.sin({{0}}) - {mix}"])
        return self.let(blk, scope, "coerce", tmpl, [target, w], target.shape, self.fdt, target.bound + w.bound)

    def block(self, scope: _Scope, targets: list[_Var], n: int, bounded: bool = False) -> tuple[list, list[str]]:
        blk: list = []
        for _ in range(n):
            self.statement(blk, scope)
        res = [self.coerce(blk, scope, t, bounded).name for t in targets]
        return blk, res

    def outs(self, blk: list, scope: _Scope, k: str, targets: list[_Var], **fields: Any) -> None:
        outs = [_Var(self.name(), t.shape, t.dtype, max(t.bound, 1.0) * 4) for t in targets]
        blk.append({"k": k, "outs": [{"name": o.name, "shape": list(o.shape), "dtype": o.dtype} for o in outs],
                    **fields})
        scope.vars.extend(outs)

    def targets(self, scope: _Scope, n: int) -> list[_Var]:
        fs = self.floats(scope)
        return [self.rng.choice(fs) for _ in range(n)]

    def cond(self, blk: list, scope: _Scope) -> None:
        x = self.pick(scope)
        pred = self.rng.choice(["lantern.sum({0}) > 0.2", "{0}.mean() < 0.1", "lantern.max({0}) > 0.5"])
        targets = self.targets(scope, self.rng.choice([1, 1, 2]))
        then, tres = self.block(scope.child(), targets, self.rng.randint(0, 3))
        other, eres = self.block(scope.child(), targets, self.rng.randint(0, 3))
        self.outs(blk, scope, "cond", targets, pred=pred, pred_args=[x.name], then=then, then_res=tres,
                  else_=other, else_res=eres)

    def _bound(self, scope: _Scope, hi: int) -> tuple[str, list[str]]:
        """A loop bound: a Python int, or an int64 input (in the main function)."""
        if scope.main and self.rng.random() < 0.5:
            n = self.int_input(self.rng.randint(0, hi))
            return "{0}", [n.name]
        return str(self.rng.randint(0, hi)), []

    def _loop_state(self, scope: _Scope, targets: list[_Var], counter: str) -> tuple[_Scope, _Var, list[_Var]]:
        """A loop body's scope, its int64 index (or trip counter) and its carried variables."""
        inner = scope.child()
        index = _Var(self.name(counter), (), "int64", 0.0)
        carry = [_Var(self.name("c"), t.shape, t.dtype, max(t.bound, 1.0)) for t in targets]
        inner.vars.extend(carry)
        return inner, index, carry

    def _loop_body(self, body: list, inner: _Scope, carry: list[_Var]) -> list[str]:
        """Random statements, then the next carried values (contracting, so loops stay bounded)."""
        for _ in range(self.rng.randint(1, 3)):
            self.statement(body, inner)
        return [self.coerce(body, inner, c, bounded=True).name for c in carry]

    def fori(self, blk: list, scope: _Scope) -> None:
        targets = self.targets(scope, self.rng.choice([1, 2]))
        lo = self.rng.choice([0, 0, 1])
        hi, hi_args = self._bound(scope, 4)
        inner, i, carry = self._loop_state(scope, targets, "i")
        body: list = []
        self.let(body, inner, "cast", f"lantern.astype({{0}}, '{self.fdt}') * 0.3", [i], (), self.fdt, 1.5)
        # An int64 counter carried along with the floats (stored and replayed like them), sometimes.
        counter = _Var(self.name("c"), (), "int64", 0.0) if self.rng.random() < 0.3 else None
        rows = [v for v in self.floats(scope) if v.shape]
        if rows and (counter is not None or self.rng.random() < 0.5):
            x = self.rng.choice(rows)  # x[i]: a gather by the loop counter (an RNN reading its input)
            self.let(body, inner, "index_by_counter", f"{{0}}[{{1}} % {x.shape[0]}]", [x, counter or i],
                     x.shape[1:], self.fdt, x.bound)
        self.recurrent_product(blk, scope, body, inner, carry)
        res = self._loop_body(body, inner, carry)
        init = [t.name for t in targets]
        if counter is not None:
            res.append(self.let(body, inner, "add", "{0} + 1", [counter], (), "int64", 0.0).name)
            carry.append(counter)
            targets = targets + [counter]
            init.append("np.int64(0)")
        self.outs(blk, scope, "fori", targets, lo=str(lo), hi=hi, hi_args=hi_args, init=init,
                  ivar=i.name, cparams=[c.name for c in carry], body=body, res=res)

    def recurrent_product(self, blk: list, scope: _Scope, body: list, inner: _Scope, carry: list[_Var]) -> None:
        """Sometimes ``tanh(h @ W)`` (or ``W.T``) of a one-row carried ``h`` and a matrix ``W`` from outside
        the loop: an RNN cell, whose weight gradient is summed after the reverse loop."""
        rows = [c for c in carry if c.dtype == self.fdt and len(c.shape) in (1, 2) and c.shape[:-1] in ((), (1,))]
        if not rows or self.rng.random() < 0.6:
            return
        h = self.rng.choice(rows)
        w = self.of_shape(blk, scope, (h.shape[-1], h.shape[-1]))  # defined before the loop
        tmpl = self.rng.choice(["lantern.tanh({0} @ {1})", "lantern.tanh({0} @ {1}.T)",
                                "lantern.sin(lantern.matmul({0}, {1})) * 0.5"])
        self.let(body, inner, "recurrent_matmul", tmpl, [h, w], h.shape, self.fdt, 1.0)

    def while_(self, blk: list, scope: _Scope) -> None:
        targets = self.targets(scope, self.rng.choice([1, 2]))
        hi, hi_args = self._bound(scope, 3)
        inner, k, carry = self._loop_state(scope, targets, "k")
        body: list = []
        res = self._loop_body(body, inner, carry)
        extra = self.rng.random() < 0.3  # also stop on the data (the bound still caps the trip count)
        self.outs(blk, scope, "while", targets, hi=hi, hi_args=hi_args, data_stop=extra,
                  init=[t.name for t in targets], kvar=k.name, cparams=[c.name for c in carry], body=body, res=res)

    def call(self, blk: list, scope: _Scope) -> None:
        kind = self.rng.choice(["helper", "helper", "rec", "tree"])
        args = self.targets(scope, self.rng.choice([1, 2]))
        fname = f"{self.prefix}_{self.name('f')}"
        params = [_Var(self.name("q"), a.shape, a.dtype, a.bound) for a in args]
        results = [args[0]]
        if kind == "helper":
            fscope = _Scope(list(params), main=False, depth=scope.depth + 1)
            results = [args[0]] if len(args) == 1 or self.rng.random() < 0.5 else args  # one result or a tuple
            body, res = self.block(fscope, params[:len(results)], self.rng.randint(1, 4))
            fn = {"name": fname, "params": _decl(params), "body": body, "res": res}
            call_args = [a.name for a in args]
        elif kind == "rec":
            fn, call_args = self.recursive(fname, params, scope, args)
        else:
            fn, call_args = self.tree(fname, params, blk, scope, args)
        self.functions.append(fn)
        self.outs(blk, scope, "call", results, fn=fname, args=call_args)

    def recursive(self, fname: str, params: list[_Var], scope: _Scope, args: list[_Var]) -> tuple[dict, list[str]]:
        """``f(d, xs) = base(xs) if d <= 0 else step(f(d - 1, g(xs)), xs)``."""
        d = _Var(self.name("d"), (), "int64", 0.0)
        fscope = _Scope([d] + list(params), main=False, depth=scope.depth + 1)
        base, bres = self.block(fscope.child(), [params[0]], self.rng.randint(0, 2))
        sscope = fscope.child()
        step: list = []
        dm = self.let(step, sscope, "sub", "{0} - 1", [d], (), "int64", 0.0, pin=True)
        for _ in range(self.rng.randint(0, 2)):
            self.statement(step, sscope)
        nxt = [self.coerce(step, sscope, p, bounded=True) for p in params]
        y = _Var(self.name(), params[0].shape, self.fdt, max(params[0].bound, 1.0) * 4)
        step.append({"k": "call", "outs": _decl([y]), "fn": fname, "args": [dm.name] + [v.name for v in nxt]})
        sscope.vars.append(y)
        sres = [self.coerce(step, sscope, params[0], bounded=True).name]
        body: list = []
        self.outs(body, fscope, "cond", [params[0]], pred="{0} <= 0", pred_args=[d.name], then=base, then_res=bres,
                  else_=step, else_res=sres)
        fn = {"name": fname, "params": _decl([d] + params), "body": body, "res": [fscope.vars[-1].name]}
        if scope.main and self.rng.random() < 0.5:
            depth = self.int_input(self.rng.randint(0, 3)).name
        else:
            depth = f"np.int64({self.rng.randint(0, 3)})"
        return fn, [depth] + [a.name for a in args]

    def tree(self, fname: str, params: list[_Var], blk: list, scope: _Scope,
             args: list[_Var]) -> tuple[dict, list[str]]:
        """Recursion over a binary tree stored as child-index arrays (-1: a leaf), with per-node values."""
        n_inner = self.rng.randint(0, 3)
        left, right, leaves = [-1], [-1], [0]
        for _ in range(n_inner):
            k = leaves.pop(self.rng.randrange(len(leaves)))
            left[k], right[k] = len(left), len(left) + 1
            left += [-1, -1]
            right += [-1, -1]
            leaves += [left[k], right[k]]
        nodes = len(left)
        x = params[0]
        node, lv, rv = (_Var(self.name(b), s, "int64", 0.0) for b, s in (("m", ()), ("l", (nodes,)), ("r", (nodes,))))
        vals = _Var(self.name("w"), (nodes,) + x.shape, self.fdt, 3.0)
        fscope = _Scope([node, lv, rv, vals] + list(params), main=False, depth=scope.depth + 1)
        leaf_scope = fscope.child()
        leaf: list = []
        here = self.let(leaf, leaf_scope, "index", "{0}[{1}]", [vals, node], x.shape, self.fdt, 3.0, pin=True)
        leaf_res = [self.let(leaf, leaf_scope, "mul", "lantern.tanh({0} * {1})", [here, x], x.shape, self.fdt,
                             1.0).name]
        iscope = fscope.child()
        inner: list = []
        kids = []
        for side in (lv, rv):
            child = self.let(inner, iscope, "index", "{0}[{1}]", [side, node], (), "int64", 0.0, pin=True)
            y = _Var(self.name(), x.shape, self.fdt, 1.0)
            inner.append({"k": "call", "outs": _decl([y]), "fn": fname,
                          "args": [child.name, lv.name, rv.name, vals.name] + [p.name for p in params]})
            iscope.vars.append(y)
            kids.append(y)
        mid = self.let(inner, iscope, "index", "{0}[{1}]", [vals, node], x.shape, self.fdt, 3.0, pin=True)
        comb = self.let(inner, iscope, "add", "{0} * {3} + {1} + {2}", [kids[0], kids[1], mid, x], x.shape, self.fdt,
                        3.0 * x.bound + 5)
        for _ in range(self.rng.randint(0, 2)):
            self.statement(inner, iscope)
        ires = [self.coerce(inner, iscope, x, bounded=True).name]
        body: list = []
        self.outs(body, fscope, "cond", [x], pred="{0}[{1}] < 0", pred_args=[lv.name, node.name], then=leaf,
                  then_res=leaf_res, else_=inner, else_res=ires)
        fn = {"name": fname, "params": _decl([node, lv, rv, vals] + params), "body": body,
              "res": [fscope.vars[-1].name]}
        if scope.main:
            ln, rn = self.int_input(left, (nodes,)).name, self.int_input(right, (nodes,)).name
        else:
            ln, rn = (f"np.array({v}, np.int64)" for v in (left, right))
        vin = self.of_shape(blk, scope, (nodes,) + x.shape)
        return fn, ["np.int64(0)", ln, rn, vin.name] + [a.name for a in args]


def _broadcasts(shape: Shape, target: Shape) -> bool:
    """Whether ``shape`` broadcasts to exactly ``target``."""
    return len(shape) <= len(target) and all(a in (1, b) for a, b in zip(shape[::-1], target[::-1]))


def _decl(vs: list[_Var]) -> list[dict]:
    return [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype} for v in vs]


def _slice_text(s: slice) -> str:
    parts = ["" if s.start is None else str(s.start), "" if s.stop is None else str(s.stop)]
    return ":".join(parts) + ("" if s.step in (None, 1) else f":{s.step}")


def generate(seed: int, index: int, dtype: str | None = None, size: int | None = None, order: int = 1) -> Program:
    """Program ``index`` of campaign ``seed`` (deterministic: the same arguments give the same program).

    ``order=2``: a straight-line float64 program whose Hessian-vector product (``grad`` of
    ``grad``) is checked too.
    """
    rng = random.Random(f"lantern-fuzz:{seed}:{index}" + (":2" if order == 2 else ""))
    fdt = "float64" if order == 2 else dtype or ("float32" if rng.random() < 0.2 else "float64")
    g = _Gen(rng, fdt, prefix=f"s{seed}_{index}", control=order == 1, max_depth=rng.choice([2, 2, 3]))
    scope = _Scope([], main=True)
    body: list = []
    g.fresh_input(body, scope, g.rand_shape())
    for _ in range(size or rng.randint(3, 9)):
        g.statement(body, scope)
    floats = [v for v in scope.vars if v.dtype == fdt]
    outs = [floats[-1].name] + [v.name for v in rng.sample(floats[:-1], min(len(floats) - 1, rng.randint(0, 2)))]
    if rng.random() < 0.1:
        outs.append(outs[0])  # the same value as two results
    return {"seed": seed, "index": index, "order": order, "dtype": fdt, "inputs": g.inputs, "functions": g.functions,
            "main": {"name": f"{g.prefix}_main", "params": [{"name": i["name"]} for i in g.inputs], "body": body,
                     "res": outs}}


# ------------------------------------------------------------------ rendering

def _expr(tmpl: str, args: list[str]) -> str:
    return tmpl.format(*args)


def _render_block(stmts: list, ind: str, out: list[str], plain: bool = False) -> None:
    """``stmts`` as Python source; ``plain``: control flow as Python ``if``/``for``/``while`` statements
    (rewritten by ``@lantern.stage``), else as ``lantern.cond``/``fori_loop``/``while_loop`` calls."""
    for s in stmts:
        k = s["k"]
        if k == "let":
            out.append(f"{ind}{s['out']} = {_expr(s['expr'], s['args'])}")
            continue
        names = [o["name"] for o in s["outs"]]
        lhs = ", ".join(names) + ("," if len(names) == 1 else "")
        if k == "zeros":
            for o in s["outs"]:
                out.append(f"{ind}{o['name']} = lantern.zeros({tuple(o['shape'])}, '{o['dtype']}')")
        elif plain and k in ("cond", "fori", "while"):
            _render_plain(s, names, ind, out)
        elif k == "cond":
            for which, body, res in (("t", s["then"], s["then_res"]), ("f", s["else_"], s["else_res"])):
                out.append(f"{ind}def _{which}_{names[0]}():")
                _render_block(body, ind + "    ", out)
                out.append(f"{ind}    return ({', '.join(res)},)")
            pred = _expr(s["pred"], s["pred_args"])
            out.append(f"{ind}{lhs} = lantern.cond({pred}, _t_{names[0]}, _f_{names[0]})")
        elif k == "fori":
            out.append(f"{ind}def _body_{names[0]}({s['ivar']}, _carry):")
            out.append(f"{ind}    {', '.join(s['cparams'])}, = _carry")
            _render_block(s["body"], ind + "    ", out)
            out.append(f"{ind}    return ({', '.join(s['res'])},)")
            hi = _expr(s["hi"], s["hi_args"])
            out.append(f"{ind}{lhs} = lantern.fori_loop({s['lo']}, {hi}, _body_{names[0]}, ({', '.join(s['init'])},))")
        elif k == "while":
            stop = _while_stop(s, lambda a, b: f"lantern.logical_and({a}, {b})")
            out.append(f"{ind}def _cond_{names[0]}(_state):")
            out.append(f"{ind}    {s['kvar']}, {', '.join(s['cparams'])}, = _state")
            out.append(f"{ind}    return {stop}")
            out.append(f"{ind}def _body_{names[0]}(_state):")
            out.append(f"{ind}    {s['kvar']}, {', '.join(s['cparams'])}, = _state")
            _render_block(s["body"], ind + "    ", out)
            out.append(f"{ind}    return ({s['kvar']} + 1, {', '.join(s['res'])})")
            out.append(f"{ind}_, {lhs} = lantern.while_loop(_cond_{names[0]}, _body_{names[0]}, "
                       f"(np.int64(0), {', '.join(s['init'])}))")
        elif k == "call":  # arguments: variable names or literal integer constants
            out.append(f"{ind}{', '.join(names)} = {s['fn']}({', '.join(s['args'])})")
        else:
            raise ValueError(f"unknown statement kind {k!r}")


def _while_stop(s: dict, both: Callable[[str, str], str]) -> str:
    """A ``while`` statement's test: the counter below its bound (and, with ``data_stop``, a data test)."""
    stop = f"{s['kvar']} < {_expr(s['hi'], s['hi_args'])}"
    c0 = s["cparams"][0]
    return both(stop, f"lantern.sum({c0} * {c0}) < 40.0") if s.get("data_stop") else stop


def _render_plain(s: dict, names: list[str], ind: str, out: list[str]) -> None:
    """A ``cond``/``fori``/``while`` statement as the Python statement a user would write."""
    def assign(targets: list[str], values: list[str], at: str) -> None:
        out.append(f"{at}{', '.join(targets)}, = ({', '.join(values)},)")

    if s["k"] == "cond":
        out.append(f"{ind}if {_expr(s['pred'], s['pred_args'])}:")
        _render_block(s["then"], ind + "    ", out, plain=True)
        assign(names, s["then_res"], ind + "    ")
        out.append(f"{ind}else:")
        _render_block(s["else_"], ind + "    ", out, plain=True)
        assign(names, s["else_res"], ind + "    ")
        return
    assign(s["cparams"], s["init"], ind)
    hi = _expr(s["hi"], s["hi_args"])
    if s["k"] == "fori":
        out.append(f"{ind}for {s['ivar']} in range({s['lo']}, {hi}):")
    else:
        out.append(f"{ind}{s['kvar']} = np.int64(0)")
        out.append(f"{ind}while {_while_stop(s, lambda a, b: f'({a}) and {b}')}:")
    _render_block(s["body"], ind + "    ", out, plain=True)
    assign(s["cparams"], s["res"], ind + "    ")
    if s["k"] == "while":
        out.append(f"{ind}    {s['kvar']} = {s['kvar']} + 1")
    assign(names, s["cparams"], ind)


def _render_function(fn: dict, staged: bool, plain: bool = False) -> list[str]:
    out = ["@lantern.stage"] if staged else []
    out.append(f"def {fn['name']}({', '.join(p['name'] for p in fn['params'])}):")
    _render_block(fn["body"], "    ", out, plain)
    one = staged and len(fn["res"]) == 1  # a staged function returns one value or a tuple
    out.append(f"    return {fn['res'][0]}" if one else f"    return ({', '.join(fn['res'])},)")
    return out


def render(programs: list[Program]) -> str:
    """Python source defining every program's functions and ``batch(floats, ints, weights)``:
    returns (outputs, per-program losses, gradients of the summed loss w.r.t. ``floats``)."""
    lines = ["import numpy as np", "import lantern", ""]
    for p in programs:
        plain = p["index"] % 2 == 1  # every other program written with Python if/for/while (issue 15)
        for fn in p["functions"]:
            lines += _render_function(fn, staged=True, plain=plain) + [""]
        lines += _render_function(p["main"], staged=False, plain=plain) + [""]
    lines.append("def _losses(floats, ints, weights):")
    lines.append("    outs, losses = [], []")
    for j, p in enumerate(programs):
        fl = [i["name"] for i in p["inputs"] if i["kind"] == "float"]
        args = []
        for i in p["inputs"]:
            pos = fl.index(i["name"]) if i["kind"] == "float" else None
            args.append(f"floats[{j}][{pos}]" if pos is not None else f"ints[{j}]['{i['name']}']")
        lines.append(f"    o = {p['main']['name']}({', '.join(args)})")
        lines.append("    outs.append(o)")
        lines.append(f"    losses.append(sum(lantern.sum(lantern.astype(a, 'float64') * w) "
                     f"for a, w in zip(o, weights[{j}])))")
    lines.append("    return outs, lantern.stack(losses)")
    lines.append("")
    if _order(programs) == 1:
        # Every other batch uses value_and_grad (its value: one more loss to compare); every third
        # differentiates only the even-numbered inputs of each program, the others read as
        # constants captured from the enclosing function.
        wrt, inner = ("_pick(floats)", "_merge(f, floats)") if _partial(programs) else ("floats", "f")
        loss = f"lambda f: lantern.sum(_losses({inner}, ints, weights)[1])"
        lines += ["def _pick(floats):",
                  "    return tuple(tuple(x for k, x in enumerate(fl) if k % 2 == 0) for fl in floats)",
                  "",
                  "def _merge(picked, floats):",
                  "    return tuple(tuple(picked[j][k // 2] if k % 2 == 0 else x for k, x in enumerate(fl))",
                  "                 for j, fl in enumerate(floats))",
                  "",
                  "@lantern.stage",
                  "def batch(floats, ints, weights):",
                  "    outs, losses = _losses(floats, ints, weights)"]
        if programs[0]["index"] % 2 == 0:
            lines.append(f"    grads = lantern.grad({loss})({wrt})")
        else:
            lines += [f"    total, grads = lantern.value_and_grad({loss})({wrt})",
                      "    losses = lantern.concatenate([losses, lantern.reshape(total, (1,))])"]
        if _partial(programs):
            lines.append("    grads = _merge(grads, tuple(tuple(lantern.zeros_like(x) for x in fl) for fl in floats))")
        lines.append("    return outs, losses, grads")
    else:  # and the Hessian of the summed loss times the direction tree ``dirs``
        lines += ["@lantern.stage",
                  "def batch(floats, ints, weights, dirs):",
                  "    total = lambda f: lantern.sum(_losses(f, ints, weights)[1])",
                  "    def slope(f):",
                  "        g = lantern.grad(total)(f)",
                  "        return sum(lantern.sum(a * u) for ga, ua in zip(g, dirs) for a, u in zip(ga, ua))",
                  "    outs, losses = _losses(floats, ints, weights)",
                  "    return outs, losses, lantern.grad(total)(floats), lantern.grad(slope)(floats)"]
    return "\n".join(lines) + "\n"


def _partial(programs: list[Program]) -> bool:
    """Whether the batch differentiates only the even-numbered float inputs (see :func:`render`)."""
    return _order(programs) == 1 and programs[0]["index"] % 3 == 2


def _order(programs: list[Program]) -> int:
    orders = {p.get("order", 1) for p in programs}
    if len(orders) != 1:
        raise ValueError("a batch mixes first- and second-order programs")
    return orders.pop()


def directions(floats: tuple) -> tuple:
    """The random directions the derivative checks use (one per float input, fixed seed)."""
    rng = np.random.default_rng(12345)
    return tuple(tuple(rng.standard_normal(np.shape(x)) for x in fl) for fl in floats)


def arguments(programs: list[Program]) -> tuple:
    """The ``batch`` arguments: per-program float inputs, int inputs and loss weights."""
    floats = tuple(tuple(np.asarray(i["value"], np.float64).reshape(i["shape"]) for i in p["inputs"]
                         if i["kind"] == "float") for p in programs)
    ints = tuple({i["name"]: np.asarray(i["value"], i.get("dtype", "int64")).reshape(i["shape"]) for i in p["inputs"]
                  if i["kind"] == "int"} for p in programs)
    weights = tuple(tuple(np.cos(np.arange(math.prod(s)) * 1.3 + 0.4 + k).reshape(s)
                          for k, s in enumerate(output_shapes(p))) for p in programs)
    return (floats, ints, weights) + ((directions(floats),) if _order(programs) == 2 else ())


def output_shapes(p: Program) -> list[Shape]:
    """Shapes of the main function's results (from the statements' declared types)."""
    types: dict[str, Shape] = {}
    for i in p["inputs"]:
        types[i["name"]] = tuple(i["shape"])
    for s in _walk(p["main"]["body"]):
        if s["k"] == "let":
            types[s["out"]] = tuple(s["shape"])
        else:
            types.update({o["name"]: tuple(o["shape"]) for o in s["outs"]})
    return [types[r] for r in p["main"]["res"]]


def _walk(stmts: list):
    """Every statement, nested bodies included (pre-order)."""
    for s in stmts:
        yield s
        for key in ("then", "else_", "body"):
            if key in s:
                yield from _walk(s[key])


def _all_statements(p: Program):
    for fn in p["functions"] + [p["main"]]:
        yield from _walk(fn["body"])


def coverage(programs: list[Program]) -> Counter:
    """How often each op and control-flow form occurs."""
    c: Counter = Counter()
    for p in programs:
        for s in _all_statements(p):
            c[s["op"] if s["k"] == "let" else s["k"]] += 1
        for fn in p["functions"]:
            if any(s["k"] == "call" and s["fn"] == fn["name"] for s in _walk(fn["body"])):
                c["recursion"] += 1
        c[p["dtype"]] += 1
    return c


# ------------------------------------------------------------------ checking

#: Native vs interpreter: relative tolerance and absolute tolerance relative to the leaf's magnitude.
TOLERANCES = {"float64": (1e-9, 1e-10), "float32": (1e-4, 1e-5)}
FD_STEPS = (1e-5, 5e-6)


def load_batch(programs: list[Program]) -> Callable[..., Any]:
    """Render, compile (Python) and return the staged ``batch`` function of ``programs``."""
    import linecache
    src = render(programs)
    fname = f"<lantern-fuzz {programs[0]['seed']}:{programs[0]['index']}+{len(programs)}>"
    linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)  # source lines in error messages
    ns: dict[str, Any] = {"__name__": "lantern_fuzz_batch"}
    exec(compile(src, fname, "exec"), ns)  # noqa: S102 (the source is generated here)
    return ns["batch"]


def _compare(actual: Any, expected: Any, dtype: str, what: str) -> None:
    from ..testing import assert_trees_close
    from ..tree import flatten
    rtol, arel = TOLERANCES[dtype]
    a_leaves, e_leaves = flatten(actual)[0], flatten(expected)[0]
    assert len(a_leaves) == len(e_leaves), f"{what}: {len(a_leaves)} leaves != {len(e_leaves)}"
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        e = np.asarray(e)
        scale = float(np.max(np.abs(e), initial=1.0)) if e.dtype.kind == "f" and np.all(np.isfinite(e)) else 1.0
        assert_trees_close(a, e, rtol=rtol, atol=arel * scale, what=f"{what} leaf {i}")


def check_programs(programs: list[Program], fd: bool = True, dynamic: bool = False) -> Report:
    """Compile ``programs`` as one staged function and check each (see the module docstring).

    A failure of the whole batch (tracing or compiling) is narrowed down by checking the
    programs one at a time. ``dynamic``: staged with ``dynamic=True`` (every dimension of 2 or
    more a run-time size; a batch whose code needs a size as a number is compiled per shape).
    """
    report = Report(programs=len(programs))
    args = arguments(programs)
    try:
        staged = load_batch(programs)
        exe = (stage(staged, dynamic=True) if dynamic else staged).lower(*args)
        native = exe(*args)
    except Exception as exc:  # noqa: BLE001 (any exception is a finding)
        return _one_by_one(programs, fd, type(exc).__name__, describe(exc), dynamic)
    report.with_sizes = int(exe.pattern is not None)
    refs = {}  # what else computed the results: the interpreter, on both IRs; the same C at -O0
    for optimized in (False, True):
        try:
            refs[f"the interpreter on the {'optimized' if optimized else 'traced'} IR"] = exe.interpret(
                *args, optimized=optimized)
        except Exception as exc:  # noqa: BLE001
            return _one_by_one(programs, fd, "interpret", describe(exc), dynamic)
    try:
        twin = flags.unoptimized(exe)
        if twin is not None:
            refs["the same C compiled at -O0"] = twin(*args)
    except Exception as exc:  # noqa: BLE001
        return _one_by_one(programs, fd, "-O0", describe(exc), dynamic)
    # A second call must give the same bits (no state kept between calls, no uninitialized
    # memory read) and the arena must be empty between calls (every intermediate released).
    from ..tree import flatten
    again = exe(*args)
    if not all(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
               for a, b in zip(flatten(native)[0], flatten(again)[0])):
        return _one_by_one(programs, fd, "repeat", "a second call with the same arguments gave other values", dynamic)
    if exe.native.arena_in_use() != 0:
        return _one_by_one(programs, fd, "arena", f"{exe.native.arena_in_use()} arena bytes held after the call", dynamic)
    parts = ("outputs", "loss", "gradient", "hessian-vector product")[:len(native)]
    for j, p in enumerate(programs):
        for k, part in enumerate(parts):  # a mismatch in the forward part makes the rest moot
            try:
                for what, ref in refs.items():
                    _compare(native[k][j], ref[k][j], p["dtype"], f"{part}: native vs {what}")
            except AssertionError as exc:
                report.failures.append(Failure(p["seed"], p["index"], "forward" if k < 2 else part.split()[0],
                                               str(exc)))
                break
    losses = np.asarray(native[1], np.float64)
    if losses.size > len(programs):  # value_and_grad's value: the sum of the losses
        total, parts = losses[-1], losses[:-1]
        if not abs(total - parts.sum()) <= 1e-12 * (1.0 + np.abs(parts).sum()) * len(parts):
            return _one_by_one(programs, fd, "value", f"value_and_grad's value {total!r} != the sum of the "
                               f"losses {parts.sum()!r}", dynamic)
    if fd:
        _check_fd(exe, programs, args, native, report)
    return report


def _one_by_one(programs: list[Program], fd: bool, stage: str, message: str, dynamic: bool = False) -> Report:
    """A batch failed as a whole: check its programs one at a time (or report the single one)."""
    if len(programs) == 1:
        p = programs[0]
        return Report(1, failures=[Failure(p["seed"], p["index"], stage, message)])
    report = Report(len(programs))
    for p in programs:
        sub = check_programs([p], fd, dynamic)
        report.fd_checked += sub.fd_checked
        report.fd_skipped += sub.fd_skipped
        report.failures += sub.failures
    return report


def _check_fd(exe: Any, programs: list[Program], args: tuple, native: Any, report: Report) -> None:
    """Each float64 program's gradient along a random direction vs central differences of its
    loss; for second-order programs also the Hessian-vector product vs differences of the gradient."""
    floats, rest = args[0], args[1:]
    outs, losses, grads = native[:3]
    dirs = directions(floats)
    if _partial(programs):  # the inputs not differentiated stay put
        dirs = tuple(tuple(u if k % 2 == 0 else 0 * u for k, u in enumerate(du)) for du in dirs)
    shifted = []  # per step h: (results at x + h u, results at x - h u)
    for h in FD_STEPS:
        plus = tuple(tuple(x + h * u for x, u in zip(fl, du)) for fl, du in zip(floats, dirs))
        minus = tuple(tuple(x - h * u for x, u in zip(fl, du)) for fl, du in zip(floats, dirs))
        shifted.append((h, exe(plus, *rest), exe(minus, *rest)))
    failed = {(f.seed, f.index) for f in report.failures}
    for j, p in enumerate(programs):
        if p["dtype"] != "float64" or (p["seed"], p["index"]) in failed:
            continue
        terms = [np.asarray(g) * u for g, u in zip(grads[j], dirs[j])]
        size = float(sum(np.sum(np.abs(np.asarray(o, np.float64) * w)) for o, w in zip(outs[j], rest[1][j])))
        scale = float(sum(np.sum(np.abs(t)) for t in terms)) + 1e-2 * (1.0 + size)
        quotients = [(float(a[1][j]) - float(b[1][j])) / (2 * h) for h, a, b in shifted]
        failure = _fd_compare(float(sum(np.sum(t) for t in terms)), quotients, scale, "gradient . u", report)
        if failure is None and len(native) == 4:  # d/dh grad(x + h u) = H u
            hvp = np.concatenate([np.ravel(v) for v in native[3][j]])
            diffs = [(np.concatenate([np.ravel(v) for v in a[2][j]]) - np.concatenate([np.ravel(v) for v in b[2][j]]))
                     / (2 * h) for h, a, b in shifted]
            scale = float(np.max(np.abs(np.concatenate([np.ravel(g) for g in grads[j]])), initial=0.0) + 1.0)
            for e in range(hvp.size):
                failure = _fd_compare(float(hvp[e]), [float(d[e]) for d in diffs], scale,
                                      f"(Hessian . u)[{e}]", report)
                if failure is not None:
                    break
        if failure is not None:
            report.failures.append(Failure(p["seed"], p["index"], "fd", failure))


def _fd_compare(analytic: float, quotients: list[float], scale: float, what: str, report: Report) -> str | None:
    """``analytic`` vs the central difference quotients at the steps ``FD_STEPS``; a failure
    message or None. Counts as skipped where the quotients disagree with each other (the
    direction crosses a kink or a branch, so the derivative is not what they measure)."""
    n1, n2 = quotients
    tol = 1e-6 * (abs(n2) + scale)
    if not (math.isfinite(n1) and math.isfinite(n2)) or abs(n1 - n2) > tol:
        report.fd_skipped += 1
        return None
    report.fd_checked += 1
    if abs(analytic - n2) <= tol:
        return None
    return (f"{what} = {analytic!r} but the central difference is {n2!r} (h={FD_STEPS[1]}; {n1!r} at "
            f"h={FD_STEPS[0]}; tolerance {tol:.3g})")


# ------------------------------------------------------------------ shrinking and saving

def _names_used(p: Program) -> set[str]:
    """Every name some statement, function result or call reads."""
    used: set[str] = set()
    for fn in p["functions"] + [p["main"]]:
        used.update(fn["res"])
        for s in _walk(fn["body"]):
            for key in ("args", "pred_args", "hi_args", "init", "res", "then_res", "else_res"):
                used.update(s.get(key, []))
            if s["k"] == "call":
                used.add(s["fn"])
    return used


def _prune(p: Program) -> Program:
    """Drop dead statements, uncalled functions and unread inputs (to a fixed point)."""
    while True:
        used = _names_used(p)
        changed = False

        def keep(s: dict) -> bool:
            outs = [s["out"]] if s["k"] == "let" else [o["name"] for o in s["outs"]]
            return any(o in used for o in outs)

        def prune_block(stmts: list) -> list:
            nonlocal changed
            kept = []
            for s in stmts:
                if not keep(s):
                    changed = True
                    continue
                for key in ("then", "else_", "body"):
                    if key in s:
                        s[key] = prune_block(s[key])
                kept.append(s)
            return kept

        for fn in p["functions"] + [p["main"]]:
            fn["body"] = prune_block(fn["body"])
        fns = [f for f in p["functions"] if f["name"] in used]
        inputs = [i for i in p["inputs"] if i["name"] in used]
        changed |= len(fns) != len(p["functions"]) or len(inputs) != len(p["inputs"])
        p["functions"], p["inputs"] = fns, inputs
        p["main"]["params"] = [{"name": i["name"]} for i in inputs]
        if not changed:
            return p


def _statement_paths(p: Program) -> list[tuple]:
    """Addresses (function index, then list keys and positions) of every statement, last first."""
    paths: list[tuple] = []

    def walk(stmts: list, prefix: tuple) -> None:
        for i, s in enumerate(stmts):
            paths.append(prefix + (i,))
            for key in ("then", "else_", "body"):
                if key in s:
                    walk(s[key], prefix + (i, key))

    for f, fn in enumerate(p["functions"] + [p["main"]]):
        walk(fn["body"], (f, "body"))
    return paths[::-1]


def _at(p: Program, path: tuple) -> tuple[list, int]:
    fns = p["functions"] + [p["main"]]
    node: Any = fns[path[0]]
    for key in path[1:-1]:
        node = node[key]
    return node, path[-1]


def _candidates(p: Program):
    """Smaller variants of ``p``: fewer outputs, one statement replaced by zeros of its type
    (which makes what only it read dead: :func:`_prune` drops that)."""
    res = p["main"]["res"]
    for i in range(len(res)):
        if len(res) > 1:
            q = copy.deepcopy(p)
            del q["main"]["res"][i]
            yield q
    for path in _statement_paths(p):
        q = copy.deepcopy(p)
        stmts, i = _at(q, path)
        s = stmts[i]
        if s.get("pin") or s["k"] == "zeros":
            continue
        outs = [{"name": s["out"], "shape": s["shape"], "dtype": s["dtype"]}] if s["k"] == "let" else s["outs"]
        stmts[i] = {"k": "zeros", "outs": outs}
        yield q


def shrink(p: Program, still_fails: Callable[[Program], bool], budget_s: float = 120.0) -> Program:
    """Greedily replace statements by zeros and drop dead code while ``still_fails``."""
    return regressions.shrink(p, still_fails, _candidates, _prune, _size, budget_s)


def _size(p: Program) -> int:
    return sum(1 for _ in _all_statements(p)) + sum(s["k"] != "zeros" for s in _all_statements(p)) + len(
        p["main"]["res"])


def same_failure(failure: Failure, fd: bool = True) -> Callable[[Program], bool]:
    """A predicate: the program still fails the same way."""
    return regressions.same_failure(failure, lambda ps: check_programs(ps, fd))


def save_regression(p: Program, failure: Failure, directory: Path) -> Path:
    """Write ``p`` (and what it failed, and its rendered source for reading) as JSON."""
    return regressions.save_regression(p, failure, directory, render([p]))


load_regression = regressions.load_regression
