"""Calling compiled code: arguments are checked in Python before any pointer reaches C."""
import re
import threading

import numpy as np
import pytest

import lantern


@lantern.stage
def layer(params, x):
    return x @ params["w"] + params["b"]


@lantern.stage
def axpy(a, x, y):
    return a * x + y


@lantern.stage
def pick(x, i):
    return x[i] * 2.0


@lantern.stage
def ident(x):
    return x


def _params(rng):
    return {"w": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}


def _expected(params, x):
    return x @ params["w"] + params["b"]


@pytest.fixture
def exe_and_args(rng):
    params = _params(rng)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    return layer.lower(params, x), params, x


def _raises(fn, *patterns):
    with pytest.raises(lantern.ArgumentError) as info:
        fn()
    for p in patterns:
        assert re.search(p, str(info.value)), (p, str(info.value))
    return info.value


# ---------------------------------------------------------------- Executable argument checks
def test_executable_wrong_shape_names_nested_argument(exe_and_args):
    exe, params, x = exe_and_args
    bad = dict(params, w=params["w"].T.copy())
    _raises(lambda: exe(bad, x), r"params\['w'\]", r"\(3, 5\)", r"\(5, 3\)")
    _raises(lambda: exe(params, x[:2]), r"\bx\b", r"\(4, 3\)", r"\(2, 3\)")


def test_executable_wrong_dtype(exe_and_args):
    exe, params, x = exe_and_args
    _raises(lambda: exe(params, x.astype(np.float64)), r"\bx\b", "float32", "float64")
    _raises(lambda: exe(dict(params, b=params["b"].astype(np.int32)), x), r"params\['b'\]", "float32", "int32")
    _raises(lambda: exe(params, x.astype(np.float16)), r"\bx\b", "float16")


def test_executable_wrong_number_or_structure_of_arguments(exe_and_args):
    exe, params, x = exe_and_args
    np.testing.assert_allclose(exe(params, x), _expected(params, x), rtol=1e-5)  # accepted once ...
    np.testing.assert_allclose(exe(x=x, params=params), _expected(params, x), rtol=1e-5)
    _raises(lambda: exe(params), "missing", "x")
    _raises(lambda: exe(params, x, x), "too many")
    _raises(lambda: exe({"w": params["w"]}, x), "structure")


def test_executable_non_array_arguments(exe_and_args):
    exe, params, x = exe_and_args
    _raises(lambda: exe(params, "not an array"), r"\bx\b", r"\bstr\b", r"\(4, 3\)")
    _raises(lambda: exe(params, object()), r"\bx\b", r"\bobject\b", r"\(4, 3\)")
    _raises(lambda: exe(dict(params, w=None), x), "structure")


def test_python_constants_key_by_value_sign_and_type():
    x, y = np.ones(2), np.full(2, -0.0)
    before = axpy.trace_count
    assert not np.signbit(axpy(0.0, x, y)).any()
    assert np.signbit(axpy(-0.0, x, y)).all()  # -0.0 == 0.0, but it is another constant
    assert not np.signbit(axpy(0.0, x, y)).any()
    assert axpy.trace_count == before + 2
    for _ in range(3):  # every NaN is the same constant: one compile, not one per call
        assert np.isnan(axpy(float("nan"), x, y)).all()
    assert axpy.trace_count == before + 3
    np.testing.assert_array_equal(axpy(2, x, y), 2 * x)  # int 2 is not float 2.0
    assert axpy.lower(2, x, y) is not axpy.lower(2.0, x, y)


def test_nested_arguments_take_the_right_executable(rng):
    params = _params(rng)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    out = layer(params, x)
    np.testing.assert_allclose(out, _expected(params, x), rtol=1e-5, atol=1e-5)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    assert layer(p64, x).dtype == np.float64  # a nested dtype change is a new signature
    with pytest.raises(lantern.ShapeError):
        layer({"w": params["w"].T.copy(), "b": params["b"]}, x)
    np.testing.assert_allclose(layer(params, x), out)


def test_executable_constant_mismatch(rng):
    x = rng.standard_normal(4)
    exe = axpy.lower(2.0, x, x)
    np.testing.assert_allclose(exe(2.0, x, x), 3 * x)
    _raises(lambda: exe(3.0, x, x), r"\ba\b", "2.0", "3.0")


# ---------------------------------------------------------------- staged function argument checks
@pytest.mark.parametrize("bad", [
    np.ones(4, np.float16),
    np.ones(4, np.complex64),
    np.array([1.0, None, 2.0, 3.0], dtype=object),
    object(),
    {1, 2},
])
def test_staged_rejects_unsupported_arguments(bad):
    x = np.ones(4)
    before = lantern.cache_stats()
    err = _raises(lambda: axpy(2.0, bad, x), r"\bx\b")
    assert lantern.cache_stats()["compiles"] == before["compiles"]
    if isinstance(bad, np.ndarray):
        assert bad.dtype.name in str(err)


def test_staged_wrong_number_of_arguments():
    x = np.ones(4)
    _raises(lambda: axpy(2.0, x), "missing", "y")
    _raises(lambda: axpy(2.0, x, x, x), "too many")
    _raises(lambda: axpy(2.0, x, x, z=x), "unexpected keyword")


# ---------------------------------------------------------------- layouts the C code cannot take as they are
def test_non_contiguous_big_endian_and_read_only_inputs(rng):
    params = _params(rng)
    big = rng.standard_normal((8, 6)).astype(np.float32)
    cases = {
        "transposed": big[:3, :4].T,                     # (4, 3), Fortran-ordered view
        "strided": big[::2, ::2],                         # (4, 3), strides over a larger buffer
        "big-endian": big[:4, :3].astype(">f4"),
        "read-only": np.array(big[:4, :3]),
        "negative strides": big[3::-1, 2::-1],
    }
    cases["read-only"].flags.writeable = False
    frozen_w = params["w"].copy()
    frozen_w.flags.writeable = False
    ro_params = {"w": frozen_w, "b": params["b"][::-1].copy()[::-1]}  # b: negative-stride view
    for name, x in cases.items():
        snapshot = x.copy()
        for p in (params, ro_params):
            out = layer(p, x)
            np.testing.assert_allclose(out, _expected(p, np.asarray(x, np.float32)), rtol=1e-5, atol=1e-5,
                                       err_msg=name)
            assert out.dtype == np.float32 and out.flags.writeable and out.flags.c_contiguous
        np.testing.assert_array_equal(x, snapshot, err_msg=name)
        assert x.dtype == snapshot.dtype
    # the executable takes the same layouts
    exe = layer.lower(params, cases["strided"])
    np.testing.assert_allclose(exe(params, cases["big-endian"]), _expected(params, big[:4, :3]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(params["w"], frozen_w)


def test_scalar_and_zero_d_inputs():
    x = np.arange(4.0)
    np.testing.assert_allclose(axpy(np.float64(3.0), x, x), 4 * x)  # NumPy scalar: a 0-d array argument
    np.testing.assert_allclose(axpy(np.array(3.0), x, x), 4 * x)
    np.testing.assert_allclose(axpy(3.0, x, x), 4 * x)  # Python float: a compile-time constant
    exe = axpy.lower(np.array(3.0), x, x)
    np.testing.assert_allclose(exe(np.array(0.5), x, x), 1.5 * x)
    np.testing.assert_allclose(exe(np.float64(0.5), x, x), 1.5 * x)


# ---------------------------------------------------------------- results
def test_results_are_fresh_arrays():
    x = np.arange(5.0)
    a = ident(x)
    b = ident(x)
    np.testing.assert_array_equal(a, x)
    for out in (a, b):
        assert type(out) is np.ndarray and out.flags.writeable and out.flags.owndata
        assert not np.shares_memory(out, x)
    assert not np.shares_memory(a, b)
    a[0] = 100.0
    np.testing.assert_array_equal(x, np.arange(5.0))
    np.testing.assert_array_equal(b, x)


# ---------------------------------------------------------------- errors at run time
def test_out_of_bounds_index_at_run_time():
    x = np.arange(5.0)
    exe = pick.lower(x, np.int64(0))
    with pytest.raises(lantern.OutOfBoundsError) as info:
        pick(x, np.int64(10))
    message = str(info.value)
    assert re.search(r"test_calls\.py:\d+", message), message
    line = int(re.search(r"test_calls\.py:(\d+)", message).group(1))
    assert "x[i]" in open(__file__).read().splitlines()[line - 1]
    assert "10" in message and "5" in message
    assert isinstance(info.value, IndexError)
    # the process keeps working, repeatedly
    for i in range(5):
        assert pick(x, np.int64(i)) == 2.0 * i
    with pytest.raises(lantern.OutOfBoundsError):
        exe(x, np.int64(-6))
    assert exe(x, np.int64(-1)) == 8.0  # negative indices count from the end, as in NumPy


def test_calls_from_threads_are_independent():
    x = np.arange(5.0)
    pick(x, np.int64(0))
    errors: list[BaseException] = []

    def work(k):
        try:
            for _ in range(200):
                if k % 2:
                    with pytest.raises(lantern.OutOfBoundsError):
                        pick(x, np.int64(7))
                else:
                    assert pick(x, np.int64(k % 5)) == 2.0 * (k % 5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("via", ["staged", "flatten"])
def test_results_are_freed_without_the_cycle_collector(via):
    """Results and arguments are not held in reference cycles (large outputs would pile up until gc runs)."""
    import gc
    import weakref

    from lantern.tree import flatten, unflatten

    @lantern.stage
    def pair(p, x):
        return {"w": p["w"] * x, "b": p["b"] + x}, x.sum()

    p = {"w": np.ones(3, np.float32), "b": np.zeros(3, np.float32)}
    x = np.ones(3, np.float32)
    gc.disable()
    try:
        if via == "staged":
            out = pair(p, x)
            refs = [weakref.ref(out[0]["w"]), weakref.ref(out[0]["b"])]
        else:
            leaves, td = flatten(p)
            out = unflatten(td, [leaf.copy() for leaf in leaves])
            refs = [weakref.ref(a) for a in out.values()]
            del leaves
        del out
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


# ------------------------------------------------------------------ signatures as Python has them (issue 13)

def test_keyword_only_varargs_and_varkw_parameters():
    @lantern.stage
    def scaled(x, *, k=2.0):
        return x * k

    x = np.arange(3.0)
    np.testing.assert_array_equal(scaled(x), x * 2.0)
    np.testing.assert_array_equal(scaled(x, k=3.0), x * 3.0)
    np.testing.assert_array_equal(scaled.lower(x, k=5.0)(x, k=5.0), x * 5.0)
    with pytest.raises(lantern.ArgumentError, match="positional argument"):
        scaled(x, 3.0)

    @lantern.stage
    def total(*xs):
        return sum(v.sum() for v in xs)

    assert float(total(x, np.ones(2))) == 5.0
    assert float(total(x)) == 3.0

    @lantern.stage
    def options(x, **opts):
        return x * opts["scale"] + opts.get("shift", 0.0)

    np.testing.assert_array_equal(options(x, scale=4.0), x * 4.0)
    np.testing.assert_array_equal(options(x, scale=4.0, shift=1.0), x * 4.0 + 1.0)

    @lantern.stage
    def outer(v):  # a staged function calling one with keyword-only parameters
        return scaled(v, k=3.0) + scaled(v)
    np.testing.assert_array_equal(outer(x), x * 5.0)


def test_grad_with_keyword_only_parameters():
    g = lantern.grad(lambda x, *, k: (x ** 2 * k).sum())(np.ones(2), k=3.0)
    np.testing.assert_array_equal(g, [6.0, 6.0])


def test_grad_with_respect_to_python_floats():
    """As in JAX: a differentiated Python float is a variable (a float64 scalar), not a constant."""
    assert float(lantern.grad(lambda x: x ** 2)(3.0)) == 6.0
    g = lantern.grad(lambda p: p["a"] ** 3 + lantern.sum(p["w"]) * p["a"])({"a": 2.0, "w": np.ones(3)})
    assert float(g["a"]) == 15.0
    np.testing.assert_array_equal(g["w"], [2.0, 2.0, 2.0])
    value, (gx, gk) = lantern.value_and_grad(lambda x, k: x * k, argnums=(0, 1))(2.0, 5.0)
    assert (float(value), float(gx), float(gk)) == (10.0, 5.0, 2.0)
    # not differentiated: still a compile-time constant
    assert float(lantern.grad(lambda x, k: x * k)(2.0, 5.0)) == 5.0


# ---------------------------------------------------------------- the per-signature dispatcher

def test_the_dispatcher_serves_repeated_calls_without_the_general_path(rng, monkeypatch):
    """A second call with arguments of the same kind runs through the executable's dispatcher: the general
    path (key, lookup, checks) is not taken; arguments of another kind still are, with the same results."""
    from lantern import staging
    f = lantern.stage(lambda p, xs: ({"y": xs[0] @ p["w"] + p["b"], "n": None}, xs[1] * 2.0))
    params = _params(rng)
    xs = (rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32))
    first = f(params, xs)
    taken = []
    real = staging._fast_key
    monkeypatch.setattr(staging, "_fast_key", lambda *a: taken.append(1) or real(*a))
    again = f(params, xs)
    assert not taken
    np.testing.assert_array_equal(again[0]["y"], first[0]["y"])
    assert again[0]["n"] is None and list(again[0]) == list(first[0])
    assert f({"b": params["b"], "w": params["w"]}, xs)[1].shape == (2,) and not taken  # (keys in any order)
    assert staging._make_dispatcher(next(iter(f._fast.values())))({"w": 1, "c": 2}, xs) is staging._MISS
    others = [
        (params, [xs[0], xs[1]]),                                        # a list for the tuple
        (params, (np.asfortranarray(xs[0]), xs[1])),                     # not C-contiguous
        (params, (xs[0].astype(np.float64), xs[1])),                     # another dtype
        (params, (xs[0][:2], xs[1])),                                    # another shape
    ]
    read_only = xs[0].copy()
    read_only.flags.writeable = False
    others.append((params, (read_only, xs[1])))                          # not writeable: checked, then run
    for p, x in others:
        taken.clear()
        got = f(p, x)
        assert taken, (p, x)
        np.testing.assert_allclose(got[0]["y"], np.asarray(x[0], np.float64) @ p["w"] + p["b"], rtol=1e-5)
        np.testing.assert_array_equal(got[1], x[1] * 2.0)


def test_the_dispatcher_of_an_executable_and_errors_raised_in_c(rng):
    exe = pick.lower(rng.standard_normal(5), 2)  # a constant argument: no dispatcher
    assert exe.dispatcher() is None
    g = lantern.stage(lambda x, i: x[i])
    x, i = np.arange(5.0), np.array(1)
    exe = g.lower(x, i)
    assert exe.dispatcher() is not None
    assert exe(x, i) == 1.0 and g(x, i) == 1.0 and g(x, i) == 1.0
    for call in (lambda: exe(x, np.array(9)), lambda: g(x, np.array(9))):  # the error comes through it
        with pytest.raises(lantern.OutOfBoundsError, match="out of bounds"):
            call()


def test_results_nested_deeper_than_pythons_parser_allows():
    def deep(x):
        out = x
        for _ in range(250):
            out = (out,)
        return out

    got = lantern.stage(deep)(np.ones(2))
    for _ in range(250):
        assert type(got) is tuple and len(got) == 1
        got = got[0]
    np.testing.assert_array_equal(got, np.ones(2))


def test_a_recompiled_twin_runs_its_own_build(rng):
    from lantern.fuzz import flags
    f = lantern.stage(lambda x: x * 2.0)
    x = rng.standard_normal(3)
    exe = f.lower(x)
    exe(x)  # (its dispatcher is made)
    twin = flags.unoptimized(exe)
    if twin is None:
        pytest.skip("the build is already -O0")
    np.testing.assert_array_equal(twin(x), x * 2.0)
    assert twin._dispatcher is not exe._dispatcher  # made again, around the -O0 build's entry point
