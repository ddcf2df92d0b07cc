/*
 * lantern_interrupts.h -- how Ctrl-C reaches generated code (included by lantern_runtime.h).
 *
 * Python's own SIGINT handler only marks the signal for its interpreter loop, which does not
 * run while a module's loop does. The handler here wraps Python's and chains to it (so Python
 * still raises KeyboardInterrupt); while the main thread runs a lantern module it also sets a
 * flag that the module's loop back-edges and recursive calls poll (lt_poll_interrupt).
 *
 * Every module carries this code, but only one copy runs: the first module a process loads
 * installs the handler (lantern_interrupts_init) and stays loaded for good; every module,
 * that one included, is given its table (lantern_watch_interrupts). The handler goes over
 * Python's only, never over SIG_IGN or SIG_DFL (an ignored SIGINT stays ignored, in children
 * too); if Python code installs another handler later, the next main-thread call wraps that
 * one (checked at most every 100 ms).
 */
#ifndef LANTERN_INTERRUPTS_H
#define LANTERN_INTERRUPTS_H

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>

typedef struct {
    volatile sig_atomic_t *flag;   /* set by the SIGINT handler while the main thread is in native code */
    void (*enter)(void);           /* lantern_entry starts (on any thread) */
    void (*leave)(void);           /* lantern_entry returns */
    int (*on_main_thread)(void);   /* the interrupt is the main thread's: other threads go on */
} lt_interrupts_t;

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

static const lt_interrupts_t lt_sigint_table = {
    &lt_sigint_flag, lt_sigint_enter, lt_sigint_leave, lt_sigint_on_main_thread
};

/* Install the handler (once per process); `main_thread` is Python's threading.main_thread().ident. */
static const lt_interrupts_t *lt_sigint_init(unsigned long main_thread)
{
    lt_sigint_main_thread = (pthread_t)main_thread;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &lt_sigint_checked);
    lt_sigint_install();
    return &lt_sigint_table;
}

#endif
