/*
 * lantern_process.h -- the part of the runtime that exists once per process (included by
 * lantern_runtime.h): the SIGINT handler that lets Ctrl-C stop generated code, and lantern's
 * own stacks, on which deep recursion is limited by memory rather than by the thread's stack.
 *
 * Every module carries this code, but one copy runs: the first module a process loads is
 * initialised (lantern_process_init) and stays loaded for good (codegen/process.py); every
 * module, that one included, is given its table (lantern_use_process).
 *
 * Ctrl-C. Python's own SIGINT handler only marks the signal for its interpreter loop, which
 * does not run while a module's loop does. The handler here wraps Python's and chains to it
 * (so Python still raises KeyboardInterrupt); while the main thread runs a module it also sets
 * `flag`, which loop iterations and recursive calls poll (lt_poll_interrupt). It goes over
 * Python's handler only, never over SIG_IGN or SIG_DFL (an ignored SIGINT stays ignored, in
 * children too); if Python code installs another handler later, the next main-thread call
 * wraps that one (checked at most every 100 ms).
 *
 * Own stacks. A module with recursion or continuations (each iteration of a loop under grad is
 * a nested call) runs on a stack of LANTERN_STACK_SIZE bytes (default 1 GiB) that each thread
 * reserves once: address space only (MAP_NORESERVE), pages taken as the recursion reaches them
 * and given back after a call that went deeper than LT_OWN_STACK_KEPT. If the reservation
 * fails, under AddressSanitizer, or on machines other than x86-64 Linux, the thread's stack is
 * used.
 */
#ifndef LANTERN_PROCESS_H
#define LANTERN_PROCESS_H

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* A module's entry body, run on the stack [stack_low, stack_high) (both 0: the thread's own). */
typedef int (*lt_entry_body)(void **arg, uintptr_t stack_low, uintptr_t stack_high);

typedef struct {
    volatile sig_atomic_t *flag;   /* set by the SIGINT handler while the main thread is in native code */
    void (*enter)(void);           /* lantern_entry starts (on any thread) */
    void (*leave)(void);           /* lantern_entry returns */
    int (*on_main_thread)(void);   /* the interrupt is the main thread's: other threads go on */
    int (*run_deep)(lt_entry_body body, void **arg); /* body(arg) on this thread's own stack */
    void (*trim)(void);            /* after a deep call: give its stack pages back */
} lt_process_t;

#define LT_OWN_STACK_DEFAULT ((size_t)1 << 30)
#define LT_OWN_STACK_GUARD ((size_t)64 * 1024)       /* PROT_NONE below the usable part */
#define LT_OWN_STACK_KEPT ((size_t)8 * 1024 * 1024)  /* resident top part kept between calls */

/* A module of several translation units (lantern_runtime.h) carries the code below in unit 0 only. */
#if !defined(LANTERN_UNIT) || LANTERN_UNIT == 0

/* ------------------------------------------------------------------ SIGINT */

static volatile sig_atomic_t lt_sigint_flag, lt_sigint_main_in_native, lt_sigint_in_handler;
static struct sigaction lt_sigint_previous; /* the handler wrapped (written before this one is installed) */
static pthread_t lt_sigint_main_thread;
static pthread_mutex_t lt_sigint_lock = PTHREAD_MUTEX_INITIALIZER;
static struct timespec lt_sigint_checked;

static void lt_sigint_handler(int sig, siginfo_t *info, void *context)
{
    if (lt_sigint_in_handler) /* never chain into ourselves, whatever the chain of handlers */
        return;
    lt_sigint_in_handler = 1;
    if (lt_sigint_main_in_native)
        lt_sigint_flag = 1;
    if (lt_sigint_previous.sa_flags & SA_SIGINFO)
        lt_sigint_previous.sa_sigaction(sig, info, context);
    else if (lt_sigint_previous.sa_handler != SIG_IGN && lt_sigint_previous.sa_handler != SIG_DFL)
        lt_sigint_previous.sa_handler(sig);
    lt_sigint_in_handler = 0;
}

/* Wrap the current SIGINT handler unless it is this one, SIG_IGN or SIG_DFL. */
static void lt_sigint_install(void)
{
    struct sigaction current, mine;
    pthread_mutex_lock(&lt_sigint_lock);
    if (sigaction(SIGINT, NULL, &current) == 0 && current.sa_sigaction != lt_sigint_handler
        && ((current.sa_flags & SA_SIGINFO) || (current.sa_handler != SIG_IGN && current.sa_handler != SIG_DFL))) {
        lt_sigint_previous = current;
        memset(&mine, 0, sizeof mine);
        mine.sa_sigaction = lt_sigint_handler;
        mine.sa_mask = current.sa_mask;
        mine.sa_flags = (current.sa_flags & ~(int)SA_RESETHAND) | SA_SIGINFO;
        sigaction(SIGINT, &mine, NULL);
    }
    pthread_mutex_unlock(&lt_sigint_lock);
}

static int lt_sigint_on_main_thread(void)
{
    return pthread_equal(pthread_self(), lt_sigint_main_thread);
}

static void lt_sigint_enter(void)
{
    struct timespec now;
    if (!lt_sigint_on_main_thread())
        return;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    if ((now.tv_sec - lt_sigint_checked.tv_sec) * 1000000000LL + (now.tv_nsec - lt_sigint_checked.tv_nsec)
        >= 100000000LL) {
        lt_sigint_checked = now;
        lt_sigint_install();
    }
    lt_sigint_flag = 0; /* a SIGINT from before this call is Python's to report */
    lt_sigint_main_in_native = 1;
}

static void lt_sigint_leave(void)
{
    if (!lt_sigint_on_main_thread())
        return;
    lt_sigint_main_in_native = 0;
    lt_sigint_flag = 0; /* after the line above: a late SIGINT cannot set it again */
}

/* ------------------------------------------------------------------ own stacks */


typedef struct {
    char *base; /* the mapping (guard first) */
    size_t size;
} lt_own_stack_t;

static pthread_key_t lt_own_stack_key;
static pthread_once_t lt_own_stack_once = PTHREAD_ONCE_INIT;
static _Thread_local lt_own_stack_t *lt_own_stack;
static _Thread_local int lt_own_stack_failed;
static void lt_own_stack_free(void *p)
{
    lt_own_stack_t *s = (lt_own_stack_t *)p;
    munmap(s->base, s->size);
    free(s);
}

static void lt_own_stack_make_key(void)
{
    pthread_key_create(&lt_own_stack_key, lt_own_stack_free); /* unmapped when the thread exits */
}

/* LANTERN_STACK_SIZE: bytes, or a number with K, M or G; unset or unreadable: 1 GiB. */
static size_t lt_own_stack_setting(void)
{
    const char *text = getenv("LANTERN_STACK_SIZE");
    char *end = NULL;
    double value = text ? strtod(text, &end) : 0.0;
    if (!text || end == text || !(value > 0))
        return LT_OWN_STACK_DEFAULT;
    switch (*end) {
    case 'k': case 'K': value *= 1024.0; break;
    case 'm': case 'M': value *= 1024.0 * 1024.0; break;
    case 'g': case 'G': value *= 1024.0 * 1024.0 * 1024.0; break;
    default: break;
    }
    if (value < 4.0 * 1024 * 1024)
        value = 4.0 * 1024 * 1024;
    if (value > 1099511627776.0) /* 1 TiB of address space at most */
        value = 1099511627776.0;
    return ((size_t)value + 65535) & ~(size_t)65535;
}

static lt_own_stack_t *lt_own_stack_get(void)
{
    if (lt_own_stack || lt_own_stack_failed)
        return lt_own_stack;
    size_t size = lt_own_stack_setting() + LT_OWN_STACK_GUARD;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                      -1, 0);
    lt_own_stack_t *s = base == MAP_FAILED ? NULL : (lt_own_stack_t *)malloc(sizeof *s);
    if (!s || mprotect(base, LT_OWN_STACK_GUARD, PROT_NONE) != 0) {
        if (base != MAP_FAILED)
            munmap(base, size);
        free(s);
        lt_own_stack_failed = 1; /* the thread's stack, then */
        return NULL;
    }
    s->base = (char *)base;
    s->size = size;
    pthread_once(&lt_own_stack_once, lt_own_stack_make_key);
    pthread_setspecific(lt_own_stack_key, s);
    return lt_own_stack = s;
}

#if defined(__x86_64__) && defined(__linux__)
#define LT_OWN_STACKS 1
/*
 * lt_call_on_stack(arg, low, high, body, top) returns body(arg, low, high) run with the stack
 * pointer at `top`: a plain call on another stack. (swapcontext would do, but saves and restores
 * the signal mask with three system calls per call, which doubles the time of a small call.)
 * The old stack pointer is kept in %rbp, which the body preserves; `top` is 16-byte aligned.
 */
__asm__(".text\n"
        ".p2align 4\n"
        ".type lt_call_on_stack, @function\n"
        "lt_call_on_stack:\n"
        "    push %rbp\n"
        "    mov %rsp, %rbp\n"
        "    mov %r8, %rsp\n"
        "    call *%rcx\n"
        "    mov %rbp, %rsp\n"
        "    pop %rbp\n"
        "    ret\n"
        ".size lt_call_on_stack, .-lt_call_on_stack\n");
extern int lt_call_on_stack(void **arg, uintptr_t low, uintptr_t high, lt_entry_body body, void *top);
#else
#define LT_OWN_STACKS 0 /* other machines: the thread's stack */
#endif

static int lt_own_stack_run(lt_entry_body body, void **arg)
{
#if LT_OWN_STACKS
    lt_own_stack_t *s = lt_own_stack_get();
    if (s)
        return lt_call_on_stack(arg, (uintptr_t)(s->base + LT_OWN_STACK_GUARD), (uintptr_t)(s->base + s->size), body,
                                s->base + s->size);
#endif
    return body(arg, 0, 0);
}

/* After a call that went below the top LT_OWN_STACK_KEPT bytes: give the pages below back. */
static void lt_own_stack_trim(void)
{
    lt_own_stack_t *s = lt_own_stack;
    if (s && s->size > LT_OWN_STACK_KEPT + LT_OWN_STACK_GUARD)
        madvise(s->base + LT_OWN_STACK_GUARD, s->size - LT_OWN_STACK_KEPT - LT_OWN_STACK_GUARD, MADV_DONTNEED);
}

/* ------------------------------------------------------------------ the table */

static const lt_process_t lt_process_table = {
    &lt_sigint_flag, lt_sigint_enter, lt_sigint_leave, lt_sigint_on_main_thread, lt_own_stack_run, lt_own_stack_trim
};

/* Install the SIGINT handler (once per process); `main_thread` is Python's threading.main_thread().ident. */
static const lt_process_t *lt_process_init(unsigned long main_thread)
{
    lt_sigint_main_thread = (pthread_t)main_thread;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &lt_sigint_checked);
    lt_sigint_install();
    return &lt_process_table;
}

#endif /* unit 0 */

#endif
