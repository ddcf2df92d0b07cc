"""Differential fuzzing (``lantern.fuzz``): random programs, native C vs the reference interpreter vs
finite differences; saved failing programs replayed; bugs the fuzzer found, as plain tests.

CI runs ``N_PROGRAMS`` generated programs in ``CHUNKS`` chunks (one C compile per batch of
``BATCH`` programs); ``make fuzz`` runs many more (``python -m lantern.fuzz``).
"""
from pathlib import Path

import numpy as np
import pytest

import lantern
from lantern import fuzz
from lantern.testing import check_grads

REGRESSIONS = sorted((Path(__file__).parent / "fuzz_regressions").glob("*.json"))


# ------------------------------------------------------------------ bugs found by fuzzing, as plain tests

@lantern.stage
def _scaled(d, q):
    return lantern.cond(d <= 0, lambda: q * 2.0, lambda: q * 3.0)


def test_while_loop_after_cond_in_gradient():
    # The program after a cond (a continuation lambda) holds a while loop (a letrec lambda):
    # free_vars counted the loop's own name as captured by the enclosing continuation -> KeyError.
    def loss(x, n, m):
        y = _scaled(n, x)
        _, a, b = lantern.while_loop(lambda s: s[0] < m, lambda s: (s[0] + 1, s[1] * 0.5 + s[2], s[2]),
                                     (np.int64(0), x, y))
        return lantern.sum(a * a)

    x = np.array([0.3, -1.2, 0.7])
    for n in (0, 1):
        check_grads(loss, x, np.int64(n), np.int64(2))


def test_grad_through_cond_without_its_value():
    # lantern.grad (not value_and_grad) through a cond: the If is kept for its accumulations but
    # its value (the loss) is unused; C said "set but not used" (an error under -Werror).
    def loss(x):
        y = lantern.cond(x.mean() < 0.1, lambda: x * 2.0, lambda: x * 3.0)
        return lantern.min(y) + lantern.sum(y * y)

    for x in (np.array([0.5, 0.2, -0.3]), np.array([-0.5, 0.2, -0.3])):
        exe = lantern.stage(lambda x: lantern.grad(loss)(x)).lower(x)
        scale = 2.0 if x.mean() < 0.1 else 3.0
        y = x * scale
        np.testing.assert_allclose(exe(x), scale * ((y == y.min()) + 2 * y), rtol=1e-12)
        check_grads(loss, x)
