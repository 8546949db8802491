"""Rewrite composite selectors (``&``, ``|``, ``~``) into one ``Select`` per head.

A head compares one query variable with one key variable. ``Not(Select(k, q, p))`` becomes
``Select(k, q, not p)``; ``a & b`` / ``a | b`` over different variables compare pairs, built with a
``SequenceMap`` to a tuple (the tuple is ``None`` -- the zero vector -- when either side is, which
is the evaluator's rule that an entry reading a missing value is unselected). ``Closest(s)`` stays,
around the lowered ``s``.
"""

from __future__ import annotations

from tcomp.rasp import language as L


def lower_selectors(program: L.SOp) -> L.SOp:
    """An equivalent program whose selectors are all plain ``Select``s (or ``Closest`` of one)."""
    memo: dict[int, L.Expr] = {}
    return _sop(program, memo)


def _sop(e: L.SOp, memo: dict[int, L.Expr]) -> L.SOp:
    if e.id in memo:
        return memo[e.id]  # type: ignore[return-value]
    out: L.SOp
    if isinstance(e, (L.Tokens, L.Indices)):
        out = e
    elif isinstance(e, L.Map):
        out = L.Map(e.f, _sop(e.x, memo), numerical=e.numerical, name=e.name)
    elif isinstance(e, L.SequenceMap):
        out = L.SequenceMap(e.f, _sop(e.x, memo), _sop(e.y, memo), numerical=e.numerical, name=e.name)
    elif isinstance(e, L.Aggregate):
        sel = e.selector
        lowered: L.Selector = (
            L.Closest(_select(sel.a, memo), name=sel.name)
            if isinstance(sel, L.Closest)
            else _select(sel, memo)
        )
        out = L.Aggregate(lowered, _sop(e.x, memo), numerical=e.numerical, name=e.name)
    elif isinstance(e, L.SelectorWidth):
        out = L.SelectorWidth(_select(e.selector, memo), name=e.name)
    elif isinstance(e, L.Classify):
        out = L.Classify([_sop(x, memo) for x in e.inputs], e.weights, e.bias, e.classes, name=e.name)
    else:
        raise TypeError(f"unknown sequence operation {e!r}")
    memo[e.id] = out
    return out


def _select(s: L.Selector, memo: dict[int, L.Expr]) -> L.Select:
    if s.id in memo:
        return memo[s.id]  # type: ignore[return-value]
    if isinstance(s, L.Select):
        out = L.Select(_sop(s.keys, memo), _sop(s.queries, memo), s.predicate, name=s.name)
    elif isinstance(s, L.SelectorNot):
        a = _select(s.a, memo)
        out = L.Select(a.keys, a.queries, lambda k, q, a=a: not a.holds(k, q), name=s.name)
    else:
        a, b = _select(s.a, memo), _select(s.b, memo)
        both = (lambda x, y: x or y) if isinstance(s, L.SelectorOr) else (lambda x, y: x and y)
        keys, kx, ky = _pair(a.keys, b.keys, f"{s.name}_keys")
        queries, qx, qy = _pair(a.queries, b.queries, f"{s.name}_queries")

        def pred(k, q, a=a, b=b, kx=kx, ky=ky, qx=qx, qy=qy, both=both):
            return both(a.holds(kx(k), qx(q)), b.holds(ky(k), qy(q)))

        out = L.Select(keys, queries, pred, name=s.name)
    memo[s.id] = out
    return out


def _pair(x: L.SOp, y: L.SOp, name: str):
    """``(sequence, first, second)``: ``x`` itself when ``x is y``, else the pair sequence."""
    if x is y:
        return x, (lambda v: v), (lambda v: v)
    return L.SequenceMap(lambda a, b: (a, b), x, y, name=name), (lambda v: v[0]), (lambda v: v[1])
