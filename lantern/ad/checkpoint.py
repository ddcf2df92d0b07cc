"""``lantern.checkpoint(fn)``: rematerialisation of a block (``jax.checkpoint``, ``torch.utils.checkpoint``)."""
from __future__ import annotations

import functools
from typing import Any, Callable

from ..staging import Staged
from ..tracing import current_frame


def checkpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, whose intermediates reverse mode does not keep: the backward part runs ``fn`` again from its
    arguments (forward, then backward), so only the arguments and results are held while the rest of the
    program runs. The gradient is the same; the forward work of ``fn`` is done twice.

    Use it on a layer of a deep network to trade compute for memory (``llama.Trainer(checkpoint=True)``
    does it per block). Works wherever ``grad`` does: inside ``cond`` branches, loops and recursive
    functions. ``fn`` may be a staged function (then each call shares one compiled body) or any Python
    function of staged values (traced at each call; values it reads from the enclosing function become
    arguments, gradients included). Outside a staged function it calls ``fn``.
    """
    shared = isinstance(fn, Staged)  # traced once per signature; a plain function is traced at each call
    staged = fn if shared else Staged(fn, getattr(fn, "__name__", "checkpointed"))

    @functools.wraps(getattr(fn, "python_fn", fn))
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_frame() is None:
            return staged(*args, **kwargs)
        call = staged.trace_call(args, kwargs) if shared else staged.trace_closure(args, kwargs)
        return staged.emit_call(call, checkpoint=True)

    return wrapper
