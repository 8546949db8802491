"""Reference semantics of RASP: run a program on one input sequence.

A compiled model represents "no value" as the zero vector, so the evaluator carries ``None``
the same way: a categorical Aggregate that selects nothing gives ``None``, a categorical Map or
SequenceMap of ``None`` gives ``None``, a numerical one gives ``0``, and a selector entry that reads
a ``None`` key or query (through any ``&``, ``|``, ``~``) is unselected. ``Closest`` keeps per query
the selected key first in ``closest_order`` (other keys before the query's own position, nearer
before farther, earlier before later).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tcomp.rasp import language as L
from tcomp.rasp.language import (
    Aggregate,
    Classify,
    Expr,
    Indices,
    Map,
    Select,
    SelectorAnd,
    SelectorNot,
    SelectorOr,
    SelectorWidth,
    SequenceMap,
    SOp,
    Tokens,
    walk,
)

Matrix = list[list[bool | None]]  # [query][key]; None where a key or query value read is None


def evaluate(program: SOp, inputs: Sequence[Any]) -> list[Any]:
    """The value of ``program`` at every position of ``inputs`` (a list of tokens)."""
    return evaluate_all(program, inputs)[program.id]


def evaluate_all(program: Expr, inputs: Sequence[Any]) -> dict[int, Any]:
    """Values of every expression under ``program`` (sequences and selector matrices), by id."""
    xs = list(inputs)
    n = len(xs)
    env: dict[int, Any] = {}
    for e in walk(program):
        env[e.id] = _step(e, env, xs, n)
    return env


def _none_default(e: SOp) -> Any:
    return 0 if e.numerical else None


def _step(e: Expr, env: dict[int, Any], xs: list, n: int) -> Any:
    if isinstance(e, Tokens):
        return list(xs)
    if isinstance(e, Indices):
        return list(range(n))
    if isinstance(e, Map):
        return [_none_default(e) if v is None else e.f(v) for v in env[e.x.id]]
    if isinstance(e, SequenceMap):
        return [
            _none_default(e) if a is None or b is None else e.f(a, b)
            for a, b in zip(env[e.x.id], env[e.y.id])
        ]
    if isinstance(e, Select):
        keys, queries = env[e.keys.id], env[e.queries.id]
        return [[None if k is None or q is None else e.holds(k, q) for k in keys] for q in queries]
    if isinstance(e, SelectorOr):
        return _combine(env[e.a.id], env[e.b.id], lambda x, y: x or y)
    if isinstance(e, SelectorAnd):
        return _combine(env[e.a.id], env[e.b.id], lambda x, y: x and y)
    if isinstance(e, SelectorNot):
        return [[None if x is None else not x for x in row] for row in env[e.a.id]]
    if isinstance(e, L.Closest):
        return closest(env[e.a.id])
    if isinstance(e, Aggregate):
        return aggregate(env[e.selector.id], env[e.x.id], e.numerical)
    if isinstance(e, SelectorWidth):
        return [sum(bool(s) for s in row) for row in env[e.selector.id]]
    if isinstance(e, Classify):
        return [e.classify([env[x.id][i] for x in e.inputs]) for i in range(n)]
    raise TypeError(f"cannot evaluate {e!r}")


def _combine(a: Matrix, b: Matrix, op) -> Matrix:
    return [[None if x is None or y is None else op(x, y) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]


def closest(matrix: Matrix) -> Matrix:
    """Per query row ``i`` only the selected key first in ``closest_order(i, n)`` (none if none is)."""
    out: Matrix = []
    for i, row in enumerate(matrix):
        pick = next((j for j in L.closest_order(i, len(row)) if row[j]), None)
        out.append([j == pick for j in range(len(row))])
    return out


def aggregate(matrix: Matrix, values: list, numerical: bool) -> list:
    out = []
    for row in matrix:
        picked = [v for v, s in zip(values, row) if s]
        if numerical:
            out.append(sum(0 if v is None else v for v in picked) / len(picked) if picked else 0)
        else:
            out.append(picked[0] if len(picked) == 1 else None)
    return out
