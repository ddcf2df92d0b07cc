"""``python -m lantern`` (or ``lantern``): inspect what a staged function compiles to; run the demo.

    python -m lantern inspect mymodel:layer --arg f32[4,3] --arg f32[3,5] --arg f32[5]
    python -m lantern inspect path/to/file.py:step --arg "{'w': f32[3,3], 'b': f32[3]}" --arg f32[2,3]
    python -m lantern inspect mymodel:scale --arg f64[8] --static k=2.0
    python -m lantern demo
    python -m lantern llama-train --steps 600 --out llama.safetensors
    python -m lantern llama-generate llama.safetensors --prompt "The "

An argument is an array type ``DTYPE[SHAPE]`` (``f32[4,3]``, ``i64[]`` for a 0-d array,
``f32[n,3]`` for a first dimension that is a run-time size named ``n``;
dtypes f32 f64 i32 i64 bool), a Python literal (a compile-time constant such as ``2.0``
or ``'tanh'``), or a nested tuple/list/dict of those. ``--static name=VALUE`` (or
``--arg name=VALUE``) passes a keyword argument.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import re
import sys
from typing import Any, Sequence

import numpy as np

DTYPE_NAMES = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "bool": "bool",
               "float32": "float32", "float64": "float64", "int32": "int32", "int64": "int64"}
_ARRAY_TYPE = re.compile(r"\b(" + "|".join(DTYPE_NAMES) + r")\[([^\[\]]*)\]")
SECTIONS = ("ir", "optimized", "c")


#: The size a zero array gets for the k-th run-time size named on the command line (the code serves any).
RUN_TIME_SIZE_HINT = 64


def parse_value(text: str, sizes: dict[str, list] | None = None) -> Any:
    """An argument from the command line: array types become zero arrays, the rest is a Python literal.

    A dimension written as a name (``f32[n,3]``) is a run-time size: its array gets a placeholder size
    (distinct per name), and ``sizes`` (when given) receives, per name, the (array, axis) pairs of it."""
    arrays: list[np.ndarray] = []
    named: list[tuple[int, int, str]] = []  # (array, axis, name)

    def to_marker(m: re.Match) -> str:
        dims = [d.strip() for d in m.group(2).split(",") if d.strip()]
        if sizes is not None:
            for axis, d in enumerate(dims):
                if d.isidentifier():
                    names = list(dict.fromkeys([n for *_, n in named] + list(sizes) + [d]))
                    named.append((len(arrays), axis, d))
                    dims[axis] = str(RUN_TIME_SIZE_HINT + names.index(d))
        try:
            shape = tuple(int(d) for d in dims)
        except ValueError:
            raise ValueError(f"bad shape in {m.group(0)!r}: dimensions must be integers or names of "
                             "run-time sizes") from None
        if any(d < 0 for d in shape):
            raise ValueError(f"bad shape in {m.group(0)!r}: dimensions must not be negative")
        arrays.append(np.zeros(shape, DTYPE_NAMES[m.group(1)]))
        return f"__lantern_array_{len(arrays) - 1}__"

    marked = _ARRAY_TYPE.sub(lambda m: repr(to_marker(m)), text)
    try:
        value = ast.literal_eval(marked)
    except (ValueError, SyntaxError):
        raise ValueError(f"cannot read {text!r}: expected an array type such as f32[4,3] or i64[], a Python "
                         "literal, or a tuple/list/dict of them") from None

    def restore(v: Any) -> Any:
        if isinstance(v, str):
            m = re.fullmatch(r"__lantern_array_(\d+)__", v)
            return arrays[int(m.group(1))] if m else v
        if isinstance(v, (tuple, list)):
            return type(v)(restore(x) for x in v)
        if isinstance(v, dict):
            return {k: restore(x) for k, x in v.items()}
        return v

    value = restore(value)
    for k, axis, name in named:
        sizes.setdefault(name, []).append((arrays[k], axis))  # type: ignore[union-attr]
    return value


#: run-time sizes named in the arguments of this command line (parse_value's ``sizes``)
_named_sizes: dict[str, list] = {}


def _argument(text: str) -> Any:
    try:
        return parse_value(text, _named_sizes)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _keyword(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, _argument(value)


def _positional_or_keyword(text: str) -> tuple[str | None, Any]:
    m = re.match(r"([A-Za-z_]\w*)=(?!=)", text)
    if m:
        return _keyword(text)
    return None, _argument(text)


def load_function(target: str) -> Any:
    """``module:function`` or ``path/to/file.py:function`` (``function`` may be dotted: ``Class.method``)."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:FUNCTION or FILE.py:FUNCTION, got {target!r}")
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise ValueError(f"no such file: {module_name}")
        name = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(name, module)
        sys.path.insert(0, os.path.dirname(path))
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target} is not callable")
    return obj


def inspect_command(args: argparse.Namespace) -> int:
    import lantern

    fn = load_function(args.target)
    staged = fn if isinstance(fn, lantern.Staged) else lantern.stage(fn)
    positional = [v for k, v in args.args if k is None]
    keywords = {k: v for k, v in args.args if k is not None}
    keywords.update(dict(args.static))
    exe = staged.lower_with_sizes(positional, keywords, _named_sizes) if _named_sizes else \
        staged.lower(*positional, **keywords)
    shown = args.only or list(SECTIONS)
    parts = []
    if "ir" in shown:
        parts.append(f"// ---- IR of {staged.name} (as traced)\n{exe.ir.rstrip()}")
    if "optimized" in shown:
        parts.append(f"// ---- IR prepared for C (inlined, fused)\n{exe.optimized_ir.rstrip()}")
    if "c" in shown:
        parts.append(f"// ---- C: {exe.c_path}\n// shared object: {exe.so_path}\n{exe.c_source.rstrip()}")
    print("\n\n".join(parts))
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from . import demo  # imported here: it is a larger program, and nothing else needs it

    result = demo.main()
    return result if isinstance(result, int) else 0


def llama_train_command(args: argparse.Namespace) -> int:
    from .models import llama
    from .models.train_llama import train

    config = llama.preset(args.preset)
    if args.seq > config.max_seq_len:
        config = config.replace(max_seq_len=args.seq)
    plot = args.plot or None
    if plot and importlib.util.find_spec("matplotlib") is None:
        print(f"lantern llama-train: matplotlib is not installed, so no loss curve ({plot})", file=sys.stderr)
        plot = None
    train(config, steps=args.steps, batch=args.batch, seq=args.seq, lr=args.lr, weight_decay=args.weight_decay,
          clip=args.clip, seed=args.seed, plot=plot, checkpoint=args.out, recompute_blocks=args.recompute_blocks)
    return 0


def llama_generate_command(args: argparse.Namespace) -> int:
    from .models.train_llama import generate_text

    generate_text(args.checkpoint, args.prompt, args.tokens, temperature=args.temperature, top_p=args.top_p,
                  seed=args.seed)
    return 0


def _add_llama_commands(sub: Any) -> None:
    tr = sub.add_parser("llama-train", help="train a small byte-level Llama on the pydoc corpus; write a "
                        "safetensors checkpoint and a PNG loss curve")
    tr.add_argument("--preset", default="small", help="a lantern.models.llama.PRESETS name (default small)")
    tr.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    tr.add_argument("--batch", type=int, default=16, help="windows per step (default 16)")
    tr.add_argument("--seq", type=int, default=128, help="tokens per window (default 128)")
    tr.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the cosine schedule (default 3e-3)")
    tr.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    tr.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip (default 1.0)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", default="llama.safetensors", help="checkpoint path (default llama.safetensors)")
    tr.add_argument("--plot", default="llama_loss.png", help="loss-curve PNG ('' for none; needs matplotlib)")
    tr.add_argument("--recompute-blocks", action="store_true",
                    help="run each block again in the backward part instead of keeping its intermediates "
                    "(lantern.checkpoint: less memory, about a third more time)")
    tr.set_defaults(run=llama_train_command)
    gen = sub.add_parser("llama-generate", help="continue a prompt with a Llama checkpoint, streaming the text")
    gen.add_argument("checkpoint", nargs="?", default="llama.safetensors", help="safetensors file (llama-train's)")
    gen.add_argument("--prompt", default="The ", help="text to continue")
    gen.add_argument("--tokens", type=int, default=200, help="bytes to generate (default 200)")
    gen.add_argument("--temperature", type=float, default=0.8, help="0 for greedy (default 0.8)")
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(run=llama_generate_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lantern", description="Lantern for Python: a staged compiler to C.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ins = sub.add_parser("inspect", help="print the IR and the generated C of a function for given argument types",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ins.add_argument("target", metavar="MODULE:FUNCTION", help="a dotted module or a .py file, then the function")
    ins.add_argument("--arg", dest="args", action="append", type=_positional_or_keyword, default=[],
                     metavar="TYPE", help="an argument, in order: f32[4,3], i64[], 2.0, {'w': f32[3]}, or NAME=...")
    ins.add_argument("--static", action="append", type=_keyword, default=[], metavar="NAME=VALUE",
                     help="a keyword argument (a Python constant or an array type)")
    ins.add_argument("--only", action="append", choices=SECTIONS, help="print only this section (repeatable)")
    ins.set_defaults(run=inspect_command)
    demo = sub.add_parser("demo", help="train the small demo model (lantern.demo)")
    demo.set_defaults(run=demo_command)
    _add_llama_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import LanternError

    parser = build_parser()
    _named_sizes.clear()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (LanternError, ValueError, ImportError, OSError) as exc:
        print(f"lantern {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
