"""``lantern.checkpoint(fn)``: rematerialisation of a block (``jax.checkpoint``, ``torch.utils.checkpoint``)."""
from __future__ import annotations

import functools
from typing import Any, Callable

from ..ir.nodes import Call, Var
from ..control import UnknownRecursiveResult
from ..staging import Staged
from ..tensor import Tensor
from ..tracing import current_frame, user_location
from ..tree import unflatten


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
    staged = fn if isinstance(fn, Staged) else None
    plain = Staged(fn, getattr(fn, "__name__", "checkpointed")) if staged is None else fn

    @functools.wraps(getattr(fn, "python_fn", fn))
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        frame = current_frame()
        if frame is None:
            return plain(*args, **kwargs)
        call = staged.trace_call(args, kwargs) if staged is not None else plain.trace_closure(args, kwargs)
        function = frame.builder.functions.get(call.name) or frame.builder.in_progress[call.name]
        if function.result_types is None:
            raise UnknownRecursiveResult(call.name, user_location())
        outs = [Var(t, plain.name) for t in function.result_types]
        frame.add(Call(outs, loc=user_location(), fn=call.name, args=[t.var for t in call.tensors] + call.captured,
                       checkpoint=True))
        return unflatten(frame.builder.out_treedefs[call.name], [Tensor(v, frame) for v in outs])

    return wrapper
