"""Small helpers for editing ATen-level fx graphs: node creation with shape propagation, removal
of dead chains, and readable descriptions of where a node came from in the user's model."""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._guards import detect_fake_mode

from tcomp import meta

aten = torch.ops.aten


def val(n: Any) -> Any:
    """The FakeTensor (or value) a node produces; plain values pass through."""
    return n.meta.get(meta.VAL) if isinstance(n, fx.Node) else n


def shape(n: Any) -> tuple | None:
    v = val(n)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call node: positional ``i`` when given so, else the keyword, else
    ``default`` (ATen schemas let callers spell most arguments either way)."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def add_node(graph: fx.Graph, target: Any, args: tuple, kwargs: dict | None = None) -> fx.Node:
    """Insert ``target(*args, **kwargs)`` at the graph's current insertion point, with its
    ``meta["val"]`` computed by running ``target`` on the inputs' fake values."""
    kwargs = kwargs or {}
    node = graph.call_function(target, args, kwargs)
    fake_args, fake_kwargs = pytree.tree_map(val, (args, kwargs), is_leaf=lambda x: isinstance(x, fx.Node))
    mode = detect_fake_mode(pytree.tree_leaves((fake_args, fake_kwargs)))
    if mode is not None:
        with mode:
            node.meta[meta.VAL] = target(*fake_args, **fake_kwargs)
    return node


def add_buffer(gm: fx.GraphModule, name: str, tensor: torch.Tensor, like: fx.Node | None = None) -> fx.Node:
    """Register ``tensor`` as buffer ``name`` of ``gm`` and insert a ``get_attr`` node reading it at
    the graph's current insertion point, its ``meta["val"]`` a fake tensor of the fake mode that
    ``like``'s value belongs to (when it has one)."""
    gm.register_buffer(name, tensor)
    node = gm.graph.get_attr(name)
    mode = detect_fake_mode([val(like)]) if like is not None else None
    if mode is not None:
        node.meta[meta.VAL] = mode.from_tensor(tensor, static_shapes=True)
    return node


def copy_source_meta(dst: fx.Node, src: fx.Node) -> None:
    """Carry the user-source information of ``src`` onto ``dst`` (for reports and errors)."""
    for key in (meta.STACK_TRACE, meta.NN_MODULE_STACK):
        if key in src.meta:
            dst.meta[key] = src.meta[key]


def remove_dead(graph: fx.Graph, roots: list[fx.Node]) -> None:
    """Erase ``roots`` and, transitively, the inputs they leave without users (call_function
    nodes only: placeholders, attributes and modules stay)."""
    stack = list(roots)
    while stack:
        n = stack.pop()
        erased = getattr(n, "_erased", False)  # a node reached twice (an input of two erased nodes)
        if erased or n.graph is not graph or n.op != "call_function" or len(n.users) > 0 or _mutates(n):
            continue
        inputs = list(n.all_input_nodes)
        graph.erase_node(n)
        stack.extend(inputs)


def _mutates(n: fx.Node) -> bool:
    """True for ops with side effects. ATen ops count by their schema (mutable arguments), so
    random ops such as dropout and SDPA -- pure in an eval graph -- may be removed."""
    if isinstance(n.target, torch._ops.OpOverload):
        return n.target._schema.is_mutable
    return n.is_impure()


def written_attributes(gm: fx.GraphModule) -> set[str]:
    """Targets of the ``get_attr`` tensors ``gm`` writes in place: an argument an op's schema marks
    written (``Tensor(a!)``: ``index_copy_``, ``add_``, a custom op's ``mutates_args``), followed
    back through views (ops whose result aliases their first argument) to the attribute."""
    written = set()
    for n in gm.graph.nodes:
        if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
            continue
        for i, a in enumerate(n.target._schema.arguments):
            if a.alias_info is not None and a.alias_info.is_write:
                root = _aliased_attribute(n.args[i] if i < len(n.args) else n.kwargs.get(a.name))
                if root is not None:
                    written.add(root)
    return written


def _aliased_attribute(x: Any) -> str | None:
    while isinstance(x, fx.Node) and x.op == "call_function" and isinstance(x.target, torch._ops.OpOverload):
        returns = x.target._schema.returns
        if not returns or returns[0].alias_info is None or not x.args:
            return None
        x = x.args[0]
    return x.target if isinstance(x, fx.Node) and x.op == "get_attr" else None


def dead_code(graph: fx.Graph) -> None:
    """Erase pure call_function nodes whose results nobody uses (export keeps some, e.g. the
    averaged attention weights nn.MultiheadAttention computes and the caller drops)."""
    remove_dead(graph, [n for n in graph.nodes if n.op == "call_function" and not n.users])


def module_path(node: fx.Node) -> str:
    """Dotted path of the innermost user module that produced ``node`` ("" at top level)."""
    stack = node.meta.get(meta.NN_MODULE_STACK) or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    return _clean_path(path)


_DYNAMO_ROOT = re.compile(r"^L\['(?:self|args\[\d+\]|[A-Za-z_]\w*)'\]")


def _clean_path(path: str) -> str:
    # export writes "L['self'].encoder.layer[0]" or "encoder.layer.0"; under torch.compile Dynamo
    # writes the module's root as "L['args[0]']" or "L['fn']" (the compiled module as an argument)
    path = _DYNAMO_ROOT.sub("", path)
    return path.replace("._modules['", ".").replace("']", "").lstrip(".")


def source_line(node: fx.Node) -> str:
    """The last user source line that produced ``node`` (``file:line``), or ""."""
    trace = node.meta.get(meta.STACK_TRACE) or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File ")]
    return lines[-1] if lines else ""


def drop_unused_tensors(gm: fx.GraphModule) -> list[str]:
    """Delete the parameters and buffers no ``get_attr`` node reads (weights a pass replaced, such
    as a quantized linear's float weight); returns their qualified names."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    dropped = []
    for name, _ in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        if name in used:
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if hasattr(owner, attr):
            delattr(owner, attr)
            dropped.append(name)
    return dropped
