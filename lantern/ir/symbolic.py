"""Symbolic sizes: dimensions known only at run time, and the guards that keep traced code valid.

A dimension of a :class:`~lantern.ir.types.TensorType` is an ``int`` or a :class:`Size`: a polynomial
with integer coefficients over named size variables (``n_words``, ``n_words * 150 + 1``), which is an
``int64_t`` expression in the generated C. Arithmetic with ints and other sizes stays symbolic
(``prod(shape)``, strides, ``n - 1``); a result without variables is a plain ``int``.

Deciding something about a size while tracing (``n == 1``, ``n > 0``, ``int(n)``, ``n % 4``) works as
``torch.compile``'s symbolic shapes do: the :class:`ShapeEnv` of the trace evaluates the question with
the sizes of the call being traced (the *hints*) and records the answer as a :class:`Guard`. A later
call reuses the compiled code only if every guard holds for its sizes (else that call is compiled
again), so a decision never silently gives a wrong result; ``int(n)`` guards ``n`` to its hint, which
is specialisation. Outside a trace, a question a size cannot answer structurally raises
:class:`SymbolicSizeError` (code generation asks :func:`hint` for heuristics instead).
"""
from __future__ import annotations

import contextlib
import contextvars
import operator
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from ..errors import LanternError

Monomial = tuple[str, ...]  # sorted variable names (repeats for powers); () is the constant term


class SymbolicSizeError(LanternError):
    """A question about a run-time size that cannot be answered without a trace's hints."""


def _normalize(terms: Mapping[Monomial, int]) -> Size | int:
    items = tuple(sorted((m, c) for m, c in terms.items() if c))
    if not items:
        return 0
    if len(items) == 1 and items[0][0] == ():
        return items[0][1]
    return Size(items)


def _terms(x: Size | int) -> dict[Monomial, int]:
    if isinstance(x, Size):
        return dict(x.terms)
    return {(): int(x)} if x else {}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class Size:
    """A dimension known only at run time: ``sum(coefficient * product(variables))`` (see the module docstring).

    ``==`` between different expressions is decided by a trace's :class:`ShapeEnv`, which records the
    answer (as for ``<``, ``bool`` and ``int``) as a guard; outside a trace they are unequal. A size cannot
    be hashed (a set or dict lookup would decide without a guard): types and guards key on ``shape_key``.
    """

    __slots__ = ("terms",)

    def __init__(self, terms: tuple[tuple[Monomial, int], ...]):
        self.terms = terms

    @staticmethod
    def var(name: str) -> Size:
        """The size variable ``name``."""
        return Size((((name,), 1),))

    @property
    def variable(self) -> str | None:
        """The name, where this size is exactly one variable (``n``, not ``2 * n`` or ``n + 1``)."""
        (mono, coef), *more = self.terms
        return mono[0] if not more and coef == 1 and len(mono) == 1 else None

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(v for m, _ in self.terms for v in m)

    # -------------------------------------------------------------- arithmetic
    def __add__(self, other: Any) -> Size | int:
        if not (_is_int(other) or isinstance(other, Size)):
            return NotImplemented
        terms = _terms(self)
        for m, c in _terms(other).items():
            terms[m] = terms.get(m, 0) + c
        return _normalize(terms)

    __radd__ = __add__

    def __neg__(self) -> Size | int:
        return _normalize({m: -c for m, c in self.terms})

    def __sub__(self, other: Any) -> Size | int:
        if not (_is_int(other) or isinstance(other, Size)):
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other: Any) -> Size | int:
        if not _is_int(other):
            return NotImplemented
        return (-self) + other

    def __mul__(self, other: Any) -> Size | int:
        if not (_is_int(other) or isinstance(other, Size)):
            return NotImplemented
        terms: dict[Monomial, int] = {}
        for m1, c1 in _terms(self).items():
            for m2, c2 in _terms(other).items():
                m = tuple(sorted(m1 + m2))
                terms[m] = terms.get(m, 0) + c1 * c2
        return _normalize(terms)

    __rmul__ = __mul__

    def __pow__(self, exponent: Any) -> Size | int:
        if not _is_int(exponent) or exponent < 0:
            return NotImplemented
        out: Size | int = 1
        for _ in range(exponent):
            out = out * self
        return out

    def exact_div(self, other: Size | int) -> Size | int | None:
        """``self / other`` where it is a polynomial (``(n * 150) / 150``, ``(n * m) / n``), else None."""
        if _is_int(other):
            if other and all(c % other == 0 for _, c in self.terms):
                return _normalize({m: c // other for m, c in self.terms})
            return None
        if isinstance(other, Size) and len(other.terms) == 1:
            (mono, coef), = other.terms
            out: dict[Monomial, int] = {}
            for m, c in self.terms:
                rest = list(m)
                for v in mono:
                    if v not in rest:
                        return None
                    rest.remove(v)
                if c % coef:
                    return None
                out[tuple(rest)] = c // coef
            return _normalize(out)
        return None

    def __floordiv__(self, other: Any) -> Size | int:
        if not (_is_int(other) or isinstance(other, Size)):
            return NotImplemented
        exact = self.exact_div(other)
        return exact if exact is not None else _decide_int(self) // _concrete(other)

    def __rfloordiv__(self, other: Any) -> int:
        return operator.floordiv(other, _decide_int(self))

    def __mod__(self, other: Any) -> Size | int:
        if not (_is_int(other) or isinstance(other, Size)):
            return NotImplemented
        if self.exact_div(other) is not None:
            return 0
        return _decide_int(self) % _concrete(other)

    def __rmod__(self, other: Any) -> int:
        return operator.mod(other, _decide_int(self))

    def __truediv__(self, other: Any) -> float:
        return _decide_int(self) / _concrete(other)

    def __rtruediv__(self, other: Any) -> float:
        return other / _decide_int(self)

    # -------------------------------------------------------------- decisions (guards while tracing)
    def __eq__(self, other: Any) -> bool:
        if not (_is_int(other) or isinstance(other, Size)):
            return NotImplemented
        diff = self - other
        if _is_int(diff):
            return diff == 0
        env = _ENV.get()
        if env is None:  # outside a trace: different expressions are different sizes
            return False
        if env.frozen:  # code generation: equal if the trace made them so (a guard), else as expressions
            return env.recorded(diff, "==") is True
        return _decide(diff, "==")

    def __ne__(self, other: Any) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        # In a set or as a dict key a run-time size would be compared by hash, without a guard: ``n in {3, 4}``
        # would answer for the sizes traced only. (Types and guards hash the expression: ``shape_key``.)
        raise TypeError(f"a run-time size ({self.pretty()}) cannot be hashed: compare it with == (a guarded "
                        "decision), or use int() to make the code specific to this size")

    def _compare(self, other: Any, rel: str) -> bool:
        if not (_is_int(other) or isinstance(other, Size)):
            return NotImplemented
        diff = self - other
        if _is_int(diff):
            return _RELATIONS[rel](diff, 0)
        return _decide(diff, rel)

    def __lt__(self, other: Any) -> bool:
        return self._compare(other, "<")

    def __le__(self, other: Any) -> bool:
        return self._compare(other, "<=")

    def __gt__(self, other: Any) -> bool:
        return self._compare(other, ">")

    def __ge__(self, other: Any) -> bool:
        return self._compare(other, ">=")

    def __bool__(self) -> bool:
        return _decide(self, "!=")

    def __index__(self) -> int:
        return _decide_int(self)

    __int__ = __index__

    # -------------------------------------------------------------- text
    def pretty(self) -> str:
        """``n_words * 150 + 1`` (how the IR printer shows a dimension)."""
        parts = []
        for mono, coef in reversed(self.terms):  # the constant term (the smallest monomial) last
            factors = list(mono) if abs(coef) == 1 and mono else [str(abs(coef)), *mono]
            text = " * ".join(factors)
            parts.append(("- " if coef < 0 else "+ ") + text)
        out = " ".join(parts)
        return out[2:] if out.startswith("+ ") else "-" + out[2:]

    def __str__(self) -> str:
        """The C expression (parenthesised unless it is one variable)."""
        return self.variable or f"({self.pretty()})"

    def __repr__(self) -> str:  # (shapes in messages print as tuples: ``(n_words, 150)``)
        return self.pretty()

    def __reduce__(self) -> tuple:
        return (Size, (self.terms,))

    def evaluate(self, values: Mapping[str, int]) -> int:
        """The value of this size where each variable has the value in ``values``."""
        total = 0
        for mono, coef in self.terms:
            term = coef
            for v in mono:
                term *= values[v]
            total += term
        return total


_RELATIONS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
              ">=": operator.ge}
_NEGATION = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
#: The relation with both sides swapped (``a < b`` is ``b > a``).
_FLIPPED = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "==", "!=": "!="}


def is_symbolic(x: Any) -> bool:
    return isinstance(x, Size)


def evaluate(x: Size | int, values: Mapping[str, int]) -> int:
    """``x`` with every size variable replaced by its value."""
    return x.evaluate(values) if isinstance(x, Size) else x


def evaluate_shape(shape: tuple[Size | int, ...], values: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(evaluate(d, values) for d in shape)


def substitute(value: Any, values: Mapping[str, int]) -> Any:
    """``value`` (an attribute: a size, or tuples and lists of them) with its sizes evaluated."""
    if isinstance(value, Size):
        return value.evaluate(values)
    if isinstance(value, (tuple, list)) and any(isinstance(v, (Size, tuple, list)) for v in value):
        return type(value)(substitute(v, values) for v in value)
    return value


def shape_key(shape: tuple[Size | int, ...]) -> tuple:
    """``shape`` as a hashable key (a run-time size by its expression)."""
    return tuple(d.terms if isinstance(d, Size) else d for d in shape)


def shape_variables(shape: tuple[Size | int, ...]) -> set[str]:
    return {v for d in shape if isinstance(d, Size) for v in d.variables}


def shape_text(shape: tuple[Size | int, ...]) -> str:
    """``n_words,150``: a shape as the IR printer shows it."""
    return ",".join(d.pretty() if isinstance(d, Size) else str(d) for d in shape)


# ------------------------------------------------------------------ guards


@dataclass(frozen=True)
class Guard:
    """``expression <relation> 0``, true for the sizes a trace saw (its hints)."""

    expression: Size
    relation: str

    def __hash__(self) -> int:
        return hash((self.expression.terms, self.relation))

    def holds(self, values: Mapping[str, int]) -> bool:
        return _RELATIONS[self.relation](self.expression.evaluate(values), 0)

    def __str__(self) -> str:
        return f"{self.expression.pretty()} {self.relation} 0"


@dataclass
class ShapeEnv:
    """The size variables of one trace with their hints (the sizes of the call being traced), and the
    guards recorded by the decisions taken on them."""

    hints: dict[str, int]
    guards: dict[Guard, None] = field(default_factory=dict)  # (ordered set)
    #: set once the trace is done: code generation records no guards (see :func:`_decide`)
    frozen: bool = False
    #: variables some decision fixed to one value (``int(n)``, ``n // 3``): the code is not general in them
    specialized: dict[str, int] = field(default_factory=dict)
    #: where each of them was fixed (the user's line and lantern's)
    fixed_at: dict[str, str] = field(default_factory=dict)

    def decide(self, expression: Size, relation: str) -> bool:
        outcome = _RELATIONS[relation](expression.evaluate(self.hints), 0)
        guard = Guard(expression, relation if outcome else _NEGATION[relation])
        self._guard(guard)
        if guard.relation == "==" and len(expression.variables) == 1:
            # ``n == 3`` held: the code is right for that n only (the types built before still say n, so
            # the compile is redone with n a constant: see Staged._compile_with_sizes)
            (v,) = expression.variables
            self._fix(v)
        return outcome

    def _fix(self, v: str) -> None:
        if v not in self.specialized:
            self.specialized[v] = self.hints[v]
            from ..source import user_location
            self.fixed_at[v] = f"{user_location()} ({_caller()})"

    def value(self, expression: Size) -> int:
        """``int(expression)``: its hint, guarded to stay that."""
        value = expression.evaluate(self.hints)
        self._guard(Guard(expression - value, "=="))  # type: ignore[arg-type]  # (it has variables)
        for v in expression.variables:
            self._fix(v)
        return value


    def recorded(self, expression: Size, relation: str) -> bool | None:
        """What the trace decided about ``expression <relation> 0`` (a guard it recorded), or None."""
        if Guard(expression, relation) in self.guards:
            return True
        if Guard(expression, _NEGATION[relation]) in self.guards:
            return False
        flipped = _FLIPPED[relation]
        negated = -expression
        if isinstance(negated, Size):
            if Guard(negated, flipped) in self.guards:
                return True
            if Guard(negated, _NEGATION[flipped]) in self.guards:
                return False
        return None

    def _guard(self, guard: Guard) -> None:
        if guard not in self.guards:
            self.guards[guard] = None
            if os.environ.get("LANTERN_LOG_GUARDS", "") not in ("", "0"):
                print(f"lantern: guard {guard} from {_caller()}", file=sys.stderr, flush=True)


def _caller() -> str:
    """Where a decision on a size was taken: the innermost frames outside this module."""
    frames = [f for f in traceback.extract_stack()[:-3] if not f.filename.endswith("symbolic.py")]
    return " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(frames[-4:]))


_ENV: contextvars.ContextVar[ShapeEnv | None] = contextvars.ContextVar("lantern_shape_env", default=None)


@contextlib.contextmanager
def shape_env(env: ShapeEnv | None) -> Iterator[ShapeEnv | None]:
    """Make ``env`` the one decisions on sizes are recorded in (for a trace and its compilation)."""
    token = _ENV.set(env)
    try:
        yield env
    finally:
        _ENV.reset(token)


def current_env() -> ShapeEnv | None:
    return _ENV.get()


def _decide(expression: Size, relation: str) -> bool:
    """A comparison: guarded while tracing. After the trace (code generation, the verifier between passes)
    only what the trace decided (its guards) is known: any other question raises ``SymbolicSizeError``, so
    code generation never picks code that is right only for the sizes traced (heuristics use :func:`hint`;
    kernels test ``isinstance(d, Size)`` for "may be any size")."""
    env = _ENV.get()
    if env is None:
        raise SymbolicSizeError(f"whether {expression.pretty()} {relation} 0 is known only at run time "
                                "(a run-time size was compared outside a trace)")
    if env.frozen:
        known = env.recorded(expression, relation)
        if known is None:
            raise SymbolicSizeError(f"whether {expression.pretty()} {relation} 0 is known only at run time "
                                    "(code generation asked what the trace did not decide)")
        return known
    return env.decide(expression, relation)


def _decide_int(x: Size | int) -> int:
    if not isinstance(x, Size):
        return x
    env = _ENV.get()
    if env is None or env.frozen:
        raise SymbolicSizeError(f"the value of the run-time size {x.pretty()} is known only at run time")
    return env.value(x)


def _concrete(x: Any) -> Any:
    return _decide_int(x) if isinstance(x, Size) else x


#: The value heuristics assume for a size variable without a hint.
DEFAULT_HINT = 64


def hint(x: Size | int) -> int:
    """A typical value of ``x`` (for heuristics: which kernel, whether to tile), never a guard: the size of
    the call being traced (the current :class:`ShapeEnv`'s hints), else :data:`DEFAULT_HINT` per variable."""
    if not isinstance(x, Size):
        return x
    env = _ENV.get()
    hints = env.hints if env is not None else {}
    return x.evaluate({v: hints.get(v, DEFAULT_HINT) for v in x.variables})


def more_than_one(d: Size | int) -> bool:
    """An extent that may exceed 1 (a run-time size always may): it needs a loop."""
    return isinstance(d, Size) or d > 1


def known_equal(a: Size | int, b: Size | int) -> bool:
    """``a`` and ``b`` are the same expression (no guard: a question code generation may ask)."""
    diff = a - b
    return _is_int(diff) and diff == 0
