"""The compiler driver and its cache: in memory per signature, on disk across processes."""
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lantern
from lantern.codegen import compiler


def plus_one(x):
    return x * 2.0 + 1.0


def scale(x, k):
    return x * k


def _delta(before):
    now = lantern.cache_stats()
    return {k: now[k] - before[k] for k in now}


def _leftovers(directory: Path) -> list[str]:
    """Temporary files a compile may have left behind (there must be none)."""
    return [p.name for p in directory.rglob("*") if p.is_file() and (p.name.startswith(".") or "tmp" in p.suffix)]


def test_second_call_reuses_trace_and_binary(fresh_cache):
    f = lantern.stage(plus_one)
    x = np.arange(4, dtype=np.float32)
    before = lantern.cache_stats()
    np.testing.assert_allclose(f(x), x * 2 + 1)
    assert f.trace_count == 1
    assert _delta(before) == {"compiles": 1, "disk_hits": 0}
    y = np.ones(4, dtype=np.float32)
    np.testing.assert_allclose(f(y), y * 2 + 1)
    np.testing.assert_allclose(f.lower(x)(x), x * 2 + 1)
    assert f.trace_count == 1
    assert _delta(before) == {"compiles": 1, "disk_hits": 0}
    # the binary is in the cache directory, next to the C file it came from
    exe = f.lower(x)
    assert Path(exe.so_path).is_file() and Path(exe.c_path).is_file()
    assert Path(exe.so_path).is_relative_to(fresh_cache)
    assert Path(exe.c_path).read_text() == exe.c_source
    # a second staged object of the same function traces again but finds the binary on disk
    g = lantern.stage(plus_one)
    np.testing.assert_allclose(g(x), x * 2 + 1)
    assert g.trace_count == 1
    assert _delta(before) == {"compiles": 1, "disk_hits": 1}
    assert g.lower(x).so_path == exe.so_path
    # names are numbered per module, so the second trace gives the very same C text
    assert g.lower(x).c_path == exe.c_path
    assert g.lower(x).c_source == exe.c_source
    assert _leftovers(fresh_cache) == []


def test_new_shape_dtype_or_constant_compiles_new_version(fresh_cache):
    f = lantern.stage(scale)
    x32 = np.arange(4, dtype=np.float32)
    before = lantern.cache_stats()
    versions = [
        (x32, 2.0, x32 * 2),
        (np.arange(6, dtype=np.float32), 2.0, np.arange(6, dtype=np.float32) * 2),  # new shape
        (x32.astype(np.float64), 2.0, x32.astype(np.float64) * 2),  # new dtype
        (x32, 3.0, x32 * 3),  # new Python constant
    ]
    paths = set()
    for n, (x, k, expected) in enumerate(versions, 1):
        out = f(x, k)
        assert out.dtype == expected.dtype
        np.testing.assert_allclose(out, expected)
        assert f.trace_count == n
        assert _delta(before)["compiles"] == n
        paths.add(f.lower(x, k).so_path)
    assert len(paths) == 4
    # every earlier version is still there and still right, without new work
    for x, k, expected in versions:
        np.testing.assert_allclose(f(x, k), expected)
    assert f.trace_count == 4
    assert _delta(before) == {"compiles": 4, "disk_hits": 0}


_SCRIPT = """
import json, sys
import numpy as np
import lantern

@lantern.stage
def affine(x):
    return x * 3.0 - 1.0

x = np.arange(5, dtype=np.float64)
out = affine(x)
assert np.allclose(out, x * 3 - 1), out
print(json.dumps({"stats": lantern.cache_stats(), "so": affine.lower(x).so_path, "out": out.tolist()}))
"""


def _run_script(script: Path, env: dict) -> dict:
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env(**changes) -> dict:
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def test_fresh_process_hits_disk_cache_and_xdg_is_honoured(tmp_path, monkeypatch):
    """Compile in this process with XDG_CACHE_HOME only; a new process with the same cache finds it."""
    script = tmp_path / "affine_script.py"
    script.write_text(_SCRIPT)
    xdg = tmp_path / "xdg"
    monkeypatch.delenv("LANTERN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    assert compiler.cache_dir() == xdg / "lantern"
    import runpy
    before = lantern.cache_stats()
    ns = runpy.run_path(str(script), run_name="affine_script")
    assert _delta(before) == {"compiles": 1, "disk_hits": 0}
    so_path = ns["affine"].lower(ns["x"]).so_path
    assert Path(so_path).is_relative_to(xdg / "lantern")
    # a fresh process pointed at the same directory through LANTERN_CACHE_DIR: no compile, one disk hit
    result = _run_script(script, _env(LANTERN_CACHE_DIR=str(xdg / "lantern"), XDG_CACHE_HOME=None))
    assert result["stats"] == {"compiles": 0, "disk_hits": 1}
    assert result["so"] == so_path
    assert result["out"] == (np.arange(5) * 3.0 - 1.0).tolist()


def test_concurrent_processes_compile_same_function(fresh_cache, tmp_path):
    script = tmp_path / "affine_script.py"
    script.write_text(_SCRIPT)
    env = _env(LANTERN_CACHE_DIR=str(fresh_cache))
    procs = [subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    expected = (np.arange(5) * 3.0 - 1.0).tolist()
    assert all(r["out"] == expected for r in results)
    assert len({r["so"] for r in results}) == 1
    assert sum(r["stats"]["compiles"] + r["stats"]["disk_hits"] for r in results) == 4
    assert _leftovers(fresh_cache) == []
    files = sorted(p.name for p in fresh_cache.rglob("*") if p.is_file())
    assert len(files) == 2 and {Path(f).suffix for f in files} == {".c", ".so"}, files


def test_cflags_change_the_cache_key(fresh_cache, monkeypatch):
    x = np.arange(4, dtype=np.float32)
    before = lantern.cache_stats()
    default = lantern.stage(plus_one).lower(x)
    monkeypatch.setenv("CFLAGS", "-O1")
    o1 = lantern.stage(plus_one).lower(x)
    assert _delta(before) == {"compiles": 2, "disk_hits": 0}
    assert o1.so_path != default.so_path
    np.testing.assert_allclose(o1(x), x * 2 + 1)
    np.testing.assert_allclose(default(x), x * 2 + 1)
    # the same flags again: found on disk
    again = lantern.stage(plus_one).lower(x)
    assert again.so_path == o1.so_path
    assert _delta(before) == {"compiles": 2, "disk_hits": 1}


def _wrapper(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "cc-wrapper.sh"
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_cc_is_honoured(fresh_cache, tmp_path, monkeypatch):
    log = tmp_path / "cc.log"
    cc = _wrapper(tmp_path, f"""\
        echo "$@" >> {log}
        exec cc "$@"
        """)
    monkeypatch.setenv("CC", str(cc))
    x = np.arange(4, dtype=np.float32)
    exe = lantern.stage(plus_one).lower(x)
    np.testing.assert_allclose(exe(x), x * 2 + 1)
    lines = log.read_text().splitlines()
    compiles = [line for line in lines if exe.c_path in line]
    assert len(compiles) == 1 and "-shared" in compiles[0] and "-O1" not in compiles[0]
    # CFLAGS reach the compiler command line
    monkeypatch.setenv("CFLAGS", "-O1 -DLANTERN_TEST_FLAG=1")
    exe2 = lantern.stage(plus_one).lower(x)
    last = [line for line in log.read_text().splitlines() if exe2.c_path in line]
    assert len(last) == 1 and "-O1" in last[0] and "-DLANTERN_TEST_FLAG=1" in last[0]


def test_compiler_error_with_bogus_flag(fresh_cache, monkeypatch):
    monkeypatch.setenv("CFLAGS", "-O2 -fno-such-flag")
    x = np.arange(4, dtype=np.float32)
    with pytest.raises(lantern.CompileError) as info:
        lantern.stage(plus_one)(x)
    message = str(info.value)
    assert "fno-such-flag" in message
    assert info.value.c_path and info.value.c_path in message
    assert Path(info.value.c_path).is_file()
    assert "lantern_entry" in Path(info.value.c_path).read_text()
    assert not list(fresh_cache.rglob("*.so")) and _leftovers(fresh_cache) == []


def test_compiler_error_from_cc_wrapper(fresh_cache, tmp_path, monkeypatch):
    cc = _wrapper(tmp_path, """\
        echo "wrapper refuses to compile: $*" >&2
        exit 1
        """)
    monkeypatch.setenv("CC", str(cc))
    x = np.arange(3, dtype=np.float64)
    with pytest.raises(lantern.CompileError, match="wrapper refuses to compile") as info:
        lantern.stage(plus_one)(x)
    assert info.value.c_path in str(info.value) and Path(info.value.c_path).is_file()
    assert "wrapper refuses" in info.value.compiler_output
    assert _leftovers(fresh_cache) == []
    # afterwards, with a working compiler, the same function compiles and runs
    monkeypatch.delenv("CC")
    np.testing.assert_allclose(lantern.stage(plus_one)(x), x * 2 + 1)


def test_missing_compiler_is_a_compile_error(fresh_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(lantern.CompileError, match="no-such-cc"):
        lantern.stage(plus_one)(np.arange(3, dtype=np.float64))


def test_dump_dir_keeps_readable_c_files(fresh_cache, tmp_path, monkeypatch):
    dump = tmp_path / "dump"
    monkeypatch.setenv("LANTERN_DUMP_DIR", str(dump))
    x = np.arange(4, dtype=np.float32)
    exe = lantern.stage(plus_one).lower(x)
    exe2 = lantern.stage(scale).lower(x, 2.0)
    files = sorted(dump.iterdir())
    assert [f.name.split("-")[0] for f in files] == ["plus_one", "scale"]
    assert all(f.suffix == ".c" for f in files)
    assert {f.read_text() for f in files} == {exe.c_source, exe2.c_source}
