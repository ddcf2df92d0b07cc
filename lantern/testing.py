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
