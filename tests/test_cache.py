"""The compiler driver and its cache: in memory per signature, on disk across processes."""
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import lantern
from lantern.codegen import cache


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
    assert _delta(before) == {"compiles": 1, "disk_hits": 0, "rebuilt": 0}
    y = np.ones(4, dtype=np.float32)
    np.testing.assert_allclose(f(y), y * 2 + 1)
    np.testing.assert_allclose(f.lower(x)(x), x * 2 + 1)
    assert f.trace_count == 1
    assert _delta(before) == {"compiles": 1, "disk_hits": 0, "rebuilt": 0}
    # the binary is in the cache directory, next to the C file it came from
    exe = f.lower(x)
    assert Path(exe.so_path).is_file() and Path(exe.c_path).is_file()
    assert Path(exe.so_path).is_relative_to(fresh_cache)
    assert Path(exe.c_path).read_text() == exe.c_source
    # a second staged object of the same function traces again but finds the binary on disk
    g = lantern.stage(plus_one)
    np.testing.assert_allclose(g(x), x * 2 + 1)
    assert g.trace_count == 1
    assert _delta(before) == {"compiles": 1, "disk_hits": 1, "rebuilt": 0}
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
    assert _delta(before) == {"compiles": 4, "disk_hits": 0, "rebuilt": 0}


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
    assert cache.cache_dir() == xdg / "lantern"
    import runpy
    before = lantern.cache_stats()
    ns = runpy.run_path(str(script), run_name="affine_script")
    assert _delta(before) == {"compiles": 1, "disk_hits": 0, "rebuilt": 0}
    so_path = ns["affine"].lower(ns["x"]).so_path
    assert Path(so_path).is_relative_to(xdg / "lantern")
    # a fresh process pointed at the same directory through LANTERN_CACHE_DIR: no compile, one disk hit
    result = _run_script(script, _env(LANTERN_CACHE_DIR=str(xdg / "lantern"), XDG_CACHE_HOME=None))
    assert result["stats"] == {"compiles": 0, "disk_hits": 1, "rebuilt": 0}
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
    files = sorted(p.name for p in fresh_cache.rglob("*") if p.is_file() and p.parts[len(fresh_cache.parts)] not in ("traces", "ffi"))
    assert len(files) == 3 and {Path(f).suffix for f in files} == {".c", ".so", ".json"}, files


def test_cflags_change_the_cache_key(fresh_cache, monkeypatch):
    x = np.arange(4, dtype=np.float32)
    before = lantern.cache_stats()
    default = lantern.stage(plus_one).lower(x)
    monkeypatch.setenv("CFLAGS", "-O1")
    o1 = lantern.stage(plus_one).lower(x)
    assert _delta(before) == {"compiles": 2, "disk_hits": 0, "rebuilt": 0}
    assert o1.so_path != default.so_path
    np.testing.assert_allclose(o1(x), x * 2 + 1)
    np.testing.assert_allclose(default(x), x * 2 + 1)
    # the same flags again: found on disk
    again = lantern.stage(plus_one).lower(x)
    assert again.so_path == o1.so_path
    assert _delta(before) == {"compiles": 2, "disk_hits": 1, "rebuilt": 0}


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


# ---------------------------------------------------------------- the cache under faults

_PROBE = """
import json, os, sys, time, warnings
import numpy as np
import lantern

warnings.simplefilter("always")
k = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
go = sys.argv[2] if len(sys.argv) > 2 else ""
while go and not os.path.exists(go):  # start together with the other processes
    time.sleep(0.005)


def shared_a(x):
    return x * 3.0 - 1.0


def shared_b(x):
    return lantern.tanh(x) * 2.0


def own(x):
    return x * k + 0.5  # k is a constant in the C: one function per process


x = np.arange(5, dtype=np.float64)
outs, sos = {}, {}
with warnings.catch_warnings(record=True) as caught:
    for fn in (shared_a, shared_b, own):
        staged = lantern.stage(fn)
        outs[fn.__name__] = staged(x).tolist()
        sos[fn.__name__] = staged.lower(x).so_path
print(json.dumps({"stats": lantern.cache_stats(), "outs": outs, "sos": sos,
                  "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
"""

_EXPECTED = {"shared_a": lambda x, k: x * 3.0 - 1.0, "shared_b": lambda x, k: np.tanh(x) * 2.0,
             "own": lambda x, k: x * k + 0.5}


def _probe_script(tmp_path: Path) -> Path:
    script = tmp_path / "probe_script.py"
    script.write_text(_PROBE)
    return script


def _check_outs(result: dict, k: float) -> None:
    x = np.arange(5, dtype=np.float64)
    for name, expected in _EXPECTED.items():
        np.testing.assert_allclose(result["outs"][name], expected(x, k), rtol=1e-12)


def _entries(directory: Path) -> dict[str, bool]:
    """Every complete entry (a .so with its metadata) and whether it passes the load-time checks."""
    found = {}
    for so in directory.rglob("*.so"):
        key = so.stem.rsplit("-", 1)[1]
        found[so.stem] = cache.check_entry(cache.Entry(so.parent, so.stem), key) == (True, None)
    return found


def test_concurrent_processes_compile_same_and_different_functions(fresh_cache, tmp_path):
    """Six processes released at the same moment, each compiling two shared functions and one of its own."""
    script = _probe_script(tmp_path)
    go = tmp_path / "go"
    env = _env(LANTERN_CACHE_DIR=str(fresh_cache))
    n = 6
    procs = [subprocess.Popen([sys.executable, str(script), str(k), str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(2, 2 + n)]
    time.sleep(0.5)  # let them import lantern, then start all at once
    go.touch()
    results = []
    for k, p in zip(range(2, 2 + n), procs):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        _check_outs(result, float(k))
        assert result["warnings"] == [] and result["stats"]["rebuilt"] == 0
        results.append(result)
    # one entry per distinct function, all whole; every process used the same shared entries
    assert len({r["sos"]["shared_a"] for r in results}) == 1 and len({r["sos"]["shared_b"] for r in results}) == 1
    assert len({r["sos"]["own"] for r in results}) == n
    entries = _entries(fresh_cache)
    assert len(entries) == 2 + n and all(entries.values()), entries
    assert sum(r["stats"]["compiles"] + r["stats"]["disk_hits"] for r in results) == 3 * n
    assert sum(r["stats"]["compiles"] for r in results) >= 2 + n
    assert _leftovers(fresh_cache) == []
    # the directory and every subdirectory are private to the user
    for d in [fresh_cache, *[p for p in fresh_cache.rglob("*") if p.is_dir()]]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


_HANGING_CC = """\
# Like cc, except that with LANTERN_TEST_HANG=1 a compile writes half an output file, says so, and hangs.
out=""; prev=""
for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
if [ "$LANTERN_TEST_HANG" = 1 ] && [ -n "$out" ] && [ "$out" != /dev/null ]; then
    head -c 3000 "$(command -v cc)" > "$out"
    touch "$LANTERN_TEST_MARK"
    sleep 120
fi
exec cc "$@"
"""


def test_killed_compile_leaves_no_entry_that_loads(fresh_cache, tmp_path):
    """SIGKILL a process (and its compiler) while the compiler is writing: the next process rebuilds."""
    cc = _wrapper(tmp_path, _HANGING_CC)
    script = _probe_script(tmp_path)
    mark = tmp_path / "compiling"
    env = _env(LANTERN_CACHE_DIR=str(fresh_cache), CC=str(cc), LANTERN_TEST_HANG="1", LANTERN_TEST_MARK=str(mark))
    proc = subprocess.Popen([sys.executable, str(script), "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the compile never started"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    # half a shared object is on disk, but only under a temporary name: no entry
    partial = [p for p in fresh_cache.rglob("*") if p.is_file() and p.name.endswith(".so.tmp")]
    assert len(partial) == 1 and partial[0].stat().st_size == 3000
    assert _entries(fresh_cache) == {}
    # the next process, with the same compiler (so the same keys), compiles and runs correctly
    result = _run_script(script, {**env, "LANTERN_TEST_HANG": "0"})
    _check_outs(result, 2.0)
    assert result["stats"] == {"compiles": 3, "disk_hits": 0, "rebuilt": 0} and result["warnings"] == []
    entries = _entries(fresh_cache)
    assert len(entries) == 3 and all(entries.values())
    # the killed compile's temporary goes once it is old (a compile into that directory removes it)
    os.utime(partial[0], (time.time() - 2 * cache.STALE_TMP_AGE,) * 2)
    for so in fresh_cache.rglob("*.json"):
        so.unlink()  # entries without metadata are compiled again
    result = _run_script(script, {**env, "LANTERN_TEST_HANG": "0"})
    assert result["stats"] == {"compiles": 3, "disk_hits": 0, "rebuilt": 0}
    assert not partial[0].exists() and _leftovers(fresh_cache) == []


def _corrupt_truncate(entry: cache.Entry) -> None:
    data = entry.so.read_bytes()
    entry.so.write_bytes(data[: len(data) // 2])


def _corrupt_flip_byte(entry: cache.Entry) -> None:
    data = bytearray(entry.so.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    entry.so.write_bytes(bytes(data))


def _corrupt_metadata(entry: cache.Entry) -> None:
    entry.meta.write_text(entry.meta.read_text()[:20])


def _corrupt_wrong_hash(entry: cache.Entry) -> None:
    meta = json.loads(entry.meta.read_text())
    meta["so_sha256"] = "0" * 64
    entry.meta.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_corrupt_truncate, _corrupt_flip_byte, _corrupt_metadata, _corrupt_wrong_hash])
def test_corrupted_entry_is_detected_and_rebuilt(fresh_cache, tmp_path, damage):
    script = _probe_script(tmp_path)
    env = _env(LANTERN_CACHE_DIR=str(fresh_cache))
    first = _run_script(script, env)
    assert first["stats"]["compiles"] == 3
    so = Path(first["sos"]["shared_a"])
    entry = cache.Entry(so.parent, so.stem)
    good = so.read_bytes()
    damage(entry)
    # a fresh process (nothing loaded yet) finds the damage, warns, rebuilds, and computes correctly
    result = _run_script(script, env)
    _check_outs(result, 2.0)
    assert result["stats"] == {"compiles": 1, "disk_hits": 2, "rebuilt": 1}
    assert len(result["warnings"]) == 1 and result["warnings"][0].startswith("CacheWarning")
    assert "shared_a" in result["warnings"][0] and "compiling it again" in result["warnings"][0]
    assert so.read_bytes() == good and _entries(fresh_cache)[so.stem]
    # and the one after that simply hits
    assert _run_script(script, env)["stats"] == {"compiles": 0, "disk_hits": 3, "rebuilt": 0}


def test_entries_of_another_user_are_never_loaded(fresh_cache, monkeypatch):
    x = np.arange(4, dtype=np.float32)
    exe = lantern.stage(plus_one).lower(x)
    entry = cache.Entry(Path(exe.so_path).parent, Path(exe.so_path).stem)
    other = cache.uid() + 1
    if cache.uid() == 0:
        os.chown(entry.so, other, other)  # really someone else's file
    else:
        real = os.lstat
        monkeypatch.setattr(cache.os, "lstat",
                            lambda p, *a, **k: _owned_by(real(p, *a, **k), other) if str(p) == str(entry.so)
                            else real(p, *a, **k))
    before = lantern.cache_stats()
    with pytest.warns(lantern.CacheWarning, match=f"belongs to uid {other}, not to this user"):
        again = lantern.stage(plus_one).lower(x)
    assert _delta(before) == {"compiles": 1, "disk_hits": 0, "rebuilt": 1}
    np.testing.assert_allclose(again(x), x * 2 + 1)
    monkeypatch.undo()
    assert os.lstat(entry.so).st_uid == cache.uid()  # replaced by the user's own build


def _owned_by(st: os.stat_result, uid: int) -> os.stat_result:
    fields = list(st)
    fields[stat.ST_UID] = uid
    return os.stat_result(fields)


def test_cache_directory_is_created_private_and_tightened(tmp_path, monkeypatch):
    root = tmp_path / "a" / "cache"
    monkeypatch.setenv("LANTERN_CACHE_DIR", str(root))
    x = np.arange(4, dtype=np.float32)
    exe = lantern.stage(plus_one).lower(x)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(exe.so_path).parent.stat().st_mode) == 0o700
    # an existing cache others could read is made private when a process first uses it
    other = tmp_path / "shared"
    other.mkdir(mode=0o755)
    other.chmod(0o755)
    monkeypatch.setenv("LANTERN_CACHE_DIR", str(other))
    lantern.stage(plus_one).lower(x)
    assert stat.S_IMODE(other.stat().st_mode) == 0o700


def test_cache_removed_while_running_is_made_again(fresh_cache, recwarn):
    x = np.arange(4, dtype=np.float32)
    lantern.stage(plus_one).lower(x)
    shutil.rmtree(fresh_cache)
    exe = lantern.stage(scale).lower(x, 2.0)
    np.testing.assert_allclose(exe(x, 2.0), x * 2)
    assert Path(exe.so_path).is_relative_to(fresh_cache) and stat.S_IMODE(fresh_cache.stat().st_mode) == 0o700
    assert not [w for w in recwarn if issubclass(w.category, lantern.CacheWarning)]


def test_cache_directory_of_another_user_is_replaced_by_a_temporary_one(tmp_path, monkeypatch):
    root = tmp_path / "theirs"
    root.mkdir(mode=0o700)
    if cache.uid() == 0:
        os.chown(root, cache.uid() + 1, -1)
    else:
        monkeypatch.setattr(cache, "uid", lambda: os.geteuid() + 1)
    monkeypatch.setenv("LANTERN_CACHE_DIR", str(root))
    x = np.arange(4, dtype=np.float32)
    with pytest.warns(lantern.CacheWarning, match="not to this user"):
        exe = lantern.stage(plus_one).lower(x)
    np.testing.assert_allclose(exe(x), x * 2 + 1)
    assert not Path(exe.so_path).is_relative_to(root) and list(root.iterdir()) == []
    assert cache.active_cache_dir() == Path(exe.so_path).parents[1]


def _run_in_mount(tmp_path: Path, setup: str, script: Path, env: dict) -> dict:
    """Run ``script`` in a private mount namespace where ``setup`` (shell) has mounted $MNT; skip if impossible."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    shell = f"set -e; MNT={shlex.quote(str(mnt))}; {setup}; exec {shlex.quote(sys.executable)} {shlex.quote(str(script))} 2"
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and ("unshare" in proc.stderr or "mount:" in proc.stderr):
        pytest.skip(f"cannot mount a test file system here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs unshare and root to mount a small file system")
@pytest.mark.parametrize("setup, expect", [
    # a read-only file system
    ("mount -t tmpfs -o size=1m tmpfs $MNT; mount -o remount,ro $MNT", "Read-only file system"),
    # a full one: no room even for the probe
    ("mount -t tmpfs -o size=64k tmpfs $MNT; head -c 1m /dev/zero > $MNT/fill || true", "No space left on device"),
    # nearly full: the probe and the C file fit, the shared object does not (the linker fails to write it)
    ("mount -t tmpfs -o size=1m tmpfs $MNT; head -c 8k /dev/zero > $MNT/room; "
     "head -c 2m /dev/zero > $MNT/fill || true; rm $MNT/room", "could not write its output"),
])
def test_read_only_or_full_cache_falls_back_to_a_temporary_one(tmp_path, setup, expect):
    script = _probe_script(tmp_path)
    result = _run_in_mount(tmp_path, setup, script, _env(LANTERN_CACHE_DIR=str(tmp_path / "mnt" / "cache")))
    _check_outs(result, 2.0)
    assert result["stats"]["compiles"] == 3
    assert len(result["warnings"]) == 1, result["warnings"]
    message = result["warnings"][0]
    assert message.startswith("CacheWarning") and expect in message and "LANTERN_CACHE_DIR" in message
    # compiled into one temporary directory, not into the broken one
    assert len({Path(so).parents[1] for so in result["sos"].values()}) == 1
    assert not any(str(tmp_path / "mnt") in so for so in result["sos"].values())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories (tested with a read-only mount)")
def test_read_only_cache_directory_falls_back_to_a_temporary_one(tmp_path, monkeypatch):
    root = tmp_path / "ro"
    root.mkdir(mode=0o700)
    root.chmod(0o500)
    monkeypatch.setenv("LANTERN_CACHE_DIR", str(root))
    x = np.arange(4, dtype=np.float32)
    try:
        with pytest.warns(lantern.CacheWarning, match="cannot write in"):
            exe = lantern.stage(plus_one).lower(x)
    finally:
        root.chmod(0o700)
    np.testing.assert_allclose(exe(x), x * 2 + 1)
    assert not Path(exe.so_path).is_relative_to(root)
