"""C spellings of lantern dtypes, literals and elementwise expressions."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

C_TYPE = {"float32": "float", "float64": "double", "int32": "int32_t", "int64": "int64_t", "bool": "lt_bool"}
SUFFIX = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "bool"}
FLOATS = ("float32", "float64")


def fma_function(dtype: str) -> str:
    """C's fused multiply-add for a float dtype: one rounding. Kernels write it out, because gcc contracts
    nothing itself under ``-std=c11``, and a separate multiply and add took twice the instructions."""
    return "fmaf" if dtype == "float32" else "fma"


def literal(value: Any, dtype: str) -> str:
    """A C literal of ``value`` in ``dtype`` that reads back exactly (parenthesized if negative)."""
    text = _literal(value, dtype)
    return f"({text})" if text.startswith("-") else text


def _literal(value: Any, dtype: str) -> str:
    if dtype == "bool":
        return "1" if value else "0"
    if dtype in ("int32", "int64"):
        v = int(value)
        if dtype == "int64" and not -2**31 < v < 2**31:
            return f"INT64_C({v})" if v != -2**63 else "INT64_MIN"
        return str(v)
    v = float(value)
    suffix = "f" if dtype == "float32" else ""
    cast = "(float)" if dtype == "float32" else "(double)"
    if math.isnan(v):
        return f"{cast}NAN"
    if math.isinf(v):
        return f"{cast}INFINITY" if v > 0 else f"-{cast}INFINITY"
    text = str(np.float32(v)) if dtype == "float32" else repr(v)
    if "e" not in text and "." not in text:
        text += ".0"
    return text + suffix


def elementwise_expr(prim: str, in_dtypes: list[str], out_dtype: str, args: list[str], attrs: dict[str, Any]) -> str:
    """The C expression computing one element of ``prim`` from operand expressions ``args``."""
    t = in_dtypes[0] if in_dtypes else out_dtype
    sfx = SUFFIX.get(t, "")
    is_float = t in FLOATS
    a = args[0] if args else ""
    b = args[1] if len(args) > 1 else ""
    one = literal(1, t) if t != "bool" else "1"
    fsuffix = "f" if t == "float32" else ""
    # lantern's name -> C's (<math.h>, `f` suffix for float32); round is rint: half to even, as NumPy
    unary_math = {"exp": "exp", "log": "log", "sin": "sin", "cos": "cos", "tanh": "tanh", "sqrt": "sqrt",
                  "floor": "floor", "log1p": "log1p", "expm1": "expm1", "round": "rint", "tan": "tan",
                  "arcsin": "asin", "arccos": "acos", "arctan": "atan", "sinh": "sinh", "cosh": "cosh", "erf": "erf"}
    if prim in ("tanh", "exp") and t == "float32":
        return f"lt_{prim}_f32({a})"  # vectorizable (see the runtime header)
    if prim in unary_math:
        return f"{unary_math[prim]}{fsuffix}({a})"
    if prim == "arctan2":
        return f"atan2{fsuffix}({a}, {b})"
    match prim:
        case "neg":
            return f"-{a}"
        case "stop_gradient":
            return a
        case "rsqrt":
            return f"{one} / sqrt{fsuffix}({a})"
        case "sigmoid":
            return f"lt_sigmoid_{sfx}({a})"
        case "relu":
            return f"({a} < 0 ? {literal(0, t)} : {a})"
        case "abs":
            return f"fabs{fsuffix}({a})" if is_float else f"({a} < 0 ? -{a} : {a})"
        case "sign":
            if is_float:
                return f"({a} > 0 ? {one} : {a} < 0 ? -{one} : {a})"
            return f"(({C_TYPE[t]})(({a} > 0) - ({a} < 0)))"
        case "logical_not":
            return f"({a} ^ 1)"  # bools are 0/1 bytes: bitwise logic (see "logical_and")
        case "add" | "sub" | "mul" | "div":
            op = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[prim]
            if t == "int32" and prim != "div":
                # wrap around like NumPy instead of overflowing (undefined in C)
                return f"(int32_t)((uint32_t){a} {op} (uint32_t){b})"
            if t == "int64" and prim != "div":
                return f"(int64_t)((uint64_t){a} {op} (uint64_t){b})"
            return f"{a} {op} {b}"
        case "maximum" | "minimum":
            return f"lt_{prim[:3]}_{sfx}({a}, {b})"
        case "pow":
            return f"pow{fsuffix}({a}, {b})" if is_float else f"lt_ipow_{sfx}({a}, {b})"
        case "floordiv" | "mod":
            return f"lt_{prim}_{sfx}({a}, {b})"
        case "eq" | "ne" | "lt" | "le" | "gt" | "ge":
            if t == "bool":  # 0/1 bytes: bitwise (and `0 <= b` on an unsigned byte draws -Wtype-limits)
                return {"eq": f"({a} ^ {b} ^ 1)", "ne": f"({a} ^ {b})", "lt": f"(({a} ^ 1) & {b})",
                        "le": f"(({a} ^ 1) | {b})", "gt": f"({a} & ({b} ^ 1))", "ge": f"({a} | ({b} ^ 1))"}[prim]
            op = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[prim]
            return f"{a} {op} {b}"
        case "logical_and":
            # Bitwise on 0/1 bytes, never `&&`/`||`: gcc 12 at -O3 -march=native (AVX-512) miscompiles the
            # vectorized short-circuit forms with broadcast operands; `&` and `|` need no branches.
            return f"({a} & {b})"
        case "logical_or":
            return f"({a} | {b})"
        case "where":
            return f"lt_where_{SUFFIX[out_dtype]}({a}, {b}, {args[2]})"  # not `?:`: see the runtime header
        case "cast":
            return cast_expr(a, t, out_dtype)
        case "broadcast":
            return a
        case "fill":
            return literal(attrs["value"], out_dtype)
    raise NotImplementedError(f"no C expression for elementwise primitive {prim}")


def cast_expr(a: str, src: str, dst: str) -> str:
    if dst == "bool":
        return f"({a} != 0)"
    if src in FLOATS and dst in ("int32", "int64"):
        return f"lt_{SUFFIX[src]}_to_{SUFFIX[dst]}({a})"
    return f"({C_TYPE[dst]}){a}"
