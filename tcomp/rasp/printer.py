"""Print a RASP program as Python source that runs on its own.

The source defines ``build(r)``, the program written against a small interface ``r`` (``r.Map``,
``r.Select``, ...), with every function as a lookup table over its input values. Run as a script
(``python program.py 3 1 2``) or through ``program(tokens)`` it uses the list interpreter printed
with it (no tcomp needed); ``load_source`` builds the same program as tcomp RASP objects, which
``tcomp.rasp.compile`` turns into weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable
from typing import Any

from tcomp.rasp import language as L

_PRELUDE = '''

class _Lists:
    """Runs ``build`` on concrete lists (the RASP semantics of tcomp.rasp.evaluate)."""

    _CMP = {
        "==": lambda k, q: k == q, "<": lambda k, q: k < q, "<=": lambda k, q: k <= q,
        ">": lambda k, q: k > q, ">=": lambda k, q: k >= q, "!=": lambda k, q: k != q,
        "true": lambda k, q: True, "false": lambda k, q: False,
    }

    def __init__(self, tokens):
        self.tokens = list(tokens)
        self.indices = list(range(len(self.tokens)))

    def Map(self, table, x, numerical=False):
        return [(0 if numerical else None) if v is None else table[v] for v in x]

    def SequenceMap(self, table, x, y, numerical=False):
        return [(0 if numerical else None) if a is None or b is None else table[a, b] for a, b in zip(x, y)]

    def Select(self, keys, queries, predicate):
        holds = self._CMP[predicate] if isinstance(predicate, str) else (lambda k, q: (k, q) in predicate)
        # None marks an entry that reads a missing value: it is never selected
        return [[None if k is None or q is None else holds(k, q) for k in keys] for q in queries]

    def _both(self, a, b, op):
        return [[None if x is None or y is None else op(x, y) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]

    def And(self, a, b):
        return self._both(a, b, lambda x, y: x and y)

    def Or(self, a, b):
        return self._both(a, b, lambda x, y: x or y)

    def Not(self, a):
        return [[None if x is None else not x for x in row] for row in a]

    def Closest(self, selector):
        """Per query i only the selected key closest to it: keys other than i first, then by the
        distance |i - j|, then the earlier j (the query's own position last); none if none is selected."""
        out = []
        for i, row in enumerate(selector):
            order = sorted(range(len(row)), key=lambda j: (j == i, abs(i - j), j))
            pick = next((j for j in order if row[j]), None)
            out.append([j == pick for j in range(len(row))])
        return out

    def Aggregate(self, selector, x, numerical=False):
        out = []
        for row in selector:
            picked = [v for v, s in zip(x, row) if s]
            if numerical:
                out.append(sum(0 if v is None else v for v in picked) / len(picked) if picked else 0)
            else:
                out.append(picked[0] if len(picked) == 1 else None)
        return out

    def SelectorWidth(self, selector):
        return [sum(bool(s) for s in row) for row in selector]

    def Classify(self, inputs, weights, bias, classes):
        # a linear classifier: the best-scoring class (the earlier one on a tie); None adds nothing
        out = []
        for i in range(len(self.tokens)):
            score = list(bias)
            for x, table in zip(inputs, weights):
                row = None if x[i] is None else table.get(x[i])
                if row is not None:
                    score = [a + b for a, b in zip(score, row)]
            out.append(classes[score.index(max(score))])
        return out


def program(tokens):
    """The program's output at every position of ``tokens``."""
    return build(_Lists(tokens))


if __name__ == "__main__":
    _args = [int(t) if t.lstrip("-").isdigit() else t for t in sys.argv[1:]]
    print(" ".join(str(v) for v in program(_args)))
'''


def _fmt_table(table: dict) -> str:
    return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in table.items()) + "}"


def _ident(name: str, used: set[str]) -> str:
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "v"
    if base[0].isdigit():
        base = "v_" + base
    cand, i = base, 1
    while cand in used or cand in ("r", "tokens", "indices", "build", "program"):
        i += 1
        cand = f"{base}_{i}"
    used.add(cand)
    return cand


def to_source(program: L.SOp, vocab: Iterable[Hashable], max_len: int, *, doc: str = "") -> str:
    """Python source of ``program`` over ``vocab`` and sequences up to ``max_len`` long."""
    vocab = list(vocab)
    sets = L.value_sets(program, vocab, max_len)
    names: dict[int, str] = {L.tokens.id: "r.tokens", L.indices.id: "r.indices"}
    used: set[str] = set()
    body: list[str] = []
    for e in L.walk(program):
        if isinstance(e, (L.Tokens, L.Indices)):
            continue
        var = _ident(e.name, used)
        names[e.id] = var
        body.append(f"    {var} = {_expr(e, names, sets)}")
    body.append(f"    return {names[program.id]}")
    header = f'# ruff: noqa: E501 - generated tables\n"""{doc or "RASP program " + program.name}\n\nPrinted by tcomp.rasp; runs on its own: python this_file.py 1 2 3\n"""\n'
    return (
        header
        + f"\nimport sys\n\nVOCAB = {vocab!r}\nMAX_LEN = {max_len}\nOUTPUT = {program.encoding!r}\n\n\ndef build(r):\n"
        + "\n".join(body)
        + "\n"
        + _PRELUDE
    )


def _at_zero(f, args: list, sets: dict[int, Any], table: dict) -> dict:
    """Table entries for the 0 a numerical Map (or SequenceMap) input holds where its own input has
    no value (``tcomp.rasp.evaluate``), which its value set leaves out: so the printed table reads
    every value the input takes at run time. Entries ``f`` does not define are left out."""
    sets_at = [
        (sets[a.id] or []) + [0] if a.numerical and isinstance(a, (L.Map, L.SequenceMap)) else sets[a.id] or []
        for a in args
    ]
    out = {}
    for combo in itertools.product(*sets_at):
        key = combo if len(combo) > 1 else combo[0]
        if key in table:
            continue
        try:
            out[key] = f(*combo)
        except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError):
            continue
    return out


def function_table(e: L.Map | L.SequenceMap, sets: dict[int, Any]) -> dict:
    """The table a printed (or stored, ``tcomp.rasp.store``) ``Map`` or ``SequenceMap`` holds: ``e.f``
    over the value sets of its inputs (keys: values, or ``(a, b)`` pairs), plus the entries for the
    0 a numerical input holds where it has no value, so the table reads every value the inputs take
    at run time."""
    if isinstance(e, L.Map):
        table = {v: e.f(v) for v in sets[e.x.id] or []}
        table.update(_at_zero(e.f, [e.x], sets, table))
        return table
    pairs = itertools.product(sets[e.x.id] or [], sets[e.y.id] or [])
    table = {(a, b): e.f(a, b) for a, b in pairs}
    table.update(_at_zero(e.f, [e.x, e.y], sets, table))
    return table


def _expr(e: L.Expr, names: dict[int, str], sets: dict[int, Any]) -> str:
    n = names
    num = ", numerical=True" if getattr(e, "numerical", False) else ""
    if isinstance(e, L.Map):
        return f"r.Map({_fmt_table(function_table(e, sets))}, {n[e.x.id]}{num})"
    if isinstance(e, L.SequenceMap):
        return f"r.SequenceMap({_fmt_table(function_table(e, sets))}, {n[e.x.id]}, {n[e.y.id]}{num})"
    if isinstance(e, L.Select):
        if isinstance(e.predicate, L.Comparison):
            pred = repr(e.predicate.value)
        else:
            true = [(k, q) for k in sets[e.keys.id] or [] for q in sets[e.queries.id] or [] if e.holds(k, q)]
            pred = "{" + ", ".join(repr(p) for p in true) + "}" if true else "set()"
        return f"r.Select({n[e.keys.id]}, {n[e.queries.id]}, {pred})"
    if isinstance(e, L.SelectorOr):
        return f"r.Or({n[e.a.id]}, {n[e.b.id]})"
    if isinstance(e, L.SelectorAnd):
        return f"r.And({n[e.a.id]}, {n[e.b.id]})"
    if isinstance(e, L.SelectorNot):
        return f"r.Not({n[e.a.id]})"
    if isinstance(e, L.Closest):
        return f"r.Closest({n[e.a.id]})"
    if isinstance(e, L.Aggregate):
        return f"r.Aggregate({n[e.selector.id]}, {n[e.x.id]}{num})"
    if isinstance(e, L.SelectorWidth):
        return f"r.SelectorWidth({n[e.selector.id]})"
    if isinstance(e, L.Classify):
        ins = ", ".join(n[x.id] for x in e.inputs)
        tables = ",\n        ".join(_fmt_table({k: list(v) for k, v in w.items()}) for w in e.weights)
        return (
            f"r.Classify(\n        [{ins}],\n        [\n        {tables}\n        ],\n"
            f"        {list(e.bias)!r},\n        {list(e.classes)!r},\n    )"
        )
    raise TypeError(f"cannot print {e!r}")


class TableBuilder:
    """The ``r`` interface of printed sources, building tcomp RASP objects."""

    tokens = L.tokens
    indices = L.indices
    _CMP = {c.value: c for c in L.Comparison}

    def Map(self, table: dict, x: L.SOp, numerical: bool = False) -> L.SOp:  # noqa: N802
        return L.Map(table.__getitem__, x, numerical=numerical)

    def SequenceMap(self, table: dict, x: L.SOp, y: L.SOp, numerical: bool = False) -> L.SOp:  # noqa: N802
        return L.SequenceMap(lambda a, b: table[a, b], x, y, numerical=numerical)

    def Select(self, keys: L.SOp, queries: L.SOp, predicate: Any) -> L.Selector:  # noqa: N802
        if isinstance(predicate, str):
            return L.Select(keys, queries, self._CMP[predicate])
        true = frozenset(predicate)
        return L.Select(keys, queries, lambda k, q: (k, q) in true)

    def And(self, a: L.Selector, b: L.Selector) -> L.Selector:  # noqa: N802
        return a & b

    def Or(self, a: L.Selector, b: L.Selector) -> L.Selector:  # noqa: N802
        return a | b

    def Not(self, a: L.Selector) -> L.Selector:  # noqa: N802
        return ~a

    def Closest(self, a: L.Selector) -> L.Selector:  # noqa: N802
        return L.Closest(a)

    def Aggregate(self, selector: L.Selector, x: L.SOp, numerical: bool = False) -> L.SOp:  # noqa: N802
        return L.Aggregate(selector, x, numerical=numerical)

    def SelectorWidth(self, selector: L.Selector) -> L.SOp:  # noqa: N802
        return L.SelectorWidth(selector)

    def Classify(self, inputs: list, weights: list, bias: list, classes: list) -> L.SOp:  # noqa: N802
        return L.Classify(inputs, weights, bias, classes)


def load_namespace(ns: dict[str, Any]) -> tuple[L.SOp, list, int]:
    """``(program, vocab, max_len)`` from the globals of a program file: a printed source
    (``build``, ``VOCAB``, ``MAX_LEN``) or a hand-written one (``program`` a RASP SOp)."""
    if "VOCAB" not in ns or "MAX_LEN" not in ns:
        raise ValueError("a RASP program file defines VOCAB (the input tokens) and MAX_LEN (longest input)")
    if callable(ns.get("build")):
        prog = ns["build"](TableBuilder())
    elif isinstance(ns.get("program"), L.SOp):
        prog = ns["program"]
    else:
        raise ValueError(
            "a RASP program file defines build(r) (printed form) or program = <a tcomp.rasp SOp>"
        )
    return prog, list(ns["VOCAB"]), int(ns["MAX_LEN"])


def load_source(source: str) -> tuple[L.SOp, list, int]:
    """Execute a program file's source and return ``(program, vocab, max_len)``."""
    ns: dict[str, Any] = {"__name__": "tcomp_rasp_program"}
    exec(compile(source, "<rasp program>", "exec"), ns)  # noqa: S102 - the user's own program file
    return load_namespace(ns)
