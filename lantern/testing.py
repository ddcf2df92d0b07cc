"""Test helpers: run a staged function natively and in the reference interpreter, and compare."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .staging import Staged, stage
from .tree import flatten


def assert_trees_close(actual: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-6, what: str = "") -> None:
    """Same structure, same dtypes and shapes, values close (NaNs must match)."""
    a_leaves, a_td = flatten(actual)
    e_leaves, e_td = flatten(expected)
    assert a_td == e_td, f"{what}: structure {a_td} != {e_td}"
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"{what} leaf {i}: shape {a.shape} != {e.shape}"
        assert a.dtype == e.dtype, f"{what} leaf {i}: dtype {a.dtype} != {e.dtype}"
        if a.dtype.kind in "biu":
            np.testing.assert_array_equal(a, e, err_msg=f"{what} leaf {i}")
        else:
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{what} leaf {i}")


def check_staged(fn: Callable[..., Any] | Staged, *args: Any, expected: Any = None, rtol: float | None = None,
                 atol: float | None = None) -> Any:
    """Run ``fn`` staged; compare native code, the interpreter on the traced and on the optimized IR,
    and ``expected`` (when given). Returns the native result.

    Tolerances default to float32-appropriate ones when any float32 value is involved.
    """
    staged = fn if isinstance(fn, Staged) else stage(fn)
    exe = staged.lower(*args)
    native = exe(*args)
    f32 = any(np.asarray(x).dtype == np.float32 for x in flatten(native)[0])
    rtol = rtol if rtol is not None else (2e-5 if f32 else 1e-9)
    atol = atol if atol is not None else (1e-5 if f32 else 1e-10)
    traced = exe.interpret(*args)
    optimized = exe.interpret(*args, optimized=True)
    assert_trees_close(native, traced, rtol, atol, "native vs interpreter (traced IR)")
    assert_trees_close(optimized, traced, rtol, atol, "interpreter: optimized vs traced IR")
    if expected is not None:
        assert_trees_close(native, expected, rtol, atol, "native vs expected")
    return native


def check_grads(fn: Callable[..., Any], *args: Any, argnums: int | tuple[int, ...] = 0, eps: float = 1e-6,
                rtol: float = 1e-6, atol: float = 1e-8, seed: int = 0) -> Any:
    """Check ``lantern.value_and_grad(fn)`` against central finite differences (float64 arguments).

    Along a random direction ``u`` (one per differentiated argument tree), the directional
    derivative ``(f(x + eps u) - f(x - eps u)) / 2 eps`` must equal ``<grad, u>``. The native
    gradient is also compared with the reference interpreter on the traced and optimized IR.
    Returns the native gradient.
    """
    from . import value_and_grad
    from .tree import tree_map

    vg = value_and_grad(fn, argnums)
    exe = vg.lower(*args)
    value, grads = exe(*args)
    assert_trees_close(exe.interpret(*args), (value, grads), rtol=1e-9, atol=1e-12, what="interpreter vs native")
    assert_trees_close(exe.interpret(*args, optimized=True), (value, grads), rtol=1e-9, atol=1e-12,
                       what="interpreter on optimized IR vs native")
    np.testing.assert_allclose(value, stage(fn)(*args), rtol=1e-12, err_msg="value_and_grad value vs fn")
    positions = (argnums,) if isinstance(argnums, int) else argnums
    grad_trees = (grads,) if isinstance(argnums, int) else grads
    rng = np.random.default_rng(seed)
    directions = {p: tree_map(lambda x: rng.standard_normal(np.shape(x)) if np.asarray(x).dtype.kind == "f"
                              else np.zeros(np.shape(x)), args[p]) for p in positions}

    def shifted(sign: float) -> float:
        moved = list(args)
        for p in positions:
            moved[p] = tree_map(lambda x, u: (np.asarray(x) + sign * eps * u).astype(np.asarray(x).dtype)
                                if np.asarray(x).dtype.kind == "f" else x, args[p], directions[p])
        return float(stage(fn)(*moved))

    numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    analytic = sum(float(np.sum(np.asarray(g) * u)) for p, tree in zip(positions, grad_trees)
                   for g, u in zip(flatten(tree)[0], flatten(directions[p])[0]))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol,
                               err_msg="gradient . u vs central finite difference")
    return grads
