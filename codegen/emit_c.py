"""Emit one readable C11 file for a prepared IR module: the host program; for a large module, also the
same code as translation units that compile in parallel (``codegen/units.py``).

Every IR function becomes a ``static void`` C function (hidden, not static, in a unit) taking
pointers to its inputs and to its (caller-allocated) results; every continuation a C function
taking its environment. The entry function also gets an exported wrapper, ``lantern_entry``,
that sets up error unwinding and releases the arena.

Three layers: ``codegen/lowering.py`` decides where values live (results computed in place,
values added into gradient buffers, inlined literals, continuations' environments); this
module writes functions, control flow, continuations and the arena's marks; the kernel
table (``codegen/kernels``) writes each operation's loops. All C goes through the builder
of ``codegen/cbuilder.py``.

Storage of a variable:
  * rank-0 values computed locally are C scalars (``float t_5``);
  * constants of rank 0 are inlined as literals;
  * everything else is a pointer into the arena, a parameter, a static constant
    array, or (for a function's results) the caller's result buffer.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from lantern.ir.nodes import (Accumulate, Apply, Block, Call, Function, Fused, If, Lambda, Loop, Module, Op, Stmt,
                              Var, While, walk_stmts)
from lantern.ir.names import Namer
from lantern.ir.passes import recursive_functions
from lantern.ir.primitives import ELEMENTWISE, PRIMITIVES
from lantern.ir.analysis import entry_sizes
from lantern.ir.printer import format_function
from lantern.ir.types import FnType, TensorType
from lantern.runtime import ERROR_CODES
from lantern.source import Loc

from .c_types import C_TYPE, literal
from .cbuilder import c_string, comment
from .kernels import KERNELS, KernelContext, Storage
from .kernels import elementwise as elementwise_kernels
from .kernels import indexing
from . import units
from .lowering import lower_module
from .memory_plan import worth_freeing
from .passes.outline import is_glue


@dataclass(frozen=True)
class EmitOptions:
    """Checks compiled into the C (they change its text, hence its cache key).

    ``check_indices``: staged indices (take, scatter_add, indexed accumulation, so also the
    child indices of a recursive tree walk) are checked against their axis; off, they only
    wrap negative values, as NumPy does, and an index out of range is undefined behaviour.
    ``check_finite``: every floating-point result (elementwise ops, reductions, products,
    gradient accumulations) and every floating-point argument is checked for NaN/Inf.
    ``max_depth``: recursive staged functions fail beyond this depth (0: only the C stack limits).
    ``memory_plan``: buffers are freed after their last use and elementwise results may reuse a dying
    operand's buffer (``codegen/memory_plan.py``); off, every buffer lives until its function returns.
    """

    check_indices: bool = True
    check_finite: bool = False
    max_depth: int = 0
    memory_plan: bool = True


@dataclass
class CSource:
    text: str
    entry: str
    num_inputs: int
    num_outputs: int
    uses_blas: bool
    #: the run-time sizes ``lantern_entry`` takes after the results, in order: (name, input, axis) of
    #: where a call's value is read
    sizes: tuple[tuple[str, int, int], ...] = ()
    #: a large module's translation units (``text`` is all of them as one file), else ()
    units: tuple[units.Unit, ...] = ()


class FunctionEmitter(KernelContext):
    """One IR function as a C function: its body's statements, control flow and continuations; the
    kernels (``codegen/kernels``) emit the loops of its operations."""

    def __init__(self, module_emitter: ModuleEmitter, fn: Function, c_name: str | None = None,
                 env_param: str = "", captured: dict[int, Storage] | None = None,
                 env_locals: list[tuple[str, str]] | None = None):
        super().__init__(module_emitter, fn)
        self.c_name = c_name or f"fn_{fn.name}"
        self.env_param = env_param  # "struct lambda_3_env *env" for a lambda body
        # (C type, name) of environment pointers a lambda body reads through a local of that name
        self.env_locals = env_locals or []
        if captured:
            self.storage.update(captured)

    def closure(self, v: Var) -> str:
        """``v``, a function value, as a C closure (function pointer plus environment)."""
        s = self.use(self.storage[v.id])
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
        # The IR's inliner decided which functions stay functions (shared blocks, parts of long bodies that
        # compile separately); the C compiler is not to undo that. And the entry function inlined into
        # run_entry would share a frame with a setjmp, where a local whose address is taken may be clobbered.
        keep = not self.env_param and (self.fn.name == self.m.module.entry or self.fn.name not in self.m.recursive)
        return f"static{' __attribute__((noinline))' if keep else ''} void {self.c_name}({', '.join(params) or 'void'})"

    def emit(self) -> list[str]:
        body = self.fn.body
        for p in body.params:
            self.storage[p.id] = Storage("closure" if isinstance(p.type, FnType) else "pointer", self.name(p))
        who = c_string(f"the gradient's continuation at {self.fn.loc}" if self.env_param
                        else f"{self.fn.name} ({self.fn.loc})")
        if self.fn.name in self.m.recursive or self.env_param:  # continuations may recurse (loops)
            self.c.line(f"lt_stack_check({who});")
            self.c.line("lt_poll_interrupt();")
        counted = self.fn.name in self.m.recursive and self.m.options.max_depth > 0
        if counted:
            self.c.line(f"lt_depth_enter({self.m.options.max_depth}, {who});")
        if self.m.options.check_finite and self.fn.name == self.m.module.entry:
            for p in body.params:  # a NaN passed in is reported as the argument's, not the first op's
                self.check_finite(p, f"argument {p.hint}")
        self.c.line("lt_mark_t mark = lt_mark();")
        self.block_stmts(body, [f"result{k}" for k in range(len(body.results))])
        for k, r in enumerate(body.results):
            if self.storage[r.id].name != f"result{k}":
                dst = Var(r.type, "result")
                self.storage[dst.id] = Storage("pointer", f"result{k}")
                self.copy(dst, r)
        self.c.line("lt_release(mark);")
        if counted:
            self.c.line("lt_depth--;")
        names = [self.name(p) for p in body.params] + [f"result{k}" for k in range(len(self.fn.result_types or ()))]
        unused = [f"    (void){name}; /* not needed by this signature */" for name in names
                  if name not in self.referenced]
        return [self.signature(), "{", *unused, *self.env_prologue(), *self.m.size_prologue(self.c.lines),
                *self.c.lines, "}"]

    def env_prologue(self) -> list[str]:
        """A lambda body's first lines: its environment, and a local copy of each pointer it reads from it.

        Reading ``env->p[j]`` in a loop makes gcc reload the pointer (any store might change
        ``*env``) and vectorize contiguous reads as gathers, several times slower than through
        a local (benchmarks/env_pointer_gather.c).
        """
        if not self.env_param:
            return []
        env_type = self.env_param.split(" *")[0]
        used = [(ctype, name) for ctype, name in self.env_locals if name in self.referenced]
        if not used and "env" not in self.referenced:
            return ["    (void)env_;"]
        return [f"    {env_type} *env = env_;", *(f"    {ctype} *{name} = env->{name};" for ctype, name in used)]

    def block_stmts(self, block: Block, dests: list[str | None] | None = None) -> None:
        """Emit ``block``'s statements.

        Destination passing: ``dests`` names, per result, a buffer the result ends up in (the
        caller's result, an ``if``'s output, a loop's spare state buffer). A result computed by
        a top-level statement of the block is written straight there instead of being copied
        afterwards; the caller's copy then finds the same storage and emits nothing.
        """
        for r, d in zip(block.results, dests or ()):
            if r.id in self.m.plan.dest:  # (lowering.py decided; the caller names the buffer)
                assert d is not None, f"no buffer for {r}"
                self.dest[r.id] = d
        for stmt in block.stmts:
            if isinstance(stmt, Accumulate) and stmt.value.id in self.m.plan.into:
                self.accumulate_into[stmt.value.id] = stmt.target
        memory = self.m.plan.memory
        dead: list[Var] = []
        for stmt in block.stmts:
            if memory is not None:
                dead += memory.dies_after.get(id(stmt), ())
            if len(stmt.outs) == 1 and stmt.outs[0].id in self.m.plan.in_reduction:
                continue  # (computed in the loop of the reduction that reads it: what it reads dies after that)
            if not (isinstance(stmt, Accumulate) and stmt.value.id in self.accumulate_into):
                self.stmt(stmt)
            self.free_dead(dead)
            dead = []

    def stmt(self, stmt: Stmt) -> None:
        match stmt:
            case Op(prim="fill") if stmt.outs[0].id in self.m.plan.literals:
                # a scalar constant: inlined where it is used, no code (and no comment) here
                self.storage[stmt.outs[0].id] = Storage("literal", literal(stmt.attrs["value"], stmt.attrs["dtype"]))
            case Op():
                self.comment_loc([stmt.loc])
                card = PRIMITIVES[stmt.prim]
                KERNELS[card.kind](self, stmt)
                if card.kind != ELEMENTWISE and card.may_make_nonfinite:  # (elementwise loops check each value)
                    self.check_finite(stmt.outs[0], self.finite_where(stmt.prim, stmt))
            case Fused():
                self.comment_loc([s.loc for s in stmt.body.stmts])
                elementwise_kernels.fused(self, stmt)
            case If():
                self.emit_if(stmt)
            case Loop():
                self.emit_loop(stmt)
            case While():
                self.emit_while(stmt)
            case Call():
                self.c.line(f"fn_{stmt.fn}({', '.join(self.call_arguments(stmt))});")
            case Lambda():
                self.emit_lambda(stmt)
            case Apply():
                args = self.call_arguments(stmt)
                k = self.use(self.storage[stmt.fn.id])
                if k.kind == "closure":  # a continuation received as a parameter: call through the pointer
                    self.c.line(f"{k.name}.fn({', '.join([f'{k.name}.env'] + args)});")
                else:  # a continuation made here: a direct call
                    self.c.line(f"{k.name}({', '.join([k.env] + args)});")
            case Accumulate():
                self.comment_loc([stmt.loc])
                indexing.accumulate(self, stmt)
                self.check_finite(stmt.target, self.finite_where(f"the sum of gradients {self.name(stmt.target)}", stmt))
            case _:
                raise NotImplementedError(f"C emission of {type(stmt).__name__}")

    def call_arguments(self, stmt: Call | Apply) -> list[str]:
        """A call's C arguments: its operands, then pointers to its results (declared here)."""
        self.comment_loc([stmt.loc])
        for o in stmt.outs:
            self.declare(o)
        return [self.arg(a) for a in stmt.args] + [self.ptr(o) for o in stmt.outs]

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
        self.storage[out.id] = Storage("lambda", c_name, f"&{env}", env_type)  # before capture: letrec
        fields, inits, captured, env_locals = [], [], {}, []
        for v in self.m.plan.captures[out.id]:
            s = self.storage[v.id]
            field = self.name(v)
            if s.kind == "literal":
                captured[v.id] = s
                continue
            if s.kind == "lambda":
                fields.append(f"{s.env_type} *{field};")
                inits.append(f".{field} = {self.use(s).env}")
                captured[v.id] = Storage("lambda", s.name, f"env->{field}", s.env_type, env_base="env")
                continue
            if s.kind == "closure":
                fields.append(f"{self.m.cont_type(v.type)} {field};")  # type: ignore[arg-type]
                inits.append(f".{field} = {self.use(s).name}")
                captured[v.id] = Storage("closure", f"env->{field}", base="env")
                continue
            fields.append(f"{self.ctype(v)} *{field};")
            inits.append(f".{field} = {self.ptr(v)}")
            env_locals.append((self.ctype(v), field))  # read through a local copy of the pointer
            captured[v.id] = (Storage("pointer", field) if s.kind == "pointer"
                              else Storage("scalar", f"(*{field})", base=field))
        self.m.piece.structs.append(f"{env_type} {{\n" + "\n".join(f"    {f}" for f in fields or ["char unused;"]) + "\n};")
        self.c.line(f"{env_type} {env} = {{ {', '.join(inits) or '0'} }};")
        body_fn = Function(c_name, stmt.body, out.type.results, stmt.loc)  # type: ignore[union-attr]
        sub = FunctionEmitter(self.m, body_fn, c_name, f"{env_type} *env_", captured, env_locals)
        self.m.piece.lambdas.append((sub.signature(), sub.emit(), stmt.loc))

    def emit_if(self, stmt: If) -> None:
        self.comment_loc([stmt.loc])
        for o in stmt.outs:
            self.declare(o)
        self.c.open(f"if ({self.load(stmt.pred, '0')})")
        self.branch(stmt.then_block, stmt.outs)
        self.c.close("} else {")
        self.c.depth += 1
        self.branch(stmt.else_block, stmt.outs)
        self.c.close()
        self.last_loc = None

    def branch(self, block: Block, outs: list[Var]) -> None:
        self.last_loc = None
        self.block_stmts(block, [self.storage[o.id].name if self.storage[o.id].kind == "pointer" else None
                                 for o in outs])
        for o, r in zip(outs, block.results):
            self.copy(o, r)
        if self.m.plan.memory is not None:
            self.free_dead(self.m.plan.memory.results_of[id(block)])

    def carried_state(self, outs: list[Var], init: list[Var]) -> list[str | None]:
        """Declare the loop state (= the statement's outs); arrays get a second buffer (freed by
        :meth:`free_spares` after the loop)."""
        nexts: list[str | None] = []
        for o, i in zip(outs, init):
            self.declare(o)
            self.copy(o, i)
            if self.storage[o.id].kind == "pointer" and o.type.shape:  # type: ignore[union-attr]
                nxt = "next_" + self.name(o)  # ends in the var's number, like every numbered name
                self.c.line(f"{self.ctype(o)} *{nxt} = lt_alloc({o.type.nbytes});")  # type: ignore[union-attr]
                nexts.append(nxt)
            else:
                nexts.append(None)
        return nexts

    def free_spares(self, outs: list[Var], nexts: list[str | None]) -> None:
        if self.m.plan.memory is not None:
            for o, nxt in zip(outs, nexts):
                if nxt is not None and worth_freeing(o.type.nbytes):  # type: ignore[union-attr]
                    self.c.line(f"lt_free({nxt}, {o.type.nbytes});")  # type: ignore[union-attr]

    def bind_params(self, params: list[Var], outs: list[Var], block: Block) -> None:
        """Bind a loop block's parameters to the carried state (scalars by copy, when read)."""
        read = {v.id for s in walk_stmts(block) for v in s.operands()} | {r.id for r in block.results} | {
            r.id for s in walk_stmts(block) for b in s.blocks() for r in b.results}  # (a branch may yield it)
        for p, o in zip(params, outs):
            s = self.storage[o.id]
            if s.kind == "pointer":
                self.storage[p.id] = Storage("pointer", s.name, base=s.base)
            elif p.id not in read:
                continue  # an unread C local would draw -Wunused-variable
            else:
                self.storage[p.id] = Storage("scalar", self.name(p))
                self.c.line(f"{self.ctype(p)} {self.name(p)} = {self.use(s).name};")

    def update_state(self, outs: list[Var], nexts: list[str | None], results: list[Var]) -> None:
        # Arrays: copy every new value into the spare buffer, then swap buffers, so a
        # result that aliases another carried value is never overwritten early.
        for o, nxt, r in zip(outs, nexts, results):
            if nxt is not None and self.storage[r.id].name != nxt:  # else computed in place
                self.c.line(f"memcpy({nxt}, {self.ptr(r)}, {o.type.nbytes});")  # type: ignore[union-attr]
        for o, nxt, r in zip(outs, nexts, results):
            if nxt is None:
                self.copy(o, r)  # scalars: body params hold copies, so order is irrelevant
            else:
                name = self.use(self.storage[o.id]).name
                self.c.line(f"{{ {self.ctype(o)} *swap = {name}; {name} = {nxt}; {nxt} = swap; }}")

    def emit_loop(self, stmt: Loop) -> None:
        self.comment_loc([stmt.loc])
        nexts = self.carried_state(stmt.outs, stmt.init)
        i, *carried = stmt.body.params
        self.storage[i.id] = Storage("scalar", self.name(i))
        hi = self.c.fresh("hi")
        self.c.line(f"int64_t {hi} = {self.load(stmt.hi, '0')};")
        self.c.open(f"for (int64_t {self.name(i)} = {self.load(stmt.lo, '0')}; {self.name(i)} < {hi}; {self.name(i)}++)")
        self.c.line("lt_poll_interrupt();")
        mark = self.c.fresh("iteration")
        self.c.line(f"lt_mark_t {mark} = lt_mark();")
        self.bind_params(carried, stmt.outs, stmt.body)
        self.last_loc = None
        self.block_stmts(stmt.body, nexts)
        self.update_state(stmt.outs, nexts, stmt.body.results)
        self.c.line(f"lt_release({mark});")
        self.c.close()
        self.free_spares(stmt.outs, nexts)
        self.last_loc = None

    def emit_while(self, stmt: While) -> None:
        self.comment_loc([stmt.loc])
        nexts = self.carried_state(stmt.outs, stmt.init)
        self.c.open("for (;;)")
        self.c.line("lt_poll_interrupt();")
        mark = self.c.fresh("iteration")
        self.c.line(f"lt_mark_t {mark} = lt_mark();")
        self.bind_params(stmt.cond.params, stmt.outs, stmt.cond)
        self.last_loc = None
        self.block_stmts(stmt.cond)
        self.c.open(f"if (!{self.load(stmt.cond.results[0], '0')})")
        self.c.line(f"lt_release({mark});")
        self.c.line("break;")
        self.c.close()
        self.bind_params(stmt.body.params, stmt.outs, stmt.body)
        self.block_stmts(stmt.body, nexts)
        self.update_state(stmt.outs, nexts, stmt.body.results)
        self.c.line(f"lt_release({mark});")
        self.c.close()
        self.free_spares(stmt.outs, nexts)
        self.last_loc = None


@dataclass
class Piece:
    """The C of one IR function: its definition, its continuations, and the environment structs and
    constant arrays they use (a translation unit is made of whole pieces)."""

    name: str
    signature: str
    body: list[str]  # the definition after its signature line
    comment: str = ""
    lambdas: list[tuple[str, list[str], Loc]] = field(default_factory=list)
    structs: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)

    #: the function only calls others (what ``codegen/passes/outline.py`` leaves of a long body): run once
    #: per call, it compiles at a low optimisation level
    glue: bool = False

    @property
    def lines(self) -> int:
        return len(self.body) + sum(len(body) for _, body, _ in self.lambdas)


class ModuleEmitter:
    def __init__(self, module: Module, title: str, options: EmitOptions = EmitOptions()):
        self.module = module
        self.title = title
        self.options = options
        self.uses_blas = False
        self.uses_arena = False
        self.recursive = recursive_functions(module)
        self.names = Namer()
        self.typedefs: list[str] = []
        self.cont_types: dict[FnType, str] = {}
        self.piece = Piece("", "", [])  # the one being emitted: its continuations, structs and constants
        self._lambda_count = 0
        # destinations, accumulate-into, reductions of elementwise values, literals, closure captures
        self.plan = lower_module(module, fuse_reductions=not options.check_finite, memory_plan=options.memory_plan)
        self.sizes = entry_sizes(module)  # run-time sizes, in the order lantern_entry receives them

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

    def size_prologue(self, lines: list[str]) -> list[str]:
        """Local copies of the run-time sizes a function's ``lines`` read (set per call by ``lantern_entry``)."""
        text = "\n".join(lines)
        params = self.module.entry_function.body.params
        return [f"    const int64_t {name} = lt_size[{k}]; /* {params[i].hint}.shape[{axis}] */"
                for k, (name, i, axis) in enumerate(self.sizes) if re.search(rf"\b{name}\b", text)]

    def next_lambda(self) -> int:
        self._lambda_count += 1
        return self._lambda_count

    def constant_array(self, value: np.ndarray, name: str) -> str:
        cname = f"{name}_data"
        dtype = value.dtype.name
        items = [literal(x, dtype) for x in value.ravel().tolist()]
        rows = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)]
        body = ",\n    ".join(rows)
        self.piece.constants.append(
            f"static const {C_TYPE[dtype]} {cname}[{max(len(items), 1)}] = {{\n    {body or '0'}\n}};")
        return cname

    def emit_piece(self, fn: Function) -> Piece:
        self.piece = Piece(fn.name, "", [])
        fe = FunctionEmitter(self, fn)
        signature, *body = fe.emit()
        self.piece.signature, self.piece.body = signature, body
        self.piece.comment = comment(f"IR function @{fn.name}, from {fn.loc}") if fn.loc.line else ""
        self.piece.glue = is_glue(fn)
        return self.piece

    def emit(self) -> CSource:
        entry = self.module.entry_function
        functions = [self.module.functions[n] for n in self.module.functions if n != self.module.entry] + [entry]
        pieces = [self.emit_piece(fn) for fn in functions]
        self.pieces_by_name = {p.name: p for p in pieces}
        wrapper = self.wrapper(any(p.lambdas for p in pieces))
        text = self.assemble(pieces, wrapper)
        groups = units.plan([p.lines for p in pieces], [p.glue for p in pieces])
        unit_texts: tuple[units.Unit, ...] = ()
        if len(groups) > 1:
            unit_texts = tuple(units.Unit(self.assemble([pieces[i] for i in group], wrapper if k == 0 else [],
                                                        (k, len(groups))), pieces[group[0]].glue)
                               for k, group in enumerate(groups))
        return CSource(text, "lantern_entry", len(entry.body.params), len(entry.result_types or ()), self.uses_blas,
                       self.sizes, unit_texts)

    def wrapper(self, has_lambdas: bool) -> list[str]:
        """``run_entry`` and the exported functions the loader calls."""
        entry = self.module.entry_function
        params = [f"void *{self.names(p)}" for p in entry.body.params]
        params += [f"void *result{k}" for k in range(len(entry.result_types or ()))]
        params += ["const void *sizes"] if self.sizes else []
        args = [f"({C_TYPE[p.type.dtype]} *)arg[{k}]" for k, p in enumerate(entry.body.params)]  # type: ignore[union-attr]
        args += [f"({C_TYPE[t.dtype]} *)arg[{len(entry.body.params) + k}]"  # type: ignore[union-attr]
                 for k, t in enumerate(entry.result_types or ())]
        pointers = [self.names(p) for p in entry.body.params] + [f"result{k}" for k in range(len(entry.result_types or ()))]
        deep = bool(self.recursive or has_lambdas)  # recursion, or continuations (loops under grad)
        return [
            "/* The entry function, unwound to on an error (lt_fail, lt_check_status). */",
            "static int run_entry(void **arg, uintptr_t stack_low, uintptr_t stack_high)",
            "{",
            *(["    (void)arg;"] if not args else []),
            "    lt_mark_t mark = lt_mark();",
            "    lt_status = LT_OK;",
            *(["    lt_stack_set(stack_low, stack_high);"] if deep else
              ["    (void)stack_low; /* no recursion: no stack checks */", "    (void)stack_high;"]),
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
            "/* Exported entry point: returns 0, or an error code with the message in lantern_error(). */",
            f"int lantern_entry({', '.join(params) or 'void'})",
            "{",
            f"    void *arg[] = {{ {', '.join(pointers)} }};" if pointers else "    void **arg = NULL;",
            *(["    memcpy(lt_size, sizes, sizeof lt_size); /* this call's run-time sizes */"] if self.sizes else []),
            f"    return lt_run_entry(run_entry, arg, {int(deep)}{' /* recursion: on the own stack */' if deep else ''});",
            "}",
            "",
            "const char *lantern_error(void) { return lt_error_text; }",
            "size_t lantern_arena_in_use(void) { return lt_arena_in_use(); }",
            "/* The most bytes of intermediates this thread's arena has held at once (then from now, if reset). */",
            "size_t lantern_arena_high(int reset)",
            "{",
            "    size_t high = lt_arena_high;",
            "    if (reset)",
            "        lt_arena_high = lt_arena_below + (lt_arena_current ? lt_arena_current->used : 0);",
            "    return high;",
            "}",
            "/* lantern_process.h: the first module a process loads serves the others (Ctrl-C, own stacks). */",
            "const void *lantern_process_init(unsigned long main_thread) { return lt_process_init(main_thread); }",
            "void lantern_use_process(const void *table)",
            "{",
            "    lt_process = (const lt_process_t *)table;",
            "    lt_interrupt_flag = lt_process->flag;",
            "}",
        ]

    def assemble(self, pieces: list[Piece], wrapper: list[str], unit: tuple[int, int] | None = None) -> str:
        """A C file of ``pieces`` (and ``wrapper``): the whole module, or translation unit ``unit`` = (k, n) of
        n, whose module functions are hidden rather than static and whose runtime state is unit 0's."""
        entry = self.module.entry_function
        sig = format_function(entry, self.names).splitlines()[0].removeprefix("func ").rstrip(":")
        header = [
            "/*",
            f" * Generated by lantern from {self.title}"
            + (f" ({os.path.basename(entry.loc.file)}:{entry.loc.line})." if entry.loc.line else "."),
            f" * IR signature: {sig}",
            " * Inputs and results are C-contiguous arrays; see lantern_entry at the end.",
            *([f" * Translation unit {unit[0]} of {unit[1]} (compiled in parallel, linked together)."] if unit else []),
            " */",
        ]
        includes = ([f"#define LANTERN_UNIT {unit[0]}"] if unit else []) + (
            ["#define LANTERN_USE_BLAS"] if self.uses_blas else []) + ['#include "lantern_runtime.h"']
        linkage = "LT_HIDDEN" if unit else "static"

        def signature(piece: Piece) -> str:
            return linkage + piece.signature.removeprefix("static")

        text_of_bodies = "\n".join([*(line for p in pieces for line in p.body),
                                    *(line for p in pieces for _, body, _ in p.lambdas for line in body)])
        if unit:  # prototypes of the functions this unit calls, not of all (its text, hence its key, stays put)
            own = {p.name for p in pieces}
            declared = [p for p in self.pieces_by_name.values()
                        if p.name in own or re.search(rf"\bfn_{re.escape(p.name)}\(", text_of_bodies)]
        else:
            declared = list(self.pieces_by_name.values())
        parts = ["\n".join(header), "\n".join(includes)]
        if self.sizes:
            names = ", ".join(name for name, _, _ in self.sizes)
            parts.append(f"/* The run-time sizes of this call ({names}): see lantern_entry. */\n"
                         f"LT_SHARED _Thread_local int64_t lt_size[{len(self.sizes)}];")
        constants = [c for p in pieces for c in p.constants]
        structs = [st for p in pieces for st in p.structs]
        if constants:
            parts.append("\n".join(constants))
        if self.typedefs:
            parts.append("\n\n".join(self.typedefs))
        if structs:
            parts.append("\n\n".join(structs))
        parts.append("\n".join([signature(p) + ";" for p in declared] +
                               [lambda_signature + ";" for p in pieces for lambda_signature, _, _ in p.lambdas]))
        for p in pieces:
            parts.append("\n".join([p.comment, signature(p), *p.body]).strip())
        for p in pieces:
            for _, lines, loc in p.lambdas:
                parts.append("\n".join([comment(f"continuation (the rest of the program after {loc})"), *lines]))
        if wrapper:
            parts.append("\n".join(wrapper))
        return "\n\n".join(parts) + "\n"


def emit_module(module: Module, title: str, options: EmitOptions = EmitOptions()) -> CSource:
    """C source for ``module``; ``title`` names the user's function in the header comment."""
    return ModuleEmitter(module, title, options).emit()
