"""Character language models (vanilla RNN, LSTM), one training step per call: Lantern vs PyTorch and JAX.

Shared by ``bench_rnn.py`` and ``bench_lstm.py``. Settings from Lantern's NeurIPS'18 CPU
evaluation: Adagrad (lr 0.1, min-char-rnn's ``g / sqrt(mem + 1e-8)``), gradients clipped to
+-5, characters of ``pydoc_data.topics``. Every framework starts from the same NumPy
parameters; the first-step losses must agree.

``--layout column``: the model written as in Karpathy's min-char-rnn, with column vectors: states
``[hidden, batch]``, one-hot inputs ``X[t]`` of ``[vocab, batch]`` (``X = one_hot(xs)`` with its class
axis moved before the batch), weights applied as ``W @ h`` and stored ``[out, in]``; ``--layout row``
(the default) writes ``h @ W`` (``nn.LSTMCell``'s ``x @ W.T`` for the LSTM). Both layouts start from
the same numbers (the column parameters are the row ones transposed) and give the same losses.

``--varying``: each step's sequence has a random length from 5 to 80 (the same lengths for every
framework). Lantern compiles the step twice (the second length makes the length a run-time size,
issue 12) and reports how often it compiled; PyTorch eager needs no compile; ``torch.compile`` and
JAX are not run there (they would compile once per length).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

LR, CLIP = 0.1, 5.0


#: ``--varying``: the range of sequence lengths
MIN_SEQ, MAX_SEQ = 5, 80


def make_data(seq: int, batch: int, steps: int, varying: bool = False):
    """``steps`` batches ``(xs, ys)`` of ``[seq, batch]`` character ids (``varying``: each of a random length
    from ``MIN_SEQ`` to ``MAX_SEQ``, the same on every run), consecutive text per batch row."""
    from lantern.data import CharVocab, text_corpus
    text = text_corpus()
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    lengths = (np.random.default_rng(0).integers(MIN_SEQ, MAX_SEQ + 1, steps) if varying
               else np.full(steps, seq)).tolist()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    starts = [b * (len(ids) // batch) for b in range(batch)]
    batches = []
    for s, n in enumerate(lengths):
        at = offsets[s]
        xs = np.stack([ids[o + at:o + at + n] for o in starts], axis=1)  # [seq, batch]
        ys = np.stack([ids[o + at + 1:o + at + n + 1] for o in starts], axis=1)
        batches.append((xs, ys))
    assert offsets[-1] + 1 < len(ids) // batch
    return len(vocab), batches


def init_params(model: str, vocab: int, hidden: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"Why": (rng.standard_normal((hidden, vocab)) * 0.01).astype(np.float32), "by": np.zeros(vocab, np.float32)}
    if model == "rnn":  # min-char-rnn's initialisation
        out.update(Wxh=(rng.standard_normal((vocab, hidden)) * 0.01).astype(np.float32),
                   Whh=(rng.standard_normal((hidden, hidden)) * 0.01).astype(np.float32),
                   bh=np.zeros(hidden, np.float32))
    else:  # PyTorch's LSTMCell initialisation and layout (one-hot characters in)
        from lantern import nn
        out.update(nn.LSTMCell(vocab, hidden).init(rng))
    return out


def zero_state(model: str, batch: int, hidden: int, layout: str = "row") -> tuple:
    h = np.zeros((batch, hidden) if layout == "row" else (hidden, batch), np.float32)
    return (h,) if model == "rnn" else (h, h.copy())


#: the row layout's parameters read transposed by the column layout (``W @ h`` for ``h @ W``)
ROW_MAJOR_WEIGHTS = ("Why", "Wxh", "Whh")


def column_params(model: str, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``params`` (row layout) for the column layout: the same numbers, weights ``[out, in]``, biases
    ``[out, 1]`` (``nn.LSTMCell``'s weights are ``[out, in]`` already)."""
    out = {}
    for k, v in params.items():
        out[k] = np.ascontiguousarray(v.T) if k in ROW_MAJOR_WEIGHTS else (v[:, None] if v.ndim == 1 else v)
    return out


# ---------------------------------------------------------------------------- Lantern
def lantern_step(model: str, layout: str = "row"):
    import lantern
    from lantern import nn
    from lantern.demo import clipped_adagrad

    def cell(p, x, state):
        if model == "rnn":
            return (lantern.tanh(p["Wxh"][x] + state[0] @ p["Whh"] + p["bh"]),)
        vocab = p["Why"].shape[1]
        return nn.LSTMCell(vocab, p["Why"].shape[0])(p, lantern.one_hot(x, vocab), state)

    def column_cell(p, x, state):  # x: one-hot columns [vocab, batch]; states [hidden, batch]
        if model == "rnn":
            return (lantern.tanh(p["Wxh"] @ x + p["Whh"] @ state[0] + p["bh"]),)
        h, c = state
        gates = p["weight_ih"] @ x + p["bias_ih"] + p["weight_hh"] @ h + p["bias_hh"]
        i, f, g, o = lantern.split(gates, 4, axis=0)
        c = lantern.sigmoid(f) * c + lantern.sigmoid(i) * lantern.tanh(g)
        return lantern.sigmoid(o) * lantern.tanh(c), c

    def loss_fn(p, xs, ys, state0):
        def body(t, carry):
            state, total = carry
            state = cell(p, xs[t], state)
            return state, total + nn.cross_entropy(state[0] @ p["Why"] + p["by"], ys[t], reduction="sum")
        state, total = lantern.fori_loop(0, xs.shape[0], body, (state0, lantern.zeros((), "float32")))
        return total / xs.size, state

    def column_loss_fn(p, xs, ys, state0):
        X = lantern.moveaxis(lantern.one_hot(xs, p["Why"].shape[0]), 2, 1)  # [seq, vocab, batch]

        def body(t, carry):
            state, total = carry
            state = column_cell(p, X[t], state)
            logits = p["Why"] @ state[0] + p["by"]  # [vocab, batch]
            return state, total + nn.cross_entropy(logits.T, ys[t], reduction="sum")
        state, total = lantern.fori_loop(0, xs.shape[0], body, (state0, lantern.zeros((), "float32")))
        return total / xs.size, state

    if layout == "column":
        loss_fn = column_loss_fn  # noqa: F811

    @lantern.stage
    def step(p, mem, xs, ys, h0):
        (loss, h), g = lantern.value_and_grad(loss_fn, has_aux=True)(p, xs, ys, h0)
        return (*clipped_adagrad(p, mem, g, LR, CLIP), loss, h)

    return step


# ---------------------------------------------------------------------------- PyTorch
def torch_step(torch, model: str, compiled: bool, layout: str = "row"):
    F = torch.nn.functional

    def column_cell(p, x, state):  # as Lantern's column_cell
        if model == "rnn":
            return (torch.tanh(p["Wxh"] @ x + p["Whh"] @ state[0] + p["bh"]),)
        h, c = state
        gates = p["weight_ih"] @ x + p["bias_ih"] + p["weight_hh"] @ h + p["bias_hh"]
        i, f, g, o = gates.chunk(4, dim=0)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def column_loss_fn(p, xs, ys, state):
        X = F.one_hot(xs, p["Why"].shape[0]).float().permute(0, 2, 1)
        total = 0.0
        for t in range(xs.shape[0]):
            state = column_cell(p, X[t], state)
            total = total + F.cross_entropy((p["Why"] @ state[0] + p["by"]).T, ys[t], reduction="sum")
        return total / xs.numel(), state

    def cell(p, x, state):
        if model == "rnn":
            return (torch.tanh(p["Wxh"][x] + state[0] @ p["Whh"] + p["bh"]),)
        h, c = state
        gates = F.linear(F.one_hot(x, p["Why"].shape[1]).float(), p["weight_ih"], p["bias_ih"]) \
            + F.linear(h, p["weight_hh"], p["bias_hh"])
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def loss_fn(p, xs, ys, state):
        total = 0.0
        for t in range(xs.shape[0]):
            state = cell(p, xs[t], state)
            total = total + F.cross_entropy(state[0] @ p["Why"] + p["by"], ys[t], reduction="sum")
        return total / xs.numel(), state

    if layout == "column":
        loss_fn = column_loss_fn  # noqa: F811
    fn = torch.compile(loss_fn) if compiled else loss_fn

    def step(p, mem, xs, ys, state):
        loss, state = fn(p, xs, ys, state)
        grads = torch.autograd.grad(loss, list(p.values()))
        with torch.no_grad():
            for (k, v), g in zip(p.items(), grads):
                g = g.clamp(-CLIP, CLIP)
                mem[k] += g * g
                v -= LR * g / torch.sqrt(mem[k] + 1e-8)
        return loss.detach(), tuple(s.detach() for s in state)

    return step


# ---------------------------------------------------------------------------- JAX
def jax_step(jax, model: str, layout: str = "row"):
    """The same step under one ``jax.jit``: ``lax.scan`` over the sequence, value_and_grad, clip, Adagrad."""
    jnp = jax.numpy

    def column_cell(p, x, state):  # as Lantern's column_cell
        if model == "rnn":
            return (jnp.tanh(p["Wxh"] @ x + p["Whh"] @ state[0] + p["bh"]),)
        h, c = state
        gates = p["weight_ih"] @ x + p["bias_ih"] + p["weight_hh"] @ h + p["bias_hh"]
        i, f, g, o = jnp.split(gates, 4, axis=0)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def column_loss_fn(p, xs, ys, state):
        X = jnp.moveaxis(jax.nn.one_hot(xs, p["Why"].shape[0], dtype=jnp.float32), 2, 1)

        def body(carry, xy):
            state, total = carry
            x, y = xy
            state = column_cell(p, x, state)
            logp = jax.nn.log_softmax(p["Why"] @ state[0] + p["by"], axis=0)
            return (state, total - jnp.take_along_axis(logp, y[None, :], axis=0).sum()), None

        (state, total), _ = jax.lax.scan(body, (state, jnp.zeros((), jnp.float32)), (X, ys))
        return total / xs.size, state

    def cell(p, x, state):
        if model == "rnn":
            return (jnp.tanh(p["Wxh"][x] + state[0] @ p["Whh"] + p["bh"]),)
        h, c = state
        onehot = jax.nn.one_hot(x, p["Why"].shape[1], dtype=h.dtype)
        gates = onehot @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def loss_fn(p, xs, ys, state):
        def body(carry, xy):
            state, total = carry
            x, y = xy
            state = cell(p, x, state)
            logp = jax.nn.log_softmax(state[0] @ p["Why"] + p["by"], axis=-1)
            return (state, total - jnp.take_along_axis(logp, y[:, None], axis=-1).sum()), None

        (state, total), _ = jax.lax.scan(body, (state, jnp.zeros((), jnp.float32)), (xs, ys))
        return total / xs.size, state

    if layout == "column":
        loss_fn = column_loss_fn  # noqa: F811

    @jax.jit
    def step(p, mem, xs, ys, state):
        (loss, state), g = jax.value_and_grad(loss_fn, has_aux=True)(p, xs, ys, state)
        g = {k: jnp.clip(v, -CLIP, CLIP) for k, v in g.items()}
        mem = {k: mem[k] + g[k] * g[k] for k in mem}
        p = {k: p[k] - LR * g[k] / jnp.sqrt(mem[k] + 1e-8) for k in p}
        return p, mem, loss, state

    return step


# ---------------------------------------------------------------------------- driver
def layout_params(model: str, vocab: int, hidden: int, layout: str) -> dict[str, np.ndarray]:
    params = init_params(model, vocab, hidden)
    return column_params(model, params) if layout == "column" else params


def lantern_setup(model: str, hidden: int, seq: int, batch: int, layout: str = "row"):
    """Data, parameters and the staged step; returns a thunk running one step (fresh-process timing)."""
    vocab, batches = make_data(seq, batch, 1)
    params = layout_params(model, vocab, hidden, layout)
    mem = {k: np.zeros_like(v) for k, v in params.items()}
    step = lantern_step(model, layout)
    return lambda: step(params, mem, *batches[0], zero_state(model, batch, hidden, layout))


def run(model: str, config: tuple[int, int, int], args, torch, jax) -> None:
    hidden, seq, batch = config
    steps = 3 if args.quick else 100
    vocab, batches = make_data(seq, batch, steps, args.varying)
    if args.varying:
        jax = None
        args.frameworks = [f for f in args.frameworks if f != "torch.compile"]
    layout = args.layout
    params = layout_params(model, vocab, hidden, layout)
    rows, first_losses = [], {}

    def timed_row(name, first, once):
        harness.timed_row(rows, first_losses, name, first, once, steps, args.repeats)

    if "lantern" in args.frameworks:
        step = lantern_step(model, layout)
        state = {"p": params, "m": {k: np.zeros_like(v) for k, v in params.items()},
                 "s": zero_state(model, batch, hidden, layout), "i": 0}

        def lantern_once():
            xs, ys = batches[state["i"] % steps]
            state["i"] += 1
            state["p"], state["m"], loss, state["s"] = step(state["p"], state["m"], xs, ys, state["s"])
            return loss

        timed_row("lantern", lambda: step(params, state["m"], *batches[0], state["s"])[2], lantern_once)

    if torch is not None:
        for name in [f for f in ("torch eager", "torch.compile") if f in args.frameworks]:
            tstep = torch_step(torch, model, name == "torch.compile", layout)

            def fresh() -> tuple[dict, dict]:
                p = {k: torch.tensor(v).requires_grad_(True) for k, v in params.items()}
                return p, {k: torch.zeros_like(v) for k, v in p.items()}

            tb = [(torch.tensor(x), torch.tensor(y)) for x, y in batches]
            s0 = tuple(torch.tensor(a) for a in zero_state(model, batch, hidden, layout))
            p, mem = fresh()
            tstate = {"s": s0, "i": 0}

            def torch_once():
                xs, ys = tb[tstate["i"] % steps]
                tstate["i"] += 1
                _, tstate["s"] = tstep(p, mem, xs, ys, tstate["s"])

            timed_row(name, lambda: tstep(*fresh(), *tb[0], s0)[0], torch_once)

    if jax is not None:
        jnp = jax.numpy
        jstep = jax_step(jax, model, layout)
        jb = [(jnp.asarray(x), jnp.asarray(y)) for x, y in batches]
        s0 = tuple(jnp.asarray(a) for a in zero_state(model, batch, hidden, layout))
        jstate = {"p": {k: jnp.asarray(v) for k, v in params.items()}, "s": s0, "i": 0}
        jstate["m"] = {k: jnp.zeros_like(v) for k, v in jstate["p"].items()}

        def jax_once():
            xs, ys = jb[jstate["i"] % steps]
            jstate["i"] += 1
            jstate["p"], jstate["m"], loss, jstate["s"] = jstep(jstate["p"], jstate["m"], xs, ys, jstate["s"])
            loss.block_until_ready()

        timed_row("jax.jit", lambda: jstep(jstate["p"], jstate["m"], *jb[0], s0)[2].block_until_ready(), jax_once)

    extra = {"first_step_losses": first_losses, "first_loss_max_difference": harness.check_losses(first_losses, 1e-4)}
    if "lantern" in args.frameworks:
        extra["lantern_compiles"] = step.cache_info().compiles
    if args.varying:
        extra["sequence_lengths"] = f"{MIN_SEQ} to {MAX_SEQ}, mean {np.mean([len(x) for x, _ in batches]):.1f}"
    if not args.no_fresh and "lantern" in args.frameworks and not args.varying:
        extra["lantern_fresh_process"] = harness.fresh_process(
            "charlm", f"lantern_setup({model!r}, {hidden}, {seq}, {batch}, {layout!r})")
    name = f"{model}_h{hidden}_s{MIN_SEQ}-{MAX_SEQ}_b{batch}" if args.varying else f"{model}_h{hidden}_s{seq}_b{batch}"
    if layout != "row":
        name += f"_{layout}"
    harness.report(name, {"hidden": hidden, "seq": "varying" if args.varying else seq, "batch": batch,
                          "layout": layout, "threads": args.threads}, rows, extra)


def main(model: str, configs: list[tuple[int, int, int]], description: str) -> None:
    def add(parser) -> None:
        parser.add_argument("--varying", action="store_true", help=f"sequences of random lengths {MIN_SEQ} to {MAX_SEQ}")
        parser.add_argument("--layout", choices=("row", "column"), default="row",
                            help="row: h @ W (the default); column: W @ h with column vectors (min-char-rnn's own)")
    args = harness.parse_args(description, add)
    torch, jax = harness.torch_or_none(args), harness.jax_or_none(args)
    for config in configs:
        run(model, config, args, torch, jax)
