"""Issue 14: generated loops on several threads (OpenMP work-sharing, ``codegen/cbuilder.py``): bitwise the same
results for any thread count, and only loops with enough work and no per-thread state are threaded."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lantern
from codegen.toolchain import openmp_flags, resolve_compiler
from lantern import ops

PRAGMA = "#pragma omp parallel for"

needs_openmp = pytest.mark.skipif(not openmp_flags(resolve_compiler()), reason="the C compiler has no OpenMP")

# A training step whose elementwise loops, reductions and generated products are large enough to be threaded.
SCRIPT = textwrap.dedent("""\
    import sys
    import numpy as np
    import lantern
    from lantern import ops

    def loss(w1, w2, x):
        h = ops.tanh(x @ w1) * ops.sigmoid(x @ w1 * 0.5)
        y = ops.sum(ops.exp(h @ w2 * 0.1), axis=1)
        return ops.sum(ops.log1p(y * y)) + ops.sum((x[:, :1] * x[:1, :]) ** 2) * 1e-3

    step = lantern.stage(lambda w1, w2, x: lantern.value_and_grad(loss, argnums=(0, 1))(w1, w2, x))
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((64, 256)).astype(np.float32) * 0.1, rng.standard_normal((256, 32)).astype(np.float32) * 0.1
    x = rng.standard_normal((512, 64)).astype(np.float32)
    value, (g1, g2) = step(w1, w2, x)
    np.save(sys.argv[1], np.concatenate([np.ravel(value), g1.ravel(), g2.ravel()]))
    from lantern.codegen import loader
    print(int(loader._blas_threads_holder is not None), step.lower(w1, w2, x).c_source.count("#pragma omp parallel for"))
    """)


def _run(tmp_path, threads: str, openmp: str = "") -> tuple[bytes, int, bool]:
    """The step's results (bytes), its threaded loops, and whether OpenBLAS runs on the OpenMP threads."""
    out = tmp_path / f"out_{threads}_{openmp}.npy"
    script = tmp_path / "step.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "LANTERN_NUM_THREADS": threads, "LANTERN_OPENMP": openmp}
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shares, pragmas = proc.stdout.split()[-2:]
    return out.read_bytes(), int(pragmas), shares == "1"


@needs_openmp
def test_results_are_bitwise_the_same_for_any_thread_count(tmp_path, fresh_cache):
    one, pragmas, _ = _run(tmp_path, "1")
    assert pragmas >= 3  # forward and backward loops are threaded
    for threads in ("2", "3"):
        result, _, shares = _run(tmp_path, threads)
        assert result == one, f"{threads} threads differ from 1"
        assert shares  # OpenBLAS's threaded products ran on the OpenMP threads
    serial, _, shares = _run(tmp_path, "2", openmp="0")  # compiled without OpenMP: the pragmas are ignored
    assert serial == one and not shares


def test_small_loops_stay_on_the_calling_thread(rng):
    x = rng.standard_normal((16, 16)).astype(np.float32)
    assert PRAGMA not in lantern.stage(lambda x: ops.tanh(x) * 2.0).lower(x).c_source


@needs_openmp
def test_large_loops_are_threaded(rng):
    x = rng.standard_normal((512, 512)).astype(np.float32)
    source = lantern.stage(lambda x: (ops.tanh(x) * 2.0, ops.sum(ops.exp(x), axis=1))).lower(x).c_source
    assert source.count(PRAGMA) == 2, source


@needs_openmp
def test_loops_that_may_record_an_error_stay_serial(rng):
    """A checked gather records a bad index (per-thread state): its loop is not threaded, and the error is raised."""
    table, idx = rng.standard_normal((100000, 8)).astype(np.float32), rng.integers(0, 100000, 50000)
    fn = lantern.stage(lambda table, idx: ops.take(table, idx, axis=0) * 2.0)
    source = fn.lower(table, idx).c_source
    gather = source[source.index("lt_index(") - 400:source.index("lt_index(")]
    assert PRAGMA not in gather
    assert PRAGMA in source  # the elementwise product after it is threaded
    np.testing.assert_array_equal(fn(table, idx), table[idx] * 2.0)
    bad = idx.copy()
    bad[40000] = 100000
    with pytest.raises(lantern.LanternError, match="index 100000 is out of bounds"):
        fn(table, bad)


@needs_openmp
def test_run_time_sizes_decide_at_run_time(rng):
    fn = lantern.stage(lambda x: ops.tanh(x) * 2.0 + 1.0, dynamic=True)
    x = rng.standard_normal((300, 300)).astype(np.float32)
    source = fn.lower(x).c_source
    assert PRAGMA in source and " if (" in source[source.index(PRAGMA):].splitlines()[0]
    for n in (3, 300):
        y = rng.standard_normal((n, 7)).astype(np.float32)
        np.testing.assert_allclose(fn(y), np.tanh(y) * 2.0 + 1.0, rtol=2e-5, atol=1e-6)


FORK_SCRIPT = textwrap.dedent("""\
    import os
    import numpy as np
    import lantern
    f = lantern.stage(lambda x, w: lantern.tanh(x * 2.0) @ w)
    x, w = np.ones((512, 512), np.float32), np.full((512, 512), 0.01, np.float32)
    parent = f(x, w)
    pid = os.fork()
    if pid == 0:  # threads do not survive fork: the child computes on one thread, the same numbers
        os._exit(0 if np.array_equal(f(x, w), parent) else 3)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status))
    """)


@needs_openmp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_still_computes(tmp_path):
    """GNU OpenMP's thread pool does not survive fork(); a child that used it would wait for ever."""
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    env = {**os.environ, "LANTERN_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "0"
