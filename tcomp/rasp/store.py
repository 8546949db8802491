"""RASP programs as data: a JSON form that rebuilds a program exactly.

A stored program is one JSON object::

    {"format": "tcomp.rasp.program/1", "doc": "sort, seed 0", "vocab": [0, 1, 2, 3, 4],
     "max_len": 6, "output": "aggregate_2_0",
     "exprs": [{"name": "select_0_1", "op": "Select", "keys": "tokens", "queries": "tokens",
                "predicate": "<="}, ...]}

``exprs`` lists every expression under the output once, operands before their users (the order of
:func:`~tcomp.rasp.language.walk`), each naming its operands by name (``tokens`` and ``indices``
are the inputs). The ops and their fields are the calls of a printed program
(:func:`~tcomp.rasp.printer.to_source`): ``Map`` (``x``, ``table``: ``[value, result]`` pairs),
``SequenceMap`` (``x``, ``y``, ``table``: ``[a, b, result]`` triples), ``Select`` (``keys``,
``queries``, ``predicate``: a comparison such as ``"<="`` or the ``[key, query]`` pairs that
hold), ``And``/``Or`` (``a``, ``b``), ``Not`` and ``Closest`` (``a``), ``Aggregate``
(``selector``, ``x``), ``SelectorWidth`` (``selector``) and ``Classify`` (``inputs``, ``weights``:
per input ``[value, row]`` pairs, ``bias``, ``classes``); ``numerical: true`` marks a numerical
sequence. Functions are stored as tables over the values their inputs can hold
(:func:`~tcomp.rasp.language.value_sets` of ``vocab`` and ``max_len``, and the 0 a numerical input
holds where it has no value), as the printer does (:func:`~tcomp.rasp.printer.function_table`), so a
program round-trips exactly on every input over ``vocab`` up to ``max_len`` tokens. Values are
JSON scalars (``null``, booleans, integers, floats, strings; floats keep every bit) or tuples
(``{"tuple": [...]}``). Names are kept; where two expressions share one, the later gets a suffix.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcomp.rasp import language as L
from tcomp.rasp.printer import TableBuilder, function_table

FORMAT = "tcomp.rasp.program/1"
_INPUTS = {"tokens": L.tokens, "indices": L.indices}


@dataclass(frozen=True)
class StoredProgram:
    """A program read from JSON, with the input vocabulary and longest input it was stored for."""

    program: L.SOp
    vocab: list
    max_len: int
    doc: str = ""


def _value(v: Any, where: str) -> Any:
    """A value as JSON: scalars as they are, tuples as ``{"tuple": [...]}``."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, tuple):
        return {"tuple": [_value(x, where) for x in v]}
    raise TypeError(
        f"{where}: value {v!r} of type {type(v).__name__} has no JSON form; "
        "use None, bools, ints, floats, strings or tuples of them"
    )


def _unvalue(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(_unvalue(x) for x in v["tuple"])
    return v


def _names(exprs: list[L.Expr]) -> dict[int, str]:
    """A unique name per expression (its own where it is free), ``tokens`` and ``indices`` fixed."""
    names = {L.tokens.id: "tokens", L.indices.id: "indices"}
    used = set(_INPUTS)
    for e in exprs:
        if e.id in names:
            continue
        name, i = e.name, 1
        while name in used:
            i += 1
            name = f"{e.name}_{i}"
        used.add(name)
        names[e.id] = name
    return names


def to_json(program: L.SOp, vocab: Iterable[Hashable], max_len: int, *, doc: str = "") -> dict:
    """``program`` over ``vocab`` and inputs up to ``max_len`` tokens as a JSON-ready dict (the
    form in this module's docstring). :func:`from_json` rebuilds a program that evaluates exactly
    as ``program`` on every such input."""
    vocab = list(vocab)
    sets = L.value_sets(program, vocab, max_len)
    exprs = L.walk(program)
    n = _names(exprs)
    out = []
    for e in exprs:
        if isinstance(e, (L.Tokens, L.Indices)):
            continue
        entry = {"name": n[e.id], **_fields(e, n, sets)}
        if getattr(e, "numerical", False) and not isinstance(e, L.Classify):
            entry["numerical"] = True
        out.append(entry)
    return {
        "format": FORMAT,
        "doc": doc,
        "vocab": [_value(v, "vocab") for v in vocab],
        "max_len": int(max_len),
        "output": n[program.id],
        "exprs": out,
    }


def _fields(e: L.Expr, n: dict[int, str], sets: dict[int, Any]) -> dict:
    where = f"expression {e.name!r}"
    val = lambda v: _value(v, where)  # noqa: E731
    if isinstance(e, L.Map):
        table = [[val(v), val(r)] for v, r in function_table(e, sets).items()]
        return {"op": "Map", "x": n[e.x.id], "table": table}
    if isinstance(e, L.SequenceMap):
        table = [[val(a), val(b), val(r)] for (a, b), r in function_table(e, sets).items()]
        return {"op": "SequenceMap", "x": n[e.x.id], "y": n[e.y.id], "table": table}
    if isinstance(e, L.Select):
        if isinstance(e.predicate, L.Comparison):
            pred: Any = e.predicate.value
        else:
            ks, qs = sets[e.keys.id] or [], sets[e.queries.id] or []
            pred = [[val(k), val(q)] for k in ks for q in qs if e.holds(k, q)]
        return {"op": "Select", "keys": n[e.keys.id], "queries": n[e.queries.id], "predicate": pred}
    if isinstance(e, L.SelectorOr):
        return {"op": "Or", "a": n[e.a.id], "b": n[e.b.id]}
    if isinstance(e, L.SelectorAnd):
        return {"op": "And", "a": n[e.a.id], "b": n[e.b.id]}
    if isinstance(e, L.SelectorNot):
        return {"op": "Not", "a": n[e.a.id]}
    if isinstance(e, L.Closest):
        return {"op": "Closest", "a": n[e.a.id]}
    if isinstance(e, L.Aggregate):
        return {"op": "Aggregate", "selector": n[e.selector.id], "x": n[e.x.id]}
    if isinstance(e, L.SelectorWidth):
        return {"op": "SelectorWidth", "selector": n[e.selector.id]}
    if isinstance(e, L.Classify):
        return {
            "op": "Classify",
            "inputs": [n[x.id] for x in e.inputs],
            "weights": [[[val(k), list(v)] for k, v in w.items()] for w in e.weights],
            "bias": list(e.bias),
            "classes": [val(c) for c in e.classes],
        }
    raise TypeError(f"{where}: cannot store a {type(e).__name__}")


def from_json(data: dict) -> StoredProgram:
    """Rebuild the program of :func:`to_json`'s dict. Raises ``ValueError`` naming the entry
    that is malformed (an unknown op, an operand not defined before it, a missing field)."""
    if data.get("format") != FORMAT:
        raise ValueError(f"not a stored RASP program: format {data.get('format')!r}, expected {FORMAT!r}")
    r = TableBuilder()
    env: dict[str, Any] = dict(_INPUTS)
    for i, entry in enumerate(data["exprs"]):
        name = entry.get("name", f"#{i}")
        try:
            e = _build(r, entry, env)
        except KeyError as exc:
            raise ValueError(
                f"stored RASP program, entry {i} ({name!r}): missing field or undefined operand {exc}; "
                "operands must be defined by earlier entries"
            ) from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"stored RASP program, entry {i} ({name!r}): {exc}") from None
        env[name] = e.named(name)
    if data["output"] not in env:
        raise ValueError(f"stored RASP program: the output {data['output']!r} is not one of its entries")
    vocab = [_unvalue(v) for v in data["vocab"]]
    return StoredProgram(env[data["output"]], vocab, int(data["max_len"]), data.get("doc", ""))


def _build(r: TableBuilder, entry: dict, env: dict[str, Any]) -> L.Expr:
    op, num = entry["op"], bool(entry.get("numerical", False))
    u = _unvalue
    if op == "Map":
        return r.Map({u(k): u(v) for k, v in entry["table"]}, env[entry["x"]], num)
    if op == "SequenceMap":
        table = {(u(a), u(b)): u(v) for a, b, v in entry["table"]}
        return r.SequenceMap(table, env[entry["x"]], env[entry["y"]], num)
    if op == "Select":
        pred = entry["predicate"]
        pred = pred if isinstance(pred, str) else {(u(k), u(q)) for k, q in pred}
        return r.Select(env[entry["keys"]], env[entry["queries"]], pred)
    if op in ("And", "Or"):
        return getattr(r, op)(env[entry["a"]], env[entry["b"]])
    if op in ("Not", "Closest"):
        return getattr(r, op)(env[entry["a"]])
    if op == "Aggregate":
        return r.Aggregate(env[entry["selector"]], env[entry["x"]], num)
    if op == "SelectorWidth":
        return r.SelectorWidth(env[entry["selector"]])
    if op == "Classify":
        weights = [{u(k): row for k, row in w} for w in entry["weights"]]
        classes = [u(c) for c in entry["classes"]]
        return r.Classify([env[x] for x in entry["inputs"]], weights, entry["bias"], classes)
    raise ValueError(
        f"unknown op {op!r}: one of Map, SequenceMap, Select, And, Or, Not, Closest, "
        "Aggregate, SelectorWidth, Classify"
    )


def save_json(
    path: str | Path, program: L.SOp, vocab: Iterable[Hashable], max_len: int, *, doc: str = ""
) -> None:
    """Write ``program`` (over ``vocab``, inputs up to ``max_len`` tokens) to ``path`` as JSON."""
    Path(path).write_text(dumps(to_json(program, vocab, max_len, doc=doc)))


def dumps(data: dict) -> str:
    """:func:`to_json`'s dict as text: one line per expression (readable, and a diff shows which
    expressions changed)."""
    head = {k: v for k, v in data.items() if k != "exprs"}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    exprs = ",\n".join(f"  {json.dumps(e)}" for e in data["exprs"])
    return "{\n" + "\n".join(lines) + '\n "exprs": [\n' + exprs + "\n ]\n}\n"


def load_json(path: str | Path) -> StoredProgram:
    """Read a program written by :func:`save_json`."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    try:
        return from_json(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
