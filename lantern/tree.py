"""Nested structures ("pytrees") of tuples, lists, dicts and None, with arbitrary leaves."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class TreeDef:
    """The shape of a nested structure. ``kind`` is 'leaf', 'none', 'tuple', 'list', 'dict' or 'namedtuple'."""

    kind: str
    children: tuple[TreeDef, ...] = ()
    aux: Any = None  # dict keys, or the namedtuple class

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)

    def __str__(self) -> str:
        if self.kind == "leaf":
            return "*"
        if self.kind == "none":
            return "None"
        inner = [str(c) for c in self.children]
        if self.kind == "dict":
            return "{" + ", ".join(f"{k!r}: {c}" for k, c in zip(self.aux, inner)) + "}"
        if self.kind == "list":
            return "[" + ", ".join(inner) + "]"
        return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"


LEAF = TreeDef("leaf")


def _sort_key(k: Any) -> tuple[str, Any]:
    return (type(k).__name__, k)


def flatten(tree: Any, paths: bool = False) -> tuple[list[Any], TreeDef]:
    """Leaves in a deterministic order (dicts by sorted key) and the structure.

    With ``paths=True`` the leaves come back as ``(path, leaf)`` pairs, where ``path`` is
    a readable string such as ``params['w1']`` (without the root name).
    """
    leaves: list[Any] = []

    def go(t: Any, path: str) -> TreeDef:
        if t is None:
            return TreeDef("none")
        if isinstance(t, tuple) and hasattr(t, "_fields"):
            return TreeDef("namedtuple", tuple(go(getattr(t, f), f"{path}.{f}") for f in t._fields), type(t))
        if isinstance(t, (tuple, list)):
            kind = "tuple" if isinstance(t, tuple) else "list"
            return TreeDef(kind, tuple(go(c, f"{path}[{i}]") for i, c in enumerate(t)))
        if isinstance(t, dict):
            keys = tuple(sorted(t, key=_sort_key))
            return TreeDef("dict", tuple(go(t[k], f"{path}[{k!r}]") for k in keys), keys)
        leaves.append((path, t) if paths else t)
        return LEAF

    treedef = go(tree, "")
    del go  # it refers to itself: a reference cycle that would keep every leaf alive until gc runs
    return leaves, treedef


def unflatten(treedef: TreeDef, leaves: list[Any]) -> Any:
    """Inverse of :func:`flatten`."""
    it = iter(leaves)

    def go(td: TreeDef) -> Any:
        if td.kind == "leaf":
            return next(it)
        if td.kind == "none":
            return None
        children = [go(c) for c in td.children]
        if td.kind == "tuple":
            return tuple(children)
        if td.kind == "list":
            return children
        if td.kind == "dict":
            return dict(zip(td.aux, children))
        return td.aux(*children)

    result = go(treedef)
    del go  # break the cycle through its own closure cell, which holds ``leaves`` (see flatten)
    return result


def unflattener(treedef: TreeDef) -> Callable[[list[Any]], Any]:
    """:func:`unflatten` for one structure, made once: a function of the leaves building it in one expression
    (a staged call's results go through it on every call; the general walk cost microseconds)."""
    constants: dict[str, Any] = {}
    count = 0

    def constant(value: Any) -> str:
        name = f"c{len(constants)}"
        constants[name] = value
        return name

    def build(td: TreeDef) -> str:
        nonlocal count
        if td.kind == "leaf":
            count += 1
            return f"leaves[{count - 1}]"
        if td.kind == "none":
            return "None"
        children = [build(c) for c in td.children]
        if td.kind == "tuple":
            return f"({', '.join(children)}{',' if len(children) == 1 else ''})"
        if td.kind == "list":
            return f"[{', '.join(children)}]"
        if td.kind == "dict":
            return "{" + ", ".join(f"{constant(k)}: {c}" for k, c in zip(td.aux, children)) + "}"
        return f"{constant(td.aux)}({', '.join(children)})"

    if _depth(treedef) > 50:  # (Python's parser refuses 200 nested brackets)
        return lambda leaves: unflatten(treedef, leaves)
    body = build(treedef)
    return eval(f"lambda leaves: {body}", constants)  # (the keys and classes are passed, never printed)


def _depth(td: TreeDef) -> int:
    depth, level = 0, [td]
    while level:
        depth, level = depth + 1, [c for t in level for c in t.children]
    return depth


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leafwise to ``tree`` and trees of the same structure."""
    leaves, td = flatten(tree)
    others = [flatten(r)[0] for r in rest]
    return unflatten(td, [fn(*xs) for xs in zip(leaves, *others)])
