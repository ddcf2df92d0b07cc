"""Optimizers with hyperparameters that change (issues 13 and 17): schedules evaluated on the optimizer's
step counter inside the staged step, and staged learning rates passed in as arguments; one compile for
20 different values, the same parameters as the NumPy path (and PyTorch, where installed)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import lantern
from lantern import optim
from lantern.optim import schedules

RNG = np.random.default_rng(17)
PARAMS = {"w": RNG.standard_normal((3, 2)).astype(np.float32), "b": np.zeros(2, np.float32)}
X = RNG.standard_normal((5, 3)).astype(np.float32)
Y = RNG.standard_normal((5, 2)).astype(np.float32)
STEPS = 20


def _loss(p):
    return ((X @ p["w"] + p["b"] - Y) ** 2).mean()


SCHEDULE = schedules.warmup_cosine(0.05, warmup=5, total=STEPS, final=0.001)
OPTIMIZERS = {
    "SGD": lambda lr: optim.SGD(lr=lr, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "SGD_nesterov": lambda lr: optim.SGD(lr=lr, momentum=0.8, nesterov=True),
    "Adagrad": lambda lr: optim.Adagrad(lr=lr, lr_decay=0.01, weight_decay=0.1),
    "Adam": lambda lr: optim.Adam(lr=lr, betas=(0.8, 0.99), amsgrad=True),
    "AdamW": lambda lr: optim.AdamW(lr=lr, weight_decay=0.05),
}


def _numpy_run(make):
    """The NumPy path (outside staging), with the schedule's value as a Python float each step."""
    params, state = PARAMS, make(0.0).init(PARAMS)
    for t in range(STEPS):
        grads = {k: np.asarray(v) for k, v in lantern.grad(_loss)(params).items()}
        params, state = make(SCHEDULE(t)).update(grads, state, params)
    return params


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_schedule_or_a_staged_rate_changes_every_step_with_one_compile(name):
    make = OPTIMIZERS[name]
    opt = make(SCHEDULE)

    @lantern.stage
    def scheduled(params, state):
        return opt.update(lantern.grad(_loss)(params), state, params)

    @lantern.stage
    def given(params, state, lr):
        return make(lr).update(lantern.grad(_loss)(params), state, params)

    p1, s1 = PARAMS, opt.init(PARAMS)
    p2, s2 = PARAMS, opt.init(PARAMS)
    for t in range(STEPS):
        p1, s1 = scheduled(p1, s1)
        p2, s2 = given(p2, s2, np.float32(SCHEDULE(t)))
    assert scheduled.cache_info().compiles == 1 and given.cache_info().compiles == 1
    expected = _numpy_run(make)
    for k in PARAMS:
        np.testing.assert_allclose(p1[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=f"{name} schedule {k}")
        np.testing.assert_allclose(p2[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=f"{name} staged lr {k}")
    assert int(s1["step"]) == STEPS
    assert not np.allclose(expected["w"], _numpy_run(lambda lr: make(0.05 if lr else 0.0))["w"])  # it mattered


def test_schedules_equal_their_formulas():
    t = np.arange(30)
    cases = {
        "constant": (schedules.constant(0.3), np.full(30, 0.3)),
        "linear": (schedules.linear(1.0, 0.5, 10), 1.0 - 0.5 * np.minimum(t, 10) / 10),
        "cosine": (schedules.cosine(0.1, 20, 0.01), 0.01 + 0.09 * 0.5 * (1 + np.cos(np.pi * np.minimum(t, 20) / 20))),
        "step_decay": (schedules.step_decay(0.1, 7, 0.5), 0.1 * 0.5 ** (t // 7)),
        "exponential": (schedules.exponential(0.1, 0.9), 0.1 * 0.9 ** t),
        "scaled": (0.5 * schedules.constant(0.3), np.full(30, 0.15)),
        "warmup_cosine": (schedules.warmup_cosine(1.0, 4, 24), np.where(
            t < 4, t / 4, 0.5 * (1 + np.cos(np.pi * np.minimum(t - 4, 20) / 20)))),
        "join": (schedules.join([schedules.constant(1.0), schedules.linear(2.0, 0.0, 4)], [10]),
                 np.where(t < 10, 1.0, 2.0 - 2.0 * np.minimum(t - 10, 4) / 4)),
    }
    staged = lantern.stage(lambda t: {k: s(t) for k, (s, _) in cases.items()})
    for k, (sched, want) in cases.items():
        got = np.array([sched(int(i)) for i in t])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, err_msg=k)
        assert isinstance(sched(3), float)
    for i in (0, 5, 17, 29):  # on a staged step counter: the same values
        out = staged(np.int64(i))
        for k, (_, want) in cases.items():
            np.testing.assert_allclose(out[k], want[i], rtol=1e-12, atol=1e-15, err_msg=f"{k} staged at {i}")


def test_one_cycle_as_pytorch():
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=25, pct_start=0.3)
    want = []
    for _ in range(25):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = schedules.one_cycle(0.1, 25)
    np.testing.assert_allclose([ours(t) for t in range(25)], want, rtol=1e-12)


def test_one_cycle_formula():
    ours = schedules.one_cycle(0.1, 10)  # phases end at steps 2 and 9 (PyTorch's float(0.3 * 10) - 1, 10 - 1)
    values = [ours(t) for t in range(10)]
    assert values[0] == pytest.approx(0.004) and values[2] == pytest.approx(0.1)
    assert values[9] == pytest.approx(0.1 / 25 / 1e4)
    assert values[1] == pytest.approx(0.004 + (0.1 - 0.004) / 2)
    assert all(a > b for a, b in zip(values[2:], values[3:]))


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_against_pytorch_with_the_same_schedule(name):
    torch = pytest.importorskip("torch")
    make = OPTIMIZERS[name]
    torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in PARAMS.items()}
    kinds = {"SGD": lambda ps: torch.optim.SGD(ps, lr=0.0, momentum=0.9, dampening=0.1, weight_decay=0.01),
             "Adam": lambda ps: torch.optim.Adam(ps, lr=0.0, betas=(0.8, 0.99), amsgrad=True),
             "AdamW": lambda ps: torch.optim.AdamW(ps, lr=0.0, weight_decay=0.05)}
    topt = kinds[name](list(torch_params.values()))
    x, y = torch.tensor(X), torch.tensor(Y)
    for t in range(STEPS):
        topt.param_groups[0]["lr"] = SCHEDULE(t)
        topt.zero_grad()
        ((x @ torch_params["w"] + torch_params["b"] - y) ** 2).mean().backward()
        topt.step()
    opt = make(SCHEDULE)
    step = lantern.stage(lambda p, s: opt.update(lantern.grad(_loss)(p), s, p))
    params, state = PARAMS, opt.init(PARAMS)
    for _ in range(STEPS):
        params, state = step(params, state)
    for k in PARAMS:
        np.testing.assert_allclose(params[k], torch_params[k].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_bad_hyperparameters_name_the_user_s_line():
    with pytest.raises(lantern.ArgumentError, match=r"invalid lr: -0.1 .*test_schedules\.py:\d+"):
        optim.SGD(lr=-0.1)
    with pytest.raises(lantern.ArgumentError, match=r"invalid betas: 1.0 \(must be at least 0 and below 1\)"):
        optim.Adam(betas=(0.9, 1.0))
    with pytest.raises(lantern.ArgumentError, match=r"invalid lr: a hyperparameter must be a scalar, got shape \(2,\)"):
        optim.AdamW(lr=np.ones(2))
    with pytest.raises(lantern.ArgumentError, match=r"invalid lr: expected a number, a staged scalar or a schedule"):
        optim.SGD(lr="fast")
    with pytest.raises(lantern.ArgumentError, match=r"test_schedules\.py:\d+.*in optim\.py"):
        lantern.stage(lambda p: optim.SGD(lr=0.1).update({"w": p}, {}, {"w": p}))(np.ones(2))
    with pytest.raises(ValueError, match="join: 2 schedules need 1 increasing boundaries"):
        schedules.join([schedules.constant(1.0), schedules.constant(2.0)], [])
    assert math.isclose(optim.SGD(lr=np.float32(0.5)).lr, 0.5)  # a NumPy scalar outside staging: a constant
