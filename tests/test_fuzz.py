"""Differential fuzzing (``lantern.fuzz``): random programs, native C vs the reference interpreter vs
finite differences, and vs NumPy; saved failing programs replayed; bugs the fuzzer found, as plain tests.

CI runs ``N_PROGRAMS`` generated programs in ``CHUNKS`` chunks (one C compile per batch of
``BATCH`` programs), ``N_DEFAULT_FLAGS`` more at -O3 (each also compiled at -O0 and compared),
``N_VARIANT`` with BLAS and NaN checks, ``N_SECOND_ORDER`` straight-line ones with Hessian-vector
products, ``N_NUMPY`` NumPy-oracle programs at the default flags (each also at -O0, compared bit for
bit where exact) and ``N_SANITIZED`` of those built with ASan and UBSan; ``make fuzz`` runs many more
(``python -m lantern.fuzz``).
"""
import json
from pathlib import Path

import numpy as np
import pytest

import lantern
from lantern.fuzz import campaign, numpy_programs
from lantern.fuzz import grad_programs as fuzz
from lantern.fuzz.report import Failure, Report
from lantern.testing import check_grads

REGRESSIONS = sorted((Path(__file__).parent / "fuzz_regressions").glob("*.json"))

SEED = 0             # CI's programs: generate(SEED, 0 .. N_PROGRAMS-1), the same on every run
N_PROGRAMS = 200
CHUNKS = 10          # pytest items, so `pytest -n 2` spreads them
BATCH = 5            # programs per C file (compile time grows with the C, not the number of files)
FAST_CFLAGS = "-O0"  # these chunks compile unoptimized (7x faster); one chunk uses the default flags
N_DEFAULT_FLAGS = 20  # programs compiled with the default CFLAGS (-O3 -march=native)
N_SECOND_ORDER = 40  # straight-line programs whose Hessian-vector products (grad of grad) are checked too


def _run(seed: int, indices: range, order: int = 1) -> Report:
    total = Report()
    for lo in range(indices.start, indices.stop, BATCH):
        total.add(fuzz.check_programs([fuzz.generate(seed, i, order=order)
                                       for i in range(lo, min(lo + BATCH, indices.stop))]))
    return total


def _assert_clean(rep: Report, n: int, oracle: str = "interpreter") -> None:
    assert rep.programs == n
    assert not rep.failures, "\n".join(map(str, rep.failures)) + (
        f"\nreproduce, shrink and save: python -m lantern.fuzz --oracle {oracle} --seed S --start I --count 1 "
        "[--order 2] --save-dir tests/fuzz_regressions")
    # Finite differences must actually run: skipping is only for directions crossing a kink.
    assert rep.fd_skipped <= max(2, rep.fd_checked // 10), (rep.fd_checked, rep.fd_skipped)


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_programs(chunk, monkeypatch):
    monkeypatch.setenv("CFLAGS", FAST_CFLAGS)
    per = N_PROGRAMS // CHUNKS
    _assert_clean(_run(SEED, range(chunk * per, (chunk + 1) * per)), per)


@pytest.mark.parametrize("half", [0, 1])
def test_random_programs_default_cflags(half):
    n = N_DEFAULT_FLAGS // 2
    _assert_clean(_run(SEED + 1, range(half * n, (half + 1) * n)), n)


N_VARIANT = 20  # programs with every product through BLAS and the NaN/Inf checks compiled in


def test_random_programs_blas_and_finite_checks(monkeypatch):
    # Other code paths of the emitter, same answers: cblas for every matrix product, the
    # check_finite mode (no false alarms on finite programs), index checks off.
    from lantern.codegen.kernels import matmul
    monkeypatch.setattr(matmul, "BLAS_MIN_MACS", 1)
    monkeypatch.setattr(matmul, "VECTOR_BLAS_MIN_MACS", 1)
    monkeypatch.setenv("LANTERN_CHECK_FINITE", "1")
    monkeypatch.setenv("LANTERN_CHECK_INDICES", "0")
    monkeypatch.setenv("CFLAGS", FAST_CFLAGS)
    _assert_clean(_run(SEED + 2, range(N_VARIANT)), N_VARIANT)


@pytest.mark.parametrize("half", [0, 1])
def test_random_programs_second_order(half, monkeypatch):
    monkeypatch.setenv("CFLAGS", FAST_CFLAGS)
    n = N_SECOND_ORDER // 2
    _assert_clean(_run(SEED, range(half * n, (half + 1) * n), order=2), n)


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_saved_regression(path):
    record = fuzz.load_regression(path)
    rep = campaign.ORACLES["numpy" if record["program"].get("kind") == "numpy" else "interpreter"].check_programs(
        [record["program"]])
    if "xfail" in record:  # a known, unfixed bug: must keep failing (strict) until fixed
        assert rep.failures, f"{path.name} passes now: remove its 'xfail' ({record['xfail']})"
        pytest.xfail(record["xfail"])
    assert not rep.failures, "\n".join(map(str, rep.failures))


# ------------------------------------------------------------------ NumPy as the oracle

N_NUMPY = 480         # NumPy-oracle programs (seed 0), at the default flags, each also compiled at -O0
NUMPY_CHUNKS = 6
NUMPY_BATCH = 10
N_SANITIZED = 20      # NumPy-oracle programs (seed 1) built with ASan and UBSan in a process of their own


def _run_numpy(seed: int, indices: range) -> Report:
    total = Report()
    for lo in range(indices.start, indices.stop, NUMPY_BATCH):
        total.add(numpy_programs.check_programs([numpy_programs.generate(seed, i)
                                                 for i in range(lo, min(lo + NUMPY_BATCH, indices.stop))]))
    return total


@pytest.mark.parametrize("chunk", range(NUMPY_CHUNKS))
def test_numpy_oracle_programs(chunk):
    per = N_NUMPY // NUMPY_CHUNKS
    _assert_clean(_run_numpy(SEED, range(chunk * per, (chunk + 1) * per)), per, "numpy")


def test_numpy_oracle_programs_sanitized():
    from lantern.codegen import toolchain
    try:
        toolchain.sanitizer_env()
    except lantern.CompileError as exc:
        pytest.skip(str(exc))
    rep, cov, _ = campaign.run_batch_sanitized("numpy", SEED + 1, 0, N_SANITIZED)
    _assert_clean(rep, N_SANITIZED, "numpy")
    assert sum(v for k, v in cov.items() if k.startswith("input ")) >= N_SANITIZED  # the programs really ran


N_DYNAMIC = 60  # NumPy-oracle programs (seed 2) staged with dynamic=True, one program per function


def test_numpy_oracle_programs_with_run_time_sizes():
    """Issue 12: every dimension of 2 or more a run-time size. The code is checked against NumPy, the
    interpreter and -O0 as usual; a program whose code needs a size as a number is compiled per shape."""
    total = Report()
    for i in range(N_DYNAMIC):
        total.add(numpy_programs.check_programs([numpy_programs.generate(SEED + 2, i)], dynamic=True))
    _assert_clean(total, N_DYNAMIC, "numpy")
    assert total.with_sizes >= N_DYNAMIC // 3, total.with_sizes  # most ran with run-time sizes


N_DYNAMIC_GRAD = 30  # gradient programs (seed 3) staged with dynamic=True, one program per function


def test_gradient_programs_with_run_time_sizes():
    """Issue 12: control flow, loops, recursion and gradients with run-time sizes, against the interpreter,
    -O0 and finite differences (a program whose code fixes a size is compiled per shape)."""
    total = Report()
    for i in range(N_DYNAMIC_GRAD):
        total.add(fuzz.check_programs([fuzz.generate(SEED + 3, i)], dynamic=True))
    _assert_clean(total, N_DYNAMIC_GRAD, "grad")
    assert total.with_sizes >= N_DYNAMIC_GRAD // 4, total.with_sizes


def test_numpy_programs_cover_dtypes_layouts_and_ops():
    cov = numpy_programs.coverage([numpy_programs.generate(SEED, i) for i in range(N_NUMPY)])
    wanted = {f"input {d}" for d in numpy_programs.DTYPES} | {f"result {d}" for d in numpy_programs.DTYPES} | {
        f"layout {lay}" for lay in ("C", "F", "strided", "reversed", "scalar")} | {
        "zero-size input", "zero-size result", "0-d input", "rejected by NumPy",
        "exp", "log", "log1p", "expm1", "sin", "cos", "tanh", "sqrt", "sigmoid", "silu", "rsqrt", "abs", "negative",
        "sign", "floor", "square", "relu", "stop_gradient", "add", "subtract", "multiply", "divide", "floor_divide",
        "mod", "power", "maximum", "minimum", "equal", "not_equal", "less", "less_equal", "greater",
        "greater_equal", "logical_and", "logical_or", "logical_not", "and_op", "or_op", "where", "clip", "sum",
        "mean", "max", "min", "argmax", "argmin", "logsumexp", "softmax", "log_softmax", "matmul", "reshape",
        "transpose", "swapaxes", "moveaxis", "expand_dims", "squeeze", "broadcast_to", "slice", "index", "astype",
        "take", "concatenate", "stack", "zeros", "ones", "full", "arange", "zeros_like", "full_like", "one_hot"}
    missing = wanted - set(cov)
    assert not missing, missing
    assert min(cov[k] for k in ("zero-size result", "rejected by NumPy", "layout strided", "layout reversed")) >= 20


def test_numpy_oracle_catches_a_wrong_kernel(monkeypatch):
    """The checker itself: C that computes minimum for maximum must be reported (against NumPy)."""
    from lantern.codegen import c_types
    real = c_types.elementwise_expr

    def wrong(prim, *args):
        return real("minimum" if prim == "maximum" else prim, *args)
    monkeypatch.setattr(c_types, "elementwise_expr", wrong)
    monkeypatch.setattr("lantern.codegen.kernels.elementwise.elementwise_expr", wrong)
    programs = [p for p in (numpy_programs.generate(7, i) for i in range(120))
                if any(s["op"] == "maximum" for s in p["body"]) and not numpy_programs._is_error(p)][:4]
    assert len(programs) == 4
    rep = numpy_programs.check_programs(programs)
    assert rep.failures and {f.stage for f in rep.failures} <= {"numpy", "interpreter"}, rep.failures


def test_unoptimized_build_must_give_the_same_bits(monkeypatch):
    """A second build whose results differ in one bit (as a miscompile's would) is reported at stage -O0."""
    import lantern.codegen as codegen
    real = codegen.recompile_native

    class OneBitOff(codegen.NativeFunction):
        def __call__(self, arrays):
            outs = super().__call__(arrays)
            first = next(o for o in outs if o.size)
            flat = first.reshape(-1)
            flat[0] = (~flat[0] if first.dtype == bool else flat[0] + 1 if first.dtype.kind == "i"
                       else np.nextafter(flat[0], np.inf))
            return outs

    def miscompiled(native, title, flags):
        twin = real(native, title, flags)
        twin.__class__ = OneBitOff
        return twin
    monkeypatch.setattr(codegen, "recompile_native", miscompiled)
    programs = [p for p in (numpy_programs.generate(8, i) for i in range(40)) if not numpy_programs._is_error(p)]
    rep = numpy_programs.check_programs(programs[:1])
    assert [f.stage for f in rep.failures] == ["-O0"], rep.failures


def test_numpy_programs_are_deterministic_data_and_shrink():
    a = numpy_programs.generate(3, 5)
    assert a == numpy_programs.generate(3, 5) and a != numpy_programs.generate(3, 6)
    assert json.loads(json.dumps(a)) == a
    p = next(q for q in (numpy_programs.generate(4, i, size=8) for i in range(50))
             if not numpy_programs._is_error(q) and any(s["op"] == "matmul" for s in q["body"]))

    def has_matmul(q):
        return any(s["op"] == "matmul" for s in q["body"]) and not numpy_programs.check_programs([q]).failures

    small = numpy_programs.shrink(p, has_matmul, budget_s=60)
    assert [s["op"] for s in small["body"]] == ["matmul"], numpy_programs.render([small])
    assert len(small["res"]) == 1


# ------------------------------------------------------------------ the generator and the shrinker

def test_programs_are_deterministic_data():
    a, b = fuzz.generate(3, 17), fuzz.generate(3, 17)
    assert a == b and a != fuzz.generate(3, 18)
    assert json.loads(json.dumps(a)) == a  # plain JSON: saved programs replay exactly
    assert fuzz.render([a]) == fuzz.render([json.loads(json.dumps(a))])


def test_ci_programs_cover_the_op_set():
    cov = fuzz.coverage([fuzz.generate(SEED, i) for i in range(N_PROGRAMS)])
    wanted = {"exp", "log", "log1p", "expm1", "sin", "cos", "tanh", "sigmoid", "silu", "relu", "sqrt", "rsqrt",
              "abs", "neg", "sign", "floor", "square", "pow", "clip", "add", "sub", "mul", "div", "maximum",
              "minimum", "sum", "mean", "max", "min", "logsumexp", "softmax", "log_softmax", "argmax", "argmin",
              "matmul", "reshape", "transpose", "swapaxes", "slice", "index", "concatenate", "stack",
              "expand_dims", "squeeze", "broadcast_to", "take", "where", "cast", "cond", "fori", "while", "call",
              "recursion", "float32", "float64", "recurrent_matmul", "one_hot_matmul"}
    missing = wanted - set(cov)
    assert not missing, missing
    assert min(cov[k] for k in ("cond", "fori", "while", "recursion", "float32")) >= 10, cov


def test_shrink_keeps_the_failure_and_drops_the_rest():
    p = next(q for q in (fuzz.generate(5, i) for i in range(100))
             if sum(s["k"] == "let" and s["op"] == "matmul" for s in fuzz._all_statements(q)) == 1
             and sum(1 for _ in fuzz._all_statements(q)) > 8)

    def has_matmul(q):
        return any(s["k"] == "let" and s["op"] == "matmul" for s in fuzz._all_statements(q))

    small = fuzz.shrink(p, has_matmul, budget_s=30)
    assert has_matmul(small)
    stmts = [s for s in fuzz._all_statements(small) if s["k"] != "zeros"]
    assert len(stmts) <= 3, fuzz.render([small])
    fuzz.load_batch([small])  # still renders and executes as Python


def test_save_and_replay(tmp_path):
    p = fuzz.generate(4, 2)
    f = Failure(4, 2, "fd", "example")
    path = fuzz.save_regression(p, f, tmp_path)
    record = fuzz.load_regression(path)
    assert record["program"] == p and record["failure"]["stage"] == "fd"
    assert "\n".join(record["source"]) == fuzz.render([p]).rstrip("\n")


def test_a_wrong_gradient_rule_is_caught(monkeypatch):
    # The checker itself: with tanh's derivative off by 0.1%, finite differences must object
    # (native and interpreter agree, since both run the same wrong gradient IR).
    from lantern.ir.primitives import PRIMITIVES
    monkeypatch.setenv("CFLAGS", FAST_CFLAGS)
    programs = [q for q in (fuzz.generate(6, i, dtype="float64") for i in range(60))
                if any(s["k"] == "let" and s["op"] == "tanh" for s in fuzz._all_statements(q))][:6]
    assert len(programs) == 6
    monkeypatch.setattr(PRIMITIVES["tanh"], "vjp", lambda g, xs, y, attrs: [g * (1 - y * y) * 1.001])
    rep = fuzz.check_programs(programs)
    assert {f.stage for f in rep.failures} == {"fd"}
    assert len(rep.failures) >= 3, rep.failures


# ------------------------------------------------------------------ bugs found by fuzzing, as plain tests

@lantern.stage
def _scaled(d, q):
    return lantern.cond(d <= 0, lambda: q * 2.0, lambda: q * 3.0)


def test_while_loop_after_cond_in_gradient():
    # The program after a cond (a continuation lambda) holds a while loop (a letrec lambda):
    # free_vars counted the loop's own name as captured by the enclosing continuation -> KeyError.
    def loss(x, n, m):
        y = _scaled(n, x)
        _, a, b = lantern.while_loop(lambda s: s[0] < m, lambda s: (s[0] + 1, s[1] * 0.5 + s[2], s[2]),
                                     (np.int64(0), x, y))
        return lantern.sum(a * a)

    x = np.array([0.3, -1.2, 0.7])
    for n in (0, 1):
        check_grads(loss, x, np.int64(n), np.int64(2))


def test_grad_through_cond_without_its_value():
    # lantern.grad (not value_and_grad) through a cond: the If is kept for its accumulations but
    # its value (the loss) is unused; C said "set but not used" (an error under -Werror).
    def loss(x):
        y = lantern.cond(x.mean() < 0.1, lambda: x * 2.0, lambda: x * 3.0)
        return lantern.min(y) + lantern.sum(y * y)

    for x in (np.array([0.5, 0.2, -0.3]), np.array([-0.5, 0.2, -0.3])):
        exe = lantern.stage(lambda x: lantern.grad(loss)(x)).lower(x)
        scale = 2.0 if x.mean() < 0.1 else 3.0
        y = x * scale
        np.testing.assert_allclose(exe(x), scale * ((y == y.min()) + 2 * y), rtol=1e-12)
        check_grads(loss, x)


@lantern.stage
def _halving(d, q):
    return lantern.cond(d <= 0, lambda: q * 2.0, lambda: _halving(d - 1, q) * 0.5)


@pytest.mark.parametrize("depth", [0, 2])
def test_recursive_call_inside_counted_loop_gradient(depth):
    # The backward replay of a fori_loop body (Python bounds) has a continuation returning nothing;
    # a recursive call there built its CPS continuation for the function's final types
    # (IRVerificationError: lambda results [] != [f64[]]).
    def loss(x):
        def body(i, c):
            return 0.5 * c + 0.5 * lantern.tanh(_halving(np.int64(depth), c) * x)
        return lantern.sum(lantern.fori_loop(0, 3, body, x) ** 2)

    check_grads(loss, np.array([0.3, -0.8]))
