"""The C backend's kernel table: for each kind of primitive (``Primitive.kind``), the function that
emits its loops into a :class:`~lantern.codegen.kernels.context.KernelContext`.

A new primitive of an existing kind needs no entry here (elementwise ones add a C expression in
``codegen/c_types.py``); a new kind adds one function and one entry. Another backend would have a
table of its own with the same keys.
"""
from __future__ import annotations

from typing import Callable

from lantern.ir.nodes import Op

from . import conv, elementwise, indexing, matmul, movement, reductions, scans, softmax, sorting
from .context import KernelContext, Storage

Kernel = Callable[[KernelContext, Op], None]

KERNELS: dict[str, Kernel] = {
    "elementwise": elementwise.op,
    "reduce": reductions.reduce,
    "matmul": matmul.matmul,
    "conv": conv.conv,
    "take": indexing.take,
    "scatter": indexing.scatter,
    "check_range": indexing.check_range,
    "reshape": movement.reshape,
    "constant": movement.constant,
    "iota": movement.iota,
    "transpose": movement.transpose,
    "slice": movement.slice_,
    "concatenate": movement.concatenate,
    "unslice": movement.unslice,
    "random": movement.random,
    "scan": scans.scan,
    "sort": sorting.argsort,
    "softmax": softmax.softmax,
    "size": movement.size,
}

__all__ = ["KERNELS", "Kernel", "KernelContext", "Storage"]
