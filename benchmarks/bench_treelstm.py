"""Binary TreeLSTM sentiment-style classifier, one epoch of per-tree training: Lantern vs PyTorch and JAX.

Settings of Lantern's NeurIPS'18 TreeLSTM benchmark: frozen 300-d embeddings, hidden 150,
5 classes predicted at every node (cross-entropy summed over the nodes of a tree), Adagrad
lr 0.05, batch 1 tree.

Trees are deterministic and need no download (``lantern.data.sentence_trees``): sentences of
``pydoc_data.topics`` (4 to 20 words), each binarized as a balanced tree (split at the
middle); a node's label is the total length of the words it spans modulo 5. Nodes are
numbered in pre-order (root 0, children after their parent) and stored as child-index
arrays (``-1`` for a leaf), each tree at its own size (7 to 39 nodes), as a user has them.

* Lantern: a recursive staged function over the child-index arrays, differentiated in CPS
  (the recursion becomes a recursive C function taking its continuation). The step compiles for
  the first tree's size and once more with the node count a run-time size (issue 12); that code
  serves every later tree. The report counts the compiles and times the first epoch (with them);
* PyTorch eager: Python recursion over the same tree;
* JAX: a padded formulation under one ``jax.jit`` (the same trees padded to ``MAX_NODES``, so one
  signature; unpadded, every tree size would compile again): all leaves' gates in one product, then a
  ``lax.fori_loop`` over the ``MAX_NODES`` slots in reverse pre-order (children before
  parents), each slot computing the inner-node cell and selecting it for inner nodes; the
  losses of all real nodes at once at the end. (``torch.compile`` is not run: recursion over
  a different tree each step would recompile for every tree shape.)

Model (``H = 150``)::

    leaf:  i, o, u = split(emb[word] @ Wx + bx);          c = sig(i) * tanh(u)
    inner: i, fl, fr, o, u = split([h_l, h_r] @ U + bu);  c = sig(i) * tanh(u) + sig(fl) * c_l + sig(fr) * c_r
    both:  h = sig(o) * tanh(c);   loss += cross_entropy(h @ Wout + bout, label)

``--padded`` gives Lantern and PyTorch the padded trees too (the benchmark before run-time sizes).
``--layout column`` writes every product as a matrix applied to a vector (``Wx @ x``, ``U @ [h_l, h_r]``,
``Wout @ h``) with the weights stored ``[out, in]`` (the same numbers transposed, so the losses agree), in
every framework; ``--layout row`` (the default) writes ``x @ Wx`` with weights ``[in, out]``.

    python benchmarks/bench_treelstm.py [--quick] [--threads N] [--trees K] [--padded] [--layout row|column]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

EMBED, HIDDEN, CLASSES, LR = 300, 150, 5, 0.05
MIN_WORDS, MAX_WORDS = 4, 20
MAX_NODES = 2 * MAX_WORDS - 1


# ---------------------------------------------------------------------------- data
def make_trees(count: int, pad: bool = False) -> tuple[int, list[dict[str, np.ndarray]]]:
    """``count`` binarized sentences (``lantern.data.sentence_trees``): (vocabulary size, trees), padded to
    ``MAX_NODES`` or each at its own size."""
    from lantern.data import sentence_trees
    vocabulary, trees = sentence_trees(count, CLASSES, MIN_WORDS, MAX_WORDS, pad=pad)
    assert all(len(t["left"]) == (MAX_NODES if pad else t["n"]) for t in trees)
    return len(vocabulary), trees


def init_params(vocab: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Frozen embeddings and the trained parameters (uniform in +-1/sqrt(H), as PyTorch's cells)."""
    rng = np.random.default_rng(0)
    emb = (rng.standard_normal((vocab, EMBED)) * 0.1).astype(np.float32)
    b = 1 / np.sqrt(HIDDEN)

    def u(*shape):
        return rng.uniform(-b, b, shape).astype(np.float32)

    return emb, {"Wx": u(EMBED, 3 * HIDDEN), "bx": u(3 * HIDDEN), "U": u(2 * HIDDEN, 5 * HIDDEN),
                 "bu": u(5 * HIDDEN), "Wout": u(HIDDEN, CLASSES), "bout": u(CLASSES)}


#: the weights a product applies; the column layout stores them transposed (``[out, in]``)
WEIGHTS = ("Wx", "U", "Wout")


def layout_params(params: dict[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """``params`` as the layout stores them: the same numbers, the weights transposed for ``column``."""
    if layout == "row":
        return params
    return {k: np.ascontiguousarray(v.T) if k in WEIGHTS else v for k, v in params.items()}


def apply(layout: str):
    """``x``'s product with a stored weight ``W`` as the layout writes it: ``x @ W`` or ``W @ x``."""
    return (lambda W, x: x @ W) if layout == "row" else (lambda W, x: W @ x)


# ---------------------------------------------------------------------------- Lantern
def lantern_step(layout: str = "row"):
    import lantern
    from lantern import nn, optim

    H = HIDDEN
    opt = optim.Adagrad(lr=LR)
    mul = apply(layout)

    def node_loss(p, h, label):
        return nn.cross_entropy(mul(p["Wout"], h) + p["bout"], label, reduction="sum")

    @lantern.stage
    def tree(p, emb, words, left, right, labels, node):
        """(h, c, summed loss of the subtree) of ``node``, in plain Python: the ``if`` on the staged child
        index is staged as a ``lantern.cond`` (issue 15; the same IR as writing the ``cond``)."""
        if left[node] < 0:
            g = mul(p["Wx"], emb[words[node]]) + p["bx"]
            c = lantern.sigmoid(g[:H]) * lantern.tanh(g[2 * H:])
            h = lantern.sigmoid(g[H:2 * H]) * lantern.tanh(c)
            return h, c, node_loss(p, h, labels[node])
        hl, cl, ll = tree(p, emb, words, left, right, labels, left[node])
        hr, cr, lr = tree(p, emb, words, left, right, labels, right[node])
        g = mul(p["U"], lantern.concatenate([hl, hr])) + p["bu"]
        c = (lantern.sigmoid(g[:H]) * lantern.tanh(g[4 * H:]) + lantern.sigmoid(g[H:2 * H]) * cl
             + lantern.sigmoid(g[2 * H:3 * H]) * cr)
        h = lantern.sigmoid(g[3 * H:4 * H]) * lantern.tanh(c)
        return h, c, ll + lr + node_loss(p, h, labels[node])

    def loss_fn(p, emb, words, left, right, labels):
        return tree(p, emb, words, left, right, labels, lantern.asarray(np.int64(0)))[2]

    @lantern.stage
    def step(p, state, emb, words, left, right, labels):
        loss, g = lantern.value_and_grad(loss_fn)(p, emb, words, left, right, labels)
        p, state = opt.update(g, state, p)
        return p, state, loss

    return step, opt


def lantern_setup(trees: int = 1, layout: str = "row"):
    """One training step on the first tree (fresh-process timing)."""
    vocab, ts = make_trees(trees)
    emb, params = init_params(vocab)
    params = layout_params(params, layout)
    step, opt = lantern_step(layout)
    state = opt.init(params)
    t = ts[0]
    return lambda: step(params, state, emb, t["words"], t["left"], t["right"], t["labels"])


# ---------------------------------------------------------------------------- PyTorch
def torch_epoch_fns(torch, emb_np, params_np, layout: str = "row"):
    F = torch.nn.functional
    H = HIDDEN
    emb = torch.tensor(emb_np)  # frozen
    mul = apply(layout)

    def tree_loss(p, t, node):
        if t["left"][node] < 0:
            g = mul(p["Wx"], emb[t["words"][node]]) + p["bx"]
            c = torch.sigmoid(g[:H]) * torch.tanh(g[2 * H:])
            h = torch.sigmoid(g[H:2 * H]) * torch.tanh(c)
            loss = 0.0
        else:
            hl, cl, ll = tree_loss(p, t, t["left"][node])
            hr, cr, lr = tree_loss(p, t, t["right"][node])
            g = mul(p["U"], torch.cat([hl, hr])) + p["bu"]
            c = (torch.sigmoid(g[:H]) * torch.tanh(g[4 * H:]) + torch.sigmoid(g[H:2 * H]) * cl
                 + torch.sigmoid(g[2 * H:3 * H]) * cr)
            h = torch.sigmoid(g[3 * H:4 * H]) * torch.tanh(c)
            loss = ll + lr
        logits = mul(p["Wout"], h) + p["bout"]
        return h, c, loss + F.cross_entropy(logits[None], t["labels_t"][node:node + 1], reduction="sum")

    def make():
        p = {k: torch.tensor(v).requires_grad_(True) for k, v in params_np.items()}
        return p, torch.optim.Adagrad(list(p.values()), lr=LR)

    def step(p, opt, t):
        opt.zero_grad(set_to_none=True)
        loss = tree_loss(p, t, 0)[2]
        loss.backward()
        opt.step()
        return loss.detach()

    return make, step


def torch_tree(torch, t):
    """Python ints for the recursion (as a define-by-run user would hold the tree), labels as a tensor."""
    return {"left": t["left"].tolist(), "right": t["right"].tolist(), "words": t["words"].tolist(),
            "labels_t": torch.tensor(t["labels"])}


# ---------------------------------------------------------------------------- JAX
def jax_step(jax, layout: str = "row"):
    jnp, lax = jax.numpy, jax.lax
    H = HIDDEN
    mul = apply(layout)

    def loss_fn(p, emb, words, left, right, labels, mask):
        # every slot's leaf gates at once: [MAX_NODES, 3H] (the column layout's [3H, MAX_NODES] transposed)
        gl = (emb[words] @ p["Wx"] if layout == "row" else (p["Wx"] @ emb[words].T).T) + p["bx"]
        cl = jax.nn.sigmoid(gl[:, :H]) * jnp.tanh(gl[:, 2 * H:])
        hl = jax.nn.sigmoid(gl[:, H:2 * H]) * jnp.tanh(cl)
        is_leaf = left < 0

        def body(k, hc):
            hs, cs = hc
            i = MAX_NODES - 1 - k  # reverse pre-order: children (higher indices) first
            a, b = jnp.maximum(left[i], 0), jnp.maximum(right[i], 0)
            g = mul(p["U"], jnp.concatenate([hs[a], hs[b]])) + p["bu"]
            c = (jax.nn.sigmoid(g[:H]) * jnp.tanh(g[4 * H:]) + jax.nn.sigmoid(g[H:2 * H]) * cs[a]
                 + jax.nn.sigmoid(g[2 * H:3 * H]) * cs[b])
            h = jax.nn.sigmoid(g[3 * H:4 * H]) * jnp.tanh(c)
            h, c = jnp.where(is_leaf[i], hs[i], h), jnp.where(is_leaf[i], cs[i], c)
            return hs.at[i].set(h), cs.at[i].set(c)

        hs, _ = lax.fori_loop(0, MAX_NODES, body, (hl, cl))
        logits = hs @ p["Wout"] if layout == "row" else (p["Wout"] @ hs.T).T
        logp = jax.nn.log_softmax(logits + p["bout"], axis=-1)
        return -(jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0] * mask).sum()

    @jax.jit
    def step(p, acc, emb, words, left, right, labels, mask):
        loss, g = jax.value_and_grad(loss_fn)(p, emb, words, left, right, labels, mask)
        acc = {k: acc[k] + g[k] * g[k] for k in acc}
        p = {k: p[k] - LR * g[k] / (jnp.sqrt(acc[k]) + 1e-10) for k in p}
        return p, acc, loss

    return step


# ---------------------------------------------------------------------------- driver
def main() -> None:
    def options(p):
        p.add_argument("--trees", type=int, default=None, help="trees per epoch (default 200, 4 with --quick)")
        p.add_argument("--padded", action="store_true", help="every tree padded to MAX_NODES (one shape)")
        p.add_argument("--layout", choices=("row", "column"), default="row",
                       help="products written x @ W (row) or W @ x (column)")
    args = harness.parse_args(__doc__.splitlines()[0], options)
    args.frameworks = [f for f in args.frameworks if f != "torch.compile"]
    torch, jax = harness.torch_or_none(args), harness.jax_or_none(args)
    count = args.trees or (4 if args.quick else 200)
    repeats = args.repeats
    vocab, trees = make_trees(count, pad=args.padded)
    padded = make_trees(count, pad=True)[1]  # (JAX's formulation)
    first_epoch: dict[str, float] = {}
    emb, params = init_params(vocab)
    params = layout_params(params, args.layout)
    rows, first_losses, epoch_losses = [], {}, {}

    def timed_row(name, first, epoch):
        harness.timed_row(rows, first_losses, name, first, epoch, 1, repeats, warmup=1)

    if "lantern" in args.frameworks:
        step, opt = lantern_step(args.layout)
        ls = {"p": params, "s": opt.init(params)}

        def lantern_epoch():
            start = time.perf_counter()
            total = 0.0
            for t in trees:
                ls["p"], ls["s"], loss = step(ls["p"], ls["s"], emb, t["words"], t["left"], t["right"], t["labels"])
                total += float(loss)
            epoch_losses.setdefault("lantern", []).append(total / len(trees))
            first_epoch.setdefault("lantern", time.perf_counter() - start)

        t0 = trees[0]
        timed_row("lantern", lambda: step(params, opt.init(params), emb, t0["words"], t0["left"], t0["right"],
                                          t0["labels"])[2], lantern_epoch)

    if torch is not None and "torch eager" in args.frameworks:
        make, tstep = torch_epoch_fns(torch, emb, params, args.layout)
        tt = [torch_tree(torch, t) for t in trees]
        p, topt = make()

        def torch_epoch():
            total = 0.0
            for t in tt:
                total += float(tstep(p, topt, t))
            epoch_losses.setdefault("torch eager", []).append(total / len(tt))

        timed_row("torch eager", lambda: tstep(*make(), tt[0]), torch_epoch)

    if jax is not None:
        jnp = jax.numpy
        jstep = jax_step(jax, args.layout)
        jemb = jnp.asarray(emb)
        jt = [tuple(jnp.asarray(t[k]) for k in ("words", "left", "right", "labels", "mask")) for t in padded]
        jp = {k: jnp.asarray(v) for k, v in params.items()}
        js = {"p": jp, "a": {k: jnp.zeros_like(v) for k, v in jp.items()}}

        def jax_epoch():
            total = 0.0
            for t in jt:
                js["p"], js["a"], loss = jstep(js["p"], js["a"], jemb, *t)
                total += float(loss)  # blocks on the result
            epoch_losses.setdefault("jax.jit", []).append(total / len(jt))

        timed_row("jax.jit", lambda: jstep(jp, js["a"], jemb, *jt[0])[2].block_until_ready(), jax_epoch)

    scale = max(1.0, max(abs(v) for v in first_losses.values()))
    extra = {"trees_per_epoch": len(trees), "nodes_per_epoch": int(sum(t["n"] for t in trees)),
             "max_nodes": MAX_NODES, "first_step_losses": first_losses,
             "first_loss_max_difference": harness.check_losses(first_losses, 1e-4 * scale),
             "mean_loss_first_timed_epoch": {k: v[1] if len(v) > 1 else v[0] for k, v in epoch_losses.items()},
             "mean_loss_last_epoch": {k: v[-1] for k, v in epoch_losses.items()}}
    if "lantern" in args.frameworks:
        extra["lantern_compiles"] = step.cache_info().compiles
        extra["lantern_signatures"] = list(step.cache_info().signatures)
        extra["lantern_first_epoch_s_with_compiles"] = round(first_epoch["lantern"], 3)
    extra["trees_padded_for"] = "every framework" if args.padded else "jax.jit only"
    if not args.no_fresh and "lantern" in args.frameworks:
        extra["lantern_fresh_process"] = harness.fresh_process("bench_treelstm", f"lantern_setup(1, {args.layout!r})")
    name = "treelstm_padded" if args.padded else "treelstm"
    harness.report(name if args.layout == "row" else f"{name}_column",
                   {"embed": EMBED, "hidden": HIDDEN, "classes": CLASSES, "trees": len(trees),
                    "threads": args.threads, "layout": args.layout}, rows, extra, unit="epoch")


if __name__ == "__main__":
    main()
