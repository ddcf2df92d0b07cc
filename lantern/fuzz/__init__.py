"""Differential fuzzing of the whole compiler: random programs, native code against an oracle.

* :mod:`~lantern.fuzz.grad_programs`: staged float programs with control flow, helper functions,
  recursion and gradients; oracles: the reference interpreter and finite differences.
* :mod:`~lantern.fuzz.numpy_programs`: programs over the NumPy API that lantern mirrors, every
  dtype, shape (0-d, size-1, zero-size) and memory layout; oracle: NumPy itself.

Both also compile every program a second time at ``-O0`` (:mod:`~lantern.fuzz.flags`), which must
give the same bits where the result is exactly defined (a C compiler bug otherwise).
:mod:`~lantern.fuzz.campaign` runs many programs in worker processes, a share of them built with
AddressSanitizer and UBSan, and shrinks and saves failures (:mod:`~lantern.fuzz.regressions`)::

    python -m lantern.fuzz --oracle numpy --count 2000 --seed 1 --jobs 2 [--sanitize-share 0.1] \\
        [--save-dir tests/fuzz_regressions]
"""
