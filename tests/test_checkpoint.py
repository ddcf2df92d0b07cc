"""``lantern.save``/``lantern.load`` of nested training state, atomic under a crash, and ``fit(resume=True)``
reproducing an uninterrupted run bit for bit (issue 17)."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import lantern
from lantern import safetensors

Pair = collections.namedtuple("Pair", ["first", "second"])


def _same(a, b):
    """Equal structure, types and bits."""
    assert type(a).__name__ == type(b).__name__, (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b) and getattr(a, "_fields", None) == getattr(b, "_fields", None)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b)
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    else:
        assert a == b or (a != a and b != b), (a, b)


def test_nested_trees_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tree = {
        "params": {"layers": [{"w": rng.standard_normal((3, 2)).astype(np.float32), "b": np.zeros(2, np.float64)},
                              {"w": rng.integers(-5, 5, (2, 2)).astype(np.int32)}],
                   "embed": rng.standard_normal((4, 3)).astype(np.float16)},
        "opt_state": {"step": np.int64(7), "exp_avg": (np.ones(0, np.float32), np.full((2, 0, 3), 2, np.int64))},
        "flags": np.array([True, False]), "uint": np.arange(3, dtype=np.uint8), "key": np.uint32(12345),
        "scalars": [1, 2.5, float("nan"), float("-inf"), True, None, "cosine"], 3: "an int key",
        "pair": Pair(np.float32(1.5), (np.zeros(()),)), "a.b": np.ones(1), "a": {"b": np.zeros(1)},
    }
    path = tmp_path / "state.safetensors"
    lantern.save(path, tree, step=7, note="round trip")
    back, info = lantern.load(path, with_info=True)
    _same(back, tree)
    assert info == {"step": "7", "note": "round trip"}
    assert back["pair"].first == np.float32(1.5) and back["pair"]._fields == ("first", "second")
    # the arrays are ordinary safetensors tensors, named by their paths
    names = set(safetensors.load_file(path))
    assert {"params.layers.0.w", "params.embed", "opt_state.step", "a.b", "a.b~"} <= names
    # a file written by another tool: its tensors as a dict
    safetensors.save_file({"x": np.ones(2)}, tmp_path / "plain.safetensors")
    assert list(lantern.load(tmp_path / "plain.safetensors")) == ["x"]
    lantern.save(tmp_path / "one.safetensors", np.arange(3))
    np.testing.assert_array_equal(lantern.load(tmp_path / "one.safetensors"), np.arange(3))


def test_what_a_checkpoint_cannot_hold_is_an_error(tmp_path):
    with pytest.raises(lantern.ArgumentError, match=r"params\.f is a function"):
        lantern.save(tmp_path / "x.safetensors", {"params": {"f": lambda: 0}})
    with pytest.raises(lantern.ArgumentError, match=r"dict key \(1, 2\)"):
        lantern.save(tmp_path / "x.safetensors", {(1, 2): np.ones(1)})
    with pytest.raises(safetensors.SafetensorsError, match="complex128"):
        lantern.save(tmp_path / "x.safetensors", {"z": np.ones(2, complex)})
    assert not list(tmp_path.iterdir())  # nothing written, no temporary file left


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    lantern.save(path, {"w": np.zeros(4)}, step=1)

    def fail(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        lantern.save(path, {"w": np.ones(4)}, step=2)
    monkeypatch.undo()
    _same(lantern.load(path), {"w": np.zeros(4)})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_a_killed_writer_leaves_a_whole_checkpoint(tmp_path):
    """SIGKILL at a random moment of a process that keeps rewriting a 64 MiB checkpoint: the file loads,
    and holds one of the versions written."""
    path = tmp_path / "big.safetensors"
    code = textwrap.dedent(f"""\
        import numpy as np, lantern, sys
        for k in range(1000):
            lantern.save({str(path)!r}, {{"w": np.full(1 << 23, float(k)), "k": k}})
            print(k, flush=True)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # one version is on disk
    assert first.strip() == "0"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    state = lantern.load(path)
    assert state["w"].shape == (1 << 23,) and np.all(state["w"] == state["k"])


def _train_step(params, opt_state, x, y):
    loss, grads = lantern.value_and_grad(lambda p: ((x @ p["w"] + p["b"] - y) ** 2).mean())(params)
    params, opt_state = OPT.update(grads, opt_state, params)
    return params, opt_state, loss


OPT = lantern.optim.AdamW(lr=lantern.optim.schedules.cosine(0.05, 12), weight_decay=0.01)
STEP = lantern.stage(_train_step)
RNG = np.random.default_rng(5)
BATCHES = [(RNG.standard_normal((4, 3)).astype(np.float32), RNG.standard_normal((4, 2)).astype(np.float32))
           for _ in range(12)]
PARAMS = {"w": RNG.standard_normal((3, 2)).astype(np.float32), "b": np.zeros(2, np.float32)}


class _Stop:
    """Batches that raise KeyboardInterrupt when batch ``at`` is asked for (as Ctrl-C there would)."""

    def __init__(self, at):
        self.at = at

    def __iter__(self):
        for i, b in enumerate(BATCHES):
            if i == self.at:
                raise KeyboardInterrupt
            yield b


@pytest.mark.parametrize("as_function", [False, True])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, as_function):
    whole = lantern.train.fit(STEP, PARAMS, OPT.init(PARAMS), BATCHES, steps=12, log_every=0)
    path = str(tmp_path / "run.safetensors")
    first = lantern.train.fit(STEP, PARAMS, OPT.init(PARAMS), _Stop(7), steps=12, checkpoint=path, log_every=0)
    assert len(first.losses) == 7
    batches = (lambda i: BATCHES[i]) if as_function else BATCHES
    rest = lantern.train.fit(STEP, PARAMS, OPT.init(PARAMS), batches, steps=12, checkpoint=path, resume=True,
                             log_every=0)
    assert rest.losses.tobytes() == whole.losses.tobytes()
    _same(rest.params, whole.params)
    _same(rest.opt_state, whole.opt_state)
    assert lantern.load(path)["step"] == 12
    # resuming a finished run runs nothing more
    again = lantern.train.fit(STEP, PARAMS, OPT.init(PARAMS), BATCHES, steps=12, checkpoint=path, resume=True,
                              log_every=0)
    _same(again.params, whole.params)


def test_resume_needs_a_checkpoint_of_fit(tmp_path):
    with pytest.raises(ValueError, match="resume=True needs checkpoint="):
        lantern.train.fit(STEP, PARAMS, OPT.init(PARAMS), BATCHES, resume=True)
    other = tmp_path / "other.safetensors"
    lantern.save(other, {"w": np.ones(1)})
    with pytest.raises(lantern.ArgumentError, match="is not a checkpoint written by fit"):
        lantern.train.fit(STEP, PARAMS, OPT.init(PARAMS), BATCHES, checkpoint=str(other), resume=True)
    # no checkpoint yet: a fresh start
    fresh = lantern.train.fit(STEP, PARAMS, OPT.init(PARAMS), BATCHES[:2], checkpoint=str(tmp_path / "new.st"),
                              resume=True, log_every=0)
    assert len(fresh.losses) == 2
