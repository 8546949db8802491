"""Helpers of the cost tests: put one dialect op call into an exported graph, cost its node, and
count the same call's bytes (``nbytes`` of its real inputs and outputs) and FLOPs
(``FlopCounterMode`` over the op's Python reference, so the aten ops inside it are seen)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.export import Dim
from torch.utils.flop_counter import FlopCounterMode

from tcomp.cost import BATCH, SEQ, Cost, input_symbols, node_cost
from tcomp.dialect import OpDef, op_def


class _Call(nn.Module):
    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *tensors):
        return self.fn(*tensors)


def exported_node(fn: Callable[..., Any], tensors: Sequence[torch.Tensor], dynamic: Any = None):
    """``(graph module, the dialect node)`` of ``fn(*tensors)`` exported (non-strict); ``dynamic``
    is torch.export's ``dynamic_shapes`` for the tensors."""
    dynamic = None if dynamic is None else (tuple(dynamic),)  # forward(*tensors): one varargs entry
    gm = torch.export.export(_Call(fn), tuple(tensors), strict=False, dynamic_shapes=dynamic).module()
    (node,) = [n for n in gm.graph.nodes if op_def(n) is not None]
    return gm, node


def static_cost(fn: Callable[..., Any], tensors: Sequence[torch.Tensor]) -> tuple[float, float]:
    """``(flops, bytes)`` of the op's formula for ``fn(*tensors)`` at these concrete shapes."""
    _, node = exported_node(fn, tensors)
    c = node_cost(node)
    assert isinstance(c, Cost) and not c.free_symbols, c
    return c.evaluate()


def symbolic_cost(fn: Callable[..., Any], tensors: Sequence[torch.Tensor], dims: dict[int, int]) -> Cost:
    """The op's cost for ``fn(*tensors)`` exported with a dynamic batch (dim 0 of every tensor in
    ``dims``) and sequence (dim ``dims[i]`` of tensor i), as an expression in B and N. Tensors not in
    ``dims`` keep static shapes."""
    batch, seq = Dim("batch", min=1), Dim("seq", min=4)
    dynamic = tuple({0: batch, dims[i]: seq} if i in dims else None for i in range(len(tensors)))
    gm, node = exported_node(fn, tensors, dynamic)
    first = min(dims)
    c = node_cost(node, input_symbols(gm, {0: BATCH, dims[first]: SEQ}, input=first))
    assert isinstance(c, Cost), node
    assert c.free_symbols == {BATCH, SEQ}, c
    return c


def io_bytes(inputs: Sequence[Any], outputs: Any) -> int:
    """Sum of ``nbytes`` of every tensor among ``inputs`` and ``outputs`` (a tensor or a tuple)."""
    outs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return sum(t.nbytes for t in (*inputs, *outs) if isinstance(t, torch.Tensor))


def counted_flops(d: OpDef, *args: Any) -> tuple[int, Any]:
    """``(matmul FLOPs FlopCounterMode counts in the op's reference, its output)`` for ``args``."""
    with FlopCounterMode(display=False) as counter:
        out = d.reference(*args)
    return counter.get_total_flops(), out
