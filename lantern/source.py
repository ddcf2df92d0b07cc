"""Where in the user's code a statement came from."""
from __future__ import annotations

import linecache
import os
import sys
from dataclasses import dataclass

_PACKAGE_ROOTS: tuple[str, ...] = ()


def _package_roots() -> tuple[str, ...]:
    global _PACKAGE_ROOTS
    if not _PACKAGE_ROOTS:
        import lantern
        roots = {os.path.dirname(os.path.abspath(lantern.__file__)) + os.sep}
        try:
            import lantern.codegen as cg
            roots.add(os.path.dirname(os.path.abspath(cg.__file__)) + os.sep)
        except ImportError:  # pragma: no cover - codegen is part of the package
            pass
        _PACKAGE_ROOTS = tuple(sorted(roots))
    return _PACKAGE_ROOTS


@dataclass(frozen=True)
class Loc:
    """A user source position: file and line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"

    def text(self) -> str:
        """The source line itself, stripped (empty when unavailable)."""
        return linecache.getline(self.file, self.line).strip()


UNKNOWN = Loc("<unknown>", 0)


def user_location() -> Loc:
    """The innermost stack frame outside the lantern package."""
    roots = _package_roots()
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(roots) and not filename.startswith("<frozen"):
            return Loc(filename, frame.f_lineno)
        frame = frame.f_back
    return UNKNOWN
