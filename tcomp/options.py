"""Pass options: one frozen dataclass per pass, the one place where their defaults live.

A pass declares its options as a frozen dataclass whose fields carry types, defaults, ranges and
allowed values (``option(...)``); ``register_pass(..., options=Cls)`` attaches it, and the contract
is derived from an instance of it. :func:`make` turns what a user wrote (a dict, possibly read from
JSON) into a validated instance before any work is done: an unknown or misspelt option, a value of
the wrong type, out of its range or not among its allowed values is an :class:`OptionError` that
names the pass, lists the valid options and suggests the nearest name.

Types understood in annotations: ``bool``, ``int``, ``float`` (ints are accepted), ``str``,
``None``, ``tuple[X, ...]`` (lists are accepted, so JSON round-trips), unions (``X | None``),
``Literal[...]`` and ``Any``. Other classes are checked with ``isinstance``. An options class may
define ``check(self, ctx)`` (a ``tcomp.pipeline.PassContext``) for what depends on the run's
context -- e.g. "needs calibration data" -- and ``__post_init__`` for checks across fields; both
run when the plan is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from tcomp.errors import PassError

_MISSING = dataclasses.MISSING


class OptionError(PassError, ValueError):
    """An option of a pass is unknown, of the wrong type, out of range or not allowed."""


def suggest(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest of ``valid`` to ``name`` (difflib), else ``""``."""
    near = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def option(
    default: Any = _MISSING,
    *,
    range: tuple[float | None, float | None] | None = None,
    gt: float | None = None,
    lt: float | None = None,
    choices: Iterable[Any] | None = None,
    help: str = "",
) -> Any:
    """A dataclass field with option metadata. ``range=(lo, hi)``: closed bounds (None: open-ended);
    ``gt`` / ``lt``: strict bounds; bounds apply to a number or to each number of a tuple.
    ``choices``: the allowed values (or, for a tuple, allowed elements). ``help``: one line for
    ``tcomp passes`` and the docs. Defaults must be immutable (tuples, not lists)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable: use a tuple")
    lo, hi = range or (None, None)
    meta = {
        "lo": lo,
        "hi": hi,
        "gt": gt,
        "lt": lt,
        "choices": tuple(choices) if choices else None,
        "help": help,
    }
    return dataclasses.field(default=default, metadata={"option": meta})


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """This pass takes no options."""


def is_options_class(cls: Any) -> bool:
    return isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


def make(cls: type, raw: Mapping[str, Any] | Any | None, owner: str) -> Any:
    """A validated instance of options class ``cls`` from ``raw`` (a mapping of the options the user
    gave, an instance of ``cls``, or None for the defaults). ``owner`` names the pass in errors."""
    if isinstance(raw, cls):
        raw = to_dict(raw)
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            valid = ", ".join(fields) or "none (this pass takes no options)"
            raise OptionError(
                f"pass {owner!r} has no option {key!r}{suggest(key, fields)}; valid options: {valid}"
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        values[name] = _conform(value, hints[name], f"pass {owner!r}: option {name}={value!r}")
        _check_meta(values[name], fields[name], f"pass {owner!r}: option {name}={value!r}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required option is missing
        raise OptionError(f"pass {owner!r}: {exc}") from exc
    except ValueError as exc:  # __post_init__ refused a combination
        raise OptionError(f"pass {owner!r}: {exc}") from exc


def to_dict(opts: Any) -> dict[str, Any]:
    """Every option of ``opts`` as JSON values (tuples become lists)."""
    return {f.name: _jsonable(getattr(opts, f.name)) for f in dataclasses.fields(opts)}


def describe(cls: type) -> list[dict[str, Any]]:
    """One row per option: name, type (as written), default, range, choices, help."""
    rows = []
    for f in dataclasses.fields(cls):
        m = f.metadata.get("option", {})
        row: dict[str, Any] = {"name": f.name, "type": str(f.type), "help": m.get("help", "")}
        row["default"] = _jsonable(f.default) if f.default is not _MISSING else "(required)"
        if any(m.get(k) is not None for k in ("lo", "hi", "gt", "lt")):
            row["range"] = _interval(m)
        if m.get("choices"):
            row["choices"] = list(m["choices"])
        rows.append(row)
    return rows


def document(cls: type) -> None:
    """Append the list of ``cls``'s options (name: type = default; range; choices -- help) to its
    docstring, once: ``help(Options)`` and the docs show every option where it is declared."""
    doc = cls.__doc__ or ""
    if _DOC_MARK in doc or not dataclasses.fields(cls):
        return
    lines = []
    for f, r in zip(dataclasses.fields(cls), describe(cls)):
        extra = "".join(f"; {k} {r[k]}" for k in ("range", "choices") if k in r)
        default = repr(f.default) if f.default is not _MISSING else "(required)"
        lines.append(f"    * ``{r['name']}``: {r['type']} = {default}{extra} -- {r['help']}")
    cls.__doc__ = doc.rstrip() + "\n\n    " + _DOC_MARK + "\n\n" + "\n".join(lines) + "\n"


_DOC_MARK = "Options (from the dataclass fields):"


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return v


def _interval(m: dict) -> str:
    lo, hi = (m["gt"], m["lo"]), (m["lt"], m["hi"])
    left = f"({lo[0]}" if lo[0] is not None else (f"[{lo[1]}" if lo[1] is not None else "(-inf")
    right = f"{hi[0]})" if hi[0] is not None else (f"{hi[1]}]" if hi[1] is not None else "inf)")
    return f"{left}, {right}"


class _Mismatch(Exception):
    pass


def _conform(value: Any, tp: Any, where: str) -> Any:
    try:
        return _as(value, tp)
    except _Mismatch:
        raise OptionError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__}") from None


def _as(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (lists become tuples, ints floats) or _Mismatch."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None) or tp is None:
        if value is None:
            return None
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _as(value, arm)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise _Mismatch
        elem = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(_as(v, elem) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return str(tp).replace("typing.", "")


def _check_meta(value: Any, f: dataclasses.Field, where: str) -> None:
    m = f.metadata.get("option")
    if not m or value is None:
        return
    items = value if isinstance(value, tuple) else (value,)
    if m["choices"] is not None:
        bad = [v for v in items if v not in m["choices"]]
        if bad and value not in m["choices"]:
            allowed = ", ".join(repr(c) for c in m["choices"])
            raise OptionError(
                f"{where}: must be one of {allowed}{suggest(str(bad[0]), map(str, m['choices']))}"
            )
    for v in items:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        low = (m["lo"] is not None and v < m["lo"]) or (m["gt"] is not None and not v > m["gt"])
        high = (m["hi"] is not None and v > m["hi"]) or (m["lt"] is not None and not v < m["lt"])
        if low or high:
            raise OptionError(f"{where}: out of range {_interval(m)}")
