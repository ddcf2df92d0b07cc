"""Ctrl-C during a call into generated code (see ``runtime/lantern_interrupts.h``).

The first module a process loads installs lantern's SIGINT handler and is kept loaded for good;
every module is given the handler's table. A SIGINT during a main-thread call unwinds it (its arena
released) with ``LT_ERR_INTERRUPT``; :func:`raise_pending` then lets Python run its SIGINT handler,
which raises ``KeyboardInterrupt`` as it would have after the call.
"""
from __future__ import annotations

import ctypes
import threading

_lock = threading.Lock()
_table: int | None = None
_installer: ctypes.CDLL | None = None  # the module holding the handler: never unloaded


def table(so_path: str) -> int:
    """The address of the handler's table, installing it from the module at ``so_path`` if none is yet."""
    global _table, _installer
    if _table is None:
        with _lock:
            if _table is None:
                installer = ctypes.CDLL(so_path)  # a second reference: the module stays when cffi closes it
                init = installer.lantern_interrupts_init
                init.restype, init.argtypes = ctypes.c_void_p, [ctypes.c_ulong]
                _installer = installer
                _table = int(init(threading.main_thread().ident))
    return _table


def raise_pending() -> None:
    """Run Python's pending signal handlers now: the interrupted call's ``KeyboardInterrupt``, or whatever
    the user's SIGINT handler raises. Returns if no handler raised."""
    ctypes.pythonapi.PyErr_CheckSignals()
