"""The dialect's op registry: every ``tcomp::`` op the dispatcher knows is registered with a cost
formula and a site kind the cost tables know (a new op without them fails here); lookups by node,
overload, packet, custom op and name; the public predicates agree with the registry."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

import tcomp.dialect as dialect
from tcomp.cost import KINDS, site_kind
from tcomp.dialect import dialect_ops, op_def


def _tcomp_ops() -> set[str]:
    return {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("tcomp::")}


def test_every_tcomp_op_is_registered_with_a_cost_formula():
    registered = {d.name for d in dialect_ops()}
    missing = {f"tcomp.{n}" for n in _tcomp_ops()} - registered
    assert not missing, (
        f"dialect ops without an OpDef (define(op, kind=..., cost=...) in their family file): {missing}"
    )
    assert len(registered) >= 12
    for d in dialect_ops():
        assert callable(d.cost) and callable(d.reference), d.name
        assert d.kind in KINDS, f"{d.name}: kind {d.kind!r} is not in tcomp.cost.KINDS"
        assert d.op is getattr(torch.ops.tcomp, d.name.split(".", 1)[1]).default
        # the family file holds the op: its reference is defined there and registers it
        module = importlib.import_module(f"tcomp.dialect.{d.family}")
        assert d.reference.__module__ == module.__name__
        assert Path(module.__file__).stem == d.family


def test_lookups_and_predicates():
    d = op_def("tcomp.linear_attention")
    assert d is not None and d.family == "linear_attention" and d.kind == "linear_attention"
    assert op_def(torch.ops.tcomp.linear_attention.default) is d
    assert op_def(torch.ops.tcomp.linear_attention) is d
    assert op_def(dialect.linear_attention) is d
    assert op_def(torch.ops.aten.mm.default) is None and op_def("tcomp.nope") is None

    graph = torch.fx.Graph()
    q = graph.placeholder("q")
    nodes = {
        name: graph.call_function(getattr(torch.ops.tcomp, name).default, (q,))
        for name in ("attention", "linear_attention", "rpe_linear_attention", "token_merge", "linear_w1")
    }
    mm = graph.call_function(torch.ops.aten.mm.default, (q, q))
    for name, node in nodes.items():
        assert op_def(node).name == f"tcomp.{name}"
        assert site_kind(node) == op_def(node).kind
    assert op_def(mm) is None and op_def(q) is None and site_kind(mm) == "matmul"
    for pred, name in (
        (dialect.is_attention, "attention"),
        (dialect.is_linear_attention, "linear_attention"),
        (dialect.is_rpe_linear_attention, "rpe_linear_attention"),
        (dialect.is_token_merge, "token_merge"),
    ):
        assert [n for n in nodes if pred(nodes[n])] == [name]
        assert not pred(mm)
    assert op_def(nodes["linear_w1"]).kind == "qlinear"


def test_bind_reads_positional_and_keyword_arguments():
    graph = torch.fx.Graph()
    x, w, s = (graph.placeholder(n) for n in "xws")
    node = graph.call_function(torch.ops.tcomp.linear_int8w.default, (x, w), {"scale": s, "bias": None})
    assert op_def(node).bind(node) == {"x": x, "qweight": w, "scale": s, "bias": None}
