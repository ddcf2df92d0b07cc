"""``python -m lantern inspect`` / ``demo``: through a subprocess once, the rest in process."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lantern import cli

MODULE = textwrap.dedent("""
    import lantern

    def layer(x, w, b):
        return lantern.tanh(x @ w + b)

    @lantern.stage
    def scale(x, k=1.0, act="tanh"):
        y = x * k
        return lantern.tanh(y) if act == "tanh" else y

    def step(params, h):
        return lantern.tanh(h @ params["w"] + params["b"])
    """)


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    (tmp_path / "cli_target_mod.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_inspect_subprocess_prints_ir_and_c(module_dir):
    proc = subprocess.run([sys.executable, "-m", "lantern", "inspect", "cli_target_mod:layer",
                           "--arg", "f32[4,3]", "--arg", "f32[3,5]", "--arg", "f32[5]"],
                          capture_output=True, text=True, timeout=120, cwd=module_dir, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "func @layer(%x_1: f32[4,3], %w_2: f32[3,5], %b_3: f32[5]) -> (f32[4,5])" in out
    assert "matmul(" in out and "tanh(" in out and "cli_target_mod.py:5" in out
    assert "fused" in out  # the optimized IR
    assert '#include "lantern_runtime.h"' in out and "int lantern_entry(" in out
    c_line = next(line for line in out.splitlines() if line.startswith("// ---- C: "))
    assert os.path.isfile(c_line.removeprefix("// ---- C: "))
    # the help of the top-level command lists both subcommands
    help_proc = subprocess.run([sys.executable, "-m", "lantern", "--help"], capture_output=True, text=True,
                               timeout=60)
    assert help_proc.returncode == 0 and "inspect" in help_proc.stdout and "demo" in help_proc.stdout


def test_inspect_file_path_nested_args_and_statics(module_dir, capsys):
    assert cli.main(["inspect", str(module_dir / "cli_target_mod.py") + ":step",
                     "--arg", "{'w': f64[3,3], 'b': f64[3]}", "--arg", "f64[2,3]", "--only", "ir"]) == 0
    out = capsys.readouterr().out
    assert "%params_w_" in out and "f64[3,3]" in out and "%h_" in out and "f64[2,3]" in out
    assert "lantern_entry" not in out and "fused" not in out

    # a 0-d argument, a keyword constant through --static and through --arg NAME=VALUE
    assert cli.main(["inspect", "cli_target_mod:scale", "--arg", "i64[]", "--static", "k=3",
                     "--arg", "act='identity'", "--only", "ir", "--only", "c"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"func @scale\(%x_\d+: i64\[\]\) -> \(i64\[\]\)", out)
    assert "value=3" in out and "tanh" not in out.split("// ---- C")[0]
    assert "int64_t" in out

    assert cli.main(["inspect", "cli_target_mod:scale", "--arg", "f32[2]", "--only", "ir"]) == 0
    assert "tanh(" in capsys.readouterr().out  # the default constant act="tanh"


def test_inspect_with_named_run_time_sizes(module_dir, capsys):
    """Issue 12: ``f32[n,3]`` makes the first dimension the run-time size ``n``, in the IR and the C."""
    assert cli.main(["inspect", "cli_target_mod:layer", "--arg", "f32[n,3]", "--arg", "f32[3,5]", "--arg", "f32[5]"]) == 0
    out = capsys.readouterr().out
    assert "func @layer(%x_1: f32[n,3], %w_2: f32[3,5], %b_3: f32[5]) -> (f32[n,5])" in out
    assert "const int64_t n = lt_size[0];" in out and re.search(r"for \(int64_t \w+ = 0; \w+ < n( / 4)?; \w+\+\+\)", out)
    with pytest.raises(SystemExit):  # a dimension that is neither a number nor a name
        cli.main(["inspect", "cli_target_mod:layer", "--arg", "f32[2.5,3]"])


def test_inspect_errors(module_dir, capsys):
    # a shape error in the function: message with the user's line, exit status 1
    assert cli.main(["inspect", "cli_target_mod:layer", "--arg", "f32[4,3]", "--arg", "f32[4,5]",
                     "--arg", "f32[5]"]) == 1
    err = capsys.readouterr().err
    assert "inner dimensions" in err and "cli_target_mod.py:5" in err
    assert cli.main(["inspect", "cli_target_mod:layer", "--arg", "f32[4,3]"]) == 1
    assert "missing a required argument" in capsys.readouterr().err
    assert cli.main(["inspect", "cli_target_mod:nothing", "--arg", "f32[4]"]) == 1
    assert "no attribute 'nothing'" in capsys.readouterr().err
    assert cli.main(["inspect", "no_such_module_anywhere:f"]) == 1
    assert cli.main(["inspect", "missing_file.py:f"]) == 1
    # bad argument types are usage errors (argparse exits with status 2)
    for bad in ("f16[3]", "f32[3,2x]", "f32[-1]", "f32[3"):  # (f32[3,x]: a run-time size x)
        with pytest.raises(SystemExit) as info:
            cli.main(["inspect", "cli_target_mod:layer", "--arg", bad])
        assert info.value.code == 2
        assert "--arg" in capsys.readouterr().err


def test_parse_value():
    a = cli.parse_value("f32[4,3]")
    assert a.shape == (4, 3) and a.dtype == np.float32
    zero_d = cli.parse_value("i64[]")
    assert zero_d.shape == () and zero_d.dtype == np.int64
    assert cli.parse_value("bool[2]").dtype == np.bool_
    assert cli.parse_value("2.5") == 2.5 and cli.parse_value("'relu'") == "relu"
    nested = cli.parse_value("{'w': f64[3, 5], 'layers': [i32[2], (f32[], 7)]}")
    assert nested["w"].shape == (3, 5) and nested["w"].dtype == np.float64
    assert nested["layers"][0].dtype == np.int32 and isinstance(nested["layers"], list)
    assert nested["layers"][1][0].shape == () and nested["layers"][1][1] == 7


def test_demo_subcommand_calls_lantern_demo_main(monkeypatch):
    import lantern.demo

    calls = []
    monkeypatch.setattr(lantern.demo, "main", lambda: calls.append("ran"))
    assert cli.main(["demo"]) == 0
    assert calls == ["ran"]
