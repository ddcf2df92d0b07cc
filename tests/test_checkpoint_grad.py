"""``lantern.checkpoint`` (issue 16): the backward part runs a block again instead of keeping its
intermediates. Gradients equal the plain ones, through ``cond``, counted and run-time loops and recursion;
the memory held across the rest of the program shrinks."""
import numpy as np
import pytest

import lantern
from lantern import ops
from lantern.tree import flatten


def _layer(w, h):
    return ops.tanh(h @ w) * ops.sigmoid(h)


def _np_layer(w, h):
    return np.tanh(h @ w) / (1 + np.exp(-h))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((8, 8)) * 0.5 for _ in range(2)], rng.standard_normal((4, 8))


def _same(a, b):
    for x, y in zip(flatten(a)[0], flatten(b)[0]):
        np.testing.assert_array_equal(x, y)


def _both(make_loss):
    """``make_loss(wrap)`` staged as a gradient with each block checkpointed, and plain."""
    return [lantern.stage(lantern.value_and_grad(make_loss(wrap))) for wrap in (lantern.checkpoint, lambda f: f)]


def test_gradients_equal_the_plain_ones_through_cond():
    def make_loss(wrap):
        def loss(ws, x):
            f = wrap(_layer)
            h = f(ws[0], x)
            h = lantern.cond(ops.sum(h) > 0, lambda: f(ws[1], h), lambda: h * 2.0)
            return ops.sum(h * h)
        return loss

    ck, plain = _both(make_loss)
    for seed in (0, 3):  # (both branches)
        ws, x = _inputs(seed)
        _same(ck(ws, x), plain(ws, x))


@pytest.mark.parametrize("trips", [3, np.array(3)])
def test_gradients_equal_the_plain_ones_in_loops(trips):
    """A counted loop (Python int bounds) and a run-time one (a staged trip count)."""
    def make_loss(wrap):
        def loss(w, x):
            f = wrap(_layer)
            return ops.sum(lantern.fori_loop(0, trips, lambda i, h: f(w, h), x) ** 2)
        return loss

    (w, _), x = _inputs(1)
    ck, plain = _both(make_loss)
    _same(ck(w, x), plain(w, x))


def test_gradients_through_recursion_match_finite_differences():
    @lantern.stage
    def deep(w, h, n):
        return lantern.cond(n > 0, lambda: deep(w, lantern.checkpoint(_layer)(w, h), n - 1), lambda: h)

    (w, _), x = _inputs(2)
    g = lantern.stage(lambda w, x, n: lantern.grad(lambda w: ops.sum(deep(w, x, n) ** 2))(w))(w, x, np.array(3))

    def loss(w):
        h = x
        for _ in range(3):
            h = _np_layer(w, h)
        return np.sum(h ** 2)

    eps, num = 1e-6, np.zeros_like(w)
    for i in np.ndindex(w.shape):
        d = np.zeros_like(w)
        d[i] = eps
        num[i] = (loss(w + d) - loss(w - d)) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


def test_a_checkpointed_call_runs_the_block_twice_and_keeps_only_its_input():
    big = lantern.stage(lambda w, h: ops.exp(ops.tanh(h @ w) * 0.5) + h, name="big_block")

    def make_loss(wrap):
        def loss(ws, x):
            h = x
            for w in ws:
                h = wrap(big)(w, h)
            return ops.sum(h * h)
        return loss

    rng = np.random.default_rng(4)
    ws = [rng.standard_normal((256, 256)).astype(np.float32) * 0.05 for _ in range(4)]
    x = rng.standard_normal((1024, 256)).astype(np.float32)
    ck, plain = _both(make_loss)
    _same(ck(ws, x), plain(ws, x))
    assert "call checkpoint @big_block" in ck.lower(ws, x).ir
    assert "call checkpoint" not in ck.lower(ws, x).optimized_ir  # (AD made them ordinary calls)
    highs = []
    for f in (ck, plain):
        native = f.lower(ws, x).native
        native.arena_high_water(reset=True)
        f(ws, x)
        highs.append(native.arena_high_water())
    layer = 1024 * 256 * 4
    assert highs[0] < highs[1] - 2 * layer, highs  # (the plain gradient holds tanh/exp values per block)


def test_checkpoint_outside_a_staged_function_just_calls():
    (w, _), x = _inputs()
    np.testing.assert_allclose(lantern.checkpoint(_layer)(w, x), _np_layer(w, x), rtol=1e-12)


def test_llama_trainer_with_checkpoint_takes_the_same_step():
    from lantern.models import llama
    from lantern.models.train_llama import corpus_tokens, window_batches
    cfg = llama.preset("tiny")
    params = llama.init_params(cfg, 0)
    toks = window_batches(corpus_tokens(), 2, 16)(0)
    lr = np.array(1e-3, np.float32)
    steps = []
    for checkpoint in (False, True):
        tr = llama.Trainer(cfg, checkpoint=checkpoint)
        steps.append(tr.step(params, tr.init(params), toks, lr))
    _same(steps[0], steps[1])


def test_llama_train_command_recomputes_blocks(tmp_path, capsys):
    """``lantern llama-train --recompute-blocks``: training with each block checkpointed writes its checkpoint."""
    from lantern.cli import main
    out = tmp_path / "tiny.safetensors"
    assert main(["llama-train", "--preset", "tiny", "--steps", "2", "--batch", "2", "--seq", "16", "--plot", "",
                 "--out", str(out), "--recompute-blocks"]) == 0
    assert out.exists() and "checkpoint written" in capsys.readouterr().out
