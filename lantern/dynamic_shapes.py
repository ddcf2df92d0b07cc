"""Which dimensions of a staged function's arguments are run-time sizes, and which calls a compiled
signature with run-time sizes serves.

``@lantern.stage(dynamic=...)``:

* ``None`` (the default), *automatic*, as ``torch.compile``: the first call specialises on its shapes;
  once a call differs from an earlier signature only in some array dimensions, exactly those (and
  those that differed before) become size variables, so one more compile serves every size of them.
* ``True``: every axis of every array argument is a size variable from the first call.
* ``{"words": 0, "x": (0, 1)}``: these axes of these arguments (every array under a nested argument).
* ``False``: every shape is compiled on its own (the behaviour before run-time sizes).

A dimension of size 0 or 1 in a call stays a constant (as in ``torch.compile``: broadcasting and
empty arrays behave differently there); a later call with another size compiles once more. Axes of
equal size in the call being compiled share one variable ("duck sizing"); a call where they differ
compiles again with separate variables. A :class:`Pattern` holds the resulting signature: per array,
constant dimensions and variable names, plus the guards the trace recorded (``ir/symbolic.py``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ArgumentError
from .ir.symbolic import Guard

#: ``dynamic=`` as :func:`lantern.stage` takes it.
DynamicOption = bool | None | Mapping[str, int | tuple[int, ...] | list[int]]

Axis = tuple[int, int]  # (leaf index, axis)


def check_option(dynamic: Any) -> DynamicOption:
    """``dynamic`` validated (``ArgumentError`` naming what is wrong)."""
    if dynamic is None or isinstance(dynamic, bool):
        return dynamic
    if not isinstance(dynamic, Mapping):
        raise ArgumentError(f"stage: dynamic must be None, True, False or a dict of argument name -> axes, "
                            f"got {type(dynamic).__name__} {dynamic!r}")
    out: dict[str, tuple[int, ...]] = {}
    for name, axes in dynamic.items():
        items = (axes,) if isinstance(axes, int) else axes
        if not isinstance(name, str) or not isinstance(items, (tuple, list)) or not all(
                isinstance(a, int) and not isinstance(a, bool) for a in items):
            raise ArgumentError(f"stage: dynamic[{name!r}] must be an axis or a tuple of axes, got {axes!r}")
        out[name] = tuple(items)
    return out


def parameter_of(path: str) -> str:
    """The parameter a leaf path starts with (``params['W']`` -> ``params``)."""
    return re.split(r"[\[.]", path, maxsplit=1)[0]


def declared_axes(dynamic: DynamicOption, keys: list[tuple], paths: list[str],
                  parameters: list[str]) -> set[Axis]:
    """The axes ``dynamic=True`` or a ``dynamic={...}`` dict names, for these argument leaves."""
    if not dynamic:
        return set()
    if isinstance(dynamic, Mapping):
        unknown = set(dynamic) - set(parameters)
        if unknown:
            raise ArgumentError(f"stage: dynamic names {sorted(unknown)}, which are not parameters "
                                f"(the parameters are {parameters})")
    out: set[Axis] = set()
    for i, (key, path) in enumerate(zip(keys, paths)):
        if key[0] != "array":
            continue
        ndim = len(key[1])
        if dynamic is True:
            out.update((i, a) for a in range(ndim))
            continue
        for axis in dynamic.get(parameter_of(path), ()):  # type: ignore[union-attr]
            if not -ndim <= axis < ndim:
                raise ArgumentError(f"stage: dynamic axis {axis} of argument {path} is out of range for its "
                                    f"shape {tuple(key[1])}")
            out.add((i, axis % ndim))
    return out


def changed_axes(previous: list[tuple[Any, list[tuple], list[str]]], treedef: Any, keys: list[tuple],
                 paths: list[str]) -> set[tuple[str, int]]:
    """``(path, axis)`` of the dimensions in which this call differs from an earlier signature that differs
    from it only in array dimensions (same structure, numbers, dtypes and ranks)."""
    out: set[tuple[str, int]] = set()
    for td, old_keys, _ in previous:
        if td != treedef or len(old_keys) != len(keys):
            continue
        diffs: set[tuple[str, int]] = set()
        for path, old, new in zip(paths, old_keys, keys):
            if old == new:
                continue
            if old[0] == new[0] == "array" and old[2] == new[2] and len(old[1]) == len(new[1]):
                diffs.update((path, a) for a, (d, e) in enumerate(zip(old[1], new[1])) if d != e)
            else:
                break
        else:
            out |= diffs
    return out


def _symbol_name(path_hint: str, axis: int, taken: set[str]) -> str:
    base = f"n_{path_hint}" if axis == 0 else f"n{axis}_{path_hint}"
    base = base + "_" if base[-1].isdigit() else base  # (generated C names end in digits)
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{k}_"
    return name


@dataclass(frozen=True)
class Pattern:
    """A signature with run-time sizes: each array leaf's dimensions as ints or variable names."""

    keys: tuple[tuple, ...]
    #: the variables in the order the C code receives them: (name, leaf index, axis) of the first axis
    #: that has it, where a call's value is read
    variables: tuple[tuple[str, int, int], ...]
    hints: dict[str, int] = field(compare=False, hash=False)
    guards: tuple[Guard, ...] = field(default=(), compare=False, hash=False)

    @property
    def symbolic(self) -> bool:
        return bool(self.variables)

    def bind(self, keys: list[tuple] | tuple[tuple, ...]) -> dict[str, int] | None:
        """The value of each variable in a call with leaf ``keys`` (concrete), or None where the call does not
        fit (another constant, dtype or rank, unequal sizes of one variable, a guard that fails)."""
        if len(keys) != len(self.keys):
            return None
        shapes = []
        for pattern, key in zip(self.keys, keys):
            if pattern[0] != "array":
                if pattern != key:
                    return None
            elif key[0] != "array" or key[2] != pattern[2]:
                return None
            else:
                shapes.append(key[1])
        return self.bind_shapes(shapes)

    def bind_shapes(self, shapes: list[tuple[int, ...]]) -> dict[str, int] | None:
        """The value of each variable where the array arguments have ``shapes``, or None (see :meth:`bind`)."""
        values = self._values(shapes)
        if values is None or not all(g.holds(values) for g in self.guards):
            return None
        return values

    def _values(self, shapes: list[tuple[int, ...]]) -> dict[str, int] | None:
        values: dict[str, int] = {}
        for dims, shape in zip(self.array_dims, shapes):
            if len(dims) != len(shape):
                return None
            for want, got in zip(dims, shape):
                if isinstance(want, str):
                    if values.setdefault(want, got) != got:
                        return None
                elif want != got:
                    return None
        return values

    @property
    def array_dims(self) -> list[tuple[int | str, ...]]:
        return [k[1] for k in self.keys if k[0] == "array"]

    def mismatch(self, shapes: list[tuple[int, ...]], paths: list[str]) -> str:
        """Why arrays of ``shapes`` (at ``paths``) do not fit (for an ``ArgumentError``)."""
        values: dict[str, tuple[int, str]] = {}
        for dims, shape, path in zip(self.array_dims, shapes, paths):
            want = "(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")"
            if len(dims) != len(shape):
                return f"argument {path}: expected shape {want}, got {shape}"
            for axis, (d, n) in enumerate(zip(dims, shape)):
                if isinstance(d, str):
                    seen = values.setdefault(d, (n, path))
                    if seen[0] != n:
                        return (f"argument {path}: axis {axis} has size {n}, but this code has one size {d} for it "
                                f"and {seen[1]} (size {seen[0]})")
                elif d != n:
                    return f"argument {path}: expected shape {want}, got {shape}"
        failed = next((g for g in self.guards if not g.holds({k: v for k, (v, _) in values.items()})), None)
        return f"this code was compiled assuming {failed} (sizes {dict((k, v) for k, (v, _) in values.items())})"


def make_pattern(keys: list[tuple], paths: list[str], axes: set[Axis], path_hint: Any,
                 names: dict[Axis, str] | None = None) -> Pattern:
    """The signature of a call with leaf ``keys`` where ``axes`` are run-time sizes (those of size 0 or 1
    stay constants); axes of equal size share a variable, named after the first (or as ``names`` says)."""
    by_value: dict[Any, str] = {}  # an axis's group: its name where given, else its size (duck sizing)
    variables: list[tuple[str, int, int]] = []
    hints: dict[str, int] = {}
    taken: set[str] = set()
    out: list[tuple] = []
    for i, (key, path) in enumerate(zip(keys, paths)):
        if key[0] != "array":
            out.append(key)
            continue
        dims: list[int | str] = []
        for axis, d in enumerate(key[1]):
            if (i, axis) not in axes or d < 2:
                dims.append(d)
                continue
            given = (names or {}).get((i, axis))
            group = ("name", given) if given else ("size", d)
            name = by_value.get(group)
            if name is None:
                name = by_value[group] = given or _symbol_name(path_hint(path), axis, taken)
                taken.add(name)
                variables.append((name, i, axis))
                hints[name] = d
            dims.append(name)
        out.append(("array", tuple(dims), key[2]))
    return Pattern(tuple(out), tuple(variables), hints)
