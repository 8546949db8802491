"""Fused epilogue ops that backend lowerings introduce (bias + GELU, residual + LayerNorm)."""

from __future__ import annotations

import torch
from torch import Tensor

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
