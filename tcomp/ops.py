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


# -- linear (kernelized) attention -----------------------------------------------------------------
#
# ``tcomp.linear_attention(q, k, v, key_mask, causal)`` -- normalised linear attention on features:
#
# * ``q``: (B, H, N, F) query features; ``k``: (B, Hk, M, F) key features; ``v``: (B, Hk, M, Dv),
#   ``H % Hk == 0`` (GQA as ``tcomp.attention``). The feature map (elu+1, FAVOR+, Hedgehog, ...) is
#   applied by the graph before the op, so its weights are ordinary graph tensors; features are
#   expected to be non-negative (every map tcomp emits is).
# * ``key_mask``: bool, broadcastable to (B, M), True = the key counts, or None. A masked key
#   contributes nothing (neither to the sum nor to the normaliser).
# * ``causal``: query ``i`` sums keys ``j <= i`` only.
# * ``out[i] = sum_j (q_i . k_j) v_j / sum_j (q_i . k_j)``; a row whose normaliser is not positive
#   (every key masked, or all-zero features) returns zeros, never NaN or inf.
# * Output: (B, H, N, Dv), dtype of ``q``; half-precision inputs are computed in float32.


@torch.library.custom_op("tcomp::linear_attention", mutates_args=())
def linear_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, causal: bool) -> Tensor:
    """Reference normalised linear attention (see the comment above for the contract)."""
    out_dtype = q.dtype
    work = torch.float32 if q.dtype in _HALF else q.dtype
    n_rep = q.shape[-3] // k.shape[-3]
    qf, kf, vf = q.to(work), _expand_kv(k.to(work), n_rep), _expand_kv(v.to(work), n_rep)
    if key_mask is not None:
        keep = key_mask.to(torch.bool).expand(kf.shape[0], kf.shape[-2])[:, None, :, None]
        kf = torch.where(keep, kf, torch.zeros((), dtype=work, device=kf.device))
    if causal:
        # prefix sums of k_j v_j^T would cost N*F*Dv memory; the quadratic form is exact and simple
        scores = torch.matmul(qf, kf.transpose(-2, -1))
        n, m = scores.shape[-2], scores.shape[-1]
        scores = scores * torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
        num = torch.matmul(scores, vf)
        den = scores.sum(-1, keepdim=True)
    else:
        num = torch.matmul(qf, torch.matmul(kf.transpose(-2, -1), vf))
        den = torch.matmul(qf, kf.sum(-2, keepdim=True).transpose(-2, -1))
    ok = den > 0
    out = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))
    return out.to(out_dtype)


@linear_attention.register_fake
def _linear_attention_fake(q, k, v, key_mask, causal):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def is_linear_attention(node) -> bool:
    """True for an fx node that calls ``tcomp.linear_attention``."""
    return node.op == "call_function" and node.target in (
        torch.ops.tcomp.linear_attention.default,
        torch.ops.tcomp.linear_attention,
    )
