"""The memory plan (issue 16): buffers freed after their last use, results computed in a dying operand's
buffer, adjoint buffers made where first needed; the arena's runtime holes; the plan checked by running it."""
import numpy as np
import pytest

import lantern
from lantern import ops
from lantern.codegen.lowering import lower_module
from lantern.codegen.memory_plan import Buffers, MemoryPlan, PlanViolation, check_plan_by_running
from lantern.ir.interpret import interpret
from lantern.ir.nodes import Var, walk_stmts
from lantern.ir.types import TensorType
from lantern.tree import flatten


def _mlp_grad(memory_plan: bool, layers: int = 8):
    def loss(ws, x):
        h = x
        for w in ws:
            h = ops.tanh(h @ w)
        return ops.sum(ops.softmax(h, axis=-1) * h)

    return lantern.stage(lambda ws, x: lantern.value_and_grad(loss)(ws, x), memory_plan=memory_plan,
                         name=f"mlp_grad_{int(memory_plan)}")


def _mlp_inputs(layers: int = 8):
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((96, 96)).astype(np.float32) * 0.1 for _ in range(layers)]
    return ws, rng.standard_normal((64, 96)).astype(np.float32)


def _arena_high(f, *args) -> int:
    f(*args)  # (compile)
    exe = f.lower(*args)
    exe.native.arena_high_water(reset=True)
    f(*args)
    return exe.native.arena_high_water()


def test_results_are_identical_with_the_plan_on_and_off():
    ws, x = _mlp_inputs()
    on, off = _mlp_grad(True)(ws, x), _mlp_grad(False)(ws, x)
    for a, b in zip(flatten(on)[0], flatten(off)[0]):
        np.testing.assert_array_equal(a, b)


def test_the_plan_lowers_the_arenas_peak():
    """Without the plan every forward value, every adjoint and every backward temporary lives until the
    call returns; with it the forward values the backward part does not read die early, adjoints are
    made in the backward part, and each backward temporary reuses memory."""
    ws, x = _mlp_inputs()
    on, off = _arena_high(_mlp_grad(True), ws, x), _arena_high(_mlp_grad(False), ws, x)
    layer = 64 * 96 * 4
    assert off >= 3 * 8 * layer  # (at least a forward value, its tanh and an adjoint per layer)
    assert on <= 0.55 * off, (on, off)


def test_the_c_frees_after_last_use_and_computes_in_place():
    ws, x = _mlp_inputs(2)
    exe = _mlp_grad(True).lower(ws, x)
    assert "lt_free(" in exe.c_source
    assert "in the buffer of" in exe.c_source  # a result computed where a dying operand was
    off = _mlp_grad(False).lower(ws, x)
    assert "lt_free(" not in off.c_source and "in the buffer of" not in off.c_source


def test_the_plan_prints_lifetimes_and_a_peak():
    ws, x = _mlp_inputs(2)
    text = _mlp_grad(True).lower(ws, x).memory_plan
    assert text.startswith("@")
    assert "peak: " in text and " B, made at " in text and "dies after" in text
    peak = int(text.split("peak: ")[1].split(" B")[0])
    sizes = [int(line.split(" B, made")[0].split()[-1]) for line in text.splitlines() if " B, made at " in line]
    assert max(sizes) <= peak < sum(sizes)  # some buffers die before others are made


def test_adjoint_buffers_are_made_where_first_needed():
    """AD emits each zero-filled adjoint beside its forward value; the plan's pass moves it down to the first
    statement that adds to it, so no adjoint exists during the forward part."""
    ws, x = _mlp_inputs(3)
    module = _mlp_grad(True).lower(ws, x).module
    stmts = list(walk_stmts(module.entry_function.body))
    first_fill = min(i for i, s in enumerate(stmts) if getattr(s, "prim", "") == "fill" and s.outs[0].type.shape)
    last_tanh = max(i for i, s in enumerate(stmts) if getattr(s, "prim", "") == "tanh")  # (in fused bodies too)
    assert first_fill > last_tanh


def _control_flow_grad():
    def loss(w, x, n):
        def body(i, h):
            return lantern.cond(ops.sum(h) > 0, lambda: ops.tanh(h @ w), lambda: ops.sigmoid(h @ w) * 2.0)
        h = lantern.fori_loop(0, n, body, x)
        return ops.sum(ops.softmax(h, axis=0) * h)
    return lambda w, x, n: lantern.value_and_grad(loss)(w, x, n)


@pytest.mark.parametrize("memory_plan", [True, False])
def test_control_flow_and_continuations_match_the_interpreter(memory_plan):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 16)) * 0.3
    x = rng.standard_normal((4, 16))
    n = np.array(5)
    f = lantern.stage(_control_flow_grad(), memory_plan=memory_plan)
    exe = f.lower(w, x, n)
    got = flatten(f(w, x, n))[0]
    want = interpret(exe.module, [w, x, n])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_running_the_plan_reads_no_freed_value():
    """The checker: the interpreter with each value erased where the plan frees it (continuations see their
    frame as it is when they run), on a program with a loop, a branch and the CPS continuations AD makes."""
    rng = np.random.default_rng(2)
    args = [rng.standard_normal((16, 16)) * 0.3, rng.standard_normal((4, 16)), np.array(4)]
    module = lantern.stage(_control_flow_grad()).lower(*args).module
    plan = lower_module(module).memory
    assert plan is not None and plan.dies_after
    for a, b in zip(check_plan_by_running(module, plan, args), interpret(module, args)):
        np.testing.assert_array_equal(a, b)


def test_the_checker_catches_a_value_freed_too_early():
    rng = np.random.default_rng(3)
    args = [rng.standard_normal((16, 16)) * 0.3, rng.standard_normal((4, 16)), np.array(4)]
    module = lantern.stage(_control_flow_grad()).lower(*args).module
    plan = lower_module(module).memory
    assert plan is not None
    early = MemoryPlan({id(s): list(s.outs) for s in walk_stmts(module.entry_function.body)},
                       plan.results_of, {})
    with pytest.raises(PlanViolation, match="after the memory plan freed it"):
        check_plan_by_running(module, early, args)


def test_buffers_free_a_buffer_once_it_and_its_views_are_dead():
    t = TensorType((4,), "float32")
    a, view, b, c = Var(t, "a"), Var(t, "view"), Var(t, "b"), Var(t, "c")
    buffers = Buffers()
    buffers.make(a, "A")
    buffers.view(view, a)
    assert buffers.dead(a) is None  # the view still reads it
    assert buffers.take(b, view) is None  # a view's buffer is not taken
    assert buffers.dead(view) == "A"
    buffers.make(b, "B")
    assert buffers.take(c, b) == "B" and buffers.dead(b) is None and buffers.dead(c) == "B"


_ARENA_PROBE = r"""
#include "lantern_runtime.h"

/* Random allocations, frees and nested marks; every live block holds its own byte pattern, checked before
   each step (two live blocks sharing memory would break one), and the arena's count of bytes in use must
   equal the live blocks' (rounded) sizes. Returns 0, or the step that failed. */
typedef struct { unsigned char *p; size_t n; int depth; unsigned char tag; } block_t;

static uint64_t state = 88172645463325252ull;
static uint64_t next(void) { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state; }

int lantern_entry(void *steps_)
{
    int64_t steps = *(const int64_t *)steps_;
    block_t live[64];
    int nlive = 0, depth = 0, leaked = 0;
    lt_mark_t marks[8];
    lt_mark_t outer = lt_mark();
    for (int64_t step = 1; step <= steps; step++) {
        size_t expected = 0;
        for (int k = 0; k < nlive; k++) {
            for (size_t j = 0; j < live[k].n; j++)
                if (live[k].p[j] != live[k].tag)
                    return (int)step;
            expected += (live[k].n + 63) & ~(size_t)63;
        }
        if (leaked ? lt_arena_in_use() < expected : lt_arena_in_use() != expected)
            return (int)step;
        uint64_t r = next() % 100;
        if (r < 45 && nlive < 64) {
            size_t n = 1 + next() % (next() % 4 == 0 ? 300000 : 3000);
            unsigned char *p = lt_alloc(n);
            unsigned char tag = (unsigned char)(step & 0xff);
            memset(p, tag, n);
            live[nlive++] = (block_t){ p, n, depth, tag };
        } else if (r < 85 && nlive > 0) {
            int k = (int)(next() % (uint64_t)nlive);
            if (live[k].depth == depth) { /* (a frame frees only what it made, as generated code does) */
                lt_free(live[k].p, live[k].n);
                live[k] = live[--nlive];
            }
        } else if (r < 93 && depth < 8) {
            marks[depth++] = lt_mark();
        } else if (depth > 0) {
            /* Generated code frees a frame's buffers before releasing its mark; an error unwinds without
               freeing (then a block an inner frame cut from a hole below the mark stays taken until an
               outer release: counted as in use from then on). */
            int unwinding = next() % 8 == 0;
            depth--;
            for (int k = 0; k < nlive;) {
                if (live[k].depth > depth) {
                    if (!unwinding)
                        lt_free(live[k].p, live[k].n);
                    live[k] = live[--nlive];
                } else {
                    k++;
                }
            }
            leaked |= unwinding;
            lt_release(marks[depth]);
        }
    }
    lt_release(outer);
    return lt_arena_in_use() == 0 && lt_nholes == 0 ? 0 : -1;
}

const void *lantern_process_init(unsigned long main_thread) { return lt_process_init(main_thread); }
"""


def test_arena_holes_never_overlap_live_blocks():
    """The runtime's side of the plan: freed blocks become holes that later allocations reuse (merged, cut,
    dropped when their mark is released) and no two live blocks share a byte."""
    import cffi

    from lantern.codegen import compiler
    artifact = compiler.compile_c(_ARENA_PROBE, "arena_probe", False)
    ffi = cffi.FFI()
    ffi.cdef("int lantern_entry(void *);")
    lib = ffi.dlopen(artifact.so_path)
    steps = np.array([20000], np.int64)
    assert lib.lantern_entry(ffi.from_buffer(steps)) == 0


# ------------------------------------------------------------------ recomputation after a continuation

def _two_attention_blocks(memory_plan: bool = True):
    @lantern.stage
    def attention(wq, wk, wv, x):  # a staged function called twice: one C function, run with a continuation
        q, k, v = x @ wq, x @ wk, x @ wv
        a = ops.softmax(q @ ops.transpose(k), axis=-1)  # [T, T]: large; q, k small
        return ops.tanh(a @ v) + x

    def loss(ws, x):
        h = attention(*ws[0], x)
        h = attention(*ws[1], h)
        return ops.sum(h * h)

    # (x's gradient too: both calls then need the same gradient version of the block, one function)
    return lantern.stage(lambda ws, x: lantern.grad(loss, argnums=(0, 1))(ws, x)[0], memory_plan=memory_plan)


def _attention_inputs(t: int = 512, d: int = 8):
    rng = np.random.default_rng(5)
    ws = [[rng.standard_normal((d, d)) * 0.5 for _ in range(3)] for _ in range(2)]
    return ws, rng.standard_normal((t, d))


@pytest.fixture
def shared_blocks(monkeypatch):
    """Blocks called twice stay functions however short (as a network's layers do)."""
    monkeypatch.setenv("LANTERN_INLINE_LIMIT", "1")


def test_attention_weights_are_recomputed_after_the_continuation(shared_blocks):
    """The [T, T] softmax of a block is not held while the later block runs: the backward part makes it
    again from q and k (which it reads anyway), and the forward one dies at its last forward use."""
    ws, x = _attention_inputs()
    exe = _two_attention_blocks().lower(ws, x)
    cps = [fn for name, fn in exe.module.functions.items() if name.startswith("attention")]
    assert cps, list(exe.module.functions)
    stmts = cps[0].body.stmts
    apply = next(i for i, s in enumerate(stmts) if type(s).__name__ == "Apply")
    softmaxes = [i for i, s in enumerate(stmts) if getattr(s, "prim", "") == "softmax"]
    assert len(softmaxes) == 2 and softmaxes[0] < apply < softmaxes[1], (softmaxes, apply)
    plan = exe.memory_plan
    forward = next(line for line in plan.splitlines() if "f64[512,512]" in line and "made at" in line)
    assert int(forward.split("dies after ")[1].split()[0]) < apply
    off = _two_attention_blocks(memory_plan=False).lower(ws, x).module
    assert sum(getattr(s, "prim", "") == "softmax" for fn in off.functions.values() for s in fn.body.stmts) == 1


def test_recomputed_gradients_match_finite_differences(shared_blocks):
    ws, x = _attention_inputs(t=512, d=4)
    grads = _two_attention_blocks()(ws, x)
    np.testing.assert_array_equal(flatten(grads)[0][0], flatten(_two_attention_blocks(False)(ws, x))[0][0])

    def loss_np(w):
        h = x
        for wq, wk, wv in w:
            q, k, v = h @ wq, h @ wk, h @ wv
            s = q @ k.T
            e = np.exp(s - s.max(-1, keepdims=True))
            h = np.tanh((e / e.sum(-1, keepdims=True)) @ v) + h
        return np.sum(h * h)

    eps = 1e-6
    for layer, which in [(0, 0), (0, 1), (1, 2)]:
        num = np.zeros_like(ws[layer][which])
        for i in np.ndindex(num.shape):
            plus = [[w.copy() for w in ws_l] for ws_l in ws]
            minus = [[w.copy() for w in ws_l] for ws_l in ws]
            plus[layer][which][i] += eps
            minus[layer][which][i] -= eps
            num[i] = (loss_np(plus) - loss_np(minus)) / (2 * eps)
        np.testing.assert_allclose(grads[layer][which], num, rtol=1e-5, atol=1e-6)


def test_products_that_do_not_expand_are_kept():
    """The policy recomputes a product only when its result is much larger than its operands (x @ W with a
    square W is as large as x: kept)."""
    from lantern.ir.nodes import Op
    from lantern.ir.passes.remat import cheap_to_recompute
    from lantern.ir.primitives import infer
    t = TensorType((1024, 256), "float32")
    x, w, y = Var(t, "x"), Var(TensorType((256, 256), "float32"), "w"), Var(t, "y")
    assert not cheap_to_recompute(Op([y], prim="matmul", args=[x, w], attrs={}))
    q, k = Var(TensorType((1024, 16), "float32"), "q"), Var(TensorType((1024, 16), "float32"), "k")
    s = Var(infer("matmul", [q.type, k.type], {"trans_b": True}), "s")
    assert cheap_to_recompute(Op([s], prim="matmul", args=[q, k], attrs={"trans_b": True}))


def test_the_plan_holds_on_the_gradient_fuzzers_programs():
    """The checker on generated programs (loops, branches, gathers, reductions, products, their gradients):
    no value is read after the plan frees it, and the results are the interpreter's, bit for bit."""
    from lantern import codegen
    from lantern.fuzz import grad_programs
    checked = 0
    for lo in range(0, 30, 5):
        programs = [grad_programs.generate(11, i) for i in range(lo, lo + 5)]
        args = grad_programs.arguments(programs)
        module = codegen.prepare(grad_programs.load_batch(programs).trace(*args))
        leaves = [np.asarray(a) for a in flatten(args)[0]]
        plan = lower_module(module).memory
        assert plan is not None
        for a, b in zip(check_plan_by_running(module, plan, leaves), interpret(module, leaves)):
            np.testing.assert_array_equal(a, b)
        checked += sum(len(v) for v in plan.dies_after.values())
    assert checked > 500


def test_a_recomputed_intermediate_is_made_before_its_first_reader(shared_blocks):
    """A deep elementwise chain: an intermediate recomputed for one value is read by the backward part before
    that value is; its copy goes before that first reader (found in review: the IR did not verify)."""
    @lantern.stage
    def block(x, y1, y2):
        e = x * 2.0 + 1.0
        a = (e - 1.0) * 4.0 + 5.0
        return (e * 3.0) * a * y1 + a * y2

    def loss(x, y1, y2):
        h = block(x, y1 * x, y2 * x)
        return ops.sum(block(h * 0.001, y1 * h, y2 * h))

    rng = np.random.default_rng(6)
    x, y1, y2 = (rng.standard_normal((512, 512)) for _ in range(3))
    on, off = (lantern.stage(lambda x, y1, y2: lantern.grad(loss)(x, y1, y2), memory_plan=plan)(x, y1, y2)
               for plan in (True, False))
    np.testing.assert_array_equal(on, off)
