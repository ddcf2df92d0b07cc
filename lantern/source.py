"""Where in the user's code a statement came from."""
from __future__ import annotations

import linecache
import os
import sys
from dataclasses import dataclass, field
from typing import Any

# The machinery of tracing. Frames in these files are never "the user's line"; library
# code written *with* lantern (lantern/demo.py, models, nn layers) is, so C comments can
# point at it.
_INTERNAL_MODULES = ("__init__", "control", "eager", "errors", "ops", "ops_arrays", "ops_reduce", "python_control_flow", "source", "staging", "tensor", "tracing", "tree")
_INTERNAL: tuple[str, ...] = ()


def _internal_prefixes() -> tuple[str, ...]:
    global _INTERNAL
    if not _INTERNAL:
        import lantern
        import lantern.ad
        import lantern.codegen
        import lantern.ir
        pkg = os.path.dirname(os.path.abspath(lantern.__file__))
        prefixes = [os.path.join(pkg, f"{m}.py") for m in _INTERNAL_MODULES]
        for sub in (lantern.ir, lantern.codegen, lantern.ad):
            prefixes.append(os.path.dirname(os.path.abspath(sub.__file__)) + os.sep)
        _INTERNAL = tuple(prefixes)
    return _INTERNAL


@dataclass(frozen=True)
class Loc:
    """A user source position: file and line."""

    file: str
    line: int
    #: set on the gradient code of an op (its primitive's name): that code belongs to the op's
    #: line, and error reports (check_finite) say it is the gradient
    adjoint_of: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"

    def text(self) -> str:
        """The source line itself, stripped (empty when unavailable)."""
        return linecache.getline(self.file, self.line).strip()


UNKNOWN = Loc("<unknown>", 0)


def _package_dirs() -> tuple[str, ...]:
    import lantern
    from lantern import codegen, runtime
    return tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (lantern, codegen, runtime))


def error_location(loc: Loc) -> str:
    """Where an error is reported: ``loc``, and where lantern's own library code (``nn``, ``optim``,
    models) holds it, the user's line that called into it first: ``model.py:12, in nn.py:58``."""
    inside = _package_dirs()
    if not loc.file.startswith(inside):
        return str(loc)
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(inside) and not filename.startswith("<frozen") and not _generated_for_lantern(frame):
            return f"{Loc(filename, frame.f_lineno)}, in {loc}"
        frame = frame.f_back
    return str(loc)


def _generated_for_lantern(frame: Any) -> bool:
    """Code that dataclasses generate (``__init__``) for lantern's classes: no file, lantern's globals."""
    return frame.f_code.co_filename == "<string>" and str(frame.f_globals.get("__name__", "")).startswith("lantern.")


def user_location() -> Loc:
    """The innermost stack frame outside lantern's tracing machinery."""
    internal = _internal_prefixes()
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(internal) and not filename.startswith("<frozen") \
                and not _generated_for_lantern(frame):
            return Loc(filename, frame.f_lineno)
        frame = frame.f_back
    return UNKNOWN
