"""Issue 14: transposes moved past layout-independent operations cancel in pairs (``lantern/ir/passes/layout.py``):
a model written NCHW around ``Conv2d``'s ``[C, H, W, N]`` kernel copies no activation back and forth."""
import random

import numpy as np
import pytest

import lantern
from lantern import nn, ops
from lantern.ir.nodes import Op, walk_stmts
from lantern.ir.passes.layout import _reshape_before_transpose
from lantern.testing import check_grads, check_staged


def _transposed_elements(module) -> list[int]:
    """The sizes of the transposes the prepared module still copies."""
    return sorted(s.outs[0].type.size for fn in module.functions.values() for s in walk_stmts(fn.body)
                  if isinstance(s, Op) and s.prim == "transpose")


def test_reshape_moves_before_a_transpose_when_it_can():
    """``reshape(transpose(x, p), z) == transpose(reshape(x, shape), r)`` whenever the helper gives
    ``(shape, r)``: random shapes with axes of size 1, splits and merges (most of them movable)."""
    rng = random.Random(0)
    moved = 0
    for _ in range(2000):
        s = tuple(rng.choice([1, 1, 2, 3, 4, 6]) for _ in range(rng.randint(1, 5)))
        p = list(range(len(s)))
        rng.shuffle(p)
        x = np.arange(int(np.prod(s))).reshape(s)
        y = x.transpose(p)
        z: list[int] = []
        for d in y.shape:
            if d in (4, 6) and rng.random() < 0.3:
                z += [2, d // 2]
            else:
                z += [d, 1] if rng.random() < 0.2 else [d]
        if len(z) >= 2 and rng.random() < 0.3:
            k = rng.randrange(len(z) - 1)
            z[k:k + 2] = [z[k] * z[k + 1]]
        found = _reshape_before_transpose(s, tuple(p), tuple(z))
        if found is not None:
            shape, r = found
            np.testing.assert_array_equal(x.reshape(shape).transpose(r), y.reshape(z))
            moved += 1
    assert moved > 1500


def test_a_merge_across_the_transpose_is_not_moved():
    # transpose (1, 0) of [2, 3] is [3, 2]; merging its two axes reads x in column order: not a reshape of x
    assert _reshape_before_transpose((2, 3), (1, 0), (6,)) is None


def pool_between(x):
    """NCHW max-pool and ReLU between two transposes, as between two ``Conv2d`` layers."""
    y = ops.transpose(x, (3, 0, 1, 2))  # [C, H, W, N] -> [N, C, H, W]
    y = lantern.relu(nn.MaxPool2d(2)(y) * 2.0 - 0.1)
    return ops.transpose(y, (1, 2, 3, 0))  # back to [C, H, W, N]


def _pool_between_numpy(x):
    y = x.transpose(3, 0, 1, 2)
    n, c, h, w = y.shape
    y = y.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    return np.maximum(y * 2.0 - 0.1, 0.0).transpose(1, 2, 3, 0)


def test_pool_between_transposes_copies_nothing(rng):
    x = rng.standard_normal((3, 4, 6, 5))
    exe = lantern.stage(pool_between).lower(x)
    assert _transposed_elements(exe.module) == [], exe.optimized_ir
    check_staged(pool_between, x, expected=_pool_between_numpy(x))


def test_gradient_of_pool_between_transposes(rng):
    x = rng.standard_normal((2, 4, 4, 3))
    check_grads(lambda x: ops.sum(ops.sin(pool_between(x))), x)
    grad = lantern.stage(lantern.grad(lambda x: ops.sum(ops.sin(pool_between(x)))))
    assert _transposed_elements(grad.lower(x).module) == []


def test_two_conv_layers_copy_only_the_input(rng):
    """An NCHW CNN (conv, pool, relu, conv, pool, relu) and its gradient: of the transposes of every activation
    and adjoint, only the input's remains (and those of the few values that meet the linear layer)."""
    conv1, conv2, pool = nn.Conv2d(1, 4, 3, dtype="float64"), nn.Conv2d(4, 6, 3, dtype="float64"), nn.MaxPool2d(2)
    params = {"c1": conv1.init(0), "c2": conv2.init(1)}
    x = rng.standard_normal((5, 1, 14, 14))

    def loss(p, x):
        h = lantern.relu(pool(conv1(p["c1"], x)))
        h = lantern.relu(pool(conv2(p["c2"], h)))
        return ops.sum(ops.tanh(h))

    exe = lantern.stage(lantern.value_and_grad(loss)).lower(params, x)
    copied = _transposed_elements(exe.module)
    assert sum(copied) <= 2 * x.size, (copied, exe.optimized_ir)
    check_grads(loss, params, x, argnums=(0, 1))


def test_a_move_that_copies_more_is_left_alone(rng):
    """``transpose(x) + w`` with ``w`` as large as the result, read by a product: moving the transpose past the
    addition would copy ``w`` and the sum instead of ``x``; the function keeps its one transpose."""
    x, w, m = rng.standard_normal((6, 5)), rng.standard_normal((5, 6)), rng.standard_normal((6, 4))

    def fn(x, w, m):
        return ops.sum((ops.transpose(x, (1, 0)) + w) @ m)
    exe = lantern.stage(fn).lower(x, w, m)
    assert _transposed_elements(exe.module) == [30], exe.optimized_ir
    check_staged(fn, x, w, m, expected=((x.T + w) @ m).sum())


@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions_through_a_transpose(rng, keepdims):
    """A sum over axes of a transpose, then transposed back: computed on the untransposed value (its axes
    renumbered), no copy."""
    x = rng.standard_normal((3, 4, 5, 2))

    def fn(x):
        s = ops.sum(ops.transpose(x, (2, 0, 3, 1)) * 3.0, axis=(1,), keepdims=keepdims)  # [5, 2, 4] or [5, 1, 2, 4]
        return ops.transpose(s, (2, 0, 1) if not keepdims else (1, 3, 0, 2))
    back = (2, 0, 1) if not keepdims else (1, 3, 0, 2)
    expected = (x.transpose(2, 0, 3, 1) * 3.0).sum(axis=1, keepdims=keepdims).transpose(back)
    exe = lantern.stage(fn).lower(x)
    assert _transposed_elements(exe.module) == [], exe.optimized_ir
    check_staged(fn, x, expected=expected)


@pytest.mark.parametrize("keepdims", [False, True])
def test_argmax_through_a_transpose(rng, keepdims):
    """argmax/argmin take one ``axis``: renumbered like a sum's axes (a transpose feeding one failed the pass)."""
    x = rng.standard_normal((3, 4, 5))

    def fn(x):
        t = ops.transpose(x, (2, 0, 1))
        return ops.argmax(t, axis=1, keepdims=keepdims), ops.argmin(t * 2.0, axis=2, keepdims=keepdims)
    t = x.transpose(2, 0, 1)
    check_staged(fn, x, expected=(np.argmax(t, axis=1, keepdims=keepdims), np.argmin(t, axis=2, keepdims=keepdims)))


def _random_chain(rng: random.Random, shape: tuple[int, ...]):
    """A random chain of layout-sensitive steps (transposes, splits and merges, elementwise ops with a scalar,
    with the chain's own transpose or with a small broadcast operand, reductions and argmax), as a pair of
    functions: one on lantern tensors, one on NumPy arrays."""
    steps = []
    for _ in range(rng.randint(3, 7)):
        nd = len(shape)
        kind = rng.choice(["transpose", "transpose", "reshape", "unary", "binary", "broadcast", "reduce", "argmax"])
        if kind == "transpose":
            perm = list(range(nd))
            rng.shuffle(perm)
            steps.append((lambda x, p=tuple(perm): ops.transpose(x, p), lambda x, p=tuple(perm): x.transpose(p)))
            shape = tuple(shape[k] for k in perm)
        elif kind == "reshape":
            splittable = [k for k, d in enumerate(shape) if d % 2 == 0 and d > 2]
            if splittable and (nd < 2 or rng.random() < 0.5):
                k = rng.choice(splittable)
                shape = shape[:k] + (2, shape[k] // 2) + shape[k + 1:]
            elif nd >= 2:
                k = rng.randrange(nd - 1)
                shape = shape[:k] + (shape[k] * shape[k + 1],) + shape[k + 2:]
            steps.append((lambda x, s=shape: ops.reshape(x, s), lambda x, s=shape: x.reshape(s)))
        elif kind == "unary":
            steps.append((lambda x: ops.tanh(x) * 1.5 + 0.25, lambda x: np.tanh(x) * 1.5 + 0.25))
        elif kind == "binary" and nd >= 2:
            perm = tuple(range(nd - 2)) + (nd - 1, nd - 2) if shape[-1] == shape[-2] else tuple(range(nd))
            steps.append((lambda x, p=perm: x * ops.transpose(x, p) - x, lambda x, p=perm: x * x.transpose(p) - x))
        elif kind == "broadcast" and nd >= 1:
            b = np.linspace(-1.0, 1.0, shape[-1])
            steps.append((lambda x, b=b: ops.maximum(x, b), lambda x, b=b: np.maximum(x, b)))
        elif kind == "reduce" and nd >= 2:
            axis, keep = rng.randrange(nd), rng.random() < 0.5
            steps.append((lambda x, a=axis, k=keep: ops.max(x, a, keepdims=k) + ops.sum(x, a, keepdims=k),
                          lambda x, a=axis, k=keep: x.max(a, keepdims=k) + x.sum(a, keepdims=k)))
            shape = shape[:axis] + ((1,) if keep else ()) + shape[axis + 1:]
        elif kind == "argmax" and nd >= 2:
            axis = rng.randrange(nd)
            steps.append((lambda x, a=axis: ops.astype(ops.argmax(x, axis=a), "float64") + ops.min(x, a),
                          lambda x, a=axis: np.argmax(x, axis=a).astype(np.float64) + x.min(a)))
            shape = shape[:axis] + shape[axis + 1:]

    def staged(x):
        for f, _ in steps:
            x = f(x)
        return x

    def reference(x):
        for _, f in steps:
            x = f(x)
        return x
    return staged, reference


@pytest.mark.parametrize("seed", range(4))
def test_random_layout_chains_match_numpy(seed):
    """Random chains through transposes (each program several chains, one compile), staged against NumPy:
    whatever the pass moves, the values stay NumPy's."""
    rng = random.Random(seed)
    x = np.random.default_rng(seed).standard_normal((4, 6, 2, 4))
    chains = [_random_chain(rng, x.shape) for _ in range(8)]
    check_staged(lambda x: tuple(s(x) for s, _ in chains), x, expected=tuple(r(x) for _, r in chains))


@pytest.mark.parametrize("seed", range(2))
def test_gradients_of_random_layout_chains(seed):
    """The same chains' gradients (their backward parts transpose the adjoints back) against finite differences."""
    rng = random.Random(100 + seed)
    x = np.random.default_rng(seed).standard_normal((4, 6, 2, 4))
    chains = [_random_chain(rng, x.shape) for _ in range(6)]
    check_grads(lambda x: sum(ops.sum(ops.sin(s(x))) for s, _ in chains), x)
