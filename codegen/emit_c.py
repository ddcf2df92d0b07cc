"""Emit one readable C11 file for a prepared IR module.

Every IR function becomes a ``static void`` C function taking pointers to its inputs
and to its (caller-allocated) results. The entry function also gets an exported
wrapper, ``lantern_entry``, that sets up error unwinding and releases the arena.

Storage of a variable:
  * rank-0 values computed locally are C scalars (``float t_5``);
  * constants of rank 0 are inlined as literals;
  * everything else is a pointer into the arena, a parameter, a static constant
    array, or (for a function's results) the caller's result buffer.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from math import prod
from typing import Callable, Iterable

import numpy as np

from lantern.ir.analysis import accumulation_targets, passed_by_reference, reads, use_counts
from lantern.ir.nodes import (Accumulate, Apply, Block, Call, Function, Fused, If, Lambda, Loop, Module, Op, Stmt,
                              Var, While, free_vars, walk_stmts)
from lantern.ir.primitives import ELEMENTWISE, PRIMITIVES
from lantern.ir.names import Namer
from lantern.ir.printer import format_function
from lantern.ir.types import FnType, TensorType
from lantern.runtime import ERROR_CODES
from lantern.source import Loc

from .c_types import C_TYPE, FLOATS, elementwise_expr, literal
from lantern.ir.passes import recursive_functions

#: Matrix products with at least this many multiply-adds (M*N*K) call BLAS; smaller ones
#: run as generated loops. Chosen with benchmarks/matmul_threshold.py (see RESULTS.md).
BLAS_MIN_MACS = int(os.environ.get("LANTERN_BLAS_MIN_MACS", 4096))
#: A floating-point sum may be reassociated (vectorized) here, as BLAS and NumPy do; elsewhere
#: the compiler keeps C's order of operations (no -ffast-math). Needs -fopenmp-simd, not OpenMP.
SIMD_SUM = "#pragma omp simd reduction(+:acc)"


def simd_sum(*accumulators: str) -> str:
    """``SIMD_SUM`` for several accumulators summed in one loop."""
    return f"#pragma omp simd reduction(+:{', '.join(accumulators)})"


#: Generated matrix products keep this many columns of a result row in a local array.
_STRIP = 64
#: Transposes copy square tiles of this side.
_TILE = 16

#: Allocations this large name their value and line in the C, for the out-of-memory message.
_NAMED_ALLOCATION = 1 << 30


#: The same threshold for products with a single row or column (m == 1 or n == 1).
VECTOR_BLAS_MIN_MACS = int(os.environ.get("LANTERN_VECTOR_BLAS_MIN_MACS", 1 << 20))


@dataclass(frozen=True)
class EmitOptions:
    """Checks compiled into the C (they change its text, hence its cache key).

    ``check_indices``: staged indices (take, scatter_add, indexed accumulation, so also the
    child indices of a recursive tree walk) are checked against their axis; off, they only
    wrap negative values, as NumPy does, and an index out of range is undefined behaviour.
    ``check_finite``: every floating-point result (elementwise ops, reductions, products,
    gradient accumulations) and every floating-point argument is checked for NaN/Inf.
    ``max_depth``: recursive staged functions fail beyond this depth (0: only the C stack limits).
    """

    check_indices: bool = True
    check_finite: bool = False
    max_depth: int = 0


def _c_string(text: str) -> str:
    """``text`` as a C string literal (non-ASCII and control characters escaped)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~" and ch != "?":  # "?" could start a trigraph
            out.append(ch)
        else:
            out.append("".join(f"\\{b:03o}" for b in ch.encode()))
    return '"' + "".join(out) + '"'


@dataclass
class CSource:
    text: str
    entry: str
    num_inputs: int
    num_outputs: int
    uses_blas: bool


def _strides(shape: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def _index(terms: Iterable[tuple[str, int]], base: int = 0) -> str:
    """``base + sum(var * coef)`` as tidy C."""
    parts = [str(base)] if base else []
    for var, coef in terms:
        if coef == 0:
            continue
        parts.append(var if coef == 1 else f"{var} * {coef}")
    return " + ".join(parts) or "0"


def _comment(text: str) -> str:
    return "/* " + text.replace("*/", "* /") + " */"


class _Storage:
    __slots__ = ("kind", "name", "env", "env_type")

    def __init__(self, kind: str, name: str, env: str = "", env_type: str = ""):
        self.kind = kind  # 'scalar', 'pointer', 'literal' or 'lambda'
        self.name = name  # C name (an lvalue), the literal text, or the lambda's C function
        self.env = env    # for a lambda: pointer expression of its environment
        self.env_type = env_type  # and the environment's struct type


class FunctionEmitter:
    def __init__(self, module_emitter: ModuleEmitter, fn: Function, c_name: str | None = None,
                 env_param: str = "", captured: dict[int, _Storage] | None = None,
                 env_locals: list[tuple[str, str]] | None = None):
        self.m = module_emitter
        self.fn = fn
        self.c_name = c_name or f"fn_{fn.name}"
        self.env_param = env_param  # "struct lambda_3_env *env" for a lambda body
        # (C type, name) of environment pointers a lambda body reads through a local of that name
        self.env_locals = env_locals or []
        self.lines: list[str] = []
        self.depth = 1
        self.storage: dict[int, _Storage] = {}
        self.dest: dict[int, str] = {}  # result var id -> result parameter name
        self.last_loc: Loc | None = None
        self.counter = 0
        self.uses = use_counts(fn.body)
        self.accumulate_into: dict[int, Var] = {}  # value id -> the buffer it is added to
        self.accumulating: set[int] = set()        # variables whose stores are +=
        if captured:
            self.storage.update(captured)

    # ------------------------------------------------------------ small helpers
    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def open(self, text: str) -> None:
        self.line(text + " {")
        self.depth += 1

    def close(self, text: str = "}") -> None:
        self.depth -= 1
        self.line(text)

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}{self.counter}"

    def ctype(self, v: Var) -> str:
        return C_TYPE[v.type.dtype]  # type: ignore[union-attr]

    def name(self, v: Var) -> str:
        return self.m.names(v)

    def load(self, v: Var, index: str) -> str:
        s = self.storage[v.id]
        if s.kind == "pointer":
            return f"{s.name}[{index if v.type.shape else '0'}]"  # type: ignore[union-attr]
        return s.name

    def ptr(self, v: Var) -> str:
        s = self.storage[v.id]
        if s.kind == "pointer":
            return s.name
        if s.kind == "scalar":
            return f"&{s.name}"
        return f"({self.ctype(v)}[1]){{{s.name}}}"

    def store(self, v: Var, index: str, expr: str) -> None:
        s = self.storage[v.id]
        op = "+=" if v.id in self.accumulating else "="
        if s.kind == "pointer":
            self.line(f"{s.name}[{index if v.type.shape else '0'}] {op} {expr};")  # type: ignore[union-attr]
        else:
            self.line(f"{s.name} {op} {expr};")

    def declare(self, v: Var) -> None:
        """Give ``v`` fresh storage: a scalar local, the result buffer, or arena memory."""
        t: TensorType = v.type  # type: ignore[assignment]
        target = self.accumulate_into.get(v.id)
        if target is not None:  # computed straight into the buffer it is added to
            self.storage[v.id] = self.storage[target.id]
            self.accumulating.add(v.id)
        elif v.id in self.dest:
            self.storage[v.id] = _Storage("pointer", self.dest[v.id])
        elif t.shape == ():
            self.storage[v.id] = _Storage("scalar", self.name(v))
            self.line(f"{self.ctype(v)} {self.name(v)};")
        else:
            self.storage[v.id] = _Storage("pointer", self.name(v))
            if t.nbytes >= _NAMED_ALLOCATION and self.last_loc is not None:
                site = _c_string(f"{self.name(v)}: {t} at {self.last_loc}: {self.last_loc.text()}")
                self.line(f"{self.ctype(v)} *{self.name(v)} = lt_alloc_at({t.nbytes}, {site});")
            else:
                self.line(f"{self.ctype(v)} *{self.name(v)} = lt_alloc({t.nbytes});")
            self.m.uses_arena = True
            self.mark_if_empty(v)

    def mark_if_empty(self, v: Var) -> None:
        """An empty array's pointer may never be read (its loops run zero times): say so to the compiler."""
        if v.type.size == 0:  # type: ignore[union-attr]
            self.line(f"(void){self.name(v)}; /* empty */")

    def bind_pointer(self, v: Var, expr: str) -> None:
        self.storage[v.id] = _Storage("pointer", self.name(v))
        self.line(f"{self.ctype(v)} *{self.name(v)} = {expr};")
        self.mark_if_empty(v)

    def copy(self, dst: Var, src: Var) -> None:
        """dst = src (same type); dst already has storage."""
        d, s = self.storage[dst.id], self.storage[src.id]
        if s.kind == d.kind and s.name == d.name:
            return  # already there (destination passing)
        if d.kind != "pointer" or not dst.type.shape:  # type: ignore[union-attr]
            self.store(dst, "0", self.load(src, "0"))
        else:
            self.line(f"memcpy({d.name}, {self.ptr(src)}, {dst.type.nbytes});")  # type: ignore[union-attr]

    def where(self, stmt: Stmt) -> str:
        return f"{os.path.basename(stmt.loc.file)}:{stmt.loc.line}"

    def index_expr(self, index: str, n: int, where: str) -> str:
        """A staged index into an axis of size ``n``: checked (``lt_index``) unless ``check_indices`` is off."""
        if self.m.options.check_indices:
            return f"lt_index({index}, {n}, {_c_string(where)})"
        return f"lt_wrap({index}, {n})"

    def staged_row(self, name: str, index: str, n: int, where: str, scale: int = 1) -> bool:
        """``int64_t name = index`` (checked, times ``scale``); with checks on, also opens ``if (name >= 0)``
        (a bad index is recorded by ``lt_index``, which returns -1: the kernel skips it) and returns True:
        close it, and call :meth:`check_status` after the kernel."""
        checked = self.m.options.check_indices
        scaled = f" * {scale}" if scale != 1 else ""
        self.line(f"int64_t {name} = {self.index_expr(index, n, where)}{scaled};")
        if checked:
            self.open(f"if ({name} >= 0)")
        return checked

    def check_status(self) -> None:
        """After a kernel that may have recorded an error: unwind if it did (kernels never unwind)."""
        self.line("lt_check_status();")

    # ------------------------------------------------------------ check_finite
    @staticmethod
    def finite_where(what: str, stmt: Stmt) -> str:
        """What a non-finite report names: the op (in the gradient of which op), the user's line."""
        loc = stmt.loc
        if loc.adjoint_of:
            what = f"{what} in the gradient of {loc.adjoint_of}"
        text = loc.text()
        return f"{what} at {loc}: {text}" if text else f"{what} at {loc}"

    def check_finite(self, v: Var, where: str) -> None:
        """Check every element of ``v`` (a floating-point value with storage) for NaN/Inf."""
        t = v.type
        if not (self.m.options.check_finite and isinstance(t, TensorType) and t.dtype in FLOATS):
            return
        s = self.storage[v.id]
        if s.kind not in ("pointer", "scalar"):
            return
        sfx = "f32" if t.dtype == "float32" else "f64"
        self.line(f"lt_check_finite_{sfx}({self.ptr(v)}, {t.size}, {_c_string(where)});")
        self.check_status()

    def comment_loc(self, locs: list[Loc]) -> None:
        locs = [loc for loc in dict.fromkeys(locs) if loc.line]
        if not locs or locs == [self.last_loc]:
            return
        self.last_loc = locs[-1]
        if len(locs) == 1:
            text = locs[0].text()
            self.line(_comment(f"{locs[0]}: {text}" if text else str(locs[0])))
        else:
            self.line(_comment("; ".join(f"{loc}: {loc.text()}" for loc in locs)))

    def open_scope(self) -> None:
        self.line("{")
        self.depth += 1

    def loop_nest(self, shape: tuple[int, ...], body: Callable[[list[str]], None], prefix: str = "i") -> None:
        """Nested ``for`` loops over ``shape``; ``body`` gets the index variable names."""
        names = [f"{prefix}{k}" for k in range(len(shape))]
        for name, d in zip(names, shape):
            self.open(f"for (int64_t {name} = 0; {name} < {d}; {name}++)")
        body(names)
        for _ in shape:
            self.close()

    # ------------------------------------------------------------ functions
    def closure(self, v: Var) -> str:
        """``v``, a function value, as a C closure (function pointer plus environment)."""
        s = self.storage[v.id]
        if s.kind == "closure":
            return s.name
        return f"({self.m.cont_type(v.type)}){{ {s.name}, {s.env} }}"  # type: ignore[arg-type]

    def arg(self, v: Var) -> str:
        """How ``v`` is passed to a function or continuation: tensors by pointer, closures by value."""
        return self.closure(v) if isinstance(v.type, FnType) else self.ptr(v)

    def signature(self) -> str:
        params = [f"{self.m.cont_type(p.type)} {self.name(p)}" if isinstance(p.type, FnType)
                  else f"{self.ctype(p)} *{self.name(p)}" for p in self.fn.body.params]
        params += [f"{C_TYPE[t.dtype]} *result{k}" for k, t in enumerate(self.fn.result_types or ())]  # type: ignore[union-attr]
        if self.env_param:
            params.insert(0, "void *env_")  # any continuation can be called through a pointer
        return f"static void {self.c_name}({', '.join(params) or 'void'})"

    def emit(self) -> list[str]:
        body = self.fn.body
        for p in body.params:
            self.storage[p.id] = _Storage("closure" if isinstance(p.type, FnType) else "pointer", self.name(p))
        who = _c_string(f"the gradient's continuation at {self.fn.loc}" if self.env_param
                        else f"{self.fn.name} ({self.fn.loc})")
        if self.fn.name in self.m.recursive or self.env_param:  # continuations may recurse (loops)
            self.line(f"lt_stack_check({who});")
        counted = self.fn.name in self.m.recursive and self.m.options.max_depth > 0
        if counted:
            self.line(f"lt_depth_enter({self.m.options.max_depth}, {who});")
        if self.m.options.check_finite and self.fn.name == self.m.module.entry:
            for p in body.params:  # a NaN passed in is reported as the argument's, not the first op's
                self.check_finite(p, f"argument {p.hint}")
        self.line("lt_mark_t mark = lt_mark();")
        self.block_stmts(body, [f"result{k}" for k in range(len(body.results))])
        for k, r in enumerate(body.results):
            if self.storage[r.id].name != f"result{k}":
                dst = Var(r.type, "result")
                self.storage[dst.id] = _Storage("pointer", f"result{k}")
                self.copy(dst, r)
        self.line("lt_release(mark);")
        if counted:
            self.line("lt_depth--;")
        text = "\n".join(self.lines)
        names = [self.name(p) for p in body.params] + [f"result{k}" for k in range(len(self.fn.result_types or ()))]
        unused = [f"    (void){name}; /* not needed by this signature */" for name in names
                  if not re.search(rf"\b{re.escape(name)}\b", text)]
        return [self.signature(), "{", *unused, *self.env_prologue(text), *self.lines, "}"]

    def env_prologue(self, text: str) -> list[str]:
        """A lambda body's first lines: its environment, and a local copy of each pointer it reads from it.

        Reading ``env->p[j]`` in a loop makes gcc reload the pointer (any store might change
        ``*env``) and vectorize contiguous reads as gathers, several times slower than through
        a local (benchmarks/env_pointer_gather.c).
        """
        if not self.env_param:
            return []
        env_type = self.env_param.split(" *")[0]
        used = [(ctype, name) for ctype, name in self.env_locals
                if re.search(rf"(?<![.>\w]){re.escape(name)}\b", text)]
        if not used and "env->" not in text:
            return ["    (void)env_;"]
        return [f"    {env_type} *env = env_;", *(f"    {ctype} *{name} = env->{name};" for ctype, name in used)]

    @staticmethod
    def _allocates(stmt: Stmt) -> bool:
        if isinstance(stmt, Op):
            return stmt.prim not in ("reshape", "constant") and not (stmt.prim == "fill" and not stmt.outs[0].type.shape)
        return isinstance(stmt, (Fused, If, Call, Apply))

    def block_stmts(self, block: Block, dests: list[str | None] | None = None) -> None:
        """Emit ``block``'s statements.

        Destination passing: ``dests`` names, per result, a buffer the result ends up in (the
        caller's result, an ``if``'s output, a loop's spare state buffer). A result computed by
        a top-level statement of the block is written straight there instead of being copied
        afterwards; the caller's copy then finds the same storage and emits nothing.
        """
        counts: dict[int, int] = {}
        for r in block.results:
            counts[r.id] = counts.get(r.id, 0) + 1
        top_defined = {o.id: s for s in block.stmts for o in s.outs}
        for r, d in zip(block.results, dests or ()):
            s = top_defined.get(r.id)
            if d is not None and counts[r.id] == 1 and s is not None and self._allocates(s):
                self.dest[r.id] = d
        self.find_accumulations(block)
        for stmt in block.stmts:
            if not (isinstance(stmt, Accumulate) and stmt.value.id in self.accumulate_into):
                self.stmt(stmt)

    def find_accumulations(self, block: Block) -> None:
        """``t = a @ b; ...; x_bar += t`` with ``t`` read nowhere else: compute ``t`` into ``x_bar`` with ``+=``.

        Also for elementwise loops. Saves the temporary and a second pass over it (the
        per-step weight gradients of an RNN are such outer products).
        """
        position = {o.id: i for i, s in enumerate(block.stmts) for o in s.outs}
        for j, acc in enumerate(block.stmts):
            if not isinstance(acc, Accumulate) or acc.index is not None or self.uses.get(acc.value.id) != 1:
                continue
            i = position.get(acc.value.id)
            if i is None:
                continue
            producer = block.stmts[i]
            if not ((isinstance(producer, Op) and (producer.prim == "matmul" or
                                                   PRIMITIVES[producer.prim].kind == ELEMENTWISE)
                     and not (producer.prim == "fill" and not producer.outs[0].type.shape))
                    or isinstance(producer, Fused)):
                continue
            between = block.stmts[i:j]  # the producer must not read the target either
            if any(acc.target.id in {v.id for v in reads(s)} for s in between):
                continue
            self.accumulate_into[acc.value.id] = acc.target

    def stmt(self, stmt: Stmt) -> None:
        if isinstance(stmt, Op):
            kind = PRIMITIVES[stmt.prim].kind
            if stmt.prim == "fill" and not stmt.outs[0].type.shape and stmt.outs[0].id not in self.m.mutated:
                # a scalar constant: inlined where it is used, no code (and no comment) here
                self.storage[stmt.outs[0].id] = _Storage("literal", literal(stmt.attrs["value"], stmt.attrs["dtype"]))
                return
            self.comment_loc([stmt.loc])
            if kind == ELEMENTWISE:
                self.elementwise(stmt.outs, stmt.args, stmt.args, [stmt], stmt.outs)
            else:
                getattr(self, f"op_{kind}")(stmt)
                if PRIMITIVES[stmt.prim].may_make_nonfinite:  # (data movement cannot)
                    self.check_finite(stmt.outs[0], self.finite_where(stmt.prim, stmt))
        elif isinstance(stmt, Fused):
            self.comment_loc([s.loc for s in stmt.body.stmts])
            self.elementwise(stmt.outs, stmt.inputs, stmt.body.params, stmt.body.stmts, stmt.body.results)
        elif isinstance(stmt, If):
            self.emit_if(stmt)
        elif isinstance(stmt, Loop):
            self.emit_loop(stmt)
        elif isinstance(stmt, While):
            self.emit_while(stmt)
        elif isinstance(stmt, Call):
            self.comment_loc([stmt.loc])
            for o in stmt.outs:
                self.declare(o)
            args = [self.arg(a) for a in stmt.args] + [self.ptr(o) for o in stmt.outs]
            self.line(f"fn_{stmt.fn}({', '.join(args)});")
        elif isinstance(stmt, Lambda):
            self.emit_lambda(stmt)
        elif isinstance(stmt, Apply):
            self.comment_loc([stmt.loc])
            for o in stmt.outs:
                self.declare(o)
            k = self.storage[stmt.fn.id]
            args = [self.arg(a) for a in stmt.args] + [self.ptr(o) for o in stmt.outs]
            if k.kind == "closure":  # a continuation received as a parameter: call through the pointer
                self.line(f"{k.name}.fn({', '.join([f'{k.name}.env'] + args)});")
            else:  # a continuation made here: a direct call
                self.line(f"{k.name}({', '.join([k.env] + args)});")
        elif isinstance(stmt, Accumulate):
            self.comment_loc([stmt.loc])
            self.emit_accumulate(stmt)
            self.check_finite(stmt.target, self.finite_where(f"the sum of gradients {self.name(stmt.target)}", stmt))
        else:
            raise NotImplementedError(f"C emission of {type(stmt).__name__}")

    # ------------------------------------------------------------ continuations
    def emit_lambda(self, stmt: Lambda) -> None:
        """Closure conversion: a static C function plus an environment struct on this frame.

        Continuations are only called while the frame that made them is live ("downward"),
        so the environment can hold plain pointers to this frame's values and buffers.
        Scalars are captured by address, since the continuation may accumulate into them.
        """
        k = self.m.next_lambda()
        c_name, env_type = f"lambda_{k}", f"struct lambda_{k}_env"
        env = f"cont_env{k}"
        out = stmt.outs[0]
        self.storage[out.id] = _Storage("lambda", c_name, f"&{env}", env_type)  # before capture: letrec
        fields, inits, captured, env_locals = [], [], {}, []
        for v in free_vars(stmt.body):
            s = self.storage[v.id]
            field = self.name(v)
            if s.kind == "literal":
                captured[v.id] = s
                continue
            if s.kind == "lambda":
                fields.append(f"{s.env_type} *{field};")
                inits.append(f".{field} = {s.env}")
                captured[v.id] = _Storage("lambda", s.name, f"env->{field}", s.env_type)
                continue
            if s.kind == "closure":
                fields.append(f"{self.m.cont_type(v.type)} {field};")  # type: ignore[arg-type]
                inits.append(f".{field} = {s.name}")
                captured[v.id] = _Storage("closure", f"env->{field}")
                continue
            fields.append(f"{self.ctype(v)} *{field};")
            inits.append(f".{field} = {self.ptr(v)}")
            env_locals.append((self.ctype(v), field))  # read through a local copy of the pointer
            captured[v.id] = (_Storage("pointer", field) if s.kind == "pointer"
                              else _Storage("scalar", f"(*{field})"))
        self.m.structs.append(f"{env_type} {{\n" + "\n".join(f"    {f}" for f in fields or ["char unused;"]) + "\n};")
        self.line(f"{env_type} {env} = {{ {', '.join(inits) or '0'} }};")
        body_fn = Function(c_name, stmt.body, out.type.results, stmt.loc)  # type: ignore[union-attr]
        sub = FunctionEmitter(self.m, body_fn, c_name, f"{env_type} *env_", captured, env_locals)
        self.m.lambdas.append((sub.signature(), sub.emit(), stmt.loc))

    def emit_accumulate(self, stmt: Accumulate) -> None:
        t, v = stmt.target, stmt.value
        row = v.type.size  # type: ignore[union-attr]
        if row == 0:  # nothing to add and no index to read (passes/empty.py drops these before C)
            return
        if stmt.index is None and not t.type.shape:  # type: ignore[union-attr]
            self.store(t, "0", f"{self.load(t, '0')} + {self.load(v, '0')}")
            return
        self.open_scope()
        index = stmt.index
        k = index.type.size if index is not None else 1  # type: ignore[union-attr]
        row //= k
        if k > 1:
            self.open(f"for (int64_t j = 0; j < {k}; j++)")
        guarded = False
        if index is not None:
            n = t.type.shape[0]  # type: ignore[union-attr]
            guarded = self.staged_row("base", self.load(index, "j" if k > 1 else "0"), n, self.where(stmt), row)
        else:
            self.line("int64_t base = 0;")
        self.open(f"for (int64_t i = 0; i < {row}; i++)")
        self.line(f"{self.ptr(t)}[base + i] += {self.load(v, 'j * ' + str(row) + ' + i' if k > 1 else 'i')};")
        self.close()
        if guarded:
            self.close()
        if k > 1:
            self.close()
        self.close()
        if guarded:
            self.check_status()

    # ------------------------------------------------------------ elementwise loops
    def elementwise(self, outs: list[Var], inputs: list[Var], params: list[Var], body: list[Stmt],
                    results: list[Var]) -> None:
        shape: tuple[int, ...] = body[-1].outs[0].type.shape  # type: ignore[union-attr]
        for o in outs:
            self.declare(o)
        flat = all(i.type.shape == shape or i.type.size == 1 for i in inputs)  # type: ignore[union-attr]
        uses: dict[int, int] = {}
        for s in body:
            for a in s.operands():
                uses[a.id] = uses.get(a.id, 0) + 1
        result_of = {r.id: o for r, o in zip(results, outs)}

        def operand(v: Var, index_for: Callable[[Var], str]) -> str:
            if v.id in local:
                return local[v.id]
            src = bound[v.id]
            return self.load(src, index_for(src))

        # check_finite: each floating-point op's value is checked where it is computed, so the
        # report names the op itself, not the end of its fused group.
        checked = {s.outs[0].id: self.finite_where(s.prim, s) for s in body
                   if self.m.options.check_finite and s.outs[0].type.dtype in FLOATS  # type: ignore[union-attr]
                   and PRIMITIVES[s.prim].may_make_nonfinite}

        def emit_body(index_for: Callable[[Var], str], out_index: str) -> None:
            for s in body:
                assert isinstance(s, Op)
                out = s.outs[0]
                expr = elementwise_expr(s.prim, [a.type.dtype for a in s.args], out.type.dtype,  # type: ignore[union-attr]
                                        [operand(a, index_for) for a in s.args], s.attrs)
                if out.id in result_of and uses.get(out.id, 0) == 0 and out.id not in checked:
                    self.store(result_of[out.id], out_index, expr)
                    continue
                local[out.id] = self.name(out) if out.id not in result_of else self.name(out) + "_v"
                self.line(f"{self.ctype(out)} {local[out.id]} = {expr};")
                if out.id in checked:
                    self.line(f"if (!isfinite({local[out.id]})) lt_nonfinite({_c_string(checked[out.id])}, "
                              f"{local[out.id]}, {out_index});")
                if out.id in result_of:
                    self.store(result_of[out.id], out_index, local[out.id])

        local: dict[int, str] = {}
        bound = {p.id: i for p, i in zip(params, inputs)}
        if not shape:
            emit_body(lambda v: "0", "0")
        elif flat:
            n = prod(shape)
            self.open(f"for (int64_t i = 0; i < {n}; i++)")
            emit_body(lambda v: "i" if v.type.shape == shape else "0", "i")  # type: ignore[union-attr]
            self.close()
        else:
            out_strides = _strides(shape)

            def nest(idx: list[str]) -> None:
                def index_for(v: Var) -> str:
                    vs: tuple[int, ...] = v.type.shape  # type: ignore[union-attr]
                    offset = len(shape) - len(vs)
                    st = _strides(vs)
                    return _index((idx[offset + k], 0 if vs[k] == 1 else st[k]) for k in range(len(vs)))
                emit_body(index_for, _index(zip(idx, out_strides)))
            self.loop_nest(shape, nest)
        if checked:  # a non-finite value was recorded in the loop (kernels never unwind)
            self.check_status()

    # ------------------------------------------------------------ reductions
    def op_reduce(self, op: Op) -> None:
        out = op.outs[0]
        self.declare(out)
        self.open_scope()  # keeps acc/best local to this statement
        if op.prim in ("argmax", "argmin"):
            self.arg_reduce(op)
        else:
            self.sum_max_min(op)
        self.close()

    def sum_max_min(self, op: Op) -> None:
        x, out = op.args[0], op.outs[0]
        xs: tuple[int, ...] = x.type.shape  # type: ignore[union-attr]
        axes = set(op.attrs["axes"])
        x_strides = _strides(xs)
        kept_shape = tuple(1 if d in axes else n for d, n in enumerate(xs))
        o_strides = [0 if d in axes else s for d, s in enumerate(_strides(kept_shape))]
        t = self.ctype(out)
        dtype = out.type.dtype  # type: ignore[union-attr]
        if op.prim == "reduce_sum":
            init, combine = literal(0, dtype), (lambda acc, v: f"{acc} + {v}")
        elif dtype == "bool":  # max is any, min is all
            is_max = op.prim == "reduce_max"
            init = "0" if is_max else "1"
            combine = lambda acc, v: f"({acc} {'|' if is_max else '&'} {v})"  # noqa: E731 (bitwise: see logical_or)
        else:
            fn = "max" if op.prim == "reduce_max" else "min"
            sfx = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64"}[dtype]
            if dtype in FLOATS:
                init = literal(float("-inf") if fn == "max" else float("inf"), dtype)
            else:
                init = f"INT{dtype[3:]}_{'MIN' if fn == 'max' else 'MAX'}"
            combine = lambda acc, v: f"lt_{fn}_{sfx}({acc}, {v})"  # noqa: E731
        # float32 sums accumulate in double: a float32 running sum of 2**25 ones stalls at 2**24.
        wide = op.prim == "reduce_sum" and dtype == "float32"
        acc_t = "double" if wide else t
        src = lambda idx: self.load(x, _index(zip(idx, x_strides)))  # noqa: E731
        if (len(xs) - 1) in axes:
            # Innermost axis reduced: accumulate each output element in a register.
            kept = [d for d in range(len(xs)) if d not in axes]
            red = sorted(axes)
            kept_names = [f"i{d}" for d in kept]
            for d in kept:
                self.open(f"for (int64_t i{d} = 0; i{d} < {xs[d]}; i{d}++)")
            self.line(f"{acc_t} acc = {init};")
            # A float max/min vectorizes as an OpenMP max/min reduction plus a NaN flag (the
            # reduction alone would not say what a NaN does); NaN wins, as in NumPy.
            nan_flag = op.prim != "reduce_sum" and dtype in FLOATS
            if nan_flag:
                self.line("int seen_nan = 0;")
            for d in red:
                if d == red[-1] and dtype in FLOATS:
                    extremum = {"reduce_max": "max", "reduce_min": "min"}.get(op.prim)
                    self.line(SIMD_SUM if op.prim == "reduce_sum"
                              else f"#pragma omp simd reduction({extremum}:acc) reduction(|:seen_nan)")
                self.open(f"for (int64_t i{d} = 0; i{d} < {xs[d]}; i{d}++)")
            value = src([f"i{d}" for d in range(len(xs))])
            if nan_flag:
                self.line(f"{t} v = {value};")
                self.line(f"acc = v {'>' if op.prim == 'reduce_max' else '<'} acc ? v : acc;")
                self.line("seen_nan |= v != v;")
            else:
                self.line(f"acc = {combine('acc', value)};")
            for _ in red:
                self.close()
            if nan_flag:
                self.line(f"if (seen_nan) acc = ({t})NAN;")
            self.store(out, _index(zip(kept_names, [o_strides[d] for d in kept])), f"({t})acc" if wide else "acc")
            for _ in kept:
                self.close()
        else:
            # Innermost axis kept: sweep the input in memory order, updating a row of
            # accumulators (the output itself, or a double buffer for float32 sums).
            n_out = out.type.size  # type: ignore[union-attr]
            if wide:
                self.line(f"double *acc = lt_alloc({n_out} * sizeof(double));")
                self.m.uses_arena = True
            target = (lambda i: f"acc[{i}]") if wide else (lambda i: self.load(out, i))  # noqa: E731
            self.open(f"for (int64_t i = 0; i < {n_out}; i++)")
            self.line(f"{target('i')} = {init};")
            self.close()

            def update(idx: list[str]) -> None:
                o = _index(zip(idx, o_strides))
                self.line(f"{target(o)} = {combine(target(o), src(idx))};")
            self.loop_nest(xs, update)
            if wide:
                self.open(f"for (int64_t i = 0; i < {n_out}; i++)")
                self.store(out, "i", f"({t})acc[i]")
                self.close()

    def arg_reduce(self, op: Op) -> None:
        x, out = op.args[0], op.outs[0]
        xs: tuple[int, ...] = x.type.shape  # type: ignore[union-attr]
        axis = op.attrs["axis"]
        better = ">" if op.prim == "argmax" else "<"
        st = _strides(xs)
        outer = [d for d in range(len(xs)) if d != axis]
        o_shape = tuple(xs[d] for d in outer)
        o_st = _strides(o_shape)
        is_float = x.type.dtype in FLOATS  # type: ignore[union-attr]
        t = self.ctype(x)

        def body(idx: list[str]) -> None:
            base = _index((i, st[d]) for i, d in zip(idx, outer))
            self.line(f"{t} best = {self.load(x, base)};")
            self.line("int64_t best_k = 0;")
            self.open(f"for (int64_t k = 1; k < {xs[axis]}; k++)")
            self.line(f"{t} v = {self.load(x, f'{base} + k * {st[axis]}')};")
            nan = " || (v != v && best == best)" if is_float else ""
            self.open(f"if (v {better} best{nan})")
            self.line("best = v;")
            self.line("best_k = k;")
            self.close()
            self.close()
            self.store(out, _index(zip(idx, o_st)), "best_k")
        self.loop_nest(o_shape, body)

    # ------------------------------------------------------------ matrix product
    def op_matmul(self, op: Op) -> None:
        a, b = op.args
        out = op.outs[0]
        self.declare(out)
        ta, tb = bool(op.attrs.get("trans_a")), bool(op.attrs.get("trans_b"))
        ash, bsh = a.type.shape, b.type.shape  # type: ignore[union-attr]
        batch = out.type.shape[0] if out.type.ndim == 3 else 1  # type: ignore[union-attr]
        m, n = out.type.shape[-2:]  # type: ignore[union-attr]
        k = ash[-2] if ta else ash[-1]
        a_bs = m * k if len(ash) == 3 else 0
        b_bs = k * n if len(bsh) == 3 else 0
        pa, pb, pc = self.ptr(a), self.ptr(b), self.ptr(out)
        dtype = out.type.dtype  # type: ignore[union-attr]
        t = self.ctype(out)
        # A single row or column (vector-matrix products of RNNs) runs faster as a
        # generated loop than through BLAS's general kernels, until it is very large.
        vector = m == 1 or n == 1 or k == 1
        if dtype in FLOATS and m * n * k >= (VECTOR_BLAS_MIN_MACS if vector else BLAS_MIN_MACS):
            self.m.uses_blas = True
            gemm = "lt_cblas_sgemm" if dtype == "float32" else "lt_cblas_dgemm"
            flags = f"CblasRowMajor, {'CblasTrans' if ta else 'CblasNoTrans'}, {'CblasTrans' if tb else 'CblasNoTrans'}"
            beta = 1 if out.id in self.accumulating else 0
            call = (f"{gemm}({flags}, {m}, {n}, {k}, 1, {pa} + {{ao}}, {ash[-1]}, {pb} + {{bo}}, {bsh[-1]}, "
                    f"{beta}, {pc} + {{co}}, {n});")
            if batch == 1:
                self.line(call.format(ao=0, bo=0, co=0).replace(" + 0,", ","))
            else:
                self.open(f"for (int64_t bi = 0; bi < {batch}; bi++)")
                self.line(call.format(ao=f"bi * {a_bs}", bo=f"bi * {b_bs}", co=f"bi * {m * n}"))
                self.close()
            return
        zero = literal(0, dtype)
        batched = batch > 1
        ao, bo, co = ("ao + ", "bo + ", "co + ") if batched else ("", "", "")
        A = ((lambda i, kk: f"{pa}[{ao}{kk} * {m} + {i}]") if ta else (lambda i, kk: f"{pa}[{ao}{i} * {k} + {kk}]"))
        if batched:
            self.open(f"for (int64_t bi = 0; bi < {batch}; bi++)")
            self.line(f"int64_t ao = bi * {a_bs}, bo = bi * {b_bs}, co = bi * {m * n};")
        self.open(f"for (int64_t i = 0; i < {m}; i++)")
        c_row = f"{pc}[{co}i * {n} + "
        op_assign = "+=" if out.id in self.accumulating else "="
        if not tb:
            # i-k-j order, a strip of c's row at a time held in a local array (registers): the
            # innermost loop runs along rows of b (vectorizes), and c is not reloaded per k.
            def strip(j0: str, width: int) -> None:
                self.line(f"{t} acc[{width}];")
                self.open(f"for (int64_t l = 0; l < {width}; l++)")
                self.line(f"acc[l] = {c_row + j0 + ' + l]' if out.id in self.accumulating else zero};")
                self.close()
                self.open(f"for (int64_t kk = 0; kk < {k}; kk++)")
                self.line(f"{t} aik = {A('i', 'kk')};")
                self.line(f"const {t} *b_row = {pb} + {bo}kk * {n} + {j0};")
                self.open(f"for (int64_t l = 0; l < {width}; l++)")
                self.line("acc[l] += aik * b_row[l];")
                self.close()
                self.close()
                self.open(f"for (int64_t l = 0; l < {width}; l++)")
                self.line(f"{c_row}{j0} + l] = acc[l];")
                self.close()

            full = n - n % _STRIP
            if full:
                self.open(f"for (int64_t j0 = 0; j0 < {full}; j0 += {_STRIP})")
                strip("j0", _STRIP)
                self.close()
            if n % _STRIP:
                self.open_scope()
                strip(str(full), n % _STRIP)
                self.close()
        else:
            # b transposed: each element is a dot product of two contiguous rows; four rows of
            # b at a time share the loads of a's row.
            def dots(j: str, rows: int) -> None:
                accs = [f"acc{r}" for r in range(rows)]
                self.line(f"{t} {', '.join(f'{a} = {zero}' for a in accs)};")
                if dtype in FLOATS:
                    self.line(simd_sum(*accs))
                self.open(f"for (int64_t kk = 0; kk < {k}; kk++)")
                self.line(f"{t} aik = {A('i', 'kk')};")
                cols = [f"({j} + {r})" if r else j for r in range(rows)]
                for col, a in zip(cols, accs):
                    self.line(f"{a} += aik * {pb}[{bo}{col} * {k} + kk];")
                self.close()
                for col, a in zip(cols, accs):
                    self.line(f"{c_row}{col}] {op_assign} {a};")

            fours = n - n % 4
            if fours:
                self.open(f"for (int64_t j = 0; j < {fours}; j += 4)")
                dots("j", 4)
                self.close()
            if n % 4:
                self.open(f"for (int64_t j = {fours}; j < {n}; j++)")
                dots("j", 1)
                self.close()
        self.close()
        if batched:
            self.close()

    # ------------------------------------------------------------ data movement
    def op_reshape(self, op: Op) -> None:
        x, out = op.args[0], op.outs[0]
        if not out.type.shape and out.id not in self.dest:  # type: ignore[union-attr]
            self.storage[out.id] = _Storage("scalar", self.name(out))
            self.line(f"{self.ctype(out)} {self.name(out)} = {self.load(x, '0')};")
        elif self.storage[x.id].kind == "literal":
            self.declare(out)
            self.store(out, "0", self.storage[x.id].name)
        else:
            self.bind_pointer(out, self.ptr(x))  # same bytes, new shape: no copy

    def op_constant(self, op: Op) -> None:
        out = op.outs[0]
        value: np.ndarray = op.attrs["value"]
        data = self.m.constant_array(value, self.name(out))
        self.bind_pointer(out, f"({self.ctype(out)} *){data}")

    def op_iota(self, op: Op) -> None:
        out = op.outs[0]
        self.declare(out)
        a = op.attrs
        # Integer bounds count in int64 (exact beyond 2**53), others in double.
        exact = all(isinstance(v, (int, np.integer)) for v in (a["start"], a["step"]))
        via, i = ("int64", "i") if exact else ("float64", "(double)i")
        self.open(f"for (int64_t i = 0; i < {a['n']}; i++)")
        self.store(out, "i", f"({self.ctype(out)})({literal(a['start'], via)} + {literal(a['step'], via)} * {i})")
        self.close()

    def op_transpose(self, op: Op) -> None:
        x, out = op.args[0], op.outs[0]
        self.declare(out)
        st = _strides(x.type.shape)  # type: ignore[union-attr]
        perm = op.attrs["perm"]
        shape: tuple[int, ...] = out.type.shape  # type: ignore[union-attr]
        o_st = _strides(shape)
        names = [f"i{k}" for k in range(len(shape))]

        def copy(idx: list[str]) -> None:
            self.store(out, _index(zip(idx, o_st)), self.load(x, _index((idx[k], st[p]) for k, p in enumerate(perm))))

        # The output axis that walks the input's contiguous (last) axis: if it is not the output's
        # last axis too, one side is read or written with a stride. Square tiles of those two
        # axes keep both sides within cache lines (3x faster for an 800 x 200 matrix).
        across, last = perm.index(len(perm) - 1), len(shape) - 1
        if across == last or min(shape[across], shape[last]) < _TILE:
            self.loop_nest(shape, copy)
            return
        self.line(f"/* {_TILE} x {_TILE} tiles */")
        for k in range(len(shape)):
            if k not in (across, last):
                self.open(f"for (int64_t i{k} = 0; i{k} < {shape[k]}; i{k}++)")
        for k in (across, last):
            self.open(f"for (int64_t t{k} = 0; t{k} < {shape[k]}; t{k} += {_TILE})")
        for k in (across, last):
            end = (f"t{k} + {_TILE}" if shape[k] % _TILE == 0
                   else f"(t{k} + {_TILE} < {shape[k]} ? t{k} + {_TILE} : {shape[k]})")
            self.open(f"for (int64_t i{k} = t{k}; i{k} < {end}; i{k}++)")
        copy(names)
        for _ in range(len(shape) + 2):
            self.close()

    def op_slice(self, op: Op) -> None:
        x, out = op.args[0], op.outs[0]
        self.declare(out)
        st = _strides(x.type.shape)  # type: ignore[union-attr]
        a = op.attrs
        base = sum(s * t for s, t in zip(a["starts"], st))
        oshape = out.type.shape  # type: ignore[union-attr]
        o_st = _strides(oshape)
        # Axes of extent 1 get no loop (their index is 0).
        loops = tuple(d for d in oshape if d != 1)

        def body(names: list[str]) -> None:
            it = iter(names)
            idx = [next(it) if d != 1 else None for d in oshape]
            self.store(out, _index((i, c) for i, c in zip(idx, o_st) if i),
                       self.load(x, _index(((idx[k], a["steps"][k] * st[k]) for k in range(len(st)) if idx[k]), base)))
        self.loop_nest(loops, body)

    def op_concatenate(self, op: Op) -> None:
        out = op.outs[0]
        self.declare(out)
        axis = op.attrs["axis"]
        o_st = _strides(out.type.shape)  # type: ignore[union-attr]
        offset = 0
        for x in op.args:
            xs = x.type.shape  # type: ignore[union-attr]
            x_st = _strides(xs)
            base = offset * o_st[axis]
            self.loop_nest(xs, lambda idx, x=x, x_st=x_st, base=base: self.store(
                out, _index(zip(idx, o_st), base), self.load(x, _index(zip(idx, x_st)))))
            offset += xs[axis]

    def op_take(self, op: Op) -> None:
        x, idx = op.args
        out = op.outs[0]
        self.declare(out)
        axis = op.attrs["axis"]
        xs = x.type.shape  # type: ignore[union-attr]
        pre, n, inner = prod(xs[:axis]), xs[axis], prod(xs[axis + 1:])
        m = idx.type.size  # type: ignore[union-attr]
        where = f"{self.where(op)}: indexing axis {axis} of shape {tuple(xs)}"
        if out.type.size == 0:  # type: ignore[union-attr]
            if self.m.options.check_indices:  # nothing to copy, but NumPy still checks every index
                self.open(f"for (int64_t j = 0; j < {m}; j++)")
                self.line(f"(void){self.index_expr('(int64_t)' + self.load(idx, 'j'), n, where)};")
                self.close()
                self.check_status()
            return
        # Loops of extent 1 are left out (their index is 0).
        p, j, r = ("p" if pre > 1 else None), ("j" if m > 1 else None), ("r" if inner > 1 else None)
        if not (p or j):
            self.open_scope()  # keeps `row` local
        for var, extent in ((p, pre), (j, m)):
            if var:
                self.open(f"for (int64_t {var} = 0; {var} < {extent}; {var}++)")
        guarded = self.staged_row("row", "(int64_t)" + self.load(idx, j or "0"), n, where)
        if r:
            self.open(f"for (int64_t r = 0; r < {inner}; r++)")
        terms = lambda *ts: _index((v, c) for v, c in ts if v)  # noqa: E731
        self.store(out, terms((p, m * inner), (j, inner), (r, 1)), self.load(x, terms((p, n * inner), ("row", inner), (r, 1))))
        if r:
            self.close()
        if guarded and self.storage[out.id].kind == "scalar":  # (the C compiler cannot see that a bad index
            self.close("} else {")                              # unwinds before the value is read)
            self.depth += 1
            self.store(out, "0", literal(0, out.type.dtype))  # type: ignore[union-attr]
        for _ in range(sum(1 for v in (p, j) if v) + (not (p or j)) + guarded):
            self.close()
        if guarded:
            self.check_status()

    def op_random(self, op: Op) -> None:
        """random_uniform: counter-based uniform [0, 1) values from an int64 key (lt_uniform_* in the runtime)."""
        key, out = op.args[0], op.outs[0]
        self.declare(out)
        uniform = "lt_uniform_f32" if out.type.dtype == "float32" else "lt_uniform_f64"  # type: ignore[union-attr]
        self.open_scope()  # keeps `seed` local
        self.line(f"uint64_t seed = lt_random_seed({self.load(key, '0')});")
        if out.type.shape:  # type: ignore[union-attr]
            self.open(f"for (int64_t i = 0; i < {out.type.size}; i++)")  # type: ignore[union-attr]
            self.store(out, "i", f"{uniform}(seed, i)")
            self.close()
        else:
            self.store(out, "0", f"{uniform}(seed, 0)")
        self.close()

    def zero(self, v: Var) -> None:
        self.line(f"memset({self.ptr(v)}, 0, {v.type.nbytes});")  # type: ignore[union-attr]

    def op_unslice(self, op: Op) -> None:
        """Adjoint of a slice: zeros, with the value written where the slice read."""
        g, out = op.args[0], op.outs[0]
        self.declare(out)
        self.zero(out)
        st = _strides(out.type.shape)  # type: ignore[union-attr]
        a = op.attrs
        base = sum(s * t for s, t in zip(a["starts"], st))
        g_st = _strides(g.type.shape)  # type: ignore[union-attr]
        self.loop_nest(g.type.shape, lambda idx: self.store(  # type: ignore[union-attr]
            out, _index(((idx[k], a["steps"][k] * st[k]) for k in range(len(st))), base),
            self.load(g, _index(zip(idx, g_st)))))

    def op_scatter(self, op: Op) -> None:
        """Adjoint of take: zeros, with each row of the value added at its index (repeats add up)."""
        g, idx = op.args
        out = op.outs[0]
        self.declare(out)
        self.zero(out)
        axis = op.attrs["axis"]
        os_ = out.type.shape  # type: ignore[union-attr]
        pre, n, inner = prod(os_[:axis]), os_[axis], prod(os_[axis + 1:])
        m = idx.type.size  # type: ignore[union-attr]
        self.open(f"for (int64_t p = 0; p < {pre}; p++)")
        self.open(f"for (int64_t j = 0; j < {m}; j++)")
        guarded = self.staged_row("row", "(int64_t)" + self.load(idx, "j"), n, self.where(op))
        self.open(f"for (int64_t r = 0; r < {inner}; r++)")
        self.line(f"{self.ptr(out)}[(p * {n} + row) * {inner} + r] += {self.load(g, f'(p * {m} + j) * {inner} + r')};")
        for _ in range(3 + guarded):
            self.close()
        if guarded:
            self.check_status()

    # ------------------------------------------------------------ control flow
    def emit_if(self, stmt: If) -> None:
        self.comment_loc([stmt.loc])
        for o in stmt.outs:
            self.declare(o)
        self.open(f"if ({self.load(stmt.pred, '0')})")
        self.branch(stmt.then_block, stmt.outs)
        self.close("} else {")
        self.depth += 1
        self.branch(stmt.else_block, stmt.outs)
        self.close()
        self.last_loc = None

    def branch(self, block: Block, outs: list[Var]) -> None:
        self.last_loc = None
        self.block_stmts(block, [self.storage[o.id].name if self.storage[o.id].kind == "pointer" else None
                                 for o in outs])
        for o, r in zip(outs, block.results):
            self.copy(o, r)

    def carried_state(self, outs: list[Var], init: list[Var]) -> list[str | None]:
        """Declare the loop state (= the statement's outs); arrays get a second buffer."""
        nexts: list[str | None] = []
        for o, i in zip(outs, init):
            self.declare(o)
            self.copy(o, i)
            if self.storage[o.id].kind == "pointer" and o.type.shape:  # type: ignore[union-attr]
                nxt = "next_" + self.name(o)  # ends in the var's number, like every numbered name
                self.line(f"{self.ctype(o)} *{nxt} = lt_alloc({o.type.nbytes});")  # type: ignore[union-attr]
                nexts.append(nxt)
            else:
                nexts.append(None)
        return nexts

    def bind_params(self, params: list[Var], outs: list[Var], block: Block) -> None:
        """Bind a loop block's parameters to the carried state (scalars by copy, when read)."""
        read = {v.id for s in walk_stmts(block) for v in s.operands()} | {r.id for r in block.results}
        for p, o in zip(params, outs):
            s = self.storage[o.id]
            if s.kind == "pointer":
                self.storage[p.id] = _Storage("pointer", s.name)
            elif p.id not in read:
                continue  # an unread C local would draw -Wunused-variable
            else:
                self.storage[p.id] = _Storage("scalar", self.name(p))
                self.line(f"{self.ctype(p)} {self.name(p)} = {s.name};")

    def update_state(self, outs: list[Var], nexts: list[str | None], results: list[Var]) -> None:
        # Arrays: copy every new value into the spare buffer, then swap buffers, so a
        # result that aliases another carried value is never overwritten early.
        for o, nxt, r in zip(outs, nexts, results):
            if nxt is not None and self.storage[r.id].name != nxt:  # else computed in place
                self.line(f"memcpy({nxt}, {self.ptr(r)}, {o.type.nbytes});")  # type: ignore[union-attr]
        for o, nxt, r in zip(outs, nexts, results):
            if nxt is None:
                self.copy(o, r)  # scalars: body params hold copies, so order is irrelevant
            else:
                name = self.storage[o.id].name
                self.line(f"{{ {self.ctype(o)} *swap = {name}; {name} = {nxt}; {nxt} = swap; }}")

    def emit_loop(self, stmt: Loop) -> None:
        self.comment_loc([stmt.loc])
        nexts = self.carried_state(stmt.outs, stmt.init)
        i, *carried = stmt.body.params
        self.storage[i.id] = _Storage("scalar", self.name(i))
        hi = self.fresh("hi")
        self.line(f"int64_t {hi} = {self.load(stmt.hi, '0')};")
        self.open(f"for (int64_t {self.name(i)} = {self.load(stmt.lo, '0')}; {self.name(i)} < {hi}; {self.name(i)}++)")
        mark = self.fresh("iteration")
        self.line(f"lt_mark_t {mark} = lt_mark();")
        self.bind_params(carried, stmt.outs, stmt.body)
        self.last_loc = None
        self.block_stmts(stmt.body, nexts)
        self.update_state(stmt.outs, nexts, stmt.body.results)
        self.line(f"lt_release({mark});")
        self.close()
        self.last_loc = None

    def emit_while(self, stmt: While) -> None:
        self.comment_loc([stmt.loc])
        nexts = self.carried_state(stmt.outs, stmt.init)
        self.open("for (;;)")
        mark = self.fresh("iteration")
        self.line(f"lt_mark_t {mark} = lt_mark();")
        self.bind_params(stmt.cond.params, stmt.outs, stmt.cond)
        self.last_loc = None
        self.block_stmts(stmt.cond)
        self.open(f"if (!{self.load(stmt.cond.results[0], '0')})")
        self.line(f"lt_release({mark});")
        self.line("break;")
        self.close()
        self.bind_params(stmt.body.params, stmt.outs, stmt.body)
        self.block_stmts(stmt.body, nexts)
        self.update_state(stmt.outs, nexts, stmt.body.results)
        self.line(f"lt_release({mark});")
        self.close()
        self.last_loc = None


class ModuleEmitter:
    def __init__(self, module: Module, title: str, options: EmitOptions = EmitOptions()):
        self.module = module
        self.title = title
        self.options = options
        self.uses_blas = False
        self.uses_arena = False
        self.constants: list[str] = []
        self.recursive = recursive_functions(module)
        self.names = Namer()
        self.structs: list[str] = []
        self.typedefs: list[str] = []
        self.cont_types: dict[FnType, str] = {}
        self.lambdas: list[tuple[str, list[str], Loc]] = []
        self._lambda_count = 0
        #: variables that may be updated in place (adjoint buffers, and anything passed by
        #: reference to a function or continuation): never inlined as literals
        self.mutated = set().union(*(set(accumulation_targets(fn.body)) | passed_by_reference(fn.body)
                                     for fn in module.functions.values()))

    def cont_type(self, t: FnType) -> str:
        """The C closure type for continuations of type ``t`` (declared once per type)."""
        name = self.cont_types.get(t)
        if name is None:
            name = self.cont_types[t] = f"lt_cont_{len(self.cont_types) + 1}"
            if not all(isinstance(p, TensorType) for p in t.params + t.results):
                raise NotImplementedError("continuations taking continuations")
            args = ["void *env"] + [f"{C_TYPE[p.dtype]} *" for p in t.params]  # type: ignore[union-attr]
            args += [f"{C_TYPE[r.dtype]} *" for r in t.results]  # type: ignore[union-attr]
            self.typedefs.append(f"/* a continuation {t} */\ntypedef struct {{\n    void (*fn)({', '.join(args)});\n"
                                 f"    void *env;\n}} {name};")
        return name

    def next_lambda(self) -> int:
        self._lambda_count += 1
        return self._lambda_count

    def constant_array(self, value: np.ndarray, name: str) -> str:
        cname = f"{name}_data"
        dtype = value.dtype.name
        items = [literal(x, dtype) for x in value.ravel().tolist()]
        rows = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)]
        body = ",\n    ".join(rows)
        self.constants.append(f"static const {C_TYPE[dtype]} {cname}[{max(len(items), 1)}] = {{\n    {body or '0'}\n}};")
        return cname

    def emit(self) -> CSource:
        entry = self.module.entry_function
        functions = [self.module.functions[n] for n in self.module.functions if n != self.module.entry] + [entry]
        bodies, prototypes = [], []
        for fn in functions:
            fe = FunctionEmitter(self, fn)
            lines = fe.emit()
            bodies.append("\n".join([_comment(f"IR function @{fn.name}, from {fn.loc}") if fn.loc.line else "", *lines]).strip())
            prototypes.append(fe.signature() + ";")
        for signature, lines, loc in self.lambdas:
            bodies.append("\n".join([_comment(f"continuation (the rest of the program after {loc})"), *lines]))
            prototypes.append(signature + ";")
        params = [f"void *{self.names(p)}" for p in entry.body.params]
        params += [f"void *result{k}" for k in range(len(entry.result_types or ()))]
        args = [f"({C_TYPE[p.type.dtype]} *){self.names(p)}" for p in entry.body.params]  # type: ignore[union-attr]
        args += [f"({C_TYPE[t.dtype]} *)result{k}" for k, t in enumerate(entry.result_types or ())]  # type: ignore[union-attr]
        wrapper = [
            "/* Exported entry point: returns 0, or an error code with the message in lantern_error(). */",
            f"int lantern_entry({', '.join(params) or 'void'})",
            "{",
            "    lt_mark_t mark = lt_mark();",
            "    lt_status = LT_OK;",
            *(["    lt_stack_init();"] if self.recursive or self.lambdas else []),
            "    switch (setjmp(lt_unwind)) {",
            "    case 0:",
            "        break;",
            *[line for code in ERROR_CODES if code != "LT_OK" for line in (
                f"    case {code}:", "        lt_release(mark);", f"        return {code};")],
            "    default:",
            "        lt_release(mark);",
            "        return LT_ERR_MEMORY;",
            "    }",
            *(["    lt_depth = 0;"] if self.recursive and self.options.max_depth > 0 else []),
            f"    fn_{entry.name}({', '.join(args)});",
            "    lt_release(mark);",
            "    return LT_OK;",
            "}",
            "",
            "const char *lantern_error(void) { return lt_error_text; }",
            "size_t lantern_arena_in_use(void) { return lt_arena_in_use(); }",
        ]
        sig = format_function(entry, self.names).splitlines()[0].removeprefix("func ").rstrip(":")
        header = [
            "/*",
            f" * Generated by lantern from {self.title}"
            + (f" ({os.path.basename(entry.loc.file)}:{entry.loc.line})." if entry.loc.line else "."),
            f" * IR signature: {sig}",
            " * Inputs and results are C-contiguous arrays; see lantern_entry at the end.",
            " */",
        ]
        includes = (["#define LANTERN_USE_BLAS"] if self.uses_blas else []) + ['#include "lantern_runtime.h"']
        parts = ["\n".join(header), "\n".join(includes)]
        if self.constants:
            parts.append("\n".join(self.constants))
        if self.typedefs:
            parts.append("\n\n".join(self.typedefs))
        if self.structs:
            parts.append("\n\n".join(self.structs))
        parts.append("\n".join(prototypes))
        parts.extend(bodies)
        parts.append("\n".join(wrapper))
        text = "\n\n".join(parts) + "\n"
        return CSource(text, "lantern_entry", len(entry.body.params), len(entry.result_types or ()), self.uses_blas)


def emit_module(module: Module, title: str, options: EmitOptions = EmitOptions()) -> CSource:
    """C source for ``module``; ``title`` names the user's function in the header comment."""
    return ModuleEmitter(module, title, options).emit()
