"""``LANTERN_DEBUG=1``: modules built with AddressSanitizer and UndefinedBehaviorSanitizer (issue 6).

CI (``make test``) runs the AD and control-flow tests once in that mode, in a subprocess
started with the ASan runtime preloaded, and fails on any sanitizer report. The other tests
here show that the mode is really on: a deliberately bad module built through the same
driver is caught, and index checks cannot be turned off in it.
"""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lantern
from lantern.codegen import toolchain

ROOT = Path(__file__).resolve().parents[1]
#: The tests run sanitized (with the memory plan on, its default): reverse mode (straight-line, through
#: loops, recursion, grad of grad, checkpointed calls), control flow, the NumPy-parity regressions (zero-size gathers and products read out of bounds), and
#: modules of several translation units. ``tests/test_grad_ops.py`` (per-op gradients) is left out to keep CI short.
SANITIZED_TESTS = ["tests/test_ad_transform.py", "tests/test_control_flow.py", "tests/test_grad_programs.py",
                   "tests/test_numpy_parity.py", "tests/test_units.py", "tests/test_checkpoint_grad.py"]
#: What a sanitizer report looks like (any of them fails the run).
REPORT = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:|UndefinedBehaviorSanitizer")


@pytest.fixture(scope="module")
def asan_env() -> dict:
    try:
        env = toolchain.sanitizer_env()
    except lantern.CompileError as exc:
        pytest.skip(str(exc))
    env.setdefault("LANTERN_WERROR", "1")
    return env


def _run(cmd: list[str], env: dict, timeout: float = 900) -> tuple[int, str]:
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.skipif(os.environ.get("LANTERN_DEBUG", "") not in ("", "0"), reason="already sanitized")
def test_ad_and_control_flow_tests_pass_sanitized(asan_env):
    jobs = os.environ.get("LANTERN_SANITIZED_JOBS", "2")
    code, output = _run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                         "-n", jobs, *SANITIZED_TESTS], asan_env)
    assert not REPORT.search(output), output[-8000:]
    assert code == 0, output[-8000:]
    summary = output.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 60 and "failed" not in summary and "error" not in summary, summary


_BAD_C = textwrap.dedent("""\
    #include <stdint.h>
    #include <stdlib.h>

    /* Writes a[0..n] into an n-element heap array: one past the end. */
    int lantern_entry(void *p)
    {
        int64_t n = *(const int64_t *)p;
        int *a = malloc((size_t)(n < 4 ? 4 : n) * sizeof *a);
        if (!a)
            return 2;
        for (int64_t i = 0; i <= n; i++)
            a[i] = (int)i;
        int r = a[n / 2];
        free(a);
        return r;
    }

    /* 1 << n: undefined for n >= 32. */
    int lantern_shift(void *p)
    {
        int64_t n = *(const int64_t *)p;
        return 1 << n;
    }
    """)

#: A buffer read after the memory plan freed it: the arena poisons freed blocks in sanitized builds.
_FREED_C = textwrap.dedent("""\
    #include "lantern_runtime.h"

    /* Reads a freed arena buffer when *p is not 0. */
    int lantern_entry(void *p)
    {
        int64_t bad = *(const int64_t *)p;
        lt_mark_t mark = lt_mark();
        float *a = lt_alloc(256 * sizeof(float));
        float *b = lt_alloc(256 * sizeof(float));
        for (int i = 0; i < 256; i++) {
            a[i] = (float)i;
            b[i] = 1.0f;
        }
        lt_free(a, 256 * sizeof(float));
        float s = b[3] + (bad ? a[3] : 2.0f);
        lt_release(mark);
        return (int)s;
    }

    int lantern_shift(void *p) { (void)p; return 0; }
    const void *lantern_process_init(unsigned long main_thread) { return lt_process_init(main_thread); }
    """)

_CALL_BAD = textwrap.dedent("""\
    import sys
    import cffi
    import numpy as np
    from lantern.codegen import compiler

    artifact = compiler.compile_c(sys.argv[3], "sanitizer_probe", False)
    ffi = cffi.FFI()
    ffi.cdef("int lantern_entry(void *); int lantern_shift(void *);")
    lib = ffi.dlopen(artifact.so_path)
    n = np.array([int(sys.argv[2])], np.int64)
    print("calling", flush=True)
    print("returned", getattr(lib, sys.argv[1])(ffi.from_buffer(n)), flush=True)
    """)


@pytest.mark.parametrize("fn, good, bad, report, source", [
    ("lantern_entry", 3, 4, "ERROR: AddressSanitizer: heap-buffer-overflow", _BAD_C),
    ("lantern_shift", 3, 40, "runtime error: shift exponent 40 is too large", _BAD_C),
    ("lantern_entry", 0, 1, "ERROR: AddressSanitizer: use-after-poison", _FREED_C),
])
def test_sanitized_build_catches_bad_code(asan_env, tmp_path, fn, good, bad, report, source):
    """The driver's LANTERN_DEBUG flags instrument the module: a bad access stops the process with a report
    (an arena buffer read after ``lt_free`` too)."""
    env = {**asan_env, "LANTERN_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-c", _CALL_BAD, fn]
    code, output = _run([*cmd, str(good), source], env, timeout=300)
    assert code == 0 and not REPORT.search(output), output
    assert "returned" in output
    code, output = _run([*cmd, str(bad), source], env, timeout=300)
    assert code != 0 and report in output, output
    assert "calling" in output and "returned" not in output
    assert "sanitizer_probe" in output  # the report points into the generated module (built with -g)
    so = next((tmp_path / "cache").rglob("*.so"))
    assert "-fsanitize=address,undefined" in (so.with_suffix(".json")).read_text()


_FORCED_CHECK = textwrap.dedent("""\
    import numpy as np
    import lantern

    @lantern.stage(check_indices=False)
    def pick(x, i):
        return lantern.take(x, i) * 2.0

    x = np.arange(5, dtype=np.float64)
    print("ok", pick(x, np.array([4, 0], np.int64)).tolist(), flush=True)
    try:
        pick(x, np.array([1, 7], np.int64))
    except lantern.OutOfBoundsError as exc:
        print("caught", exc)
    """)


def test_index_checks_stay_on_in_sanitized_builds(asan_env, tmp_path):
    env = {**asan_env, "LANTERN_CACHE_DIR": str(tmp_path / "cache")}
    code, output = _run([sys.executable, "-c", _FORCED_CHECK], env, timeout=300)
    assert code == 0 and not REPORT.search(output), output
    assert "ok [8.0, 0.0]" in output
    assert "caught" in output and "index 7 is out of bounds" in output


def test_debug_build_without_preloaded_runtime_is_a_clear_error(fresh_cache, monkeypatch):
    """Loading an ASan module into a Python started without the runtime would abort it: refuse with advice."""
    if hasattr(__import__("ctypes").CDLL(None), "__asan_init"):
        pytest.skip("this process has the ASan runtime")
    monkeypatch.setenv("LANTERN_DEBUG", "1")
    x = np.arange(3, dtype=np.float64)
    with pytest.raises(lantern.NativeError, match="LD_PRELOAD=.*libasan.so.*ASAN_OPTIONS=detect_leaks=0"):
        lantern.stage(lambda v: v + 1.0)(x)
    # the flags are part of the key: the sanitized module is its own entry
    (meta,) = list(fresh_cache.rglob("*.json"))
    assert "-fsanitize=address,undefined" in meta.read_text()
    monkeypatch.delenv("LANTERN_DEBUG")
    np.testing.assert_allclose(lantern.stage(lambda v: v + 1.0)(x), x + 1)
    assert len(list(fresh_cache.rglob("*.so"))) == 2
