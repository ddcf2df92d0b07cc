"""From IR to native code: passes that prepare for C, the C emitter, the compiler driver, the loader.

The pipeline, top to bottom::

    module = inline_calls(module)                   # non-recursive calls become straight-line code
    module = empty_values_as_fills(module)          # ops with empty results (or empty sums) do nothing
    module = unit_reductions_as_reshapes(module)    # a sum over axes of extent 1 is a reshape
    module = canonical_products(module)             # W @ h, h @ W.T, one-hot on either side: one form
    module = one_hot_products_as_gathers(module)    # one_hot(i) @ W reads row i of W
    module = forward_single_accumulations(module)   # one-contribution adjoints need no buffer
    module = eliminate_dead_code(module)
    module = transposes_cancelled(module)           # transposes moved past layout-free ops, pairs cancelled
    module = canonical_products(module)             # (again: a moved transpose may now feed a product)
    module = row_products_read_transposed(module)   # h @ W.T in a loop reads a copy of W.T
    module = hoist_loop_invariants(module)          # copies of loop-invariant values are made once
    module = eliminate_dead_code(module)
    module = recompute_after_continuations(module)  # large cheap values made again after a continuation
    module = fuse_elementwise(module)               # elementwise chains become single loops
    module = fills_where_needed(module)             # zero-filled adjoints are made where first used
    module = outline_long_functions(module)         # long bodies become calls of parts (compile time)
    source = emit_module(module)                    # C: one file, or translation units for a large module
    artifact = compile_c(source)                    # cc (units in parallel), through the on-disk cache
    native = NativeFunction(artifact)               # cffi

(AD runs the product, one-hot and hoisting passes on a function before differentiating it, so its
gradient benefits too.)
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from lantern.ir.nodes import Module
from lantern.ir.verify import verify

from .compiler import compile_c, compile_units
from .toolchain import debug_mode
from .emit_c import EmitOptions, emit_module
from .loader import NativeFunction
from lantern.ir.passes import (canonical_products, eliminate_dead_code, empty_values_as_fills,
                               fills_where_needed, forward_single_accumulations, fuse_elementwise, hoist_loop_invariants, inline_calls,
                               one_hot_products_as_gathers, recompute_after_continuations, transposes_cancelled,
                               unit_reductions_as_reshapes)

from .passes import outline_long_functions, row_products_read_transposed

Pass = Callable[[Module], Module]
PASSES: tuple[Pass, ...] = (inline_calls, empty_values_as_fills, unit_reductions_as_reshapes, canonical_products,
                            one_hot_products_as_gathers,
                            forward_single_accumulations, eliminate_dead_code, transposes_cancelled, canonical_products,
                            row_products_read_transposed, hoist_loop_invariants, eliminate_dead_code,
                            recompute_after_continuations, fuse_elementwise, fills_where_needed,
                            outline_long_functions)


#: The pass of the memory plan that changes what is computed (``EmitOptions.memory_plan``; the lowering's
#: frees and in-place results are the rest of it). Moving fills runs either way: it changes which values
#: the lowering computes inside a reduction's loop, and with it the order of a sum's additions.
MEMORY_PASSES = (recompute_after_continuations,)


def prepare(module: Module, passes: tuple[Pass, ...] = PASSES, memory_plan: bool = True) -> Module:
    """Run ``passes`` in order (without :data:`MEMORY_PASSES` unless ``memory_plan``), verifying the IR after
    each one."""
    for p in passes:
        if not memory_plan and p in MEMORY_PASSES:
            continue
        module = verify(p(module))
    return module


def build_native(module: Module, title: str, options: EmitOptions = EmitOptions(),
                 stages: dict[str, float] | None = None) -> tuple[NativeFunction, Module]:
    """Prepare, emit (with the checks ``options`` ask for), compile (or fetch from the cache) and load ``module``.
    ``stages`` (when given) receives the seconds each step took: ``passes``, ``emit``, ``cc`` (the C compiler,
    or the compile cache's lookup), ``load``; and for a module of several translation units, ``cc unit K``
    per unit (they compile in parallel) and ``cc link``."""
    clock = _Stopwatch(stages)
    prepared = prepare(module, memory_plan=options.memory_plan)
    clock.lap("passes")
    if debug_mode() and not options.check_indices:
        options = dataclasses.replace(options, check_indices=True)  # sanitized builds check every index
    source = emit_module(prepared, title, options)
    clock.lap("emit")
    per_unit: dict[str, float] = {}
    artifact = (compile_units(source.units, source.text, title, source.uses_blas, per_unit) if source.units
                else compile_c(source.text, title, source.uses_blas))
    clock.lap("cc")
    if stages is not None:
        stages.update((f"cc {what}", seconds) for what, seconds in per_unit.items())
    out_types = list(prepared.entry_function.result_types or ())
    native = NativeFunction(artifact, source, out_types)
    clock.lap("load")
    return native, prepared  # type: ignore[return-value]


class _Stopwatch:
    """Seconds between laps, added to ``stages`` under each lap's name (nothing when ``stages`` is None)."""

    def __init__(self, stages: dict[str, float] | None):
        self.stages, self.last = stages, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.stages is not None:
            self.stages[name] = self.stages.get(name, 0.0) + now - self.last
        self.last = now


def recompile_native(native: NativeFunction, title: str, flags: list[str]) -> NativeFunction:
    """The same C as ``native`` compiled with other C compiler ``flags`` (a second build to compare with)."""
    artifact = compile_c(native.c_source, title, native.uses_blas, flags=flags)
    return NativeFunction(artifact, native.source, native.out_types)


__all__ = ["PASSES", "EmitOptions", "NativeFunction", "build_native", "compile_c", "emit_module", "prepare",
           "recompile_native"]
