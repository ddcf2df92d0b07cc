"""What a kernel sees of the function it is emitted into: where each value lives (a scalar local, a
pointer, an inlined literal) and how to read, write, declare and check it, and the C builder.

The host emitter (``codegen/emit_c.py``) is a :class:`KernelContext` too; it decides storage for
control flow, destinations and continuations, and calls the kernels (``codegen/kernels``).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lantern.ir.nodes import Function, Stmt, Var
from lantern.ir.symbolic import hint, known_equal
from lantern.ir.types import TensorType
from lantern.source import Loc

from ..c_types import C_TYPE, FLOATS
from ..cbuilder import CBuilder, c_string, comment
from ..memory_plan import Buffers, worth_freeing

if TYPE_CHECKING:
    from ..emit_c import ModuleEmitter

#: Allocations this large name their value and line in the C, for the out-of-memory message.
_NAMED_ALLOCATION = 1 << 30


class Storage:
    """Where a value lives in C: ``kind`` is 'scalar', 'pointer', 'literal', 'lambda' (a continuation
    made here: its C function and environment) or 'closure' (a continuation received as a value).

    ``base`` (and ``env_base`` for a lambda's environment) is the C variable an access reads: what
    :meth:`KernelContext.use` records, so the emitter knows which parameters the C reads."""

    __slots__ = ("kind", "name", "env", "env_type", "base", "env_base")

    def __init__(self, kind: str, name: str, env: str = "", env_type: str = "", base: str | None = None,
                 env_base: str = ""):
        self.kind = kind  # 'scalar', 'pointer', 'literal', 'lambda' or 'closure'
        self.name = name  # C name (an lvalue), the literal text, or the lambda's C function
        self.env = env    # for a lambda: pointer expression of its environment
        self.env_type = env_type  # and the environment's struct type
        self.base = base if base is not None else (name if kind in ("scalar", "pointer", "closure") else "")
        self.env_base = env_base


class KernelContext:
    """The storage of one C function's values, and the builder of its body."""

    def __init__(self, module_emitter: ModuleEmitter, fn: Function):
        self.m = module_emitter
        self.fn = fn
        self.c = CBuilder()
        self.storage: dict[int, Storage] = {}
        self.dest: dict[int, str] = {}  # result var id -> the buffer it is computed into
        self.accumulate_into: dict[int, Var] = {}  # value id -> the buffer it is added to
        self.accumulating: set[int] = set()        # variables whose stores are +=
        self.last_loc: Loc | None = None
        self.referenced: set[str] = set()  # C variables the code emitted so far reads or writes
        #: the arena buffers this function made, as (C name, bytes), with their views (the memory plan frees them)
        self.buffers = Buffers()

    def use(self, s: Storage) -> Storage:
        """``s``, recorded as read or written by the code being emitted."""
        self.referenced.update(b for b in (s.base, s.env_base) if b)
        return s

    def ctype(self, v: Var) -> str:
        return C_TYPE[v.type.dtype]  # type: ignore[union-attr]

    def name(self, v: Var) -> str:
        return self.m.names(v)

    def load(self, v: Var, index: str) -> str:
        s = self.use(self.storage[v.id])
        if s.kind == "pointer":
            return f"{s.name}[{index if v.type.shape else '0'}]"  # type: ignore[union-attr]
        return s.name

    def ptr(self, v: Var) -> str:
        s = self.use(self.storage[v.id])
        if s.kind == "pointer":
            return s.name
        if s.kind == "scalar":
            return f"&{s.name}"
        return f"({self.ctype(v)}[1]){{{s.name}}}"

    def store(self, v: Var, index: str, expr: str) -> None:
        s = self.use(self.storage[v.id])
        op = "+=" if v.id in self.accumulating else "="
        if s.kind == "pointer":
            self.c.line(f"{s.name}[{index if v.type.shape else '0'}] {op} {expr};")  # type: ignore[union-attr]
        else:
            self.c.line(f"{s.name} {op} {expr};")

    def declare(self, v: Var) -> None:
        """Give ``v`` fresh storage: a scalar local, the result buffer, or arena memory."""
        t: TensorType = v.type  # type: ignore[assignment]
        target = self.accumulate_into.get(v.id)
        if target is not None:  # computed straight into the buffer it is added to
            self.storage[v.id] = self.storage[target.id]
            self.accumulating.add(v.id)
        elif v.id in self.dest:
            self.storage[v.id] = Storage("pointer", self.dest[v.id])
        elif t.shape == ():
            self.storage[v.id] = Storage("scalar", self.name(v))
            self.c.line(f"{self.ctype(v)} {self.name(v)};")
        elif self.reuse(v):
            pass
        else:
            self.storage[v.id] = Storage("pointer", self.name(v))
            if hint(t.nbytes) >= _NAMED_ALLOCATION and self.last_loc is not None:
                site = c_string(f"{self.name(v)}: {t} at {self.last_loc}: {self.last_loc.text()}")
                self.c.line(f"{self.ctype(v)} *{self.name(v)} = lt_alloc_at({t.nbytes}, {site});")
            else:
                self.c.line(f"{self.ctype(v)} *{self.name(v)} = lt_alloc({t.nbytes});")
            self.m.uses_arena = True
            self.buffers.make(v, (self.name(v), t.nbytes))
            self.mark_if_empty(v)

    def reuse(self, v: Var) -> bool:
        """Give ``v`` the buffer of the operand that dies where it is made, if the memory plan says so and
        the buffer is this function's own (with no view)."""
        memory = self.m.plan.memory
        x = memory.reuses.get(v.id) if memory is not None else None
        taken = self.buffers.take(v, x) if x is not None else None
        if taken is None:
            return False
        self.storage[v.id] = Storage("pointer", taken[0])  # (the C pointer that buffer was made as)
        self.c.line(comment(f"{self.name(v)}: in the buffer of {self.name(x)}, read here for the last time"))
        return True

    def free_dead(self, dead: list[Var]) -> None:
        """Free the buffers whose last value (a buffer and its views) is in ``dead`` (the memory plan)."""
        for v in dead:
            freed = self.buffers.dead(v)
            if freed is not None and worth_freeing(freed[1]):
                self.c.line(f"lt_free({freed[0]}, {freed[1]});")

    def mark_if_empty(self, v: Var) -> None:
        """An empty array's pointer may never be read (its loops run zero times): say so to the compiler."""
        if known_equal(v.type.size, 0):  # type: ignore[union-attr]
            self.c.line(f"(void){self.name(v)}; /* empty */")

    def bind_pointer(self, v: Var, expr: str, view_of: Var | None = None) -> None:
        """``v`` is the memory at ``expr``: ``view_of``'s buffer (which then lives as long as ``v``), or not
        an arena buffer."""
        self.storage[v.id] = Storage("pointer", self.name(v))
        self.c.line(f"{self.ctype(v)} *{self.name(v)} = {expr};")
        if view_of is not None:
            self.buffers.view(v, view_of)
        self.mark_if_empty(v)

    def copy(self, dst: Var, src: Var) -> None:
        """dst = src (same type); dst already has storage."""
        d, s = self.storage[dst.id], self.storage[src.id]
        if s.kind == d.kind and s.name == d.name:
            return  # already there (destination passing)
        if d.kind != "pointer" or not dst.type.shape:  # type: ignore[union-attr]
            self.store(dst, "0", self.load(src, "0"))
        else:
            self.c.line(f"memcpy({self.use(d).name}, {self.ptr(src)}, {dst.type.nbytes});")  # type: ignore[union-attr]

    def zero(self, v: Var) -> None:
        self.c.line(f"memset({self.ptr(v)}, 0, {v.type.nbytes});")  # type: ignore[union-attr]

    def where(self, stmt: Stmt) -> str:
        return f"{os.path.basename(stmt.loc.file)}:{stmt.loc.line}"

    def index_expr(self, index: str, n: int, where: str) -> str:
        """A staged index into an axis of size ``n``: checked (``lt_index``) unless ``check_indices`` is off."""
        if self.m.options.check_indices:
            return f"lt_index({index}, {n}, {c_string(where)})"
        return f"lt_wrap({index}, {n})"

    def staged_row(self, name: str, index: str, n: int, where: str, scale: int = 1) -> bool:
        """``int64_t name = index`` (checked, times ``scale``); with checks on, also opens ``if (name >= 0)``
        (a bad index is recorded by ``lt_index``, which returns -1: the kernel skips it) and returns True:
        close it, and call :meth:`check_status` after the kernel."""
        checked = self.m.options.check_indices
        scaled = f" * {scale}" if scale != 1 else ""
        self.c.line(f"int64_t {name} = {self.index_expr(index, n, where)}{scaled};")
        if checked:
            self.c.open(f"if ({name} >= 0)")
        return checked

    def check_status(self) -> None:
        """After a kernel that may have recorded an error: unwind if it did (kernels never unwind)."""
        self.c.line("lt_check_status();")

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
        self.c.line(f"lt_check_finite_{sfx}({self.ptr(v)}, {t.size}, {c_string(where)});")
        self.check_status()

    def comment_loc(self, locs: list[Loc]) -> None:
        locs = [loc for loc in dict.fromkeys(locs) if loc.line]
        if not locs or locs == [self.last_loc]:
            return
        self.last_loc = locs[-1]
        if len(locs) == 1:
            text = locs[0].text()
            self.c.line(comment(f"{locs[0]}: {text}" if text else str(locs[0])))
        else:
            self.c.line(comment("; ".join(f"{loc}: {loc.text()}" for loc in locs)))
