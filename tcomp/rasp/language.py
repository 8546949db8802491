"""RASP programs as immutable expression trees (Weiss et al. 2021, in tracr's flavour).

``tokens`` and ``indices`` are the two inputs. ``Map`` / ``SequenceMap`` apply a function per
position, ``Select`` builds a selector (which key positions each query position looks at) from a
comparison of a key and a query sequence, ``Closest`` keeps per query only the selected key closest
to it (the paper's ``select_closest``), ``Aggregate`` reads the selected values (categorical: the
one selected value; numerical: their mean), ``SelectorWidth`` counts the selected keys.

Every sequence is *categorical* (a finite value set, one-hot in a compiled model) or *numerical*
(one real number). ``value_set`` gives the finite value sets a compiler needs.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Hashable, Iterable
from typing import Any

_ids = itertools.count()


class Comparison(enum.Enum):
    """Predicate of ``Select``: ``pred(key, query)`` (a query position selects the keys it holds for)."""

    EQ = "=="
    LT = "<"
    LEQ = "<="
    GT = ">"
    GEQ = ">="
    NEQ = "!="
    TRUE = "true"
    FALSE = "false"

    def __call__(self, key: Any, query: Any) -> bool:
        if key is None or query is None:
            return False
        return _COMPARE[self](key, query)


_COMPARE: dict[Comparison, Callable[[Any, Any], bool]] = {
    Comparison.EQ: lambda k, q: k == q,
    Comparison.LT: lambda k, q: k < q,
    Comparison.LEQ: lambda k, q: k <= q,
    Comparison.GT: lambda k, q: k > q,
    Comparison.GEQ: lambda k, q: k >= q,
    Comparison.NEQ: lambda k, q: k != q,
    Comparison.TRUE: lambda k, q: True,
    Comparison.FALSE: lambda k, q: False,
}


class Expr:
    """Base of every RASP expression; ``name`` labels it in printed programs and compiled models."""

    def __init__(self, name: str | None = None):
        self.id = next(_ids)
        self.name = name or f"{type(self).__name__.lower()}_{self.id}"

    @property
    def children(self) -> tuple[Expr, ...]:
        return ()

    def named(self, name: str) -> Expr:
        self.name = name
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class SOp(Expr):
    """A sequence operation: one value per position."""

    numerical: bool = False

    @property
    def encoding(self) -> str:
        return "numerical" if self.numerical else "categorical"


class Tokens(SOp):
    def __init__(self) -> None:
        super().__init__("tokens")


class Indices(SOp):
    def __init__(self) -> None:
        super().__init__("indices")


tokens = Tokens()
indices = Indices()


class Map(SOp):
    """``f(x)`` at every position. ``numerical=True`` makes the output a numerical sequence."""

    def __init__(self, f: Callable[[Any], Any], x: SOp, *, numerical: bool = False, name: str | None = None):
        super().__init__(name)
        self.f, self.x, self.numerical = f, x, numerical

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.x,)


class SequenceMap(SOp):
    """``f(x, y)`` at every position."""

    def __init__(
        self,
        f: Callable[[Any, Any], Any],
        x: SOp,
        y: SOp,
        *,
        numerical: bool = False,
        name: str | None = None,
    ):
        super().__init__(name)
        self.f, self.x, self.y, self.numerical = f, x, y, numerical

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.x, self.y)


Predicate = Comparison | Callable[[Any, Any], bool]


class Selector(Expr):
    """A boolean matrix ``[query, key]``; combine with ``&``, ``|`` and ``~``."""

    def __and__(self, other: Selector) -> Selector:
        return SelectorAnd(self, other)

    def __or__(self, other: Selector) -> Selector:
        return SelectorOr(self, other)

    def __invert__(self) -> Selector:
        return SelectorNot(self)


class Select(Selector):
    """Query position ``i`` selects key position ``j`` iff ``predicate(keys[j], queries[i])``.

    ``predicate`` is a ``Comparison`` or any ``f(key, query) -> bool`` (e.g. a table read from weights).
    """

    def __init__(self, keys: SOp, queries: SOp, predicate: Predicate, *, name: str | None = None):
        super().__init__(name)
        self.keys, self.queries, self.predicate = keys, queries, predicate

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.keys, self.queries)

    def holds(self, key: Any, query: Any) -> bool:
        if key is None or query is None:
            return False
        return bool(self.predicate(key, query))


class SelectorAnd(Selector):
    def __init__(self, a: Selector, b: Selector, *, name: str | None = None):
        super().__init__(name)
        self.a, self.b = a, b

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)


class SelectorOr(SelectorAnd):
    pass


class _OfSelector(Selector):
    """A selector computed from one selector ``a``."""

    def __init__(self, a: Selector, *, name: str | None = None):
        super().__init__(name)
        self.a = a

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a,)


class SelectorNot(_OfSelector):
    pass


class Closest(_OfSelector):
    """Per query, only the one selected key *closest* to it (Transformer Programs' ``select_closest``).

    Query position ``i`` with selected key positions ``S`` (of ``a``) keeps the ``j`` in ``S``
    first in :func:`closest_order`: keys other than ``i`` before ``i`` itself, then by distance
    ``|i - j|``, then the earlier ``j``; ``S`` empty keeps none. A categorical ``Aggregate`` over it
    is always well defined (one key or none: ``None``). It is the order of the paper's fixed
    position bias (nearest keys highest, the earlier one at equal distance, the query's own
    position lowest). Only the direct selector of an ``Aggregate``."""

    @property
    def keys(self) -> SOp:  # of the selector it narrows (a ``Select`` once lowered)
        return self.a.keys  # type: ignore[attr-defined]

    @property
    def queries(self) -> SOp:
        return self.a.queries  # type: ignore[attr-defined]


def closest_order(i: int, n: int) -> list[int]:
    """Key positions ``0..n-1`` in the order ``Closest`` prefers them for query position ``i``:
    ``j != i`` first, then ``|i - j|`` ascending, then ``j`` ascending."""
    return sorted(range(n), key=lambda j: (j == i, abs(i - j), j))


class Aggregate(SOp):
    """Categorical: the value of the one selected key (``None`` when none is selected).
    Numerical: the mean of the selected values (``0`` when none is selected)."""

    def __init__(self, selector: Selector, x: SOp, *, numerical: bool = False, name: str | None = None):
        super().__init__(name)
        self.selector, self.x, self.numerical = selector, x, numerical

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.selector, self.x)


class SelectorWidth(SOp):
    """How many keys each query selects (categorical, values ``0..max_len``)."""

    def __init__(self, selector: Selector, *, name: str | None = None):
        super().__init__(name)
        self.selector = selector

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.selector,)


class Classify(SOp):
    """The output layer of a Transformer Program (Friedman et al. 2023): a linear classifier over
    categorical sequences (and numbers, scored by a table linear in the number, see
    :meth:`number_row`). At every position, class ``c`` scores ``bias[c] + sum_i weights[i][x_i][c]``
    (an input holding ``None``, or a value missing from its table, adds nothing); the output is the
    best-scoring class, the earlier one in ``classes`` on a tie. Not a RASP primitive: it stands for
    the unembedding the paper's programs end in, so it compiles only as a program's output."""

    def __init__(
        self,
        inputs: Iterable[SOp],
        weights: Iterable[dict[Any, Iterable[float]]],
        bias: Iterable[float],
        classes: Iterable[Hashable],
        *,
        name: str | None = None,
    ):
        super().__init__(name)
        self.inputs = tuple(inputs)
        self.weights = tuple({k: tuple(float(x) for x in v) for k, v in w.items()} for w in weights)
        self.bias = tuple(float(b) for b in bias)
        self.classes = tuple(classes)
        if len(self.weights) != len(self.inputs):
            raise ValueError(f"Classify {self.name}: {len(self.inputs)} inputs but {len(self.weights)} weight tables")
        bad = [k for w in self.weights for k, v in w.items() if len(v) != len(self.classes)]
        if len(self.bias) != len(self.classes) or bad:
            raise ValueError(
                f"Classify {self.name}: every weight vector and the bias need one entry per class "
                f"({len(self.classes)}); check the rows for values {bad[:4]}"
            )

    @property
    def children(self) -> tuple[Expr, ...]:
        return self.inputs

    def scores(self, values: Iterable[Any]) -> list[float]:
        """Class scores at one position whose inputs hold ``values``."""
        out = list(self.bias)
        for w, v in zip(self.weights, values):
            row = None if v is None else w.get(v)
            if row is not None:
                out = [a + b for a, b in zip(out, row)]
        return out

    def classify(self, values: Iterable[Any]) -> Any:
        s = self.scores(values)
        return self.classes[s.index(max(s))]

    def number_row(self, i: int, values: Iterable[float], rtol: float = 1e-5) -> list[float] | None:
        """For a numerical input ``i`` holding ``values``: the row ``r`` with
        ``weights[i][v] == v * r`` for every ``v`` (a missing ``v`` counts as adding nothing), i.e.
        the one unembedding row that scores the number exactly as the table does; ``None`` when the
        table is not linear in the number. ``rtol``, relative to the row's largest entry, absorbs
        float32 rounding of an extracted table (``v * row`` computed in float32)."""
        values = [float(v) for v in values]
        table = self.weights[i]
        zero = [0.0] * len(self.classes)
        pivot = max(values, key=abs, default=0.0)
        if pivot == 0.0:
            return zero
        row = [x / pivot for x in table.get(pivot, zero)]
        tol = rtol * (1.0 + max(abs(x) for x in row))
        for v in values:
            want = table.get(v, zero)
            if any(abs(w - v * r) > tol * max(1.0, abs(v)) for w, r in zip(want, row)):
                return None
        return row


def walk(root: Expr) -> list[Expr]:
    """Every expression under ``root`` in dependency order (children before parents), once each."""
    out: list[Expr] = []
    seen: set[int] = set()

    def visit(e: Expr) -> None:
        if e.id in seen:
            return
        seen.add(e.id)
        for c in e.children:
            visit(c)
        out.append(e)

    visit(root)
    return out


def _sorted(values: Iterable[Hashable]) -> list:
    vals = [v for v in set(values) if v is not None]
    try:
        return sorted(vals)
    except TypeError:
        return sorted(vals, key=repr)


def value_sets(root: Expr, vocab: Iterable[Hashable], max_len: int) -> dict[int, list]:
    """Sorted value set of every categorical sequence under ``root`` (by expression id).

    Numerical sequences get the values they may hold where that is finite: Map outputs, and an
    Aggregate of a 0/1 sequence (the means :func:`mean_values`); any other numerical Aggregate
    gets ``None`` (its means are not enumerated).
    """
    sets: dict[int, list | None] = {}
    for e in walk(root):
        if isinstance(e, Tokens):
            sets[e.id] = _sorted(vocab)
        elif isinstance(e, Indices):
            sets[e.id] = list(range(max_len))
        elif isinstance(e, Map):
            sets[e.id] = _apply_all(lambda v, e=e: e.f(v), [(v,) for v in sets[e.x.id] or []])
        elif isinstance(e, SequenceMap):
            pairs = list(itertools.product(sets[e.x.id] or [], sets[e.y.id] or []))
            sets[e.id] = _apply_all(lambda a, b, e=e: e.f(a, b), pairs)
        elif isinstance(e, Aggregate):
            if not e.numerical:
                sets[e.id] = sets[e.x.id]
            elif sets[e.x.id] is not None and set(sets[e.x.id]) <= {0, 1}:
                sets[e.id] = mean_values(max_len)
            else:
                sets[e.id] = None
        elif isinstance(e, SelectorWidth):
            sets[e.id] = list(range(max_len + 1))
        elif isinstance(e, Classify):
            sets[e.id] = _sorted(e.classes)
    return sets  # type: ignore[return-value]


def mean_values(max_len: int) -> list[float]:
    """Every mean of 0/1 values over 1..``max_len`` selected keys (and 0, an empty selection):
    the fractions ``p / q``, ``q <= max_len``, as the Python floats the evaluator computes."""
    return sorted({p / q for q in range(1, max_len + 1) for p in range(q + 1)})


def _apply_all(f: Callable[..., Any], args: list[tuple]) -> list:
    return _sorted(f(*a) for a in args)
