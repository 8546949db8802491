"""Fused epilogue ops that backend lowerings introduce (bias + GELU, residual + LayerNorm)."""

from __future__ import annotations

import sympy
import torch
from torch import Tensor
from torch.fx import Node

from tcomp.cost import Cost, SymbolMap, SymLike, fake, sym_numel, sym_shape
from tcomp.dialect.base import define

# -- fused epilogues (produced by backend lowerings that have fused kernels, e.g. ONNX Runtime) -----


@torch.library.custom_op("tcomp::bias_gelu", mutates_args=())
def bias_gelu(x: Tensor, bias: Tensor, approximate: str) -> Tensor:
    """``gelu(x + bias, approximate)``: the bias add of a linear layer fused into its GELU.
    ``bias`` is 1-D over the last dim of ``x``; ``approximate`` is ``"none"`` (erf) or ``"tanh"``."""
    return torch.nn.functional.gelu(x + bias, approximate=approximate)


@bias_gelu.register_fake
def _bias_gelu_fake(x, bias, approximate):
    return torch.empty_like(x)


@torch.library.custom_op("tcomp::skip_layer_norm", mutates_args=())
def skip_layer_norm(
    x: Tensor,
    skip: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    residual_bias: Tensor | None,
    eps: float,
) -> Tensor:
    """``layer_norm((x + residual_bias) + skip)`` over the last dim with ``weight``/``bias``: a
    residual add (optionally with the bias of the linear layer producing ``x``) fused into the
    LayerNorm that follows it. ``skip`` has the shape of ``x``; the 1-D tensors span its last dim."""
    s = x if residual_bias is None else x + residual_bias
    s = s + skip
    return torch.nn.functional.layer_norm(s, (s.shape[-1],), weight, bias, eps)


@skip_layer_norm.register_fake
def _skip_layer_norm_fake(x, skip, weight, bias, residual_bias, eps):
    return torch.empty_like(x)


# -- cost formulas ---------------------------------------------------------------------------------

# FLOPs of one GELU, either form: the tanh form is x³ (2), x + 0.044715·x³ (2), the scale by
# sqrt(2/pi) (1), tanh (1), 1 + t (1) and 0.5·x·(...) (1); the erf form is counted the same.
GELU_FLOPS = 8
# FLOPs of LayerNorm per element: the mean's sum (1), x - mean (1), the variance's square and sum
# (2), the product with 1/std (1) and with the weight (1); per row: the two divisions by C, + eps
# and the reciprocal square root (4).
LAYER_NORM_ELEMENT_FLOPS = 6
LAYER_NORM_ROW_FLOPS = 4


def bias_gelu_cost(numel: SymLike, channels: SymLike, elem_bytes: int, bias_bytes: int | None = None) -> Cost:
    """``gelu(x + bias)`` on ``numel`` elements: per element the bias add (1) and the GELU
    (:data:`GELU_FLOPS`). Bytes: x and the bias (``channels`` elements of ``bias_bytes``, default
    ``elem_bytes``) read once, the output (x's shape and dtype) written once."""
    e, c = sympy.sympify(numel), sympy.sympify(channels)
    nbytes = 2 * e * elem_bytes + c * (elem_bytes if bias_bytes is None else bias_bytes)
    return Cost(sympy.expand(e * (1 + GELU_FLOPS)), sympy.expand(nbytes))


def skip_layer_norm_cost(
    numel: SymLike,
    channels: SymLike,
    elem_bytes: int,
    *,
    has_bias: bool = True,
    has_residual_bias: bool = False,
    param_bytes: int | None = None,
) -> Cost:
    """``layer_norm((x + residual_bias) + skip)`` over rows of ``channels``: per element the skip
    add (1), the residual bias add (1, when given), LayerNorm (:data:`LAYER_NORM_ELEMENT_FLOPS`)
    and its bias add (1, when given); per row :data:`LAYER_NORM_ROW_FLOPS`. Bytes: x and skip
    (``elem_bytes``), weight, bias and residual bias (``channels`` each, ``param_bytes``, default
    ``elem_bytes``) read once, the output (x's shape and dtype) written once."""
    e, c = sympy.sympify(numel), sympy.sympify(channels)
    per = 1 + LAYER_NORM_ELEMENT_FLOPS + int(has_bias) + int(has_residual_bias)
    flops = e * per + e / c * LAYER_NORM_ROW_FLOPS
    params = (
        c
        * (1 + int(has_bias) + int(has_residual_bias))
        * (elem_bytes if param_bytes is None else param_bytes)
    )
    return Cost(sympy.expand(flops), sympy.expand(3 * e * elem_bytes + params))


def _bias_gelu_node_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    """:func:`bias_gelu_cost` of a ``tcomp.bias_gelu`` node."""
    a = BIAS_GELU.bind(node)
    x, bias = fake(a["x"]), fake(a["bias"])
    if x is None or bias is None:
        return None
    xs = sym_shape(x, symbols)
    return bias_gelu_cost(sym_numel(xs), xs[-1], x.dtype.itemsize, bias.dtype.itemsize)


def _skip_layer_norm_node_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    """:func:`skip_layer_norm_cost` of a ``tcomp.skip_layer_norm`` node (the 1-D parameters at the
    element size of its weight)."""
    a = SKIP_LAYER_NORM.bind(node)
    x, w, bias, rbias = (fake(a[n]) for n in ("x", "weight", "bias", "residual_bias"))
    if x is None or w is None:
        return None
    xs = sym_shape(x, symbols)
    return skip_layer_norm_cost(
        sym_numel(xs), xs[-1], x.dtype.itemsize, has_bias=bias is not None,
        has_residual_bias=rbias is not None, param_bytes=w.dtype.itemsize,
    )  # fmt: skip


BIAS_GELU = define(bias_gelu, kind="fused", cost=_bias_gelu_node_cost)
SKIP_LAYER_NORM = define(skip_layer_norm, kind="fused", cost=_skip_layer_norm_node_cost)
