"""PyTorch's spellings where they do not conflict with NumPy's (issue 17): ``dim=``/``keepdim=`` beside
``axis=``/``keepdims=``, and ``cross_entropy``/``nll_loss`` with a class ``axis``, ``ignore_index`` and
``label_smoothing`` as PyTorch defines them (against NumPy references, and PyTorch where installed)."""
from __future__ import annotations

import numpy as np
import pytest

import lantern
from lantern import nn
from lantern.testing import check_grads

RNG = np.random.default_rng(21)
X = RNG.standard_normal((2, 3, 4))
LOGITS = RNG.standard_normal((3, 5, 4))                      # PyTorch's [N, C, T]
TARGETS = np.array([[0, 4, -100, 2], [1, 1, 3, -100], [-100, -100, 0, 4]])


def _reference(logits, targets, axis, ignore_index=-100, smoothing=0.0, reduction="mean"):
    lp = logits - np.log(np.exp(logits).sum(axis, keepdims=True))
    lp = np.moveaxis(lp, axis, -1)
    keep = targets != ignore_index
    picked = -np.take_along_axis(lp, np.where(keep, targets, 0)[..., None], -1)[..., 0]
    losses = np.where(keep, (1 - smoothing) * picked - smoothing * lp.mean(-1), 0.0)
    return {"mean": losses.sum() / keep.sum(), "sum": losses.sum(), "none": losses}[reduction]


def test_dim_and_keepdim_as_in_pytorch():
    calls = {
        "sum": (lambda x: x.sum(dim=1, keepdim=True), lambda x: x.sum(axis=1, keepdims=True)),
        "mean": (lambda x: lantern.mean(x, dim=(0, 2)), lambda x: x.mean(axis=(0, 2))),
        "max": (lambda x: lantern.max(x, dim=-1), lambda x: x.max(axis=-1)),
        "argmin": (lambda x: x.argmin(dim=2, keepdim=True), lambda x: x.argmin(axis=2, keepdims=True)),
        "logsumexp": (lambda x: lantern.logsumexp(x, dim=0), lambda x: np.log(np.exp(x).sum(0))),
        "softmax": (lambda x: lantern.softmax(x, dim=1), lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
        "log_softmax": (lambda x: lantern.log_softmax(x, dim=0), lambda x: x - np.log(np.exp(x).sum(0, keepdims=True))),
        "prod": (lambda x: x.prod(dim=1), lambda x: x.prod(axis=1)),
        "std": (lambda x: lantern.std(x, dim=2, ddof=1, keepdim=True), lambda x: x.std(axis=2, ddof=1, keepdims=True)),
        "var": (lambda x: lantern.var(x, dim=0), lambda x: x.var(axis=0)),
        "norm": (lambda x: lantern.norm(x, dim=1), lambda x: np.linalg.norm(x, axis=1)),
        "cumsum": (lambda x: x.cumsum(dim=2), lambda x: x.cumsum(axis=2)),
        "any": (lambda x: lantern.any(x > 1, dim=1), lambda x: np.any(x > 1, axis=1)),
        "sort": (lambda x: lantern.sort(x, dim=1), lambda x: np.sort(x, axis=1)),
        "topk": (lambda x: lantern.topk(x, 2, dim=1)[0], lambda x: -np.sort(-x, axis=1)[:, :2]),
    }
    got = lantern.stage(lambda x: {k: f(x) for k, (f, _) in calls.items()})(X)
    for k, (_, ref) in calls.items():
        np.testing.assert_allclose(got[k], ref(X), rtol=1e-12, err_msg=k)
    with pytest.raises(lantern.TraceError, match=r"softmax: give axis or dim .*not both.*test_torch_spellings\.py"):
        lantern.stage(lambda x: lantern.softmax(x, 0, dim=1))(X)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_with_pytorch_s_layout_ignore_index_and_smoothing(reduction):
    f = lantern.stage(lambda l, t: (nn.cross_entropy(l, t, reduction, axis=1),
                                    nn.cross_entropy(l, t, reduction, dim=1, label_smoothing=0.2),
                                    nn.nll_loss(lantern.log_softmax(l, 1), t, reduction, axis=1)))
    plain, smooth, nll = f(LOGITS, TARGETS)
    np.testing.assert_allclose(plain, _reference(LOGITS, TARGETS, 1, reduction=reduction), rtol=1e-12)
    np.testing.assert_allclose(smooth, _reference(LOGITS, TARGETS, 1, smoothing=0.2, reduction=reduction), rtol=1e-12)
    np.testing.assert_allclose(nll, plain, rtol=1e-12)
    # classes last and another ignore_index: -100 is then an ordinary (bad) target, so use valid ones
    valid = np.where(TARGETS < 0, 3, TARGETS)
    last = lantern.stage(lambda l, t: nn.cross_entropy(l, t, reduction, ignore_index=1))(np.moveaxis(LOGITS, 1, -1), valid)
    np.testing.assert_allclose(last, _reference(LOGITS, valid, 1, ignore_index=1, reduction=reduction), rtol=1e-12)


def test_cross_entropy_gradients_skip_ignored_positions():
    grads = lantern.grad(lambda l: nn.cross_entropy(l, TARGETS, axis=1, label_smoothing=0.1))(LOGITS)
    ignored = np.moveaxis(grads, 1, -1)[TARGETS == -100]
    np.testing.assert_array_equal(ignored, 0.0)
    check_grads(lambda l: nn.cross_entropy(l, TARGETS, axis=1, label_smoothing=0.1), LOGITS)


def test_against_pytorch():
    torch = pytest.importorskip("torch")
    l = torch.tensor(LOGITS, requires_grad=True)
    out = torch.nn.functional.cross_entropy(l, torch.tensor(TARGETS), label_smoothing=0.2)
    out.backward()
    value, grad = lantern.value_and_grad(lambda l: nn.cross_entropy(l, TARGETS, dim=1, label_smoothing=0.2))(LOGITS)
    np.testing.assert_allclose(value, out.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, l.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_shape_errors_name_the_class_axis():
    with pytest.raises(lantern.ShapeError, match=r"targets of shape \(3, 4\) do not match an input of shape \(3, 5, 4\) "
                                                 r"with classes on axis 2 .*PyTorch's \[N, C, \.\.\.\] layout is axis=1"):
        lantern.stage(lambda l, t: nn.cross_entropy(l, t))(LOGITS, TARGETS)
    with pytest.raises(lantern.OutOfBoundsError, match="one_hot with 5 classes: index -7"):
        lantern.stage(lambda l, t: nn.cross_entropy(l, t, axis=1))(LOGITS, np.where(TARGETS == 4, -7, TARGETS))
