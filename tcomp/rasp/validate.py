"""Static checks that a RASP program compiles to weights that compute it exactly.

tracr compiles some programs it cannot get right (a categorical Aggregate whose selector picks
several keys silently averages one-hot vectors). Here each such program is refused with the
expression and the reason. A categorical Aggregate must be *provably* at most one key per query:
its selector (or one side of an ``&``) is ``Select(keys, queries, pred)`` where ``keys`` is unique
per position and each query value matches at most one key value. Uniqueness is inferred:
``indices`` is unique; an injective Map of a unique sequence is; an injective SequenceMap with a
unique argument is; ``SelectorWidth(Select(u, u, <,<=,>,>=))`` of a unique ``u`` is (ranks).
``Closest(s)`` keeps at most one key per query by construction: an Aggregate over it needs no
proof, but it must be the Aggregate's own selector (not inside ``&``, ``|``, ``~``, another
``Closest`` or a ``SelectorWidth``: one head computes it).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from tcomp.errors import InputError
from tcomp.rasp import language as L


class ValidationError(InputError):
    """A RASP program the compiler would get wrong; ``problems`` lists ``(expression, reason)``."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = "\n".join(f"  {name}: {why}" for name, why in problems)
        super().__init__(f"the RASP program cannot be compiled exactly:\n{lines}")


@dataclass
class Facts:
    sets: dict[int, Any]
    unique: dict[int, bool]


_ORDER = {L.Comparison.LT, L.Comparison.LEQ, L.Comparison.GT, L.Comparison.GEQ}


def problems(program: L.SOp, vocab: Iterable[Hashable], max_len: int) -> list[tuple[str, str]]:
    """Every reason ``program`` cannot be compiled exactly (empty when it can)."""
    vocab = list(vocab)
    if max_len < 1:
        return [(program.name, f"max_len must be at least 1, got {max_len}")]
    try:
        sets = L.value_sets(program, vocab, max_len)
    except Exception as exc:  # noqa: BLE001 - a user function failed on a value of its input
        return [(program.name, f"a function raised {type(exc).__name__}: {exc} on a value of its input")]
    facts = Facts(sets, {})
    out: list[tuple[str, str]] = []
    for e in L.walk(program):
        facts.unique[e.id] = _unique(e, facts)
        out += [(e.name, why) for why in _check(e, facts)]
        if isinstance(e, L.Classify) and e is not program:
            out.append((e.name, "a Classify compiles only as the program's output (it is the unembedding)"))
    return out


def validate(program: L.SOp, vocab: Iterable[Hashable], max_len: int) -> None:
    """Raise ``ValidationError`` naming each expression the compiler would get wrong."""
    found = problems(program, vocab, max_len)
    if found:
        raise ValidationError(found)


def _check(e: L.Expr, f: Facts) -> list[str]:
    why: list[str] = []
    ins: list[L.Expr] = []
    if isinstance(e, (L.Map, L.SequenceMap)):
        ins = [e.x] + ([e.y] if isinstance(e, L.SequenceMap) else [])
        for x in ins:
            if not getattr(x, "numerical", False):
                continue
            if isinstance(e, L.SequenceMap):
                why.append(f"reads numerical {x.name}; a SequenceMap becomes a table over categorical inputs")
            elif not f.sets.get(x.id):
                why.append(
                    f"reads numerical {x.name}, whose values are not a known finite set (a Map of a number "
                    "compiles for means of 0/1 values and numerical Maps)"
                )
        if not why and None in _outputs(e, f):
            why.append("its function returns None, which the compiled model uses for 'no value'")
        if not why and not e.numerical and not f.sets[e.id]:
            why.append("has an empty value set")
    elif isinstance(e, L.Select):
        for x in (e.keys, e.queries):
            if x.numerical:
                why.append(f"compares numerical {x.name}; Select compares categorical sequences")
    elif isinstance(e, L.Classify):
        for i, x in enumerate(e.inputs):
            if not x.numerical:
                continue
            if not f.sets.get(x.id):
                why.append(
                    f"reads numerical {x.name}, whose values are not a known finite set (a Classify "
                    "scores means of 0/1 values and numerical Maps)"
                )
            elif e.number_row(i, f.sets[x.id]) is None:
                why.append(
                    f"scores numerical {x.name} by a table that is not value x row; the unembedding "
                    "multiplies the number by one row (make the table linear, or Map the number to a "
                    "categorical sequence first)"
                )
    elif isinstance(e, L.Aggregate):
        if e.numerical and not e.x.numerical:
            why.append(
                f"numerical Aggregate of categorical {e.x.name}; make it numerical (Map(..., numerical=True))"
            )
        if not e.numerical:
            if e.x.numerical:
                why.append(f"categorical Aggregate of numerical {e.x.name}; use numerical=True (a mean)")
            reason = "" if isinstance(e.selector, L.Closest) else _at_most_one(e.selector, f)
            if reason:
                why.append(f"categorical Aggregate needs at most one selected key per query, but {reason}")
    elif isinstance(e, (L.SelectorAnd, L.SelectorNot, L.Closest, L.SelectorWidth)):
        inner = [e.selector] if isinstance(e, L.SelectorWidth) else list(e.children)
        if any(isinstance(c, L.Closest) for c in inner):
            why.append("reads a Closest selector; Closest is only the direct selector of an Aggregate")
    return why


def _outputs(e: L.Map | L.SequenceMap, f: Facts) -> list:
    if isinstance(e, L.Map):
        return [e.f(v) for v in f.sets[e.x.id] or []]
    return [e.f(a, b) for a, b in itertools.product(f.sets[e.x.id] or [], f.sets[e.y.id] or [])]


def _injective(outs: list) -> bool:
    return len(set(outs)) == len(outs)


def _unique(e: L.Expr, f: Facts) -> bool:
    """Is ``e`` provably different at every position of every input?"""
    if isinstance(e, L.Indices):
        return True
    if isinstance(e, L.Map) and not e.numerical:
        return f.unique.get(e.x.id, False) and _injective(_outputs(e, f))
    if isinstance(e, L.SequenceMap) and not e.numerical:
        either = f.unique.get(e.x.id, False) or f.unique.get(e.y.id, False)
        return either and _injective(_outputs(e, f))
    if isinstance(e, L.SelectorWidth) and isinstance(e.selector, L.Select):
        s = e.selector
        return s.keys is s.queries and s.predicate in _ORDER and f.unique.get(s.keys.id, False)
    return False


def _at_most_one(sel: L.Selector, f: Facts) -> str:
    """'' when ``sel`` provably selects at most one key per query, else why not."""
    if isinstance(sel, L.Closest):
        return ""
    if isinstance(sel, L.Select):
        keys, queries = f.sets[sel.keys.id] or [], f.sets[sel.queries.id] or []
        worst = max(([k for k in keys if sel.holds(k, q)] for q in queries), key=len, default=[])
        if len(worst) == 0:
            return ""
        if len(worst) > 1:
            return f"{sel.name} lets one query value match key values {worst[:6]}"
        if not f.unique[sel.keys.id]:
            return (
                f"{sel.name}'s keys {sel.keys.name} are not provably unique per position "
                "(unique: indices, injective maps of them, ranks SelectorWidth(Select(u, u, <)))"
            )
        return ""
    if isinstance(sel, L.SelectorOr):
        return f"{sel.name} is an 'or' of selectors"
    if isinstance(sel, L.SelectorAnd):
        ra, rb = _at_most_one(sel.a, f), _at_most_one(sel.b, f)
        return "" if not ra or not rb else ra
    return f"{sel.name} is a negated selector"
