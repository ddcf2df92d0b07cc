"""The once-per-process part of the runtime (``runtime/lantern_process.h``): Ctrl-C in generated code,
and lantern's own stacks for deep recursion.

The first module a process loads is initialised (its SIGINT handler installed) and kept loaded for good;
every module is given its table. A SIGINT during a main-thread call unwinds the call (its arena released)
with ``LT_ERR_INTERRUPT``; :func:`raise_pending` then lets Python run its SIGINT handler, which raises
``KeyboardInterrupt`` as it would have after the call.
"""
from __future__ import annotations

import ctypes
import threading

_lock = threading.Lock()
_table: int | None = None
_holder: ctypes.CDLL | None = None  # the module whose code serves the process: never unloaded


def table(so_path: str) -> int:
    """The address of the process table, initialised from the module at ``so_path`` if there is none yet."""
    global _table, _holder
    if _table is None:
        with _lock:
            if _table is None:
                holder = ctypes.CDLL(so_path)  # a second reference: the module stays when cffi closes it
                init = holder.lantern_process_init
                init.restype, init.argtypes = ctypes.c_void_p, [ctypes.c_ulong]
                _holder = holder
                _table = int(init(threading.main_thread().ident))
    return _table


def raise_pending() -> None:
    """Run Python's pending signal handlers now: the interrupted call's ``KeyboardInterrupt``, or whatever
    the user's SIGINT handler raises. Returns if no handler raised."""
    ctypes.pythonapi.PyErr_CheckSignals()
