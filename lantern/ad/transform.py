"""Reverse-mode AD as a continuation-passing transformation of the IR (Wang et al., ICFP 2019).

The transformer walks a block with a *meta-level* continuation ``k`` (a Python callable
that emits "the rest of the program" and returns the function's final values). For a
primitive ``y = f(x)`` it emits the forward statement and a zero adjoint ``y_bar``, lets
the rest of the block (and ``k``) be emitted, then emits ``x_bar += f_vjp(x, y, y_bar)``.
Straight-line code therefore comes out as forward statements, then the backward ones in
reverse order: no tape, no closures.

Only control flow makes the continuation real:

* ``If``: the rest of the program becomes one IR ``Lambda`` (a continuation with free
  variables, closure-converted in C to a function plus an environment on the stack),
  applied at the end of each branch's forward part; each branch then runs its backward part.
* counted ``Loop`` with static bounds: the forward loop stores each iteration's carried
  state and the results of its products and transcendental functions in ``[n, ...]``
  arrays; after the rest of the program, a reverse loop recomputes the rest of each
  iteration's forward part from them and runs its backward part (a loop-invariant
  matrix's gradient is summed after it, by one product of the stacked rows). (CPS through
  the loop would nest one C frame per iteration; this keeps the C stack flat for loops of
  any length, at the price of recomputing the body's cheap elementwise work.)
* ``While`` (and a counted loop with staged bounds, rewritten as one): the trip count is
  known only at run time, so the loop is written in CPS as a continuation that applies
  itself (``loop(state, state_bar)``: if the condition holds, run the body and call
  ``loop`` on the new state, then run the body's backward part; otherwise run the rest of
  the program). Each iteration is one C frame holding its own intermediates until its
  backward part has run; the stack guard turns a too-deep loop into a clean error.
* ``Call`` of a recursive function ``f``: ``f`` gets a CPS version
  ``f_cps(args, args_bar, k)`` that runs ``f``'s forward part, calls ``k(results,
  results_bar)`` (the rest of the caller, as a continuation value: a function pointer and
  an environment in C), then runs ``f``'s backward part into ``args_bar``. Adjoint
  buffers travel by reference, so parameters used at every node of a tree receive the
  sum over all nodes.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from .. import ops
from ..errors import TraceError
from ..ir.nodes import (Accumulate, Apply, Block, Call, Function, If, Lambda, Loop, Op, Stmt, Var, While, free_vars,
                        walk_stmts)
from ..ir.primitives import PRIMITIVES
from ..ir.rewrite import clone_block, map_blocks
from ..ir.symbolic import Size, hint
from ..ir.types import FLOAT_DTYPES, FnType, TensorType, scalar
from ..tensor import Tensor
from ..tracing import Frame, with_location
from .rules import Rows, unbroadcast

Continuation = Callable[[], list[Tensor]]

# A counted loop's forward part stores the results of primitives marked ``saved_in_loops`` for
# its backward part (JAX's scan residuals): products and transcendental functions are the
# expensive part of a body (an LSTM cell's five sigmoid/tanh are 20 % of its step); the rest is
# recomputed from them and the stored state, where it fuses.
#: At most this many bytes of such stored results per loop (beyond, the rest is recomputed;
#: public, so the trace cache keys on it).
LOOP_RESIDUAL_MAX_BYTES = 1 << 28

#: A counted loop's stacked operands for summing its weight gradients after the reverse loop
#: stay below this many bytes (beyond it, each iteration adds its product as before).
STACKED_GRADIENT_MAX_BYTES = 1 << 28


class _StackedGradient:
    """The gradient of a loop-invariant matrix ``b`` in ``a @ op(b)`` inside a counted loop.

    Per iteration it would be ``op(a_t)^T @ g_t``, a read-modify-write of all of ``b_bar``; the
    reverse loop instead stores ``a_t`` and ``g_t`` as rows of two stacks, and one product of
    the stacks after the loop adds the sum over iterations (cuDNN's batched weight gradient).
    (A plain class: a dataclass's generated ``__init__`` would lend its argument names to the
    stacks' variables, see ``tracing.user_variable_names``.)
    """

    def __init__(self, product: Op, rows: Tensor, rows_bar: Tensor, rows_saved: bool):
        self.product = product  # the body's ``a @ op(b)``
        self.a = rows           # [n, m, k]: the rows of a, one block per iteration
        self.g = rows_bar       # [n, m, p]: the adjoint of the product, likewise
        #: ``a`` is loop state or a residual, whose stack the forward loop filled: its rows are not copied again
        self.a_saved = rows_saved


def _bound(value: object) -> int | Size:
    """A counted loop's bound known while tracing: a constant, or a run-time size (``len(xs)``)."""
    return value if isinstance(value, Size) else int(value)  # type: ignore[call-overload]


def _is_float(v: Var) -> bool:
    return isinstance(v.type, TensorType) and v.type.dtype in FLOAT_DTYPES


def activity(block: Block, active: set[int]) -> None:
    """Add to ``active`` every variable of ``block`` that depends differentiably on one in it."""
    for s in block.stmts:
        if isinstance(s, Op):
            if PRIMITIVES[s.prim].differentiable and any(a.id in active for a in s.args):
                active.update(o.id for o in s.outs if _is_float(o))
        elif isinstance(s, If):
            for b in s.blocks():
                activity(b, active)
            for k, o in enumerate(s.outs):
                if _is_float(o) and any(b.results[k].id in active for b in s.blocks()):
                    active.add(o.id)
        elif isinstance(s, (Loop, While)):
            carried = s.body.params[1:] if isinstance(s, Loop) else s.body.params
            params = [carried] + ([s.cond.params] if isinstance(s, While) else [])
            while True:  # fixpoint: a carried value becomes active once its update is
                for ps in params:
                    active.update(p.id for p, x in zip(ps, s.init) if x.id in active and _is_float(p))
                before = len(active)
                for b in s.blocks():
                    activity(b, active)
                for ps in params:
                    active.update(p.id for p, r in zip(ps, s.body.results) if r.id in active and _is_float(p))
                if len(active) == before:
                    break
            active.update(o.id for o, p in zip(s.outs, carried) if p.id in active)
        elif isinstance(s, Call):
            if any(a.id in active for a in s.args):
                active.update(o.id for o in s.outs if _is_float(o))
        elif isinstance(s, Accumulate) and s.row_store:
            if s.value.id in active and _is_float(s.target):
                active.add(s.target.id)
        else:
            raise TypeError(f"activity of {type(s).__name__}")


def usefulness(block: Block, useful: set[int]) -> None:
    """Add to ``useful`` every variable that ``useful`` ones depend on differentiably (reverse reachability)."""
    for s in reversed(block.stmts):
        if isinstance(s, Op):
            if PRIMITIVES[s.prim].differentiable and s.outs[0].id in useful:
                useful.update(a.id for a in s.args)
        elif isinstance(s, If):
            for k, o in enumerate(s.outs):
                if o.id in useful:
                    useful.update(b.results[k].id for b in s.blocks())
            for b in s.blocks():
                usefulness(b, useful)
        elif isinstance(s, (Loop, While)):
            carried = s.body.params[1:] if isinstance(s, Loop) else s.body.params
            while True:  # fixpoint over iterations
                before = len(useful)
                for k, (o, p) in enumerate(zip(s.outs, carried)):
                    if o.id in useful or p.id in useful:
                        useful.add(s.body.results[k].id)
                usefulness(s.body, useful)
                useful.update(x.id for x, p in zip(s.init, carried) if p.id in useful)
                if len(useful) == before:
                    break
        elif isinstance(s, Call):
            if any(o.id in useful for o in s.outs):
                useful.update(a.id for a in s.args)
        elif isinstance(s, Accumulate) and s.row_store:
            if s.target.id in useful:
                useful.add(s.value.id)


class Differentiator:
    """Emits, into ``frame``, the CPS-transformed body of one function."""

    def __init__(self, frame: Frame, fn: Function, wrt: list[int], loss_index: int,
                 cps: Callable[[str, tuple, tuple[bool, ...]], str] | None = None, final_types: tuple | None = None):
        self.frame = frame
        self.fn = fn
        self.wrt = wrt
        self.loss_index = loss_index
        #: name of a recursive function's CPS version, for continuations returning ``final_types``
        self.cps = cps
        self.final_types = final_types if final_types is not None else tuple(r.type for r in fn.body.results)
        self.val: dict[int, Tensor] = {}   # old variable -> its value in the new function
        self.adj: dict[int, Tensor] = {}   # old variable -> its adjoint buffer
        self.static: dict[int, int | float | bool] = {}  # old 0-d constants
        #: old variables a loop's backward part reads from the forward part's stores
        self.residual: dict[int, Tensor] = {}
        #: products (by old result) whose weight gradient the enclosing reverse loop stacks
        self.stacked: dict[int, _StackedGradient] = {}
        self.stack_row: Tensor | None = None  # that loop's row in its stacks
        #: what each counted loop body being recomputed by its backward part defines (innermost last): a
        #: row store into a stack made outside that body is not redone (it happened in the forward pass)
        self.replayed: list[set[int]] = []
        # A variable needs an adjoint if it depends on a differentiated input (active) and
        # the differentiated outputs depend on it (useful).
        self.active: set[int] = {fn.body.params[i].id for i in wrt if _is_float(fn.body.params[i])}
        activity(fn.body, self.active)
        # (A CPS body hands all its results to a continuation: any of them may matter.)
        useful = ({fn.body.results[loss_index].id} if final_types is None
                  else {r.id for r in fn.body.results if _is_float(r)})
        usefulness(fn.body, useful)
        self.active &= useful

    # ------------------------------------------------------------ helpers
    def tensor(self, v: Var) -> Tensor:
        return Tensor(v, self.frame)

    def zeros_for(self, old: Var) -> None:
        """A zero adjoint buffer ``<name>_bar`` for an active variable."""
        if old.id in self.active:
            self.adj[old.id] = self.zeros(old, f"{old.hint}_bar")

    def zeros(self, like: Var, hint: str) -> Tensor:
        t: TensorType = like.type  # type: ignore[assignment]
        return self.tensor(self.frame.emit("fill", [], {"value": 0, "shape": t.shape, "dtype": t.dtype}, hint=hint))

    def accumulate(self, old: Var, contribution: Tensor | Rows | None) -> None:
        """``old_bar += contribution`` (summed back over broadcast axes)."""
        target = self.adj.get(old.id)
        if target is None or contribution is None:
            return
        if isinstance(contribution, Rows):
            rows = ops.astype(contribution.rows, target.dtype)
            self.frame.add(Accumulate([], loc=self.frame.loc_override or self.fn.loc, target=target.var,
                                      value=rows.var, index=contribution.index.var))
            return
        value = ops.astype(unbroadcast(contribution, target.shape), target.dtype)
        self.frame.add(Accumulate([], loc=self.frame.loc_override or self.fn.loc, target=target.var, value=value.var))

    def at(self, stmt: Stmt) -> None:
        self.frame.loc_override = stmt.loc

    # ------------------------------------------------------------ the transformation
    def run(self, params: list[Var]) -> list[Tensor]:
        """Bind the new function's ``params``; return its results: the values, then the gradients."""
        self.frame.loc_override = self.fn.loc
        for old, new in zip(self.fn.body.params, params):
            self.val[old.id] = self.tensor(new)
            self.zeros_for(old)
        values = self.block(self.fn.body.stmts, self.final)
        grads = []
        for i in self.wrt:
            p = self.fn.body.params[i]
            grads.append(self.adj[p.id] if p.id in self.adj else ops.zeros(p.type.shape, p.type.dtype))  # type: ignore[union-attr]
        return values + grads

    def run_cps(self, params: list[Var], bars: list[Var], k: Var) -> list[Tensor]:
        """The body of ``f_cps(params, bars, k)``: forward, ``k(results, results_bar)``, backward into ``bars``."""
        self.frame.loc_override = self.fn.loc
        for old, new in zip(self.fn.body.params, params):
            self.val[old.id] = self.tensor(new)
        for i, bar in zip(self.wrt, bars, strict=True):
            old = self.fn.body.params[i]
            if old.id in self.active:
                self.adj[old.id] = self.tensor(bar)  # the caller's buffers, by reference

        def call_k() -> list[Tensor]:
            self.frame.loc_override = self.fn.loc
            results = self.fn.body.results
            result_bars = {i: self.zeros(r, f"{r.hint}_bar") for i, r in enumerate(results) if _is_float(r)}
            outs = [Var(t, "result") for t in self.final_types]
            self.frame.add(Apply(outs, loc=self.fn.loc, fn=k,
                                 args=[self.val[r.id].var for r in results] + [b.var for b in result_bars.values()]))
            for i, b in result_bars.items():
                self.accumulate(results[i], b)
            return [self.tensor(v) for v in outs]

        return self.block(self.fn.body.stmts, call_k)

    def final(self) -> list[Tensor]:
        """The innermost continuation: seed d loss / d loss = 1, hand back the forward values."""
        loss = self.fn.body.results[self.loss_index]
        self.frame.loc_override = self.fn.loc
        self.accumulate(loss, ops.ones((), loss.type.dtype))  # type: ignore[union-attr]
        return [self.val[r.id] for r in self.fn.body.results]

    def block(self, stmts: list[Stmt], k: Continuation) -> list[Tensor]:
        """Forward part of ``stmts``, then ``k``, then the backward part; returns ``k``'s values."""
        done: list[Op | Accumulate] = []
        for idx, s in enumerate(stmts):
            if isinstance(s, Op):
                self.forward_op(s)
                done.append(s)
                continue
            if isinstance(s, Accumulate) and s.row_store:
                self.forward_row_store(s)
                done.append(s)
                continue
            rest = stmts[idx + 1:]
            result = self.control(s, lambda: self.block(rest, k))
            break
        else:
            result = k()
        for s in reversed(done):
            self.backward_op(s)
        return result

    def forward_op(self, s: Op) -> None:
        self.at(s)
        out = s.outs[0]
        if out.id in self.residual:  # stored by the forward loop: not recomputed
            self.val[out.id] = self.residual[out.id]
            self.zeros_for(out)
            return
        new = Var(out.type, out.hint)
        self.frame.add(Op([new], loc=s.loc, prim=s.prim, args=[self.val[a.id].var for a in s.args], attrs=s.attrs))
        self.val[out.id] = self.tensor(new)
        if s.prim == "fill" and out.type.shape == ():  # type: ignore[union-attr]
            self.static[out.id] = s.attrs["value"]
        elif s.prim == "size":  # a run-time size: a loop bound whose trip count is known before the loop
            self.static[out.id] = s.attrs["value"]
        self.zeros_for(out)

    def stored_already(self, s: Stmt) -> bool:
        """A row store that a loop's backward part, recomputing the body, must not repeat: its stack was
        made outside the body, and filled by the forward pass. (A stack the body makes is made again.)"""
        return (isinstance(s, Accumulate) and s.row_store and bool(self.replayed)
                and s.target.id not in self.replayed[-1])

    def forward_row_store(self, s: Accumulate) -> None:
        """``stack[index] = value`` (scan's outputs), done once (see :meth:`stored_already`)."""
        if not self.stored_already(s):
            self.at(s)
            self.frame.add(Accumulate([], loc=s.loc, target=self.val[s.target.id].var, value=self.val[s.value.id].var,
                                      index=self.val[s.index.id].var, row_store=True))  # type: ignore[union-attr]

    def backward_row_store(self, s: Accumulate) -> None:
        """The stored row's adjoint is the stack's adjoint at that row."""
        stack_bar = self.adj.get(s.target.id)
        if stack_bar is not None and s.value.id in self.adj:
            self.frame.loc_override = s.loc
            self.accumulate(s.value, ops.take(stack_bar, self.val[s.index.id]))  # type: ignore[union-attr]

    def backward_op(self, s: Op | Accumulate) -> None:
        if isinstance(s, Accumulate):
            self.backward_row_store(s)
            return
        out = s.outs[0]
        if out.id not in self.adj or not any(a.id in self.adj for a in s.args):
            return
        self.frame.loc_override = dataclasses.replace(s.loc, adjoint_of=s.prim)
        vjp = PRIMITIVES[s.prim].vjp
        assert vjp is not None, f"no reverse-mode rule for {s.prim}"
        contributions = vjp(self.adj[out.id], [self.val[a.id] for a in s.args], self.val[out.id], s.attrs)
        stacked = self.stacked.get(out.id)
        if stacked is not None:  # b's share is summed after the loop; store this iteration's rows
            row = self.stack_row
            for st, v in ((stacked.a, self.val[s.args[0].id]), (stacked.g, self.adj[out.id]))[stacked.a_saved:]:
                self.frame.add(Accumulate([], loc=self.frame.loc_override, target=st.var, value=v.var, index=row.var))
            contributions = contributions[:1]
        for a, c in zip(s.args, contributions):
            self.accumulate(a, c)

    def control(self, s: Stmt, rest: Continuation) -> list[Tensor]:
        if isinstance(s, If):
            return self.control_if(s, rest)
        if isinstance(s, Loop):
            if self.static.get(s.lo.id) is None or self.static.get(s.hi.id) is None:
                return self.control_while(self.loop_as_while(s), rest)
            return self.control_loop(s, rest)
        if isinstance(s, While):
            return self.control_while(s, rest)
        if isinstance(s, Call) and self.cps is not None:
            return self.control_call(s, rest)
        raise with_location(TraceError, f"reverse-mode AD through {type(s).__name__} is not implemented", s.loc)

    def forward_copy(self, block: Block, params: list[Var], copies: dict[int, Var] | None = None) -> list[Var]:
        """Emit ``block``'s statements as they are (no adjoints), its parameters bound to ``params``.

        ``copies``, when given, receives the new variable of each variable the block defines.
        """
        subst = {v_id: t.var for v_id, t in self.val.items()}
        subst.update({p.id: new for p, new in zip(block.params, params)})
        if self.replayed and any(isinstance(t, Accumulate) and t.row_store for t in walk_stmts(block)):
            block = map_blocks(block, lambda stmts: [t for t in stmts if not self.stored_already(t)])
        copy = clone_block(Block([], block.stmts, block.results), subst)
        for stmt in copy.stmts:
            self.frame.add(stmt)
        if copies is not None:
            copies.update(subst)
        return copy.results

    # ------------------------------------------------------------ conditionals
    def control_if(self, s: If, rest: Continuation) -> list[Tensor]:
        frame = self.frame
        self.at(s)
        for o in s.outs:  # adjoints of the outputs live outside the branches
            self.zeros_for(o)
        # The rest of the program, reified once as a continuation taking the If's outputs.
        params = [Var(o.type, o.hint) for o in s.outs]
        body = Block(params=params)
        with frame.block(body):
            for o, p in zip(s.outs, params):
                self.val[o.id] = self.tensor(p)
            finals = rest()
            body.results = [t.var for t in finals]
        k = Var(FnType(tuple(p.type for p in params), tuple(t.var.type for t in finals)), "k")
        frame.add(Lambda([k], loc=s.loc, body=body))

        def branch(old: Block) -> Block:
            new = Block()
            with frame.block(new):
                def call_rest() -> list[Tensor]:
                    self.at(s)
                    outs = [Var(t.var.type, "rest") for t in finals]
                    frame.add(Apply(outs, loc=s.loc, fn=k, args=[self.val[r.id].var for r in old.results]))
                    for o, r in zip(s.outs, old.results):  # the branch's results get the outputs' adjoints
                        if o.id in self.adj:
                            self.accumulate(r, self.adj[o.id])
                    return [self.tensor(v) for v in outs]
                new.results = [t.var for t in self.block(old.stmts, call_rest)]
            return new

        then_block, else_block = branch(s.then_block), branch(s.else_block)
        outs = [Var(t.var.type, "result") for t in finals]
        self.at(s)
        frame.add(If(outs, loc=s.loc, pred=self.val[s.pred.id].var, then_block=then_block, else_block=else_block))
        return [self.tensor(v) for v in outs]

    # ------------------------------------------------------------ counted loops
    def out_bar(self, s: Loop, k: int) -> Tensor:
        """The adjoint of the loop's ``k``-th output; zeros when only its use inside the loop matters."""
        bar = self.adj.get(s.outs[k].id)
        return bar if bar is not None else self.zeros(s.outs[k], f"{s.outs[k].hint}_bar")

    def control_loop(self, s: Loop, rest: Continuation) -> list[Tensor]:
        frame = self.frame
        self.at(s)
        lo, hi = (_bound(self.static[v.id]) for v in (s.lo, s.hi))
        n = hi - lo if hi - lo > 0 else 0  # (a run-time trip count: the code assumes what this call's is)
        i_old, *carry_old = s.body.params
        # Forward: the loop as written, storing the state each iteration starts from and the
        # results of its products (residuals), which the backward part then does not recompute.
        has_backward = n > 0 and any(c.id in self.active for c in carry_old)
        residuals: list[Var] = []
        budget = LOOP_RESIDUAL_MAX_BYTES
        for st in s.body.stmts if has_backward else []:
            if isinstance(st, Op) and PRIMITIVES[st.prim].saved_in_loops and st.outs[0].id in self.active:
                budget -= hint(n * st.outs[0].type.nbytes)  # type: ignore[union-attr]
                if budget >= 0:
                    residuals.append(st.outs[0])

        def stack(v: Var, hint: str) -> Tensor:
            return self.tensor(frame.emit("fill", [], {"value": 0, "shape": (n,) + v.type.shape,  # type: ignore[union-attr]
                                                       "dtype": v.type.dtype}, hint=hint))  # type: ignore[union-attr]

        saved = [stack(c, f"saved_{c.hint}") for c in carry_old]
        saved_res = [stack(r, f"saved_{r.hint}") for r in residuals]
        i_new = Var(scalar("int64"), i_old.hint)
        carry_new = [Var(c.type, c.hint) for c in carry_old]
        body = Block(params=[i_new, *carry_new])
        with frame.block(body):
            row = ops.subtract(self.tensor(i_new), lo) if lo else self.tensor(i_new)
            for st, c in zip(saved, carry_new):
                frame.add(Accumulate([], loc=s.loc, target=st.var, value=c, index=row.var))
            copies: dict[int, Var] = {}
            body.results = self.forward_copy(s.body, [i_new, *carry_new], copies)
            for st, r in zip(saved_res, residuals):
                frame.add(Accumulate([], loc=s.loc, target=st.var, value=copies[r.id], index=row.var))
        outs = [Var(o.type, o.hint) for o in s.outs]
        frame.add(Loop(outs, loc=s.loc, lo=self.val[s.lo.id].var, hi=self.val[s.hi.id].var,
                       init=[self.val[x.id].var for x in s.init], body=body))
        for o, v in zip(s.outs, outs):
            self.val[o.id] = self.tensor(v)
            self.zeros_for(o)
        finals = rest()
        # Backward: iterations in reverse, each recomputed from its stored state.
        active = [k for k, c in enumerate(carry_old) if c.id in self.active]
        if active and n:
            self.at(s)
            outer_stacked, outer_row = self.stacked, self.stack_row
            stored = {c.id: st for c, st in zip(carry_old, saved)} | {r.id: st for r, st in zip(residuals, saved_res)}

            def rows_of_a(st: Op) -> _StackedGradient:
                a_rows = stored.get(st.args[0].id)
                return _StackedGradient(st, stack(st.args[0], f"rows_{st.args[0].hint}") if a_rows is None else a_rows,
                                        stack(st.outs[0], f"rows_{st.outs[0].hint}_bar"), a_rows is not None)
            self.stacked = {st.outs[0].id: rows_of_a(st) for st in self.stackable_products(s, n)}
            j = Var(scalar("int64"), "j")
            bars = [Var(carry_old[k].type, carry_old[k].hint + "_bar") for k in active]
            back = Block(params=[j, *bars])
            with frame.block(back):
                i_t = ops.subtract(hi - 1, self.tensor(j))
                self.val[i_old.id] = i_t
                row = ops.subtract(i_t, lo) if lo else i_t
                self.stack_row = row
                for st, c in zip(saved, carry_old):
                    self.val[c.id] = ops.take(st, row)
                    self.zeros_for(c)
                for st, r in zip(saved_res, residuals):
                    self.residual[r.id] = ops.take(st, row)

                def seed() -> list[Tensor]:
                    self.at(s)
                    for k, bar in zip(active, bars):
                        self.accumulate(s.body.results[k], self.tensor(bar))
                    return []

                self.replayed.append({o.id for st in walk_stmts(s.body) for o in st.outs})
                self.block(s.body.stmts, seed)
                self.replayed.pop()
                back.results = [self.adj[carry_old[k].id].var for k in active]
                for r in residuals:  # those values exist only in this block
                    del self.residual[r.id]
            bar_outs = [Var(b.type, b.hint) for b in bars]
            self.at(s)
            frame.add(Loop(bar_outs, loc=s.loc, lo=ops.constant(0, "int64").var, hi=ops.constant(n, "int64").var,
                           init=[self.out_bar(s, k).var for k in active], body=back))
            for k, b in zip(active, bar_outs):
                self.accumulate(s.init[k], self.tensor(b))
            self.sum_stacked(n)
            self.stacked, self.stack_row = outer_stacked, outer_row
        elif active:  # no iterations: the outputs are the initial values
            for k in active:
                self.accumulate(s.init[k], self.adj.get(s.outs[k].id))
        return finals

    def stackable_products(self, s: Loop, n: int) -> list[Op]:
        """The body's top-level products ``a @ op(b)`` whose ``b_bar`` is summed after the reverse loop.

        ``b`` must be a matrix from outside the loop that needs a gradient, ``a`` not transposed
        (so the iterations' rows of ``a`` and of the adjoint stack into one product), and the
        stacks smaller than ``b`` itself (else adding per iteration moves less memory).
        """
        free = {v.id for v in free_vars(s.body)}
        found: list[Op] = []
        for st in s.body.stmts:
            if not (isinstance(st, Op) and st.prim == "matmul" and not st.attrs.get("trans_a")):
                continue
            a, b = st.args
            out = st.outs[0]
            shapes = [v.type.shape for v in (a, b, out)]  # type: ignore[union-attr]
            if (b.id in free and b.id in self.active and out.id in self.active
                    and all(len(sh) == 2 for sh in shapes)
                    and hint(a.type.size + out.type.size) < hint(b.type.size)  # type: ignore[union-attr]
                    and hint(n * (a.type.size + out.type.size) * 8) <= STACKED_GRADIENT_MAX_BYTES):  # type: ignore[union-attr]
                found.append(st)
        return found

    def sum_stacked(self, n: int) -> None:
        """After the reverse loop: ``b_bar += op(A)^T @ G`` over the stacked rows of every iteration."""
        for rows in self.stacked.values():
            st, out = rows.product, rows.product.outs[0]
            a, b = st.args
            m = out.type.shape[0]  # type: ignore[union-attr]
            a_all = ops.reshape(rows.a, (n * m, a.type.shape[1]))  # type: ignore[union-attr]
            g_all = ops.reshape(rows.g, (n * m, out.type.shape[1]))  # type: ignore[union-attr]
            # The product's own rule, applied once to all rows: its second adjoint is b's.
            _, b_bar = PRIMITIVES["matmul"].vjp(g_all, [a_all, self.val[b.id]], None, st.attrs)
            self.frame.loc_override = dataclasses.replace(st.loc, adjoint_of="matmul")
            self.accumulate(b, b_bar)

    # ------------------------------------------------------------ loops decided at run time
    def loop_as_while(self, s: Loop) -> While:
        """``for i in range(lo, hi)`` with staged bounds, as a while loop over ``(i, *state)``."""
        i_old, *carry = s.body.params
        i64 = scalar("int64")
        ic, ib = Var(i64, "i"), Var(i64, "i")
        cc, cb = [Var(c.type, c.hint) for c in carry], [Var(c.type, c.hint) for c in carry]
        below = Var(scalar("bool"), "less")
        cond = Block([ic, *cc], [Op([below], loc=s.loc, prim="lt", args=[ic, s.hi])], [below])
        copy = clone_block(Block([], s.body.stmts, s.body.results), {i_old.id: ib, **{c.id: x for c, x in zip(carry, cb)}})
        one, nxt = Var(i64, "c"), Var(i64, "i")
        step = [Op([one], loc=s.loc, prim="fill", attrs={"value": 1, "shape": (), "dtype": "int64"}),
                Op([nxt], loc=s.loc, prim="add", args=[ib, one])]
        body = Block([ib, *cb], copy.stmts + step, [nxt, *copy.results])
        loop = While([Var(i64, "i"), *s.outs], loc=s.loc, init=[s.lo, *s.init], cond=cond, body=body)
        activity(Block([], [loop], []), self.active)  # the copied body has new variables
        return loop

    def control_while(self, s: While, rest: Continuation) -> list[Tensor]:
        frame = self.frame
        self.at(s)
        act = [k for k, p in enumerate(s.body.params) if p.id in self.active]
        state = [Var(x.type, x.hint) for x in s.init]
        bars = [Var(s.init[k].type, s.init[k].hint + "_bar") for k in act]
        body = Block(params=state + bars)  # loop(state, state_bar): the rest of the program from here
        outer = frame.blocks[-1]
        with frame.block(body):
            pred = self.forward_copy(s.cond, state)[0]
            done = Block()  # the loop ends: the rest of the program, with outputs = state
            with frame.block(done):
                for o, v in zip(s.outs, state):
                    self.val[o.id] = self.tensor(v)
                for k, b in zip(act, bars):
                    self.adj[s.outs[k].id] = self.tensor(b)
                finals = rest()
                done.results = [t.var for t in finals]
            loop = Var(FnType(tuple(v.type for v in body.params), tuple(t.var.type for t in finals)), "loop")
            frame.owner[loop.id] = outer  # letrec: in scope in its own body

            def next_iteration() -> list[Tensor]:
                self.at(s)
                new_bars = [self.zeros(s.body.results[k], f"{s.body.params[k].hint}_bar") for k in act]
                outs = [Var(t.var.type, "rest") for t in finals]
                frame.add(Apply(outs, loc=s.loc, fn=loop,
                                args=[self.val[r.id].var for r in s.body.results] + [b.var for b in new_bars]))
                for k, b in zip(act, new_bars):
                    self.accumulate(s.body.results[k], b)
                return [self.tensor(v) for v in outs]

            again = Block()
            with frame.block(again):
                for p, v in zip(s.body.params, state):
                    self.val[p.id] = self.tensor(v)
                for k, b in zip(act, bars):
                    self.adj[s.body.params[k].id] = self.tensor(b)
                again.results = [t.var for t in self.block(s.body.stmts, next_iteration)]
            outs = [Var(t.var.type, "result") for t in finals]
            self.at(s)
            frame.add(If(outs, loc=s.loc, pred=pred, then_block=again, else_block=done))
            body.results = outs
        frame.add(Lambda([loop], loc=s.loc, body=body))
        init_bars = [self.zeros(s.init[k], f"{s.init[k].hint}_bar") for k in act]
        outs = [Var(t.var.type, "result") for t in finals]
        frame.add(Apply(outs, loc=s.loc, fn=loop, args=[self.val[x.id].var for x in s.init] + [b.var for b in init_bars]))
        for k, b in zip(act, init_bars):
            self.accumulate(s.init[k], b)
        return [self.tensor(v) for v in outs]

    # ------------------------------------------------------------ recursive functions
    def control_call(self, s: Call, rest: Continuation) -> list[Tensor]:
        if s.checkpoint:
            return self.checkpointed_call(s, rest)
        frame = self.frame
        self.at(s)
        floats = [k for k, o in enumerate(s.outs) if _is_float(o)]
        results = [Var(o.type, o.hint) for o in s.outs]
        bars = [Var(s.outs[k].type, s.outs[k].hint + "_bar") for k in floats]
        body = Block(params=results + bars)  # the rest of the caller, given the call's results
        with frame.block(body):
            for o, v in zip(s.outs, results):
                self.val[o.id] = self.tensor(v)
            for k, b in zip(floats, bars):
                if s.outs[k].id in self.active:
                    self.adj[s.outs[k].id] = self.tensor(b)
            finals = rest()
            body.results = [t.var for t in finals]
        # What the rest returns: the function's final values, or nothing inside the backward
        # replay of a counted loop's body (its continuation only seeds adjoints).
        final_types = tuple(t.var.type for t in finals)
        # The callee differentiates only the arguments whose adjoints the caller keeps.
        needed = tuple(a.id in self.adj for a in s.args if _is_float(a))
        return self.call_cps(s, self.cps(s.fn, final_types, needed), body, final_types)  # type: ignore[misc]

    def call_cps(self, s: Call, cps_name: str, body: Block, final_types: tuple) -> list[Tensor]:
        """``k = lambda(body)``, then ``cps_name(args, the adjoints the caller keeps, k)``; its results."""
        k = Var(FnType(tuple(v.type for v in body.params), final_types), "k")
        self.frame.add(Lambda([k], loc=s.loc, body=body))
        self.at(s)
        arg_bars = [self.adj[a.id] for a in s.args if _is_float(a) and a.id in self.adj]
        outs = [Var(t, "result") for t in final_types]
        self.frame.add(Call(outs, loc=s.loc, fn=cps_name,
                            args=[self.val[a.id].var for a in s.args] + [b.var for b in arg_bars] + [k]))
        return [self.tensor(v) for v in outs]

    def checkpointed_call(self, s: Call, rest: Continuation) -> list[Tensor]:
        """``lantern.checkpoint``: the callee runs forward only (its intermediates die with its frame), the
        rest of the caller runs, then the callee's CPS version runs (forward again, then backward) with a
        continuation that adds the adjoints the rest computed into its results' adjoints."""
        frame = self.frame
        self.at(s)
        outs = [Var(o.type, o.hint) for o in s.outs]
        frame.add(Call(outs, loc=s.loc, fn=s.fn, args=[self.val[a.id].var for a in s.args]))
        for o, v in zip(s.outs, outs):
            self.val[o.id] = self.tensor(v)
            if _is_float(o):
                self.zeros_for(o)
        finals = rest()
        final_types = tuple(t.var.type for t in finals)
        needed = tuple(a.id in self.adj for a in s.args if _is_float(a))
        if not any(needed):
            return finals  # no gradient flows into the arguments: nothing to recompute
        cps_name = self.cps(s.fn, final_types, needed)  # type: ignore[misc]
        floats = [k for k, o in enumerate(s.outs) if _is_float(o)]
        again = [Var(o.type, o.hint) for o in s.outs]
        again_bars = [Var(s.outs[k].type, s.outs[k].hint + "_bar") for k in floats]
        body = Block(params=again + again_bars)  # seeds the recomputed results' adjoints with the rest's
        with frame.block(body):
            self.at(s)
            for k, bar in zip(floats, again_bars):
                if s.outs[k].id in self.adj:
                    frame.add(Accumulate([], loc=s.loc, target=bar, value=self.adj[s.outs[k].id].var))
            body.results = [t.var for t in finals]
        return self.call_cps(s, cps_name, body, final_types)
