"""Ctrl-C (issue 13): a SIGINT during a call into generated code raises KeyboardInterrupt within 100 ms,
the call's arena is released and the next call works; a compile in progress is stopped with its
compiler; training writes a checkpoint only after a finished step, atomically.

Signals go to a child Python (``_run``), never to the test process: a SIGINT to a pytest worker
would stop the run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lantern
from lantern import safetensors

from test_compiler_faults import _alive

PRELUDE = """\
import json, os, signal, sys, threading, time
import numpy as np
import lantern

def interrupt_after(seconds):
    '''SIGINT to this process after `seconds`, from another thread; returns the time it was sent.'''
    sent = {}
    def send():
        time.sleep(seconds)
        sent['t'] = time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=send, daemon=True).start()
    return sent

def timed_interrupt(call, seconds=0.4):
    '''Run call() and interrupt it: (latency from the signal to KeyboardInterrupt, or None if it finished).'''
    sent = interrupt_after(seconds)
    try:
        call()
    except KeyboardInterrupt:
        return time.perf_counter() - sent['t']
    time.sleep(seconds + 0.5)
    return None

def report(**fields):
    print(json.dumps(fields), flush=True)
"""


def _run(body: str, cache: Path, timeout: float = 120) -> list[dict]:
    env = dict(os.environ, LANTERN_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_ctrl_c_stops_loops_and_recursion_in_native_code(tmp_path):
    """A long fori_loop, an endless while_loop and the backward pass of a loop (continuations) each stop
    within 100 ms of the SIGINT; nothing stays in the arena and the next call gives the right result."""
    results = _run("""\
        @lantern.stage
        def spin(x, n):
            return lantern.fori_loop(0, n, lambda i, c: c * 0.999 + 0.001, x)

        @lantern.stage
        def forever(x):
            return lantern.while_loop(lambda c: c[0] > -1.0, lambda c: c * 0.5, x)

        def loss(w, n):
            h = lantern.fori_loop(0, n, lambda i, h: lantern.tanh(h * w), np.ones(20000, np.float32))
            return lantern.sum(h)
        grad = lantern.stage(lantern.grad(loss))

        x = np.ones(1000, np.float32)
        w = np.full(20000, 0.5, np.float32)
        spin, forever, grad = spin.lower(x, np.int64(0)), forever.lower(x), grad.lower(w, np.int64(0))
        for name, exe, long, short in [
                ("fori_loop", spin, (x, np.int64(10**12)), (x, np.int64(3))),
                ("while_loop", forever, (x,), (np.full(1000, -2.0, np.float32),)),
                ("gradient", grad, (w, np.int64(10**7)), (w, np.int64(2)))]:
            latency = timed_interrupt(lambda: exe(*long))
            after = np.asarray(exe(*short)).ravel()[:3].tolist()
            report(name=name, latency=latency, arena=exe.native.arena_in_use(), after=after)
        """, tmp_path / "cache")
    by_name = {r["name"]: r for r in results}
    assert set(by_name) == {"fori_loop", "while_loop", "gradient"}
    for name, r in by_name.items():
        assert r["latency"] is not None, f"{name}: the call was not interrupted"
        assert r["latency"] < 0.1, (name, r["latency"])
        assert r["arena"] == 0, (name, r["arena"])
    np.testing.assert_allclose(by_name["fori_loop"]["after"], [1.0] * 3)
    np.testing.assert_allclose(by_name["while_loop"]["after"], [-2.0] * 3)
    w = np.float32(0.5)
    h1 = np.tanh(w)
    expected = (1 - np.tanh(h1 * w) ** 2) * (h1 + w * (1 - h1 ** 2))  # d/dw tanh(tanh(w) * w)
    np.testing.assert_allclose(by_name["gradient"]["after"], [expected] * 3, rtol=1e-5)


def test_sigint_handlers_of_the_users_own(tmp_path):
    """A handler installed after lantern loaded its first module still gets the signal; one that does not
    raise gets the interrupted call run again to its end (it has no effects but its results); an ignored
    SIGINT does not stop native code; a call on another thread is not the main thread's to stop."""
    results = _run("""\
        @lantern.stage
        def spin(x, n):
            return lantern.fori_loop(0, n, lambda i, c: c * 0.5 + 1.0, x)

        x = np.zeros(2000, np.float32)
        n = np.int64(10_000_000)  # about a second
        spin(x, np.int64(1))
        seen = []
        signal.signal(signal.SIGINT, lambda sig, frame: seen.append(sig))
        time.sleep(0.15)  # lantern checks for a new handler at most every 100 ms
        t = time.perf_counter()
        latency = timed_interrupt(lambda: report(name="own handler", result=float(spin(x, n)[0]), seen=len(seen)))
        report(name="own handler, timing", latency=latency, seconds=time.perf_counter() - t)

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        time.sleep(0.15)
        report(name="ignored", latency=timed_interrupt(lambda: spin(x, n)))

        signal.signal(signal.SIGINT, signal.default_int_handler)
        time.sleep(0.15)
        out = {}
        worker = threading.Thread(target=lambda: out.setdefault("r", float(spin(x, n)[0])))
        worker.start()
        report(name="main thread", latency=timed_interrupt(lambda: time.sleep(5), seconds=0.2))
        worker.join()
        report(name="worker", result=out.get("r"))
        """, tmp_path / "cache")
    by_name = {r["name"]: r for r in results}
    assert by_name["own handler"] == {"name": "own handler", "result": 2.0, "seen": 1}
    assert by_name["own handler, timing"]["latency"] is None  # nothing raised
    assert by_name["ignored"]["latency"] is None
    assert by_name["main thread"]["latency"] is not None  # Python's KeyboardInterrupt, in time.sleep
    assert by_name["worker"]["result"] == 2.0  # the worker's call ran to its end


def test_ctrl_c_during_a_compile_stops_the_compiler(tmp_path):
    """The compiler runs in a session of its own (no SIGINT from the terminal): lantern stops it, with what it
    started, leaves no temporary file in the cache, and the next call compiles."""
    pids = tmp_path / "pids"
    cc = tmp_path / "slow-cc"
    cc.write_text(f'#!/bin/sh\ncase "$*" in *-shared*) sleep 600 & echo "$$ $!" > {pids}; wait;; esac\nexec cc "$@"\n')
    cc.chmod(0o755)
    results = _run(f"""\
        os.environ["CC"] = {str(cc)!r}
        f = lantern.stage(lambda x: x * 2.0)
        report(latency=timed_interrupt(lambda: f(np.ones(3)), seconds=1.0))
        os.environ["CC"] = "cc"
        report(result=f(np.ones(3)).tolist())
        """, tmp_path / "cache")
    assert results[0]["latency"] is not None and results[0]["latency"] < 0.5
    assert results[1]["result"] == [2.0, 2.0, 2.0]
    for pid in map(int, pids.read_text().split()):
        assert not _alive(pid), pid
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


FIT = """\
@lantern.stage
def step(params, opt_state, n):
    # one step adds 1 to w, in n loop iterations; a huge n is a step that never ends
    w = lantern.fori_loop(0, n, lambda i, w: w + 1.0 / n.astype(np.float32), params["w"])
    return {"w": w, "layers": [params["layers"][0] * 2.0]}, opt_state, lantern.sum(w)

params = {"w": np.zeros(3, np.float32), "layers": [np.ones(2, np.float32)]}
step(params, None, np.int64(1))  # compiled before the clock starts
"""


def test_fit_checkpoints_only_finished_steps(tmp_path):
    """Ctrl-C inside the staged step: fit returns the last finished step and saves it under the target name
    (written atomically); interrupted before any step finished, an existing checkpoint is left alone."""
    good = tmp_path / "good.safetensors"
    good.write_bytes(b"a good checkpoint")
    path = tmp_path / "ckpt.safetensors"
    results = _run(FIT + textwrap.dedent(f"""\
        import io
        out = io.StringIO()
        sizes = lambda i: (np.int64(4 if i < 3 else 10**12),)   # steps 1-3 finish, step 4 never does
        interrupt_after(1.0)
        r = lantern.train.fit(step, params, None, sizes, steps=10, checkpoint={str(path)!r}, checkpoint_every=2,
                              log_every=1, file=out)
        report(losses=r.losses.tolist(), w=r.params["w"].tolist(), text=out.getvalue())
        interrupt_after(1.0)
        r = lantern.train.fit(step, params, None, lambda i: (np.int64(10**12),), steps=5, checkpoint={str(good)!r},
                              file=out)
        report(losses=r.losses.tolist(), text=out.getvalue())
        """), tmp_path / "cache")
    first, second = results
    assert first["losses"] == [3.0, 6.0, 9.0] and first["w"] == [3.0] * 3
    assert "interrupted after 3 steps" in first["text"] and "checkpoint after step 3 written" in first["text"]
    assert sorted(safetensors.load_file(path)) == ["losses", "params.layers.0", "params.w"]
    saved = lantern.load(path)
    np.testing.assert_array_equal(saved["params"]["w"], [3.0] * 3)
    np.testing.assert_array_equal(saved["params"]["layers"][0], [8.0] * 2)
    assert saved["step"] == 3 and saved["losses"].tolist() == [3.0, 6.0, 9.0] and saved["opt_state"] is None
    assert {k: v for k, v in safetensors.read_header(path)["__metadata__"].items() if k != "lantern.tree"} == {
        "step": "3", "loss": "9.0"}
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
    assert second["losses"] == [] and "no step finished" in second["text"]
    assert good.read_bytes() == b"a good checkpoint"


def test_fit_checkpoint_arguments(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every"):
        lantern.train.fit(lambda p, o: (p, o, 0.0), {}, None, [()], checkpoint_every=2)
    assert lantern.train.named_arrays({"a": [np.ones(1), None, (np.zeros(2),)], "b": {"c": 1.0}}).keys() == {
        "a.0", "a.2.0", "b.c"}
