"""Every primitive's card is complete for every registry that claims it (issue 11).

A primitive's facts live on its card (``lantern/ir/primitives.py``); the reverse-mode rules fill
in ``vjp`` (``lantern/ad/rules.py``); the C backend has a kernel for every primitive; and the
fuzzers' programs reach every primitive, so each is checked against NumPy or the interpreter.
"""
import numpy as np
import pytest

import lantern

from lantern.codegen.c_types import elementwise_expr
from lantern.codegen.kernels import KERNELS
from lantern.fuzz import grad_programs, numpy_programs
from lantern.ir.nodes import Op, walk_stmts
from lantern.ir.primitives import ELEMENTWISE, PRIMITIVES

#: Primitives the fuzzers do not reach, and why.
NOT_FUZZED = {"random_uniform": "no NumPy counterpart; tests/test_nn.py checks it against its NumPy reference"}


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_reverse_mode_rule_for_every_differentiable_primitive(name):
    card = PRIMITIVES[name]
    assert (card.vjp is not None) == card.differentiable, (name, card.differentiable, card.vjp)


@pytest.mark.parametrize("slot", ["jvp", "batch"])
def test_later_transformations_are_all_or_nothing(slot):
    """A transformation's rules are complete once it has any: every differentiable primitive (jvp),
    every primitive (batch)."""
    have = {n for n, c in PRIMITIVES.items() if getattr(c, slot) is not None}
    wanted = {n for n, c in PRIMITIVES.items() if c.differentiable or slot == "batch"}
    assert not have or have == wanted, sorted(wanted - have)


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_c_kernel_for_every_primitive(name):
    card = PRIMITIVES[name]
    assert card.kind in KERNELS, f"no C kernel for {card.kind}"
    if card.kind != ELEMENTWISE:
        return
    arity = {"where": 3, "fill": 0, "cast": 1, "broadcast": 1}.get(name)
    for dtype in ("bool", "int32", "int64", "float32", "float64"):
        n = arity if arity is not None else (2 if name in ("add", "sub", "mul", "div", "maximum", "minimum", "pow",
                                                            "floordiv", "mod", "eq", "ne", "lt", "le", "gt", "ge",
                                                            "logical_and", "logical_or") else 1)
        expr = elementwise_expr(name, [dtype] * n, dtype, [f"x{k}" for k in range(n)], {"value": 1, "dtype": dtype})
        assert isinstance(expr, str) and expr


def test_fuzzers_reach_every_primitive():
    reached = set()

    def collect(module):
        for fn in module.functions.values():
            reached.update(s.prim for s in walk_stmts(fn.body) if isinstance(s, Op))
    for lo in range(0, 60, 5):
        programs = [grad_programs.generate(0, i) for i in range(lo, lo + 5)]
        collect(grad_programs.load_batch(programs).trace(*grad_programs.arguments(programs)))
    programs = [p for p in (numpy_programs.generate(0, i) for i in range(200)) if not numpy_programs._is_error(p)]
    for lo in range(0, len(programs), 20):
        batch = programs[lo:lo + 20]
        collect(numpy_programs.load_batch(batch)["batch"].trace(*numpy_programs.arguments(batch)))
    for p in programs[:40]:  # with run-time sizes (issue 12): sizes used as values
        exe = lantern.stage(numpy_programs.load_batch([p])["batch"], dynamic=True).lower(*numpy_programs.arguments([p]))
        collect(exe.traced_module)
    missing = set(PRIMITIVES) - reached - set(NOT_FUZZED)
    assert not missing, sorted(missing)
    assert not set(NOT_FUZZED) & reached, "remove from NOT_FUZZED what the fuzzers reach now"


def test_cards_hold_the_policies():
    """The flags the passes, AD and check_finite read, as the code relied on before they moved to the cards."""
    saved = {n for n, c in PRIMITIVES.items() if c.saved_in_loops}
    assert saved == {"matmul", "tanh", "sigmoid", "exp", "sinh", "cosh", "erf", "reduce_prod", "cumsum", "cumprod",
                     "softmax", "conv2d", "conv2d_input_grad", "conv2d_weight_grad"}
    assert {n for n, c in PRIMITIVES.items() if c.hoistable} == {"transpose", "reshape", "slice", "concatenate"}
    keeps = {n for n, c in PRIMITIVES.items() if not c.may_make_nonfinite}
    assert {"reduce_sum", "matmul", "scatter_add", "exp", "add", "div", "cast"}.isdisjoint(keeps)
    assert {"take", "reshape", "where", "tanh", "maximum"} <= keeps
    assert np.all([c.name == n for n, c in PRIMITIVES.items()])
