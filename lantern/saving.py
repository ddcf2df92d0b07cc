"""``lantern.save(path, tree)`` and ``lantern.load(path)``: any nested structure of dicts, lists, tuples
(named ones too) and None, with NumPy arrays, NumPy scalars, Python numbers and strings as leaves
(parameters, optimizer state, step counters, random keys, loss histories), in one safetensors file.

Each array is a tensor named by its path (``"params.layers.0.weight"``), so other safetensors readers see
the data; the structure, and the leaves that are not arrays, are JSON in the metadata under
``"lantern.tree"``. The file is written to a temporary name, synced and renamed, so a crash leaves the
previous file whole. ``load`` of a safetensors file written elsewhere gives its tensors as a dict.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any

import numpy as np

from .errors import ArgumentError
from .safetensors import SafetensorsError, load_file, save_file

__all__ = ["save", "load"]

_TREE_KEY = "lantern.tree"
_FORMAT = 1


def _encode(tree: Any, path: str, tensors: dict[str, np.ndarray]) -> Any:
    """The JSON description of ``tree``; its arrays go into ``tensors`` under unique dotted names."""
    if tree is None:
        return None
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {"namedtuple": type(tree).__name__, "fields": list(tree._fields),
                "items": [_encode(v, f"{path}.{k}" if path else k, tensors) for k, v in zip(tree._fields, tree)]}
    if isinstance(tree, (list, tuple)):
        kind = "list" if isinstance(tree, list) else "tuple"
        return {kind: [_encode(v, f"{path}.{i}" if path else str(i), tensors) for i, v in enumerate(tree)]}
    if isinstance(tree, dict):
        items = []
        for key, value in tree.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise ArgumentError(f"lantern.save: dict key {key!r} at {path or 'the top'} is not a str or int")
            items.append([key, _encode(value, f"{path}.{key}" if path else str(key), tensors)])
        return {"dict": items}
    if isinstance(tree, str):
        return {"str": tree}
    if isinstance(tree, (bool, int, float)):
        return {"py": type(tree).__name__, "value": tree}
    if isinstance(tree, (np.ndarray, np.generic)):
        name = path or "value"
        while name in tensors:  # "a.b" as a key and as a path
            name += "~"
        tensors[name] = np.asarray(tree)
        return {"array" if isinstance(tree, np.ndarray) else "scalar": name}
    raise ArgumentError(f"lantern.save: {path or 'the value'} is a {type(tree).__name__}; a checkpoint holds "
                        "arrays, numbers, strings and None in dicts, lists and tuples")


def _decode(node: Any, tensors: dict[str, np.ndarray], path: str) -> Any:
    if node is None:
        return None
    if not isinstance(node, dict) or len(node) not in (1, 2, 3):
        raise SafetensorsError(f"lantern.load: {path}: bad structure entry {node!r}")
    if "array" in node:
        return tensors[node["array"]]
    if "scalar" in node:
        return tensors[node["scalar"]][()]
    if "py" in node:
        return {"bool": bool, "int": int, "float": float}[node["py"]](node["value"])
    if "str" in node:
        return node["str"]
    if "list" in node or "tuple" in node:
        items = [_decode(v, tensors, path) for v in node.get("list", node.get("tuple"))]
        return items if "list" in node else tuple(items)
    if "dict" in node:
        return {key: _decode(v, tensors, path) for key, v in node["dict"]}
    if "namedtuple" in node:
        cls = collections.namedtuple(node["namedtuple"], node["fields"])  # type: ignore[misc]
        return cls(*(_decode(v, tensors, path) for v in node["items"]))
    raise SafetensorsError(f"lantern.load: {path}: unknown structure entry {node!r}")


def save(path: str | os.PathLike[str], tree: Any, **info: Any) -> None:
    """Write ``tree`` to the safetensors file ``path`` atomically; ``info`` is kept in the metadata as
    strings (``step=100``)."""
    tensors: dict[str, np.ndarray] = {}
    structure = _encode(tree, "", tensors)
    metadata = {k: str(v) for k, v in info.items()}
    metadata[_TREE_KEY] = json.dumps({"format": _FORMAT, "tree": structure})
    save_file(tensors, path, metadata)


def load(path: str | os.PathLike[str], *, with_info: bool = False) -> Any:
    """The tree :func:`save` wrote to ``path`` (a plain safetensors file: its tensors as a dict); with
    ``with_info=True``, a pair ``(tree, info)`` of it and the other metadata."""
    tensors, metadata = load_file(path, with_metadata=True)
    text = metadata.pop(_TREE_KEY, None)
    if text is None:
        tree: Any = tensors
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SafetensorsError(f"lantern.load: {os.fspath(path)}: the structure is not JSON ({exc})") from None
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise SafetensorsError(f"lantern.load: {os.fspath(path)}: unknown structure format "
                                   f"{document.get('format') if isinstance(document, dict) else document!r}")
        try:
            tree = _decode(document["tree"], tensors, os.fspath(path))
        except KeyError as exc:
            raise SafetensorsError(f"lantern.load: {os.fspath(path)}: the structure names tensor {exc} that the "
                                   "file does not hold") from None
    return (tree, metadata) if with_info else tree
