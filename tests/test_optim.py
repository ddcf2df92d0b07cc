"""lantern.optim and lantern.train.

Each optimizer's update, over several steps on nested parameters, against a NumPy reference
written from PyTorch's formulas: run on NumPy arrays (no compiling) and staged (one kernel per
configuration, cached per configuration so the torch comparison reuses it). Against
torch.optim itself when torch is installed. Clipping semantics, a staged train step
(value_and_grad + clip + update in one native call) whose loss goes down for each optimizer,
and fit()'s progress output, loss history and loss-curve PNG.
"""
from __future__ import annotations

import functools
import io
import sys

import numpy as np
import pytest

import lantern
from lantern import optim
from lantern.train import FitResult, fit, save_loss_curve, smooth
from lantern.tree import flatten, tree_map

# id -> (lantern optimizer, torch.optim class name, torch keyword arguments)
CONFIGS = {
    "sgd": (optim.SGD(0.1), "SGD", dict(lr=0.1)),
    "sgd_momentum_dampening_wd": (optim.SGD(0.1, momentum=0.9, dampening=0.3, weight_decay=0.01), "SGD",
                                  dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    "sgd_nesterov_wd": (optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01), "SGD",
                        dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adagrad": (optim.Adagrad(0.1, initial_accumulator_value=0.1), "Adagrad",
                dict(lr=0.1, initial_accumulator_value=0.1)),
    "adagrad_lr_decay_wd": (optim.Adagrad(0.1, lr_decay=0.05, weight_decay=0.01), "Adagrad",
                            dict(lr=0.1, lr_decay=0.05, weight_decay=0.01)),
    "adam": (optim.Adam(0.01), "Adam", dict(lr=0.01)),
    "adam_l2_amsgrad": (optim.Adam(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True), "Adam",
                        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    "adamw": (optim.AdamW(0.01, weight_decay=0.1), "AdamW", dict(lr=0.01, weight_decay=0.1)),
}
STEPS = 5


# ------------------------------------------------------------------ NumPy reference (PyTorch's formulas)

def ref_update(opt, p, g, s, t):
    """One step for one parameter array, written from the torch.optim documentation/source.
    ``s`` is this parameter's state dict (mutated), ``t`` the 1-based step number."""
    if isinstance(opt, optim.SGD):
        if opt.weight_decay:
            g = g + opt.weight_decay * p
        if opt.momentum:
            s["buf"] = g.copy() if t == 1 else opt.momentum * s["buf"] + (1 - opt.dampening) * g
            g = g + opt.momentum * s["buf"] if opt.nesterov else s["buf"]
        return p - opt.lr * g
    if isinstance(opt, optim.Adagrad):
        if opt.weight_decay:
            g = g + opt.weight_decay * p
        clr = opt.lr / (1 + (t - 1) * opt.lr_decay)
        s["sum"] = s.get("sum", np.full_like(p, opt.initial_accumulator_value)) + g * g
        return p - clr * g / (np.sqrt(s["sum"]) + opt.eps)
    b1, b2 = opt.betas
    if isinstance(opt, optim.AdamW):
        p = p * (1 - opt.lr * opt.weight_decay)
    elif opt.weight_decay:
        g = g + opt.weight_decay * p
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    v = s["v"]
    if opt.amsgrad:
        v = s["vmax"] = np.maximum(s.get("vmax", 0.0), s["v"])
    m_hat, v_hat = s["m"] / (1 - b1 ** t), v / (1 - b2 ** t)
    return p - opt.lr * m_hat / (np.sqrt(v_hat) + opt.eps)


def make_params(rng, dtype=np.float64):
    return {"layer": {"w": rng.standard_normal((3, 2)).astype(dtype), "b": rng.standard_normal(2).astype(dtype)},
            "extra": (rng.standard_normal(()).astype(dtype), {"u": rng.standard_normal(4).astype(dtype)})}


def make_grads(rng, params):
    return [tree_map(lambda p: rng.standard_normal(np.shape(p)).astype(p.dtype), params) for _ in range(STEPS)]


def reference_run(opt, params, grads_seq):
    leaves, treedef = flatten(params)
    leaves = [np.asarray(x, np.float64) for x in leaves]
    states = [{} for _ in leaves]
    for t, grads in enumerate(grads_seq, start=1):
        gl = flatten(grads)[0]
        leaves = [ref_update(opt, p, np.asarray(g, np.float64), s, t) for p, g, s in zip(leaves, gl, states)]
    return treedef, leaves


def run(update, opt, params, grads_seq):
    state = opt.init(params)
    for grads in grads_seq:
        params, state = update(grads, state, params)
    return params, state


def assert_close_to(params, ref, rtol, atol=0.0):
    treedef, expected = ref
    leaves, td = flatten(params)
    assert td == treedef
    for got, want in zip(leaves, expected):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@functools.cache
def staged_update(name):
    opt = CONFIGS[name][0]
    return lantern.stage(lambda grads, state, params: opt.update(grads, state, params))


# ------------------------------------------------------------------ updates against the reference

@pytest.mark.parametrize("name", CONFIGS)
def test_numpy_update_matches_pytorch_formulas(rng, name):
    opt = CONFIGS[name][0]
    params = make_params(rng)
    before = tree_map(np.copy, params)
    grads_seq = make_grads(rng, params)
    out, state = run(opt.update, opt, params, grads_seq)
    assert_close_to(out, reference_run(opt, params, grads_seq), rtol=1e-12, atol=1e-15)
    assert int(state["step"]) == STEPS and state["step"].dtype == np.int64
    for a, b in zip(flatten(params)[0], flatten(before)[0]):
        np.testing.assert_array_equal(a, b)  # functional: the inputs are not modified in place


@pytest.mark.parametrize("name", CONFIGS)
def test_staged_update_matches_pytorch_formulas(rng, name):
    opt = CONFIGS[name][0]
    params = make_params(rng)
    before = tree_map(np.copy, params)
    grads_seq = make_grads(rng, params)
    out, state = run(staged_update(name), opt, params, grads_seq)
    assert_close_to(out, reference_run(opt, params, grads_seq), rtol=1e-12, atol=1e-15)
    assert int(state["step"]) == STEPS
    numpy_out, numpy_state = run(opt.update, opt, params, grads_seq)
    for a, b in zip(flatten(state)[0], flatten(numpy_state)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    for a, b in zip(flatten(params)[0], flatten(before)[0]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["sgd_momentum_dampening_wd", "adam_l2_amsgrad"])
def test_float32_parameters_and_state_stay_float32(rng, name):
    opt = CONFIGS[name][0]
    params = make_params(rng, np.float32)
    grads_seq = make_grads(rng, params)
    ref = reference_run(opt, params, grads_seq)
    for update in (opt.update, staged_update(name)):
        out, state = run(update, opt, params, grads_seq)
        assert {x.dtype for x in flatten(out)[0]} == {np.dtype(np.float32)}
        assert {x.dtype for k, x in flatten(state, paths=True)[0] if k != "['step']"} == {np.dtype(np.float32)}
        assert_close_to(out, ref, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", CONFIGS)
def test_against_torch_optim(rng, name, dtype):
    torch = pytest.importorskip("torch")
    opt, cls, kwargs = CONFIGS[name]
    params = make_params(rng, dtype)
    grads_seq = make_grads(rng, params)
    tparams = [torch.tensor(x, requires_grad=True) for x in flatten(params)[0]]
    topt = getattr(torch.optim, cls)(tparams, **kwargs)
    for grads in grads_seq:
        for t, g in zip(tparams, flatten(grads)[0]):
            t.grad = torch.tensor(g)
        topt.step()
    expected = [t.detach().numpy() for t in tparams]
    runs = [run(opt.update, opt, params, grads_seq)[0]]
    if dtype == np.float64:
        runs.append(run(staged_update(name), opt, params, grads_seq)[0])  # the kernel compiled above
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == np.float64 else dict(rtol=1e-6, atol=1e-7)
    for out in runs:
        for got, want in zip(flatten(out)[0], expected):
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, **tol)


def test_hyperparameters_are_checked():
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        optim.Adam(-1.0)
    with pytest.raises(ValueError, match="betas"):
        optim.AdamW(0.1, betas=(0.9, 1.0))
    with pytest.raises(TypeError):
        optim.SGD(0.1, 0.9)  # everything after lr is keyword-only
    assert optim.AdamW(0.1).weight_decay == 0.01 and optim.Adam(0.1).weight_decay == 0.0
    assert optim.Adam() == optim.Adam(1e-3) and hash(optim.Adam()) == hash(optim.Adam(1e-3))


def test_update_checks_structures(rng):
    params = make_params(rng)
    opt = optim.Adam(0.1)
    state = opt.init(params)
    with pytest.raises(ValueError, match="structures differ"):
        opt.update({"layer": params["layer"]}, state, params)
    with pytest.raises(ValueError, match=r"no \['exp_avg_sq'\]"):
        opt.update(params, {"step": state["step"], "exp_avg": state["exp_avg"]}, params)
    with pytest.raises(ValueError, match="structures differ"):
        opt.update(params, optim.Adam(0.1).init({"w": np.zeros(2)}), params)


def test_init_state_layout(rng):
    params = make_params(rng, np.float32)
    assert sorted(optim.SGD(0.1).init(params)) == ["step"]
    assert sorted(optim.SGD(0.1, momentum=0.5).init(params)) == ["momentum_buffer", "step"]
    acc = optim.Adagrad(0.1, initial_accumulator_value=0.25).init(params)["sum"]
    assert all(np.all(x == 0.25) and x.dtype == np.float32 for x in flatten(acc)[0])
    state = optim.Adam(0.1, amsgrad=True).init(params)
    assert sorted(state) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
    assert flatten(state["exp_avg"])[1] == flatten(params)[1]


# ------------------------------------------------------------------ clipping

def test_clipping_numpy_and_staged():
    g = {"a": np.array([3.0, -4.0]), "b": (np.array([[12.0, -7.0]]),)}
    norm = np.sqrt(9 + 16 + 144 + 49)

    @lantern.stage
    def clips(g):
        return (optim.clip_by_value(g, -5.0, 5.0), optim.clip_by_global_norm(g, 6.5),
                optim.clip_by_global_norm(g, 100.0), optim.global_norm(g))

    numpy_results = (optim.clip_by_value(g, -5.0, 5.0), optim.clip_by_global_norm(g, 6.5),
                     optim.clip_by_global_norm(g, 100.0), optim.global_norm(g))
    for by_value, scaled, same, total in (clips(g), numpy_results):
        np.testing.assert_array_equal(by_value["a"], [3.0, -4.0])
        np.testing.assert_array_equal(by_value["b"][0], [[5.0, -5.0]])
        coef = 6.5 / (norm + 1e-6)
        np.testing.assert_allclose(scaled["a"], g["a"] * coef, rtol=1e-14)
        np.testing.assert_allclose(scaled["b"][0], g["b"][0] * coef, rtol=1e-14)
        np.testing.assert_allclose(np.sqrt(sum(np.sum(x * x) for x in flatten(scaled)[0])), 6.5, rtol=1e-6)
        for x, y in zip(flatten(same)[0], flatten(g)[0]):
            np.testing.assert_array_equal(x, y)  # coefficient >= 1: unchanged
        np.testing.assert_allclose(total, norm, rtol=1e-14)


def test_clipping_keeps_dtypes_and_checks_bounds():
    g = {"a": np.array([3.0, -4.0], np.float32), "b": np.array([1e-3], np.float64)}
    for x, y in zip(flatten(optim.clip_by_global_norm(g, 1.0))[0], flatten(g)[0]):
        assert x.dtype == y.dtype
    assert optim.clip_by_value(g, -1, 1)["a"].dtype == np.float32
    with pytest.raises(ValueError, match="lo=1"):
        optim.clip_by_value(g, 1.0, -1.0)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_by_global_norm(g, -1.0)


def test_clip_by_global_norm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    g = make_params(rng)
    for max_norm in (0.5, 1e3):
        ts = [torch.tensor(x) for x in flatten(g)[0]]
        for t in ts:
            t.grad = t.clone()
        torch.nn.utils.clip_grad_norm_(ts, max_norm)
        for got, t in zip(flatten(optim.clip_by_global_norm(g, max_norm))[0], ts):
            np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-12)


# ------------------------------------------------------------------ staged training steps

TRAIN_OPTS = {"sgd_momentum": optim.SGD(0.05, momentum=0.9), "adagrad": optim.Adagrad(0.5),
              "adam": optim.Adam(0.05), "adamw": optim.AdamW(0.05, weight_decay=0.01)}


def regression(seed=0, n=32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.3).astype(np.float32)
    params = {"layer": {"w": np.zeros((3, 1), np.float32), "b": np.zeros(1, np.float32)}}
    return params, x, y


def mse(params, x, y):
    return lantern.mean(lantern.square(x @ params["layer"]["w"] + params["layer"]["b"] - y))


@functools.cache
def train_step(name):
    opt = TRAIN_OPTS[name]

    @lantern.stage
    def step(params, opt_state, x, y):
        loss, grads = lantern.value_and_grad(mse)(params, x, y)
        grads = optim.clip_by_global_norm(grads, 10.0)
        params, opt_state = opt.update(grads, opt_state, params)
        return params, opt_state, loss, optim.global_norm(grads)
    return step


@pytest.mark.parametrize("name", TRAIN_OPTS)
def test_staged_train_step_lowers_the_loss(name):
    opt, step = TRAIN_OPTS[name], train_step(name)
    params, x, y = regression()
    state = opt.init(params)
    # the first step by hand: analytic gradient, clipping and the NumPy update
    r = x @ params["layer"]["w"] + params["layer"]["b"] - y
    grads = {"layer": {"w": 2 * x.T @ r / r.size, "b": 2 * r.sum(0) / r.size}}
    expected, _ = opt.update(optim.clip_by_global_norm(grads, 10.0), state, params)
    losses = []
    for i in range(40):
        params, state, loss, norm = step(params, state, x, y)
        if i == 0:
            assert_close_to(params, (flatten(expected)[1], flatten(expected)[0]), rtol=1e-5, atol=1e-6)
            assert float(norm) <= 10.0 * (1 + 1e-5)
        losses.append(float(loss))
    assert int(state["step"]) == 40 and params["layer"]["w"].dtype == np.float32
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.1 * losses[0], losses


# ------------------------------------------------------------------ fit

class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_fit_plain_lines_history_and_aux(capsys):
    params, x, y = regression()
    opt = TRAIN_OPTS["adam"]
    result = fit(train_step("adam"), params, opt.init(params), ((x, y) for _ in range(100)), steps=20, log_every=10)
    assert isinstance(result, FitResult)
    assert result.losses.shape == (20,) and result.losses.dtype == np.float64
    assert result.losses[-1] < result.losses[0]
    assert int(result.opt_state["step"]) == 20 and result.aux.shape == ()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("step 10/20  smoothed loss ") and "steps/s" in lines[0]
    assert lines[1].startswith("step 20/20  smoothed loss ")
    assert float(lines[1].split()[4]) == pytest.approx(smooth(result.losses)[-1], rel=1e-3)
    assert lines[2].startswith("20 steps in ")
    # the same steps by hand give the same parameters
    p, s = params, opt.init(params)
    for _ in range(20):
        p, s, _, _ = train_step("adam")(p, s, x, y)
    np.testing.assert_array_equal(p["layer"]["w"], result.params["layer"]["w"])


def test_fit_terminal_redraws_one_line_and_other_batch_sources(capsys):
    params, x, y = regression()
    opt = TRAIN_OPTS["adam"]
    out = FakeTTY()
    result = fit(train_step("adam"), params, opt.init(params), lambda i: (x, y), steps=5, file=out)
    text = out.getvalue()
    assert text.startswith("\rstep ") and "\n" not in text.split("\r")[-1].split("\n")[0]
    assert text.splitlines()[-1].startswith("5 steps in ") and len(result.losses) == 5
    assert capsys.readouterr().out == ""  # file= took the output
    # a finite list without steps runs to its end; log_every=0 is quiet
    result = fit(train_step("adam"), params, opt.init(params), [(x, y)] * 3, log_every=0)
    assert len(result.losses) == 3 and capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="steps"):
        fit(train_step("adam"), params, opt.init(params), lambda i: (x, y))
    with pytest.raises(TypeError, match="must return"):
        fit(lambda p, s, x, y: (p, s), params, opt.init(params), [(x, y)], log_every=0)


def test_smooth_is_a_debiased_moving_average():
    np.testing.assert_allclose(smooth([2.0, 2.0, 2.0]), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(smooth([1.0, 3.0], beta=0.5), [1.0, (0.25 + 1.5) / 0.75])


def test_fit_writes_loss_curve_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    params, x, y = regression()
    path = tmp_path / "loss.png"
    fit(train_step("adam"), params, TRAIN_OPTS["adam"].init(params), [(x, y)] * 4, plot=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"loss curve written to {path}" in capsys.readouterr().out
    save_loss_curve([3.0, 2.0], str(tmp_path / "direct.png"))
    assert (tmp_path / "direct.png").stat().st_size > 1000


def test_plot_without_matplotlib_fails_before_training(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    calls = []
    with pytest.raises(ImportError, match=r"pip install 'lantern-staged\[plot\]'"):
        fit(lambda *a: calls.append(a), {}, {}, [()], plot=str(tmp_path / "loss.png"))
    assert calls == []
