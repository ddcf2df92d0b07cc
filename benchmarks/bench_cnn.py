"""MNIST-shaped CNN, one SGD training step per call: Lantern vs PyTorch (eager, torch.compile) and jax.jit.

The model of PyTorch's MNIST example as in Lantern's NeurIPS'18 evaluation: conv 1->10 5x5,
maxpool 2, relu, conv 10->20 5x5, maxpool 2, relu, fc 320->50, relu, fc 50->10,
cross-entropy (mean over the batch), batch 100, plain SGD lr 0.01.

Data: ``lantern.data.synthetic_mnist``, deterministic synthetic MNIST-shaped images (28x28,
10 classes; each class is a Gaussian blob at its own place on a 2x5 grid plus a
class-specific stroke, then noise), so nothing is downloaded and the task is learnable. Real
MNIST is read (``lantern.data.load_mnist``) when given local IDX files:
``--mnist-images train-images-idx3-ubyte --mnist-labels train-labels-idx1-ubyte``.

Parameters are made once with ``lantern.nn`` (PyTorch's initialisation and layouts) and
converted for every framework.

    python benchmarks/bench_cnn.py [--quick] [--threads N] [--mnist-images F --mnist-labels F]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from lantern.data import load_mnist, synthetic_mnist  # noqa: E402

BATCH, LR = 100, 0.01


def init_params() -> dict[str, dict[str, np.ndarray]]:
    from lantern import nn
    rng = np.random.default_rng(0)
    return {"conv1": nn.Conv2d(1, 10, 5).init(rng), "conv2": nn.Conv2d(10, 20, 5).init(rng),
            "fc1": nn.Linear(320, 50).init(rng), "fc2": nn.Linear(50, 10).init(rng)}


# ---------------------------------------------------------------------------- Lantern
def lantern_step():
    import lantern
    from lantern import nn, optim

    conv1, conv2, pool = nn.Conv2d(1, 10, 5), nn.Conv2d(10, 20, 5), nn.MaxPool2d(2)
    fc1, fc2 = nn.Linear(320, 50), nn.Linear(50, 10)
    opt = optim.SGD(lr=LR)

    def loss_fn(p, x, y):
        h = lantern.relu(pool(conv1(p["conv1"], x)))
        h = lantern.relu(pool(conv2(p["conv2"], h)))
        h = lantern.relu(fc1(p["fc1"], lantern.reshape(h, (x.shape[0], 320))))
        return nn.cross_entropy(fc2(p["fc2"], h), y)

    return harness.lantern_train_step(loss_fn, opt), opt


def lantern_setup():
    """One training step (fresh-process timing)."""
    x, y = synthetic_mnist(BATCH)
    params = init_params()
    step, opt = lantern_step()
    state = opt.init(params)
    return lambda: step(params, state, x, y)


# ---------------------------------------------------------------------------- PyTorch
def torch_fns(torch, compiled: bool):
    F = torch.nn.functional

    def loss_fn(p, x, y):
        h = F.relu(F.max_pool2d(F.conv2d(x, p["conv1"]["weight"], p["conv1"]["bias"]), 2))
        h = F.relu(F.max_pool2d(F.conv2d(h, p["conv2"]["weight"], p["conv2"]["bias"]), 2))
        h = F.relu(F.linear(h.reshape(-1, 320), p["fc1"]["weight"], p["fc1"]["bias"]))
        return F.cross_entropy(F.linear(h, p["fc2"]["weight"], p["fc2"]["bias"]), y)

    fn = torch.compile(loss_fn) if compiled else loss_fn

    def step(p, opt, x, y):
        opt.zero_grad(set_to_none=True)
        loss = fn(p, x, y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def torch_make(torch, params):
    p = {k: {n: torch.tensor(a).requires_grad_(True) for n, a in v.items()} for k, v in params.items()}
    return p, torch.optim.SGD([a for v in p.values() for a in v.values()], lr=LR)


# ---------------------------------------------------------------------------- JAX
def jax_step(jax):
    jnp, lax = jax.numpy, jax.lax

    def conv(p, x):
        y = lax.conv_general_dilated(x, p["weight"], (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + p["bias"][None, :, None, None]

    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def loss_fn(p, x, y):
        h = jax.nn.relu(pool(conv(p["conv1"], x)))
        h = jax.nn.relu(pool(conv(p["conv2"], h)))
        h = jax.nn.relu(h.reshape(-1, 320) @ p["fc1"]["weight"].T + p["fc1"]["bias"])
        logp = jax.nn.log_softmax(h @ p["fc2"]["weight"].T + p["fc2"]["bias"], axis=-1)
        return -jnp.take_along_axis(logp, y[:, None], axis=-1).mean()

    @jax.jit
    def step(p, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        return jax.tree_util.tree_map(lambda a, b: a - LR * b, p, g), loss

    return step


# ---------------------------------------------------------------------------- driver
def main() -> None:
    def extra_args(parser):
        parser.add_argument("--mnist-images", help="local MNIST images IDX file (optionally .gz)")
        parser.add_argument("--mnist-labels", help="local MNIST labels IDX file (optionally .gz)")

    args = harness.parse_args(__doc__.splitlines()[0], extra_args)
    torch, jax = harness.torch_or_none(args), harness.jax_or_none(args)
    steps = 3 if args.quick else 20
    batches_n = 3 if args.quick else 60
    if args.mnist_images and args.mnist_labels:
        x, y = load_mnist(args.mnist_images, args.mnist_labels, BATCH * batches_n)
        data = "MNIST (local IDX)"
    else:
        x, y = synthetic_mnist(BATCH * batches_n)
        data = "synthetic MNIST-shaped"
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]
    params = init_params()
    rows, first_losses, losses = [], {}, {}

    def timed_row(name, first, once):
        harness.timed_row(rows, first_losses, name, first, once, steps, args.repeats)

    if "lantern" in args.frameworks:
        step, opt = lantern_step()
        lantern_once = harness.cycling_steps(step, params, opt.init(params), batches, losses.setdefault("lantern", []))
        timed_row("lantern", lambda: step(params, opt.init(params), *batches[0])[2], lantern_once)

    if torch is not None:
        for name in [f for f in ("torch eager", "torch.compile") if f in args.frameworks]:
            tstep = torch_fns(torch, name == "torch.compile")
            tb = [(torch.tensor(a), torch.tensor(b)) for a, b in batches]
            p, topt = torch_make(torch, params)
            ts = {"i": 0}

            def torch_once(name=name):
                xb, yb = tb[ts["i"] % len(tb)]
                ts["i"] += 1
                losses.setdefault(name, []).append(float(tstep(p, topt, xb, yb)))

            timed_row(name, lambda: tstep(*torch_make(torch, params), *tb[0]), torch_once)

    if jax is not None:
        jnp = jax.numpy
        jstep = jax_step(jax)
        jb = [(jnp.asarray(a), jnp.asarray(b)) for a, b in batches]
        jp = jax.tree_util.tree_map(jnp.asarray, params)
        js = {"p": jp, "i": 0}

        def jax_once():
            xb, yb = jb[js["i"] % len(jb)]
            js["i"] += 1
            js["p"], loss = jstep(js["p"], xb, yb)
            losses.setdefault("jax.jit", []).append(float(loss))

        timed_row("jax.jit", lambda: jstep(jp, *jb[0])[1], jax_once)

    extra = {"data": data, "first_step_losses": first_losses,
             "first_loss_max_difference": harness.check_losses(first_losses, 1e-4),
             "loss_after_training": {k: float(np.mean(v[-steps:])) for k, v in losses.items()}}
    if not args.no_fresh and "lantern" in args.frameworks:
        extra["lantern_fresh_process"] = harness.fresh_process("bench_cnn", "lantern_setup()")
    harness.report("cnn", {"batch": BATCH, "lr": LR, "threads": args.threads}, rows, extra)


if __name__ == "__main__":
    main()
