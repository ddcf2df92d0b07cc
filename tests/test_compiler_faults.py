"""A missing, failing or hanging C compiler gives a lantern error that says what to do (issue 6)."""
import os
import stat
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import lantern
from lantern.codegen import toolchain


def double_plus(x):
    return x * 2.0 + 1.0


X = np.arange(3, dtype=np.float64)


def _fake_cc(tmp_path: Path, body: str, name: str = "fake-cc") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _no_leftovers(cache: Path) -> bool:
    return not [p for p in cache.rglob("*") if p.is_file() and p.suffix in (".so", ".tmp", ".json")]


def test_no_compiler_on_path(fresh_cache, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(lantern.CompilerNotFoundError) as info:
        lantern.stage(double_plus)(X)
    message = str(info.value)
    assert "no C compiler found" in message and "'cc' is not on PATH" in message
    assert "install gcc or clang" in message and "set CC" in message
    assert isinstance(info.value, lantern.CompileError)


@pytest.mark.parametrize("cc", ["no-such-compiler-xyz", "{tmp}/missing/gcc", "{tmp}/not-executable", " "])
def test_cc_that_names_no_compiler(fresh_cache, tmp_path, monkeypatch, cc):
    (tmp_path / "not-executable").write_text("#!/bin/sh\nexit 0\n")
    cc = cc.format(tmp=tmp_path)
    monkeypatch.setenv("CC", cc)
    with pytest.raises(lantern.CompilerNotFoundError) as info:
        lantern.stage(double_plus)(X)
    message = str(info.value)
    assert f"CC={cc!r}" in message and "set CC to" in message


def test_cc_that_fails_reports_its_messages(fresh_cache, tmp_path, monkeypatch):
    cc = _fake_cc(tmp_path, """\
        case "$*" in *--version*|*" -E "*) exec cc "$@";; esac
        echo "fake-cc: fatal error: license expired for $#-argument compiles" >&2
        exit 1
        """)
    monkeypatch.setenv("CC", str(cc))
    with pytest.raises(lantern.CompileError) as info:
        lantern.stage(double_plus)(X)
    message = str(info.value)
    assert "license expired" in message and "license expired" in info.value.compiler_output
    assert str(cc) in message  # the command line that failed
    assert "set CC to a working C compiler" in message
    assert info.value.c_path and Path(info.value.c_path).is_file()
    assert _no_leftovers(fresh_cache)


def test_cc_that_crashes_on_version_still_reports_the_compile(fresh_cache, tmp_path, monkeypatch):
    cc = _fake_cc(tmp_path, """\
        echo "segmentation fault (core dumped) in $0" >&2
        exit 139
        """)
    monkeypatch.setenv("CC", str(cc))
    with pytest.raises(lantern.CompileError, match="segmentation fault") as info:
        lantern.stage(double_plus)(X)
    assert not isinstance(info.value, (lantern.CompilerNotFoundError, lantern.CompilerTimeoutError))


@pytest.mark.parametrize("stage", ["compile", "version"])
def test_hanging_compiler_is_stopped(fresh_cache, tmp_path, monkeypatch, stage):
    """A compiler that never finishes is killed with everything it started, after LANTERN_CC_TIMEOUT seconds."""
    pids = tmp_path / "pids"
    hang_on = "*--version*" if stage == "version" else "*-shared*"
    cc = _fake_cc(tmp_path, f"""\
        case "$*" in
          {hang_on}) sleep 600 & echo "$$ $!" > {pids}; wait; exit 0;;
        esac
        exec cc "$@"
        """)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("LANTERN_CC_TIMEOUT", "1.5")
    with pytest.raises(lantern.CompilerTimeoutError) as info:
        lantern.stage(double_plus)(X)
    message = str(info.value)
    assert "did not finish" in message and "1.5 s" in message
    assert "LANTERN_CC_TIMEOUT" in message and "CC" in message
    if stage == "compile":
        assert info.value.c_path and Path(info.value.c_path).is_file()
    # the wrapper and the sleep it started are gone (killed as a group)
    for pid in map(int, pids.read_text().split()):
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.02)
        assert not _alive(pid), pid
    assert _no_leftovers(fresh_cache)
    # with the hang gone, the same compiler works (nothing half-done was kept)
    monkeypatch.delenv("LANTERN_CC_TIMEOUT")
    cc.write_text('#!/bin/sh\nexec cc "$@"\n')
    np.testing.assert_allclose(lantern.stage(double_plus)(X), X * 2 + 1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_bad_timeout_setting(fresh_cache, monkeypatch, value):
    monkeypatch.setenv("LANTERN_CC_TIMEOUT", value)
    with pytest.raises(lantern.CompileError, match="LANTERN_CC_TIMEOUT"):
        toolchain.compile_timeout()


def test_timeout_default_and_setting(monkeypatch):
    monkeypatch.delenv("LANTERN_CC_TIMEOUT", raising=False)
    assert toolchain.compile_timeout() == 300
    monkeypatch.setenv("LANTERN_CC_TIMEOUT", "12.5")
    assert toolchain.compile_timeout() == 12.5
