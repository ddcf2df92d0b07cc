"""Differential fuzzing (``lantern.fuzz``): random programs, native C vs the reference interpreter vs
finite differences; saved failing programs replayed; bugs the fuzzer found, as plain tests.

CI runs ``N_PROGRAMS`` generated programs in ``CHUNKS`` chunks (one C compile per batch of
``BATCH`` programs), ``N_DEFAULT_FLAGS`` more at -O3, ``N_VARIANT`` with BLAS and NaN checks, and
``N_SECOND_ORDER`` straight-line ones with Hessian-vector products; ``make fuzz`` runs many more (``python -m lantern.fuzz``).
"""
import json
from pathlib import Path

import numpy as np
import pytest

import lantern
from lantern import fuzz
from lantern.testing import check_grads

REGRESSIONS = sorted((Path(__file__).parent / "fuzz_regressions").glob("*.json"))

SEED = 0             # CI's programs: generate(SEED, 0 .. N_PROGRAMS-1), the same on every run
N_PROGRAMS = 200
CHUNKS = 10          # pytest items, so `pytest -n 2` spreads them
BATCH = 5            # programs per C file (compile time grows with the C, not the number of files)
FAST_CFLAGS = "-O0"  # these chunks compile unoptimized (7x faster); one chunk uses the default flags
N_DEFAULT_FLAGS = 20  # programs compiled with the default CFLAGS (-O3 -march=native)
N_SECOND_ORDER = 40  # straight-line programs whose Hessian-vector products (grad of grad) are checked too


def _run(seed: int, indices: range, order: int = 1) -> fuzz.Report:
    total = fuzz.Report()
    for lo in range(indices.start, indices.stop, BATCH):
        rep = fuzz.check_programs([fuzz.generate(seed, i, order=order)
                                   for i in range(lo, min(lo + BATCH, indices.stop))])
        total.programs += rep.programs
        total.fd_checked += rep.fd_checked
        total.fd_skipped += rep.fd_skipped
        total.failures += rep.failures
    return total


def _assert_clean(rep: fuzz.Report, n: int) -> None:
    assert rep.programs == n
    assert not rep.failures, "\n".join(map(str, rep.failures)) + (
        "\nreproduce, shrink and save: python -m lantern.fuzz --seed S --start I --count 1 [--order 2] "
        "--save-dir tests/fuzz_regressions")
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
    from lantern.codegen import emit_c
    monkeypatch.setattr(emit_c, "BLAS_MIN_MACS", 1)
    monkeypatch.setattr(emit_c, "VECTOR_BLAS_MIN_MACS", 1)
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
    rep = fuzz.check_programs([record["program"]])
    if "xfail" in record:  # a known, unfixed bug: must keep failing (strict) until fixed
        assert rep.failures, f"{path.name} passes now: remove its 'xfail' ({record['xfail']})"
        pytest.xfail(record["xfail"])
    assert not rep.failures, "\n".join(map(str, rep.failures))


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
    f = fuzz.Failure(4, 2, "fd", "example")
    path = fuzz.save_regression(p, f, tmp_path)
    record = fuzz.load_regression(path)
    assert record["program"] == p and record["failure"]["stage"] == "fd"
    assert "\n".join(record["source"]) == fuzz.render([p]).rstrip("\n")


def test_a_wrong_gradient_rule_is_caught(monkeypatch):
    # The checker itself: with tanh's derivative off by 0.1%, finite differences must object
    # (native and interpreter agree, since both run the same wrong gradient IR).
    from lantern.ad import rules
    monkeypatch.setenv("CFLAGS", FAST_CFLAGS)
    programs = [q for q in (fuzz.generate(6, i, dtype="float64") for i in range(60))
                if any(s["k"] == "let" and s["op"] == "tanh" for s in fuzz._all_statements(q))][:6]
    assert len(programs) == 6
    monkeypatch.setitem(rules.RULES, "tanh", lambda g, xs, y, attrs: [g * (1 - y * y) * 1.001])
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
