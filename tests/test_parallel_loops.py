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


def _python(tmp_path, source: str, *args: str, **env: str) -> list[str]:
    """Run ``source`` in a fresh Python with ``env`` added (2 minutes at most: a hang fails); its output's words."""
    script = tmp_path / "script.py"
    script.write_text(source)
    proc = subprocess.run([sys.executable, str(script), *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


def _run(tmp_path, threads: str, openmp: str = "") -> tuple[bytes, int, bool]:
    """The step's results (bytes), its threaded loops, and whether OpenBLAS runs on the OpenMP threads."""
    out = tmp_path / f"out_{threads}_{openmp}.npy"
    shares, pragmas = _python(tmp_path, SCRIPT, str(out), LANTERN_NUM_THREADS=threads, LANTERN_OPENMP=openmp)[-2:]
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
    """check_finite records a non-finite value (per-thread state): those loops are not threaded."""
    x = rng.standard_normal((512, 512)).astype(np.float32)
    source = lantern.stage(lambda x: ops.tanh(x) * 2.0, check_finite=True).lower(x).c_source
    assert "lt_nonfinite(" in source and PRAGMA not in source


@needs_openmp
@pytest.mark.parametrize("threads", ["1", "2"])
def test_threaded_checked_gathers_report_the_first_bad_index(tmp_path, threads):
    """A checked gather runs threaded: each thread notes where its first bad index is (a min reduction), and
    the first of all is recorded after the loop, as one thread would have; good rows are still copied."""
    source = textwrap.dedent("""\
        import numpy as np
        import lantern
        rng = np.random.default_rng(0)
        table, idx = rng.standard_normal((100000, 8)).astype(np.float32), rng.integers(0, 100000, 50000)
        fn = lantern.stage(lambda table, idx: lantern.take(table, idx, axis=0))
        code = fn.lower(table, idx).c_source
        assert "reduction(min:bad_at)" in code, code
        assert np.array_equal(fn(table, idx), table[idx])
        bad = idx.copy()
        bad[45000], bad[40000], bad[49999] = -100001, 100000, 123456
        try:
            fn(table, bad)
        except lantern.LanternError as err:
            print("index 100000 is out of bounds" in str(err))
        """)
    assert _python(tmp_path, source, LANTERN_NUM_THREADS=threads)[-1] == "True"


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
        g = lantern.stage(lambda x: lantern.sin(x) * 3.0 + 1.0)  # and a module first loaded in the child
        fresh = np.array_equal(g(x), lantern.stage(lambda x: lantern.sin(x) * 3.0 + 1.0)(x))
        os._exit(0 if np.array_equal(f(x, w), parent) and fresh else 3)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status))
    """)


@needs_openmp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_still_computes(tmp_path):
    """GNU OpenMP's thread pool does not survive fork(); a child that used it would wait for ever."""
    assert _python(tmp_path, FORK_SCRIPT, LANTERN_NUM_THREADS="2")[-1] == "0"


@needs_openmp
def test_blas_products_survive_a_small_thread_limit(tmp_path):
    """OpenBLAS's parts of one product wait for each other: with fewer OpenMP threads allowed than parts,
    they run on threads of their own rather than deadlock."""
    source = textwrap.dedent("""\
        import numpy as np
        import lantern
        a = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
        out = lantern.stage(lambda a, b: a @ b)(a, a)
        print(int(np.allclose(out, a @ a, rtol=1e-4, atol=1e-3)))
        """)
    assert _python(tmp_path, source, LANTERN_NUM_THREADS="2", OMP_THREAD_LIMIT="1")[-1] == "1"


@needs_openmp
def test_a_single_rows_product_shares_its_column_strips(rng):
    h, W = rng.standard_normal((1, 1024)).astype(np.float32), rng.standard_normal((1024, 512)).astype(np.float32)
    for fn, w in ((lambda h, W: h @ W, W), (lambda h, W: h @ W.T, np.ascontiguousarray(W.T))):
        staged = lantern.stage(fn)
        lines = staged.lower(h, w).c_source.splitlines()
        at = [k for k, line in enumerate(lines) if PRAGMA in line]
        assert len(at) == 1 and "for (int64_t i = 0; i < 1;" not in lines[at[0] + 1], lines[at[0] + 1]
        np.testing.assert_allclose(staged(h, w), fn(h, w), rtol=1e-4, atol=1e-3)


UNLOAD = textwrap.dedent("""\
    import gc, time
    import numpy as np
    import lantern

    small = lantern.stage(lambda x: x + 1.0)
    small(np.ones(3, np.float32))  # the process's first module, kept loaded: no threaded loop of its own
    big = lantern.stage(lambda x: lantern.tanh(x) * 2.0)
    big(np.ones(1 << 20, np.float32))  # threaded: the OpenMP pool starts
    del big
    gc.collect()  # its module is unloaded while the pool's threads spin (OMP_WAIT_POLICY=active: for ever)
    start = time.time()
    while time.time() - start < 0.3:
        sum(range(1000))
    print("alive")
    """)


@needs_openmp
def test_the_openmp_runtime_outlives_the_modules_that_started_its_threads(tmp_path, fresh_cache):
    """Every module compiled with OpenMP links its runtime, so the first one loaded keeps it loaded: unloaded
    with the last threaded module, it took the code its spinning threads ran (a segfault)."""
    assert _python(tmp_path, UNLOAD, LANTERN_NUM_THREADS="2", OMP_WAIT_POLICY="active") == ["alive"]
