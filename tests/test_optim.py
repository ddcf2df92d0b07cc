"""Optimizers: staged updates against NumPy references of PyTorch's formulas (and torch.optim when installed)."""
import numpy as np
import pytest

import lantern
from lantern import optim

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(0.1),
    "sgd_momentum_wd": lambda: optim.SGD(0.1, momentum=0.9, weight_decay=0.01),
    "sgd_nesterov": lambda: optim.SGD(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: optim.Adagrad(0.1),
    "adam": lambda: optim.Adam(0.01, weight_decay=0.01),
    "adamw": lambda: optim.AdamW(0.01),
}


def _reference(name, params, grads_seq):
    """The PyTorch formulas, written out in NumPy."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    state = {k: {"buf": np.zeros_like(v), "sum": np.zeros_like(v), "m": np.zeros_like(v), "v": np.zeros_like(v)}
             for k, v in p.items()}
    for t, grads in enumerate(grads_seq, start=1):
        for k in p:
            g, s = grads[k].astype(np.float64), state[k]
            if name == "sgd":
                p[k] = p[k] - 0.1 * g
            elif name.startswith("sgd"):
                if name == "sgd_momentum_wd":
                    g = g + 0.01 * p[k]
                s["buf"] = 0.9 * s["buf"] + g
                step = g + 0.9 * s["buf"] if name == "sgd_nesterov" else s["buf"]
                p[k] = p[k] - 0.1 * step
            elif name == "adagrad":
                s["sum"] = s["sum"] + g * g
                p[k] = p[k] - 0.1 * g / (np.sqrt(s["sum"]) + 1e-10)
            else:
                if name == "adamw":
                    p[k] = p[k] * (1 - 0.01 * 0.01)
                else:
                    g = g + 0.01 * p[k]
                s["m"] = 0.9 * s["m"] + 0.1 * g
                s["v"] = 0.999 * s["v"] + 0.001 * g * g
                denom = np.sqrt(s["v"]) / np.sqrt(1 - 0.999 ** t) + 1e-8
                p[k] = p[k] - 0.01 / (1 - 0.9 ** t) * s["m"] / denom
    return p


def _problem(rng):
    params = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)}
    grads_seq = [{"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)} for _ in range(4)]
    return params, grads_seq


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_staged_update_matches_the_pytorch_formulas(rng, name):
    opt = OPTIMIZERS[name]()
    params, grads_seq = _problem(rng)
    step = lantern.stage(lambda g, s, p: opt.update(g, s, p))
    state = opt.init(params)
    p = params
    for grads in grads_seq:
        p, state = step(grads, state, p)
    expected = _reference(name, params, grads_seq)
    for k in p:
        np.testing.assert_allclose(p[k], expected[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_numpy_update_matches_the_staged_one(rng, name):
    opt = OPTIMIZERS[name]()
    params, grads_seq = _problem(rng)
    state = opt.init(params)
    p_np, s_np = opt.update(grads_seq[0], state, params)
    p_st, s_st = lantern.stage(lambda g, s, p: opt.update(g, s, p))(grads_seq[0], state, params)
    for k in params:
        np.testing.assert_allclose(p_np[k], p_st[k], rtol=1e-12)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_against_torch_optim(rng, name):
    torch = pytest.importorskip("torch")
    opt = OPTIMIZERS[name]()
    params, grads_seq = _problem(rng)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    make = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
            "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
            "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
            "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.1),
            "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01),
            "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01)}[name]
    topt = make(list(tp.values()))
    step = lantern.stage(lambda g, s, p: opt.update(g, s, p))
    state, p = opt.init(params), params
    for grads in grads_seq:
        for k, t in tp.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
        p, state = step(grads, state, p)
    for k in p:
        np.testing.assert_allclose(p[k], tp[k].detach().numpy(), rtol=1e-9, atol=1e-12)


def test_float32_parameters_stay_float32(rng):
    params = {"w": rng.standard_normal(4).astype(np.float32)}
    grads = {"w": rng.standard_normal(4).astype(np.float32)}
    opt = optim.Adam(0.01)
    p, s = lantern.stage(lambda g, s, p: opt.update(g, s, p))(grads, opt.init(params), params)
    assert p["w"].dtype == np.float32 and s["m"]["w"].dtype == np.float32


def test_clipping():
    g = {"a": np.array([3.0, -4.0]), "b": np.array([12.0])}
    clipped = lantern.stage(lambda g: optim.clip_by_value(g, -5.0, 5.0))(g)
    np.testing.assert_allclose(clipped["b"], [5.0])
    scaled = lantern.stage(lambda g: optim.clip_by_global_norm(g, 6.5))(g)
    norm = 13.0  # sqrt(9 + 16 + 144)
    np.testing.assert_allclose(scaled["a"], g["a"] * 6.5 / (norm + 1e-6))
    same = lantern.stage(lambda g: optim.clip_by_global_norm(g, 100.0))(g)
    np.testing.assert_allclose(same["b"], g["b"])
    np.testing.assert_allclose(optim.clip_by_global_norm(g, 6.5)["b"], scaled["b"])


@pytest.mark.parametrize("opt", [optim.SGD(0.05, momentum=0.9), optim.Adagrad(0.5), optim.AdamW(0.1)],
                         ids=["sgd", "adagrad", "adamw"])
def test_train_step_lowers_the_loss(rng, opt):
    x = rng.standard_normal((32, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3

    @lantern.stage
    def step(params, state, x, y):
        loss, g = lantern.value_and_grad(lambda p: ((x @ p["w"] + p["b"] - y) ** 2).mean())(params)
        params, state = opt.update(g, state, params)
        return params, state, loss

    params = {"w": np.zeros(3), "b": np.zeros(())}
    state = opt.init(params)
    losses = []
    for _ in range(30):
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_fit_reports_progress_and_records_losses(rng, capsys):
    from lantern.train import fit
    opt = optim.Adagrad(0.5)
    x = rng.standard_normal((16, 3))
    y = x @ np.array([1.0, -2.0, 0.5])

    @lantern.stage
    def step(params, state, x, y):
        loss, g = lantern.value_and_grad(lambda p: ((x @ p - y) ** 2).mean())(params)
        params, state = opt.update(g, state, params)
        return params, state, loss

    params = np.zeros(3)
    batches = ((x, y) for _ in range(1000))
    history = fit(step, params, opt.init(params), batches, steps=20, log_every=10)
    assert len(history.losses) == 20 and history.losses[-1] < history.losses[0]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[-1].startswith("step     20  loss")


def test_loss_curve_png(tmp_path):
    pytest.importorskip("matplotlib")
    from lantern.train import save_loss_curve
    save_loss_curve([3.0, 2.0, 1.5, 1.2], str(tmp_path / "loss.png"))
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
