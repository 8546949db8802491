"""The dialect's op registry: one :class:`OpDef` per ``tcomp.*`` op, registered by its family file.

A family file (``tcomp/dialect/<family>.py``) defines the custom op, its fake kernel and its
float64 reference, then registers it right below with its cost formula::

    ATTENTION = define(attention, kind="attention", cost=_attention_node_cost)

so one file holds everything tcomp knows about the op. :func:`op_def` finds the OpDef of an fx
node or an op overload; :func:`dialect_ops` lists them all (the test suite fails if one lacks a
cost formula). This module imports no family file (they import it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.fx import Node

if TYPE_CHECKING:
    from tcomp.cost import Cost

CostFn = Callable[[Node, "Mapping[Any, Any] | None"], "Cost | None"]
# a canonical form: rewrites every spelling of the op it recognises in a GraphModule (in place) into
# the op and returns one note per rewritten site; canonicalize applies every op's forms
CanonicalForm = Callable[[Any], "list[str]"]


@dataclass(frozen=True)
class OpDef:
    """Everything tcomp knows about one dialect op.

    * ``name``: ``"tcomp.attention"``; ``family``: the file that holds it (``"attention"``).
    * ``op``: the op overload graphs call (``torch.ops.tcomp.attention.default``); ``packet``
      the overload packet (``torch.ops.tcomp.attention``).
    * ``reference``: the Python reference implementation (exact in float64 on the CPU).
    * ``kind``: the site kind of its nodes in cost tables (``tcomp.cost.KINDS``).
    * ``cost(node, symbols)``: the node's FLOPs and bytes as sympy expressions of its shapes
      (``symbols`` renames shape symbols, see ``tcomp.cost.node_cost``), None when the shapes
      are unknown.
    * ``canonical_forms``: rewrites that turn the op's ATen spellings into it (for fused ops that
      models spell out, e.g. RMSNorm); the ``canonicalize`` pass applies them, in registration order.
    """

    name: str
    family: str
    kind: str
    op: torch._ops.OpOverload
    packet: torch._ops.OpOverloadPacket
    reference: Callable[..., Any]
    cost: CostFn
    canonical_forms: tuple[CanonicalForm, ...] = ()

    def matches(self, node: Any) -> bool:
        """The op's node predicate: true for an fx node that calls it (the overload or its packet)."""
        return (
            isinstance(node, Node)
            and node.op == "call_function"
            and (node.target is self.op or node.target is self.packet)
        )

    def bind(self, node: Node) -> dict[str, Any]:
        """The node's arguments by schema name (positional or keyword, defaults filled in)."""
        out: dict[str, Any] = {}
        for i, arg in enumerate(self.op._schema.arguments):
            if i < len(node.args):
                out[arg.name] = node.args[i]
            elif arg.name in node.kwargs:
                out[arg.name] = node.kwargs[arg.name]
            elif arg.has_default_value():
                out[arg.name] = arg.default_value
            else:
                out[arg.name] = None
        return out


_BY_TARGET: dict[Any, OpDef] = {}
_BY_NAME: dict[str, OpDef] = {}


def define(
    custom_op: Any,
    *,
    kind: str,
    cost: CostFn,
    canonical_forms: tuple[CanonicalForm, ...] = (),
) -> OpDef:
    """Register the ``torch.library.custom_op`` ``custom_op`` (namespace ``tcomp``) with its site
    kind, cost formula and canonical forms; returns its :class:`OpDef`. Its family is the name of the
    module that defines the op (``tcomp.dialect.qlinear`` -> ``"qlinear"``). Registering a name
    twice replaces the earlier definition (module reloads)."""
    qualname = custom_op._qualname  # "tcomp::attention"
    ns, short = qualname.split("::")
    packet = getattr(getattr(torch.ops, ns), short)
    reference = getattr(custom_op, "_init_fn", custom_op)
    fam = reference.__module__.rsplit(".", 1)[-1]
    d = OpDef(f"{ns}.{short}", fam, kind, packet.default, packet, reference, cost, tuple(canonical_forms))
    old = _BY_NAME.get(d.name)
    if old is not None:
        _BY_TARGET.pop(old.op, None)
        _BY_TARGET.pop(old.packet, None)
    _BY_NAME[d.name] = d
    _BY_TARGET[d.op] = d
    _BY_TARGET[d.packet] = d
    return d


def op_def(target_or_node: Any) -> OpDef | None:
    """The OpDef of an fx node (by its target), an op overload or packet, the custom op object
    (``tcomp.dialect.attention``) or a name (``"tcomp.attention"``); None for anything that is not
    a registered dialect op."""
    qualname = getattr(target_or_node, "_qualname", None)  # a torch.library custom op object
    if isinstance(qualname, str):
        return _BY_NAME.get(qualname.replace("::", "."))
    if isinstance(target_or_node, Node):
        if target_or_node.op != "call_function":
            return None
        target_or_node = target_or_node.target
    if isinstance(target_or_node, str):
        return _BY_NAME.get(target_or_node)
    try:
        return _BY_TARGET.get(target_or_node)
    except TypeError:  # unhashable target
        return None


def dialect_ops() -> list[OpDef]:
    """Every registered dialect op, in registration order (import ``tcomp.dialect`` first)."""
    return list(_BY_NAME.values())
