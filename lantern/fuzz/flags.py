"""The same C compiled twice, at ``-O0`` and with the production flags, to catch C compiler bugs.

Where a result is defined to the bit (integers, bools, and floats computed without reassociation:
no float sum or product, whose vectorized order differs), both builds must give the same bits. A
difference is a miscompile, as gcc 12's vectorized ``||`` on AVX-512 was (issue 18), or undefined
behaviour in the generated C that the optimiser exploits.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..staging import Executable


def unoptimized_flags() -> list[str] | None:
    """The production flags with ``-O0`` as the optimisation level; None when there is nothing to
    compare with (the production build is ``-O0`` already, or sanitized)."""
    from ..codegen import toolchain
    flags = toolchain.user_cflags()
    levels = [f for f in flags if f.startswith("-O")]
    if toolchain.debug_mode() or levels[-1:] == ["-O0"]:
        return None
    return [f for f in flags if not f.startswith("-O")] + ["-O0"]


def unoptimized(exe: Executable) -> Executable | None:
    """``exe`` running the same C built at ``-O0`` (None, see :func:`unoptimized_flags`)."""
    from ..codegen import recompile_native
    flags = unoptimized_flags()
    if flags is None:
        return None
    twin = copy.copy(exe)
    twin.native = recompile_native(exe.native, f"{exe.name}_O0", flags)
    twin._dispatcher = False  # (the copied one calls the -O3 build)
    return twin


def same_bits(a: object, b: object) -> bool:
    """Same dtype, shape and bits (any NaN equals any NaN: payloads are not part of the contract)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    bits = f"u{a.dtype.itemsize}"
    return bool(np.all((a.view(bits) == b.view(bits)) | (np.isnan(a) & np.isnan(b))))
