"""``tcomp.linear_attention``: normalised kernelized attention on feature maps."""

from __future__ import annotations

import torch
from torch import Tensor

from tcomp.dialect.common import HALF, expand_kv

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
    work = torch.float32 if q.dtype in HALF else q.dtype
    n_rep = q.shape[-3] // k.shape[-3]
    qf, kf, vf = q.to(work), expand_kv(k.to(work), n_rep), expand_kv(v.to(work), n_rep)
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
