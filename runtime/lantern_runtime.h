/*
 * lantern_runtime.h -- the runtime every generated C file includes.
 *
 * Header-only, so each compiled module is self-contained:
 *   - an arena allocator with stack discipline (lt_mark / lt_alloc / lt_release);
 *   - error reporting: kernels record the first error of a call (lt_record) and go on; the code
 *     around them checks after each kernel (lt_check_status) and unwinds to the entry point, as
 *     host code does directly for its own errors (lt_fail: memory, stack depth);
 *   - scalar helpers with NumPy semantics (NaN-propagating max/min, floor division,
 *     integer powers, saturating float-to-int casts);
 *   - BLAS (OpenBLAS from the scipy-openblas32 wheel) for large matrix products.
 */
#ifndef LANTERN_RUNTIME_H
#define LANTERN_RUNTIME_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pthread_getattr_np: the bounds of this thread's stack */
#endif
#include <pthread.h>

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * A large module is compiled as several translation units, in parallel (codegen/units.py): each
 * defines LANTERN_UNIT (0 for the unit with the entry point) before including this header. The
 * per-thread state below (error status, unwinding, arena, stack bounds) then exists once, in unit 0,
 * and the module's functions are hidden (not exported) rather than static. A module of one unit
 * keeps everything static.
 */
#define LT_HIDDEN __attribute__((visibility("hidden")))
#if !defined(LANTERN_UNIT)
#define LT_SHARED static
#define LT_INITIAL(...) = __VA_ARGS__
#elif LANTERN_UNIT == 0
#define LT_SHARED LT_HIDDEN
#define LT_INITIAL(...) = __VA_ARGS__
#else
#define LT_SHARED extern LT_HIDDEN
#define LT_INITIAL(...)
#endif

#include "lantern_process.h"

#ifdef LANTERN_USE_BLAS
#include <cblas.h> /* scipy-openblas32 prefixes its symbols with scipy_ */
#define lt_cblas_sgemm scipy_cblas_sgemm
#define lt_cblas_dgemm scipy_cblas_dgemm
#endif

typedef uint8_t lt_bool;

/* ------------------------------------------------------------------ errors */

enum { LT_OK = 0, LT_ERR_INDEX = 1, LT_ERR_MEMORY = 2, LT_ERR_STACK = 3, LT_ERR_NONFINITE = 4, LT_ERR_INTERRUPT = 5 };

LT_SHARED _Thread_local jmp_buf lt_unwind;
LT_SHARED _Thread_local char lt_error_text[1024];
/* The first error a kernel recorded in this call (LT_OK: none); lantern_entry clears it. */
LT_SHARED _Thread_local int lt_status;

/* A kernel's error: the first one of the call is kept (its message too), and the kernel goes on. */
__attribute__((format(printf, 2, 3), cold))
static inline void lt_record(int code, const char *fmt, ...)
{
    if (lt_status)
        return;
    lt_status = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lt_error_text, sizeof lt_error_text, fmt, ap);
    va_end(ap);
}

/* After a kernel that may record an error: unwind to the entry point (which releases the arena). */
static inline void lt_check_status(void)
{
    if (__builtin_expect(lt_status != LT_OK, 0))
        longjmp(lt_unwind, lt_status);
}

/* An error of host code (not of a kernel): record it and unwind at once. */
__attribute__((noreturn, format(printf, 2, 3), cold))
static inline void lt_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lt_error_text, sizeof lt_error_text, fmt, ap);
    va_end(ap);
    longjmp(lt_unwind, code);
}

/* lt_index without recording: -1 for an index out of range (a gather on several threads notes where and
   records the first one after its loop, on the calling thread). */
static inline int64_t lt_index_quiet(int64_t i, int64_t n)
{
    if (i < 0)
        i += n;
    return i < 0 || i >= n ? -1 : i;
}

/* Check a staged index against an axis of size n; negative indices wrap like NumPy. Out of range:
   the error is recorded and -1 returned (the kernel skips that element). */
static inline int64_t lt_index(int64_t i, int64_t n, const char *where)
{
    int64_t row = lt_index_quiet(i, n);
    if (row < 0)
        lt_record(LT_ERR_INDEX, "%s: index %lld is out of bounds for an axis of size %lld", where, (long long)i,
                  (long long)n);
    return row;
}

/* A staged index without the check (stage(check_indices=False)): negative indices still wrap. */
static inline int64_t lt_wrap(int64_t i, int64_t n) { return i < 0 ? i + n : i; }

/* ------------------------------------------------------------------ threads */

/*
 * Loops whose iterations are independent and that have enough work run on lt_num_threads threads
 * (OpenMP, when the module is compiled with it). The schedule is static and each iteration computes
 * exactly what it computes on one thread, so results are bitwise the same for any thread count. Their
 * bodies touch no per-thread state: codegen/cbuilder.py keeps a loop that may record an error,
 * allocate or call a function on the calling thread. codegen/loader.py sets the count when it loads
 * the module (lantern_set_num_threads: LANTERN_NUM_THREADS, else the cores, as OpenBLAS gets; 1 in a
 * process forked after OpenMP ran); until then, and in a module nobody set, loops run on one thread.
 */
/*
 * LT_IVDEP before a loop: its iterations are independent (codegen/cbuilder.py marks the loops whose
 * buffers never partly overlap), so the compiler vectorizes it without a run-time overlap test.
 */
#if defined(__clang__)
#define LT_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define LT_IVDEP _Pragma("GCC ivdep")
#else
#define LT_IVDEP
#endif

#ifndef _OPENMP
/* (-fopenmp-simd alone still compiles the simd part of a `parallel for simd`, and reads its clauses) */
#define lt_num_threads 1
#endif
#ifdef _OPENMP
#include <omp.h>
LT_SHARED int lt_num_threads LT_INITIAL(1);
#if !defined(LANTERN_UNIT) || LANTERN_UNIT == 0
static void lt_threads_after_fork(void);

__attribute__((constructor)) static void lt_init_threads(void)
{
    pthread_atfork(NULL, NULL, lt_threads_after_fork);
}

__attribute__((visibility("default"))) void lantern_set_num_threads(int n)
{
    lt_num_threads = n > 0 ? n : 1;
    /* (a call into the OpenMP runtime, so that every module compiled with OpenMP links it, even one with no
     * threaded loop: the first module a process loads is kept loaded (codegen/process.py), and with it the
     * runtime, whose pool's threads outlive every module. Unloaded with the last module that linked it, it
     * crashed the process as its threads spun in its code.) */
    (void)omp_get_max_threads();
}
#endif
#if defined(LANTERN_USE_BLAS) && (!defined(LANTERN_UNIT) || LANTERN_UNIT == 0)
/*
 * One pool of threads for BLAS and the loops. OpenBLAS's own threads spin for a while after each
 * product, and OpenMP's after each loop: on the same cores the two pools starved each other (training
 * steps 6-11x slower, benchmarks/RESULTS.md). So the first module of a process that has both hands
 * OpenBLAS this callback (codegen/loader.py calls lantern_share_blas_threads once), and OpenBLAS runs
 * the parts of a threaded product on the OpenMP threads; its own threads stay asleep.
 *
 * The parts of one product wait for each other, so each must run on a thread of its own. An OpenMP team
 * may be smaller than asked (inside another parallel region, OMP_DYNAMIC, OMP_THREAD_LIMIT): then the
 * parts run on threads started for this product instead (rare, and slower, but never a deadlock).
 */
typedef struct { openblas_dojob_callback dojob; int part; void *job; int data; } lt_blas_part_t;

static void *lt_blas_part(void *arg)
{
    lt_blas_part_t *p = arg;
    p->dojob(p->part, p->job, p->data);
    return NULL;
}

static void lt_blas_parts_on_new_threads(openblas_dojob_callback dojob, int numjobs, size_t size, void *jobs,
                                         int data)
{
    pthread_t *threads = malloc(sizeof(pthread_t) * (size_t)numjobs);
    lt_blas_part_t *parts = malloc(sizeof(lt_blas_part_t) * (size_t)numjobs);
    if (!threads || !parts) {
        fprintf(stderr, "lantern: no memory to run a BLAS product's %d parts\n", numjobs);
        abort(); /* (the parts wait for each other: none can run alone; OpenBLAS exits likewise) */
    }
    for (int i = 0; i < numjobs; i++) {
        parts[i] = (lt_blas_part_t){ dojob, i, (char *)jobs + (size_t)i * size, data };
        if (i > 0 && pthread_create(&threads[i], NULL, lt_blas_part, &parts[i]) != 0) {
            fprintf(stderr, "lantern: could not start a thread for part %d of a BLAS product\n", i);
            abort();
        }
    }
    lt_blas_part(&parts[0]);
    for (int i = 1; i < numjobs; i++)
        pthread_join(threads[i], NULL);
    free(threads);
    free(parts);
}

__attribute__((visibility("default")))
void lantern_blas_threads(int sync, openblas_dojob_callback dojob, int numjobs, size_t size, void *jobs, int data)
{
    (void)sync; /* OpenBLAS waits for every part: the region's end is that wait */
    if (omp_in_parallel() || omp_get_dynamic() || numjobs > omp_get_thread_limit()) {
        lt_blas_parts_on_new_threads(dojob, numjobs, size, jobs, data);
        return;
    }
    #pragma omp parallel for schedule(static, 1) num_threads(numjobs)
    for (int i = 0; i < numjobs; i++)
        dojob(i, (char *)jobs + (size_t)i * size, data);
}

static int lt_blas_shared;

__attribute__((visibility("default")))
void lantern_share_blas_threads(void)
{
    scipy_openblas_set_threads_callback_function(lantern_blas_threads);
    lt_blas_shared = 1;
}
#endif
#if !defined(LANTERN_UNIT) || LANTERN_UNIT == 0
/* GNU OpenMP's threads do not survive fork(): a child that started a team of several would wait for
   them for ever. So in a forked child the modules loaded before the fork run their loops on one thread
   (the loader gives modules loaded later one thread too), and OpenBLAS its products on its own threads
   (which it starts again after a fork). */
static void lt_threads_after_fork(void)
{
    lt_num_threads = 1;
#ifdef LANTERN_USE_BLAS
    if (lt_blas_shared)
        scipy_openblas_set_threads_callback_function(NULL);
#endif
}
#endif
#endif

/* ------------------------------------------------------------------ non-finite values */

/* stage(check_finite=True): `where` names the op and the user's line (recorded; see lt_record). */
__attribute__((cold))
static inline void lt_nonfinite(const char *where, double value, int64_t at)
{
    lt_record(LT_ERR_NONFINITE, "%s from %s (first at flat index %lld)",
              value != value ? "nan" : value > 0 ? "inf" : "-inf", where, (long long)at);
}

#define LT_DEFINE_CHECK_FINITE(F, SUF)                                                  \
    static inline void lt_check_finite_##SUF(const F *x, int64_t n, const char *where)  \
    {                                                                                   \
        for (int64_t i = 0; i < n; i++)                                                 \
            if (!isfinite(x[i])) {                                                      \
                lt_nonfinite(where, (double)x[i], i);                                   \
                return;                                                                 \
            }                                                                           \
    }
LT_DEFINE_CHECK_FINITE(float, f32)
LT_DEFINE_CHECK_FINITE(double, f64)

/* ------------------------------------------------------------------ stack depth, Ctrl-C */

/*
 * Recursive staged functions (and continuations: each iteration of a loop under grad) recurse
 * in C. Rather than let a very deep tree overflow the stack (a segfault), each checks that at
 * least LT_STACK_RESERVE bytes of the stack it runs on remain, and fails cleanly otherwise.
 * Modules with recursion run on lantern's own stack (lantern_process.h), else on the thread's.
 */
#define LT_STACK_RESERVE ((uintptr_t)256 * 1024)
LT_SHARED _Thread_local uintptr_t lt_stack_floor;  /* 0: unknown, no check */
LT_SHARED _Thread_local uintptr_t lt_stack_watch;  /* lt_stack_check's bound: the floor, or higher (below) */
LT_SHARED _Thread_local uintptr_t lt_stack_high;
LT_SHARED _Thread_local int lt_stack_own;          /* on lantern's own stack (else the thread's) */
LT_SHARED _Thread_local int lt_stack_went_deep;    /* this call went below the own stack's kept top part */
LT_SHARED _Thread_local uintptr_t lt_thread_stack[2]; /* this thread's stack, found once (slow for the main one) */

/* The stack this call runs on: [low, high), or both 0 for the thread's own. */
static inline void lt_stack_set(uintptr_t low, uintptr_t high)
{
    lt_stack_own = low != 0;
    lt_stack_went_deep = 0;
    if (!low) {
        if (!lt_thread_stack[1]) {
            pthread_attr_t attr;
            void *start = NULL;
            size_t size = 0;
            lt_thread_stack[1] = 1;
            if (pthread_getattr_np(pthread_self(), &attr) == 0) {
                if (pthread_attr_getstack(&attr, &start, &size) == 0 && start) {
                    lt_thread_stack[0] = (uintptr_t)start;
                    lt_thread_stack[1] = (uintptr_t)start + size;
                }
                pthread_attr_destroy(&attr);
            }
        }
        low = lt_thread_stack[0];
        high = lt_thread_stack[1];
    }
    lt_stack_floor = low ? low + LT_STACK_RESERVE : 0;
    lt_stack_high = high;
    /* On the own stack, first notice passing its kept top part (so the pages below are given back). */
    lt_stack_watch = lt_stack_own && high - LT_OWN_STACK_KEPT > lt_stack_floor ? high - LT_OWN_STACK_KEPT
                                                                               : lt_stack_floor;
}

__attribute__((noreturn, cold, noinline))
static void lt_stack_exhausted(const char *function, uintptr_t at)
{
    double used = (double)(lt_stack_high - at) / (1024.0 * 1024.0);
    if (lt_stack_own)
        lt_fail(LT_ERR_STACK, "%s: recursion too deep: all %.0f MiB of lantern's stack used (each level of a "
                "recursion, and each iteration of a loop under grad, holds a frame); set LANTERN_STACK_SIZE=%.0fG "
                "or more to go deeper, as memory allows (a cycle in child indices also ends here)", function, used,
                used < 1024.0 ? 4.0 : 4.0 * used / 1024.0);
    lt_fail(LT_ERR_STACK, "%s: recursion too deep for the C stack (%.0f MiB used: the tree or call chain is "
            "deeper than this thread's stack allows; a cycle in child indices also ends here)", function, used);
}

__attribute__((cold, noinline))
static void lt_stack_passed_watch(const char *function, uintptr_t at)
{
    if (at < lt_stack_floor)
        lt_stack_exhausted(function, at);
    lt_stack_went_deep = 1;
    lt_stack_watch = lt_stack_floor;
}

static inline void lt_stack_check(const char *function)
{
    char probe;
    if (__builtin_expect((uintptr_t)&probe < lt_stack_watch, 0))
        lt_stack_passed_watch(function, (uintptr_t)&probe);
}

/*
 * Ctrl-C (see lantern_process.h): loop iterations and recursive calls poll a flag the SIGINT
 * handler sets, one load and a branch not taken; set, the main thread's call unwinds.
 */
LT_SHARED volatile sig_atomic_t lt_no_interrupt;
LT_SHARED volatile sig_atomic_t *lt_interrupt_flag LT_INITIAL(&lt_no_interrupt);
LT_SHARED const lt_process_t *lt_process; /* NULL until the module is given the process table */

__attribute__((cold, noinline, unused))
static void lt_interrupted(void)
{
    if (lt_process && lt_process->on_main_thread())
        lt_fail(LT_ERR_INTERRUPT, "interrupted (SIGINT)");
}

static inline void lt_poll_interrupt(void)
{
    if (__builtin_expect(*lt_interrupt_flag != 0, 0))
        lt_interrupted();
}

/* lantern_entry: `body` on lantern's own stack if the module recurses (`deep`), else on this one. */
static inline int lt_run_entry(lt_entry_body body, void **arg, int deep)
{
    int code;
#ifdef __SANITIZE_ADDRESS__
    deep = 0; /* AddressSanitizer keeps shadow memory per stack: stay on the thread's */
#endif
    if (!lt_process)
        return body(arg, 0, 0);
    lt_process->enter();
    code = deep ? lt_process->run_deep(body, arg) : body(arg, 0, 0);
    if (lt_stack_went_deep) {
        lt_stack_went_deep = 0;
        lt_process->trim();
    }
    lt_process->leave();
    return code;
}

/*
 * stage(max_depth=N) / LANTERN_MAX_DEPTH=N: recursive staged functions count their depth
 * (reset by each call of the entry point) and fail beyond N, whatever the stack allows.
 */
LT_SHARED _Thread_local int64_t lt_depth;

static inline void lt_depth_enter(int64_t limit, const char *function)
{
    if (++lt_depth > limit)
        lt_fail(LT_ERR_STACK, "%s: recursion depth %lld exceeds the limit max_depth=%lld (set by "
                "lantern.stage(max_depth=...) or LANTERN_MAX_DEPTH; a cycle in child indices also ends here)",
                function, (long long)lt_depth, (long long)limit);
}

/* ------------------------------------------------------------------ arena */

/*
 * Intermediates live in a chain of chunks. A mark is (chunk, offset); releasing a mark
 * frees everything allocated after it in O(1). Chunks are kept for reuse, so a function
 * called in a loop allocates from the system only on its first call.
 *
 * The memory plan (codegen/lowering.py) also frees each buffer after its last use (lt_free):
 * a buffer on top of the stack shrinks it; one below becomes a hole, merged with neighbouring
 * holes, that lt_alloc reuses (the smallest that fits). Releasing a mark drops the holes above
 * it. A hole that does not fit the table is only reclaimed by its mark's release.
 */
typedef struct lt_chunk {
    struct lt_chunk *next;
    size_t size, used;
    size_t order; /* position in the chain: which of two chunks lies above the other */
    _Alignas(64) unsigned char data[];
} lt_chunk;

typedef struct {
    lt_chunk *chunk;
    size_t used;
    size_t below; /* bytes used in the chunks before `chunk` (for the high-water mark) */
} lt_mark_t;

typedef struct {
    lt_chunk *chunk;
    size_t at, n; /* bytes [at, at + n) of chunk->data */
} lt_hole;

#define LT_MAX_HOLES 64

LT_SHARED _Thread_local lt_chunk *lt_arena_first, *lt_arena_current;
LT_SHARED _Thread_local size_t lt_arena_below, lt_arena_high;
LT_SHARED _Thread_local lt_hole lt_holes[LT_MAX_HOLES];
LT_SHARED _Thread_local int lt_nholes;
/* The user's line of an allocation of 1 GiB or more (lt_alloc_at), for the out-of-memory message. */
LT_SHARED _Thread_local const char *lt_alloc_site;

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
/* Sanitized builds poison what is not allocated, so a read of a freed buffer is reported where it happens. */
#define LT_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define LT_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define LT_POISON(p, n) ((void)(p), (void)(n))
#define LT_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

static inline lt_mark_t lt_mark(void)
{
    lt_mark_t m = { lt_arena_current, lt_arena_current ? lt_arena_current->used : 0, lt_arena_below };
    return m;
}

/* Whether byte `at` of chunk `c` lies at or above the mark (chunk, used) `m`. */
static inline int lt_above(const lt_chunk *c, size_t at, lt_mark_t m)
{
    return !m.chunk || (c == m.chunk ? at >= m.used : c->order > m.chunk->order);
}

static void lt_drop_holes(lt_mark_t m)
{
    for (int k = 0; k < lt_nholes;) {
        lt_hole *h = &lt_holes[k];
        if (lt_above(h->chunk, h->at, m)) {
            *h = lt_holes[--lt_nholes];
            continue;
        }
        if (h->chunk == m.chunk && h->at + h->n > m.used)
            h->n = m.used - h->at; /* (a hole never spans a mark; kept exact anyway) */
        k++;
    }
}

static inline void lt_release(lt_mark_t m)
{
#if defined(__SANITIZE_ADDRESS__)
    for (lt_chunk *c = m.chunk ? m.chunk : lt_arena_first; c; c = c->next) {
        size_t from = c == m.chunk ? m.used : 0;
        LT_POISON(c->data + from, c->size - from);
        if (c == lt_arena_current)
            break;
    }
#endif
    if (lt_nholes)
        lt_drop_holes(m);
    lt_arena_current = m.chunk ? m.chunk : lt_arena_first;
    if (lt_arena_current)
        lt_arena_current->used = m.chunk ? m.used : 0;
    lt_arena_below = m.below;
}

__attribute__((cold)) static inline void *lt_alloc_slow(size_t n)
{
    lt_chunk *c = lt_arena_current ? lt_arena_current->next : lt_arena_first;
    while (c && c->size < n) /* skip reusable chunks that are too small */
        c = c->next;
    if (!c) {
        size_t last = lt_arena_current ? lt_arena_current->size : 0;
        size_t size = n > 2 * last ? n : 2 * last;
        if (size < ((size_t)1 << 20))
            size = (size_t)1 << 20;
        c = aligned_alloc(64, (sizeof(lt_chunk) + size + 63) & ~(size_t)63);
        if (!c)
            lt_fail(LT_ERR_MEMORY, "out of memory allocating %zu bytes for intermediates%s%s", n,
                    lt_alloc_site ? " of " : "", lt_alloc_site ? lt_alloc_site : "");
        c->size = size;
        LT_POISON(c->data, size);
        if (lt_arena_current) {
            c->next = lt_arena_current->next;
            lt_arena_current->next = c;
        } else {
            c->next = lt_arena_first;
            lt_arena_first = c;
        }
        size_t order = 0; /* (a new chunk goes in the middle of the chain: number it again) */
        for (lt_chunk *d = lt_arena_first; d; d = d->next)
            d->order = order++;
    }
    for (lt_chunk *d = lt_arena_current ? lt_arena_current->next : lt_arena_first; d != c; d = d->next)
        d->used = 0; /* skipped: empty */
    lt_arena_below += lt_arena_current ? lt_arena_current->used : 0;
    c->used = n;
    lt_arena_current = c;
    if (lt_arena_below + n > lt_arena_high)
        lt_arena_high = lt_arena_below + n;
    LT_UNPOISON(c->data, n);
    return c->data;
}

/* Bytes of intermediates currently allocated (0 between calls: every call releases its mark). */
static inline size_t lt_arena_in_use(void)
{
    size_t total = 0;
    for (lt_chunk *c = lt_arena_first; c; c = c->next) {
        total += c->used;
        if (c == lt_arena_current)
            break;
    }
    for (int k = 0; k < lt_nholes; k++)
        total -= lt_holes[k].n;
    return lt_arena_current ? total : 0;
}

/* The smallest hole that holds n bytes, cut from its start; NULL if none does. */
static void *lt_take_hole(size_t n)
{
    int best = -1;
    for (int k = 0; k < lt_nholes; k++)
        if (lt_holes[k].n >= n && (best < 0 || lt_holes[k].n < lt_holes[best].n))
            best = k;
    if (best < 0)
        return NULL;
    lt_hole *h = &lt_holes[best];
    void *p = h->chunk->data + h->at;
    h->at += n;
    h->n -= n;
    if (!h->n)
        *h = lt_holes[--lt_nholes];
    return p;
}

/* n bytes, 64-byte aligned, valid until lt_free or the release of the enclosing mark. */
static inline void *lt_alloc(size_t n)
{
    size_t want = n;
    n = (n + 63) & ~(size_t)63;
    if (lt_nholes) {
        void *p = lt_take_hole(n);
        if (p) {
            LT_UNPOISON(p, want);
            return p;
        }
    }
    lt_chunk *c = lt_arena_current;
    if (c && c->used + n <= c->size) {
        void *p = c->data + c->used;
        c->used += n;
        if (lt_arena_below + c->used > lt_arena_high)
            lt_arena_high = lt_arena_below + c->used;
        LT_UNPOISON(p, want);
        return p;
    }
    return lt_alloc_slow(n);
}

/* A freed block below the top: a hole, merged with the holes next to it. */
static void lt_add_hole(unsigned char *p, size_t n)
{
    lt_chunk *c = lt_arena_first;
    while (c && !(p >= c->data && p < c->data + c->size))
        c = c->next;
    if (!c)
        return;
    size_t at = (size_t)(p - c->data);
    for (int k = 0; k < lt_nholes;) {
        lt_hole *h = &lt_holes[k];
        if (h->chunk == c && (h->at + h->n == at || at + n == h->at)) {
            at = h->at < at ? h->at : at;
            n += h->n;
            *h = lt_holes[--lt_nholes];
            continue;
        }
        k++;
    }
    if (lt_nholes < LT_MAX_HOLES)
        lt_holes[lt_nholes++] = (lt_hole){ c, at, n };
}

/* Free a buffer of n bytes that lt_alloc(n) returned (the memory plan: after its last use). */
static inline void lt_free(void *p, size_t n)
{
    n = (n + 63) & ~(size_t)63;
    LT_POISON(p, n);
    lt_chunk *c = lt_arena_current;
    if (c && (unsigned char *)p + n == c->data + c->used) { /* the top of the stack */
        c->used -= n;
        for (int k = 0; k < lt_nholes; k++) { /* a hole now on top goes with it */
            if (lt_holes[k].chunk == c && lt_holes[k].at + lt_holes[k].n == c->used) {
                c->used = lt_holes[k].at;
                lt_holes[k] = lt_holes[--lt_nholes];
                k = -1;
            }
        }
        return;
    }
    if (n)
        lt_add_hole(p, n);
}

/* lt_alloc for a value the generated code names (big ones: an out-of-memory report says which). */
static inline void *lt_alloc_at(size_t n, const char *site)
{
    lt_alloc_site = site;
    void *p = lt_alloc(n);
    lt_alloc_site = NULL;
    return p;
}

/* ------------------------------------------------------------------ scalar helpers */

/* NaN wins, as in NumPy. (`||` on these float/int comparisons, not bool bytes: written with `|`,
   gcc 12 made the LSTM benchmark's gradient clipping 1.5x slower.) */
#define LT_DEFINE_MINMAX(T, SUF)                                                        \
    static inline T lt_max_##SUF(T a, T b) { return (a > b || a != a) ? a : b; }        \
    static inline T lt_min_##SUF(T a, T b) { return (a < b || a != a) ? a : b; }
LT_DEFINE_MINMAX(float, f32)
LT_DEFINE_MINMAX(double, f64)
LT_DEFINE_MINMAX(int32_t, i32)
LT_DEFINE_MINMAX(int64_t, i64)

/* where(c, a, b) as a function, so both operands are read before the choice. gcc 12 if-converts
   `c[i] ? x[i] : 0.0` into an AVX-512 masked load that it miscompiles (wrong elements with a uint8
   mask and 512-bit vectors, -march=x86-64-v4 or native on AVX-512 machines); plain loads and a
   select vectorize correctly. Both operands are in bounds: they have the result's shape. */
#define LT_DEFINE_WHERE(T, SUF) \
    static inline T lt_where_##SUF(lt_bool c, T a, T b) { return c ? a : b; }
LT_DEFINE_WHERE(float, f32)
LT_DEFINE_WHERE(double, f64)
LT_DEFINE_WHERE(int32_t, i32)
LT_DEFINE_WHERE(int64_t, i64)
LT_DEFINE_WHERE(lt_bool, bool)

/* Python semantics for // and % on integers; division by zero gives 0, as NumPy does. */
#define LT_DEFINE_INTDIV(T, SUF)                                                        \
    static inline T lt_floordiv_##SUF(T a, T b)                                         \
    {                                                                                   \
        if (b == 0) return 0;                                                           \
        if (b == -1) return (T)(0 - (uint64_t)a);                                        \
        T q = a / b;                                                                    \
        return ((a % b != 0) & ((a < 0) != (b < 0))) ? q - 1 : q;                       \
    }                                                                                   \
    static inline T lt_mod_##SUF(T a, T b)                                              \
    {                                                                                   \
        if (b == 0 || b == -1) return 0;                                                \
        T r = a % b;                                                                    \
        return ((r != 0) & ((r < 0) != (b < 0))) ? r + b : r;                           \
    }                                                                                   \
    static inline T lt_ipow_##SUF(T a, T b)                                             \
    {                                                                                   \
        if (b < 0) return a == 1 ? 1 : a == -1 ? ((b & 1) ? -1 : 1) : 0;                \
        uint64_t r = 1, x = (uint64_t)a;                                                \
        for (; b; b >>= 1, x *= x)                                                      \
            if (b & 1) r *= x;                                                          \
        return (T)r;                                                                    \
    }
LT_DEFINE_INTDIV(int32_t, i32)
LT_DEFINE_INTDIV(int64_t, i64)

/* Python semantics for // and % on floats, computed exactly as NumPy does (npy_divmod):
 * 1.0 // 0.1 == 9.0, not floor(1.0 / 0.1) == 10.0; the remainder takes the divisor's sign. */
#define LT_DEFINE_FLOATDIV(F, SUF, FMOD, FLOOR, COPYSIGN)                               \
    static inline F lt_divmod_##SUF(F a, F b, F *modulus)                               \
    {                                                                                   \
        F mod = FMOD(a, b);                                                             \
        if (!b) {                                                                       \
            *modulus = mod;                                                             \
            return a / b;                                                               \
        }                                                                               \
        F div = (a - mod) / b;                                                          \
        if (mod) {                                                                      \
            if (isless(b, 0) != isless(mod, 0)) {                                       \
                mod += b;                                                               \
                div -= 1;                                                               \
            }                                                                           \
        } else {                                                                        \
            mod = COPYSIGN(0, b);                                                       \
        }                                                                               \
        F q;                                                                            \
        if (div) {                                                                      \
            q = FLOOR(div);                                                             \
            if (isgreater(div - q, (F)0.5))                                             \
                q += 1;                                                                 \
        } else {                                                                        \
            q = COPYSIGN(0, a / b);                                                     \
        }                                                                               \
        *modulus = mod;                                                                 \
        return q;                                                                       \
    }                                                                                   \
    static inline F lt_floordiv_##SUF(F a, F b) { F m; return lt_divmod_##SUF(a, b, &m); } \
    static inline F lt_mod_##SUF(F a, F b) { F m; lt_divmod_##SUF(a, b, &m); return m; }
LT_DEFINE_FLOATDIV(float, f32, fmodf, floorf, copysignf)
LT_DEFINE_FLOATDIV(double, f64, fmod, floor, copysign)

/* Float to integer: NaN gives 0 and out-of-range values saturate (C leaves both undefined). */
#define LT_DEFINE_TOINT(F, FS, T, TS, LO, HI)                                           \
    static inline T lt_##FS##_to_##TS(F x)                                              \
    {                                                                                   \
        if (x != x) return 0;                                                           \
        if (x <= (F)(LO)) return LO;                                                    \
        if (x >= (F)(HI)) return HI;                                                    \
        return (T)x;                                                                    \
    }
LT_DEFINE_TOINT(float, f32, int32_t, i32, INT32_MIN, INT32_MAX)
LT_DEFINE_TOINT(float, f32, int64_t, i64, INT64_MIN, INT64_MAX)
LT_DEFINE_TOINT(double, f64, int32_t, i32, INT32_MIN, INT32_MAX)
LT_DEFINE_TOINT(double, f64, int64_t, i64, INT64_MIN, INT64_MAX)

/*
 * float32 tanh as the rational approximation Eigen and XLA use (odd degree-13 numerator,
 * even degree-6 denominator on [-7.99, 7.99], where tanh is 1 to float precision beyond):
 * a few ulp, branch-free, so loops over it vectorize; libm's tanhf does neither.
 * NaN passes through (both comparisons are false). float64 keeps libm's tanh.
 */
static inline float lt_tanh_f32(float x)
{
    const float clamp = 7.99881172180175781f;
    x = x < -clamp ? -clamp : (x > clamp ? clamp : x);
    const float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 - 8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * x;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return p / q;
}

/*
 * float32 exp, branch-free so loops over it vectorize (libm's expf is a call per element):
 * exp(x) = 2^n exp(r) with n = round(x / ln 2) and r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2]
 * (ln 2 in two parts, Cody-Waite), exp(r) by Cephes' polynomial, 2^n applied in two halves so
 * that results down to the subnormals come out right. Within 1.5 ulp of the exact value
 * (tests/test_ops.py); overflow gives inf, -inf gives 0, NaN passes through.
 */
static inline float lt_exp_f32(float x)
{
    const float high = 88.7228391f, low = -103.972084f;
    const float xc = x > high ? high + 1.0f : (x < low ? low - 1.0f : x);
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    const float t = xc * 1.44269504088896341f + shifter;
    const float n = t - shifter;
    float r = xc - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t ni;
    memcpy(&ni, &t, sizeof ni);
    ni -= 0x4B400000; /* the shifter's bits: n is what remains */
    const int32_t n1 = ni / 2, n2 = ni - n1;
    const int32_t bits1 = (n1 + 127) << 23, bits2 = (n2 + 127) << 23;
    float scale1, scale2;
    memcpy(&scale1, &bits1, sizeof scale1);
    memcpy(&scale2, &bits2, sizeof scale2);
    return p * scale1 * scale2;
}

/* sigmoid(x) = 1 / (1 + exp(-x)): vectorizes (lt_exp_f32), and keeps its relative accuracy in the tails
   (sigmoid(-20) = 2.06e-9; (1 + tanh(x / 2)) / 2 would give 8.9e-8 there, and 1 - 6e-8 for sigmoid(30)).
   exp(-x) = inf gives 0, and exp(-x) = 0 gives 1, as they should. */
static inline float lt_sigmoid_f32(float x) { return 1.0f / (1.0f + lt_exp_f32(-x)); }
static inline double lt_sigmoid_f64(double x) { return 1.0 / (1.0 + exp(-x)); }

/* ------------------------------------------------------------------ random numbers */

/*
 * Counter-based uniform random numbers (the random_uniform primitive): element i of a
 * draw with key k is mix64(seed + (i + 1) * golden) with seed = mix64(k + golden), i.e.
 * the SplitMix64 stream seeded by k. The top 24 / 53 bits give a float in [0, 1) exactly,
 * so the NumPy reference (lantern/ir/primitives.py) produces identical values.
 */
#define LT_GOLDEN64 UINT64_C(0x9E3779B97F4A7C15)

static inline uint64_t lt_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static inline uint64_t lt_random_seed(int64_t key) { return lt_mix64((uint64_t)key + LT_GOLDEN64); }

static inline float lt_uniform_f32(uint64_t seed, int64_t i)
{
    return (float)(lt_mix64(seed + ((uint64_t)i + 1) * LT_GOLDEN64) >> 40) * 0x1.0p-24f;
}

static inline double lt_uniform_f64(uint64_t seed, int64_t i)
{
    return (double)(lt_mix64(seed + ((uint64_t)i + 1) * LT_GOLDEN64) >> 11) * 0x1.0p-53;
}

/*
 * argsort along one axis: idx[0..n) gets the order of x[0], x[stride], ..., x[(n-1)*stride].
 * A bottom-up merge sort (tmp holds n more indices), so stable: equal values keep their order,
 * as NumPy's kind="stable" and PyTorch's stable=True. NaN counts as the largest value: last, or
 * first when descending (NumPy and PyTorch put it there).
 */
#define LT_NAN_FLOAT(v) ((v) != (v))
#define LT_NAN_NONE(v) 0
#define LT_DEFINE_ARGSORT(T, SUF, IS_NAN)                                                             \
    static inline int lt_sorts_before_##SUF(T a, T b, int descending)                                 \
    {                                                                                                 \
        return descending ? (a > b || (IS_NAN(a) && !IS_NAN(b))) : (a < b || (IS_NAN(b) && !IS_NAN(a))); \
    }                                                                                                 \
    static inline void lt_argsort_##SUF(const T *x, int64_t n, int64_t stride, int descending,        \
                                        int64_t *idx, int64_t *tmp)                                   \
    {                                                                                                 \
        for (int64_t k = 0; k < n; k++)                                                               \
            idx[k] = k;                                                                               \
        for (int64_t width = 1; width < n; width *= 2) {                                              \
            for (int64_t lo = 0; lo < n; lo += 2 * width) {                                           \
                int64_t mid = lo + width < n ? lo + width : n;                                        \
                int64_t hi = lo + 2 * width < n ? lo + 2 * width : n;                                 \
                int64_t i = lo, j = mid, k = lo;                                                      \
                while (i < mid && j < hi) /* the right run first only if strictly before: stable */  \
                    tmp[k++] = lt_sorts_before_##SUF(x[idx[j] * stride], x[idx[i] * stride], descending) \
                                   ? idx[j++] : idx[i++];                                             \
                while (i < mid)                                                                       \
                    tmp[k++] = idx[i++];                                                              \
                while (j < hi)                                                                        \
                    tmp[k++] = idx[j++];                                                              \
            }                                                                                         \
            memcpy(idx, tmp, (size_t)n * sizeof *idx);                                                \
        }                                                                                             \
    }
LT_DEFINE_ARGSORT(float, f32, LT_NAN_FLOAT)
LT_DEFINE_ARGSORT(double, f64, LT_NAN_FLOAT)
LT_DEFINE_ARGSORT(int32_t, i32, LT_NAN_NONE)
LT_DEFINE_ARGSORT(int64_t, i64, LT_NAN_NONE)
LT_DEFINE_ARGSORT(lt_bool, bool, LT_NAN_NONE)

#endif /* LANTERN_RUNTIME_H */
