"""``tcomp.attention``: softmax attention, the canonical form every attention spelling reaches.

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

from tcomp.dialect.common import HALF, expand_kv


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
    work = torch.float32 if q.dtype in HALF else q.dtype
    n_rep = q.shape[-3] // k.shape[-3]
    qf, kf, vf = q.to(work), expand_kv(k.to(work), n_rep), expand_kv(v.to(work), n_rep)
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
