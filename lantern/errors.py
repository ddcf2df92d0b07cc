"""Exceptions a user of lantern can see.

Every error that bad input can cause is a subclass of :class:`LanternError`. Where a
builtin exception has the same meaning (a shape problem is a ``ValueError``, a dtype
problem a ``TypeError``) the lantern class also derives from it, so ordinary
``except ValueError`` code keeps working.
"""
from __future__ import annotations


class LanternError(Exception):
    """Base class of every error lantern raises on purpose."""


class ShapeError(LanternError, ValueError):
    """Shapes do not fit the operation (broadcasting, matmul, reshape, axis out of range)."""


class DTypeError(LanternError, TypeError):
    """A dtype the operation does not accept, or two branches/loop states that disagree."""


class ArgumentError(LanternError, TypeError, ValueError):
    """A staged function was called with the wrong number, kind, shape or dtype of arguments."""


class TraceError(LanternError, RuntimeError):
    """The function cannot be traced as written (escaped values, unsupported constructs)."""


class ConcretizationError(TraceError, TypeError):
    """A staged value was used where Python needs a concrete one (``if x > 0:`` where the rewrite of Python
    control flow does not reach: inside ``try``/``with``, a lambda, code without source)."""


class IRVerificationError(LanternError, AssertionError):
    """The IR broke an invariant: a bug in a pass, not in user code."""


class CompileError(LanternError, RuntimeError):
    """The C compiler rejected generated code. ``c_path`` is the kept C file."""

    def __init__(self, message: str, c_path: str | None = None, compiler_output: str = ""):
        super().__init__(message)
        self.c_path = c_path
        self.compiler_output = compiler_output


class CompilerNotFoundError(CompileError):
    """No C compiler could be run: ``cc`` is not on ``PATH``, or ``$CC`` names no executable."""


class CompilerTimeoutError(CompileError):
    """The C compiler ran longer than ``$LANTERN_CC_TIMEOUT`` seconds and was stopped."""


class LanternWarning(UserWarning):
    """Base class of the warnings lantern gives (something was worked around, not a failure)."""


class CacheWarning(LanternWarning):
    """The compile cache could not be used as configured (a temporary one is used), or an entry
    in it was damaged or not the user's (it is rebuilt)."""


class RecompileWarning(LanternWarning):
    """A staged function was compiled again and again: a Python number that changes on every call,
    or an argument whose shape keeps changing (the message says which, and what to do)."""


class SourceUnavailableWarning(LanternWarning):
    """A staged function's source cannot be read (a REPL, ``exec``), so its Python ``if``/``while``/``for``
    are not rewritten: on a staged value they are a ``ConcretizationError``."""


class UnrolledLoopWarning(LanternWarning):
    """A Python loop ran many times while a function was traced, so its body was copied into the
    generated code once per iteration (slow to compile); ``lantern.fori_loop`` compiles it once."""


class OutOfBoundsError(LanternError, IndexError):
    """An index out of bounds: a static one while tracing, or a staged one at run time."""


class NativeError(LanternError, RuntimeError):
    """Generated code stopped with an error other than a bad index (out of memory, ...)."""


class RecursionDepthError(NativeError, RecursionError):
    """A recursive staged function (or the continuations of a differentiated loop) went deeper
    than the C stack allows, or deeper than the ``max_depth`` it was staged with."""


class NonFiniteError(NativeError, FloatingPointError):
    """With ``check_finite`` on, an operation produced NaN or an infinity (or an argument held one)."""
