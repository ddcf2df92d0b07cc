"""Reading and writing the safetensors format (Hugging Face), with no dependency on its package.

A file is::

    8 bytes   N, the header length, unsigned little-endian
    N bytes   a JSON object: {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
              "__metadata__": {"key": "value", ...}}   (optional; string values only)
    the rest  the tensors' raw little-endian bytes, row-major; offsets count from the end of the header

The writer pads the header with spaces to a multiple of 8 bytes (as the reference implementation
does) and lays the tensors out in name order without gaps. The reader checks everything it relies
on (header size, JSON, dtypes, shapes, offsets in bounds, contiguous and non-overlapping, sizes
matching shapes) and raises :class:`SafetensorsError` naming the file and the tensor.
``BF16`` tensors load as float32 (NumPy has no bfloat16); ``F16`` stays float16.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from .errors import LanternError

__all__ = ["SafetensorsError", "save_file", "load_file", "read_header"]

#: safetensors dtype names and the NumPy dtypes (little-endian) they are stored as.
DTYPES: dict[str, str] = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                          "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_NAMES = {np.dtype(v).newbyteorder("=") if v[0] == "<" else np.dtype(v): k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit


class SafetensorsError(LanternError, ValueError):
    """A file is not valid safetensors, or a tensor cannot be stored in it."""


def _dtype_name(name: str, arr: np.ndarray) -> str:
    dt = arr.dtype.newbyteorder("=") if arr.dtype.byteorder in "<>" else arr.dtype
    try:
        return _NAMES[dt]
    except KeyError:
        raise SafetensorsError(f"safetensors: tensor {name!r} has dtype {arr.dtype}, which the format cannot "
                               f"store (supported: {', '.join(sorted(DTYPES))})") from None


def save_file(tensors: Mapping[str, Any], path: str | os.PathLike[str],
              metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> array) to ``path``, optionally with string ``metadata``.

    The file is written to a temporary name beside ``path`` and renamed, so a reader never
    sees half a file."""
    path = os.fspath(path)
    header: dict[str, Any] = {}
    if metadata:
        bad = {k: v for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)}
        if bad:
            raise SafetensorsError(f"safetensors: metadata must map strings to strings, got {bad!r}")
        header["__metadata__"] = dict(metadata)
    arrays = []
    offset = 0
    for name in sorted(tensors):
        if not isinstance(name, str) or name == "__metadata__":
            raise SafetensorsError(f"safetensors: bad tensor name {name!r}")
        arr = np.asarray(tensors[name])
        dtype = _dtype_name(name, arr)
        arr = np.asarray(arr, dtype=DTYPES[dtype], order="C")  # little-endian, row-major (0-d stays 0-d)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            for arr in arrays:
                f.write(arr.tobytes())
            f.flush()
            os.fsync(f.fileno())  # the data on disk before the name points at it
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _parse_header(data: bytes | memoryview, path: str) -> tuple[dict[str, Any], int]:
    if len(data) < 8:
        raise SafetensorsError(f"safetensors: {path} is {len(data)} bytes long, too short for the 8-byte header size")
    n = int.from_bytes(data[:8], "little")
    if n > _MAX_HEADER or 8 + n > len(data):
        raise SafetensorsError(f"safetensors: {path} declares a {n}-byte header, but the file has "
                               f"{len(data)} bytes (not a safetensors file, or truncated)")
    try:
        header = json.loads(bytes(data[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"safetensors: {path}: the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"safetensors: {path}: the header is a JSON {type(header).__name__}, not an object")
    return header, 8 + n


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed JSON header of a file (tensor entries and ``__metadata__``), without the data."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        rest = f.read(min(n, _MAX_HEADER + 1))
    return _parse_header(head + rest, path)[0]


def load_file(path: str | os.PathLike[str], *, with_metadata: bool = False) -> Any:
    """The tensors of ``path`` as a dict name -> NumPy array (native byte order, writable copies);
    with ``with_metadata=True``, a pair ``(tensors, metadata)``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    header, start = _parse_header(data, path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"safetensors: {path}: __metadata__ must map strings to strings")
    size = len(data) - start
    spans = []
    out: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        where = f"safetensors: {path}: tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{where}: expected {{dtype, shape, data_offsets}}, got {entry!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES and dtype != "BF16":
            raise SafetensorsError(f"{where}: unsupported dtype {dtype!r} (supported: "
                                   f"{', '.join(sorted([*DTYPES, 'BF16']))})")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                   for d in shape)):
            raise SafetensorsError(f"{where}: bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= size):
            raise SafetensorsError(f"{where}: data_offsets {offsets!r} are not within the {size} data bytes")
        itemsize = 2 if dtype == "BF16" else np.dtype(DTYPES[dtype]).itemsize
        expected = int(np.prod(shape, dtype=np.int64)) * itemsize
        if offsets[1] - offsets[0] != expected:
            raise SafetensorsError(f"{where}: {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype} "
                                   f"(needs {expected})")
        spans.append((offsets[0], offsets[1], name))
        raw = np.frombuffer(data, np.uint16 if dtype == "BF16" else DTYPES[dtype], offset=start + offsets[0],
                            count=expected // itemsize)
        if dtype == "BF16":  # the high half of a float32
            arr = (raw.astype("<u4") << 16).view("<f4").astype(np.float32)
        else:
            arr = raw.astype(np.dtype(DTYPES[dtype]).newbyteorder("="))
        out[name] = arr.reshape(tuple(shape))
    # The data must be exactly covered: no overlaps, no gaps, nothing after the last tensor.
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise SafetensorsError(f"safetensors: {path}: tensor {name!r} starts at byte {begin} of the data, "
                                   f"expected {end} (overlapping tensors or a gap)")
        end = stop
    if end != size:
        raise SafetensorsError(f"safetensors: {path}: {size - end} bytes after the last tensor")
    return (out, dict(metadata)) if with_metadata else out
