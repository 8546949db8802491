"""Quantized embedding tables: ``tcomp.embedding_int8``.

``embedding_int8(ids, qweight, scale, out_dtype)``: qweight int8 (V, D), scale (V,) one per row
(symmetric, tcomp/quant.quantize_int8); the rows the ids name are dequantized into ``out_dtype``
(the table's dtype before quantization). A lookup reads D one-byte codes and one scale per id
instead of D floats, and the table takes a quarter of its float32 bytes.
"""

from __future__ import annotations

import sympy
import torch
from torch import Tensor
from torch.fx import Node

from tcomp.cost import Cost, SymbolMap, fake, sym_numel, sym_shape
from tcomp.dialect.base import define


@torch.library.custom_op("tcomp::embedding_int8", mutates_args=())
def embedding_int8(ids: Tensor, qweight: Tensor, scale: Tensor, out_dtype: torch.dtype) -> Tensor:
    """Reference: ``(qweight[ids] * scale[ids, None])`` computed in the wider of the scale's dtype
    and ``out_dtype``, then cast to ``out_dtype`` (as ``dequantize_int8`` does for a whole table)."""
    work = torch.promote_types(scale.dtype, out_dtype)
    return (qweight[ids].to(work) * scale[ids].to(work).unsqueeze(-1)).to(out_dtype)


@embedding_int8.register_fake
def _embedding_int8_fake(ids, qweight, scale, out_dtype):
    return qweight.new_empty((*ids.shape, qweight.shape[1]), dtype=out_dtype)


def embedding_int8_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    """FLOPs: one multiply per output element. Bytes: the ids, one code row and one scale per id
    read, the output written."""
    ids, qweight, scale, out = (fake(a) for a in (*node.args[:3], node))
    if ids is None or qweight is None or scale is None or out is None:
        return None
    n = sym_numel(sym_shape(ids, symbols))
    d = sympy.sympify(qweight.shape[1])
    return Cost(
        sympy.expand(n * d),
        sympy.expand(n * ids.dtype.itemsize + n * d + n * scale.dtype.itemsize + n * d * out.dtype.itemsize),
    )


EMBEDDING_INT8 = define(embedding_int8, kind="embedding", cost=embedding_int8_cost)
