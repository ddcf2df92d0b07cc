"""Compiles are visible: Staged.cache_info(), LANTERN_LOG_COMPILES=1, RecompileWarning (issues 12 and 13)."""
import re
import warnings

import numpy as np
import pytest

import lantern
from lantern import compile_log


@pytest.fixture(autouse=True)
def quick_compiles(monkeypatch):
    monkeypatch.setenv("CFLAGS", "-O0")


def test_cache_info_lists_each_signature_and_why():
    f = lantern.stage(lambda x, k: [v * k for v in (x if isinstance(x, tuple) else (x,))])
    x = np.ones(3, np.float32)
    f(x, 2.0)
    f(x, 2.0)                          # same signature: no compile
    f(np.ones(5, np.float32), 2.0)     # a new size: compiled with a run-time size (issue 12)
    f(np.ones(7, np.float32), 2.0)     # served by that code
    f(x, 3.0)                          # a new constant
    f(x.astype(np.float64), 2.0)       # a new dtype
    f((x,), 2.0)                       # another structure
    info = f.cache_info()
    assert info.compiles == 5
    assert info.signatures[0] == "x: float32[3], k=2.0"
    assert info.signatures[1] == "x: float32[n_x], k=2.0"
    reasons = [e.reason for e in info.events]
    assert reasons[0] == "first call"
    assert reasons[1] == "x: dim 0 3 -> 5; run-time sizes n_x (x axis 0)"
    assert reasons[2].startswith("k: 2.0 -> 3.0")  # (x's length stays a run-time size)
    assert reasons[3].startswith("x: dtype float32 -> float64")
    assert reasons[4].startswith("the arguments' structure differs")
    assert all(e.seconds > 0 for e in info.events)


def test_reason_names_the_closest_earlier_signature():
    f = lantern.stage(lambda x, y: x.sum() + y.sum(), dynamic=False)
    a, b = np.ones((2, 3)), np.ones((4, 3))
    f(a, a)
    f(b, b)
    f(a, b)  # one dimension away from the first signature (two from the second)
    assert f.cache_info().events[2].reason == "y: dim 0 2 -> 4"
    f(np.ones((5, 3)), np.ones((6, 3)))
    assert f.cache_info().events[3].reason.endswith("(and 1 more)")


def test_log_variable_prints_one_line_per_compile(monkeypatch, capsys):
    monkeypatch.setenv("LANTERN_LOG_COMPILES", "1")

    @lantern.stage
    def scaled(x, k):
        return x * k
    scaled(np.ones(2), 0.5)
    scaled(np.ones(2), 0.5)
    scaled(np.ones(2), 0.25)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lantern: scaled(")]
    assert len(lines) == 2, lines
    assert "scaled(x: float64[2], k=0.5)" in lines[0] and lines[0].endswith("first call")
    assert "k: 0.5 -> 0.25" in lines[1] and re.search(r" in \d+\.\d\d s \(trace \d+\.\d\d, passes \d+\.\d\d, "
                                                         r"emit \d+\.\d\d, cc \d+\.\d\d, load \d+\.\d\d\): ", lines[1])
    event = scaled.cache_info().events[1]  # the same seconds per step, for code
    assert [k for k, _ in event.stages] == ["trace", "passes", "emit", "cc", "load"]
    assert sum(v for _, v in event.stages) <= event.seconds


def test_a_changing_python_number_warns_once_with_advice():
    f = lantern.stage(lambda x, lr: x - lr * x, name="sgd_step")
    x = np.ones(4, np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(compile_log.RECOMPILE_WARNING_AFTER + 3):
            f(x, 0.1 * 0.9 ** step)
    found = [w for w in caught if issubclass(w.category, lantern.RecompileWarning)]
    assert len(found) == 1, [str(w.message) for w in caught]
    message = str(found[0].message)
    assert f"sgd_step was compiled {compile_log.RECOMPILE_WARNING_AFTER + 1} times" in message
    assert "pass lr as an array" in message and "np.float32" in message
    assert found[0].filename == __file__  # points at the call in the user's code
    # the advice works: a NumPy scalar is an array argument, one compile for every value
    g = lantern.stage(lambda x, lr: x - lr * x)
    for step in range(5):
        g(x, np.float32(0.1 * 0.9 ** step))
    assert g.cache_info().compiles == 1


def test_a_changing_shape_warns_with_advice():
    f = lantern.stage(lambda x: x.sum(), dynamic=False)
    with pytest.warns(lantern.RecompileWarning, match=r"x: dim 0 .*dynamic=\{'x': axes\}"):
        for n in range(1, compile_log.RECOMPILE_WARNING_AFTER + 3):
            f(np.ones(n))


def test_a_changing_shape_compiles_once_more_with_a_run_time_size():
    f = lantern.stage(lambda x: x.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error", lantern.RecompileWarning)
        for n in range(2, compile_log.RECOMPILE_WARNING_AFTER + 6):
            assert f(np.ones(n)) == n
    assert f.cache_info().compiles == 2


def _unrolled_rnn(h, xs, w):
    for t in range(xs.shape[0]):
        h = lantern.tanh(h @ w + xs[t])  # LINE:unrolled
    return h


def test_an_unrolled_python_loop_is_reported_once_with_its_line(monkeypatch, capsys):
    """Issue 17: a Python loop over 17+ time steps copies its body into the C each time; the log line, the
    compile event, lower() and a one-time UnrolledLoopWarning say where, how often, and what to use."""
    import inspect
    line = next(i for i, text in enumerate(inspect.getsourcelines(_unrolled_rnn)[0], inspect.getsourcelines(
        _unrolled_rnn)[1]) if "LINE:unrolled" in text)
    monkeypatch.setenv("LANTERN_LOG_COMPILES", "1")
    f = lantern.stage(_unrolled_rnn)
    args = (np.zeros(3), np.ones((20, 3)), np.eye(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f(*args)
        f(np.zeros(3), np.ones((18, 3)), np.eye(3))  # a second compile: the warning is not repeated
    where = f"test_compile_log.py:{line} ran 20 times"
    unrolled = [w for w in caught if issubclass(w.category, lantern.UnrolledLoopWarning)]
    assert len(unrolled) == 1 and where in str(unrolled[0].message) and "lantern.fori_loop" in str(unrolled[0].message)
    assert f.cache_info().events[0].unrolled[0].startswith(where)
    assert "unrolled a Python loop: " + where in capsys.readouterr().err
    exe = f.lower(*args)
    assert exe.compile_event is f.cache_info().events[0] and exe.compile_event.seconds > 0
    # a loop below the threshold, and a loop over parameters of different shapes, are not reported
    short = lantern.stage(_unrolled_rnn)
    short(np.zeros(3), np.ones((16, 3)), np.eye(3))
    params = lantern.stage(lambda p: {k: v * 2.0 for k, v in p.items()})
    params({f"w{i}": np.ones(i + 1) for i in range(30)})
    assert short.cache_info().events[0].unrolled == () and params.cache_info().events[0].unrolled == ()
