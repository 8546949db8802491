"""The tcomp dialect: canonical ops as ``torch.library`` custom ops (namespace ``tcomp``).

Each op has a reference implementation (plain PyTorch, exact in float64 on the CPU) and a fake
kernel for shape propagation and export. Backends lower these ops; passes produce them.

``tcomp.attention(q, k, v, bias, mask, scale, causal)`` -- softmax attention:

* ``q``: (B, H, N, D); ``k``: (B, Hk, M, D); ``v``: (B, Hk, M, Dv) with ``H % Hk == 0`` (GQA/MQA:
  query head ``h`` reads key/value head ``h // (H // Hk)``).
* ``bias``: additive float scores, broadcastable to (B, H, N, M), or None.
* ``mask``: bool, broadcastable to (B, H, N, M), True = may attend, or None.
* ``scale``: multiplies ``q @ k^T`` before bias and mask.
* ``causal``: query ``i`` attends key ``j`` only when ``j <= i`` (top-left aligned, as SDPA).
* A query row with every key masked out returns zeros (never NaN).
* Output: (B, H, N, Dv), dtype of ``q``; half-precision inputs are computed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


def _expand_kv(x: Tensor, n_rep: int) -> Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=-3)


@torch.library.custom_op("tcomp::attention", mutates_args=())
def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    scale: float,
    causal: bool,
) -> Tensor:
    """Reference softmax attention (see module docstring for the contract)."""
    out_dtype = q.dtype
    work = torch.float32 if q.dtype in _HALF else q.dtype
    n_rep = q.shape[-3] // k.shape[-3]
    qf, kf, vf = q.to(work), _expand_kv(k.to(work), n_rep), _expand_kv(v.to(work), n_rep)
    scores = torch.matmul(qf, kf.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias.to(work)
    keep = None
    if mask is not None:
        keep = mask
    if causal:
        n, m = scores.shape[-2], scores.shape[-1]
        tri = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
        keep = tri if keep is None else keep & tri
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(scores - row_max)
    denom = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.matmul(p, vf).to(out_dtype)


@attention.register_fake
def _attention_fake(q, k, v, bias, mask, scale, causal):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def is_attention(node) -> bool:
    """True for an fx node that calls ``tcomp.attention``."""
    return node.op == "call_function" and node.target in (
        torch.ops.tcomp.attention.default,
        torch.ops.tcomp.attention,
    )


def attention_nodes(gm) -> list:
    """All ``tcomp.attention`` call nodes of a GraphModule, in graph order."""
    return [n for n in gm.graph.nodes if is_attention(n)]


# -- weight-only quantized linear layers (formats: tcomp/quant.py) -------------------------------
# ``linear_int8w(x, qweight, scale, bias)``: x (..., K), qweight int8 (N, K), scale (N,);
# ``linear_int4w(x, packed, scales, zeros, group, bias)``: packed uint8 (N, K/2), scales and uint8
# zeros (N, K/group). Reference: dequantize, then ``F.linear`` in x's dtype. Output dtype of x.


@torch.library.custom_op("tcomp::linear_int8w", mutates_args=())
def linear_int8w(x: Tensor, qweight: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    """Reference weight-only int8 linear: ``x @ (qweight * scale[:, None]).T + bias``."""
    from tcomp.quant import dequantize_int8

    w = dequantize_int8(qweight, scale, x.dtype)
    return torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))


@linear_int8w.register_fake
def _linear_int8w_fake(x, qweight, scale, bias):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


@torch.library.custom_op("tcomp::linear_int4w", mutates_args=())
def linear_int4w(
    x: Tensor, packed: Tensor, scales: Tensor, zeros: Tensor, group: int, bias: Tensor | None
) -> Tensor:
    """Reference weight-only int4 linear: dequantize the packed group-wise weight, then linear."""
    from tcomp.quant import dequantize_int4

    w = dequantize_int4(packed, scales, zeros, group, x.dtype)
    return torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))


@linear_int4w.register_fake
def _linear_int4w_fake(x, packed, scales, zeros, group, bias):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))
