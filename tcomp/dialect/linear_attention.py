"""``tcomp.linear_attention``: normalised kernelized attention on feature maps."""

from __future__ import annotations

import sympy
import torch
from torch import Tensor
from torch.fx import Node

from tcomp.cost import Cost, SymbolMap, SymLike, fake, sym_numel, sym_shape, tensor_bytes
from tcomp.dialect.base import define
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


# chunk length of the causal (chunked prefix-sum) algorithm the cost formula counts: the default
# chunk of the Triton kernel (backends/triton/linear_attention.py)
LINEAR_ATTENTION_CHUNK = 64


def linear_attention_cost(
    B: SymLike,
    H: SymLike,
    N: SymLike,
    M: SymLike,
    F: SymLike,
    Dv: SymLike,
    elem_bytes: int,
    causal: bool = False,
    *,
    Hk: SymLike | None = None,
    mask_bytes: SymLike = 0,
    chunk: SymLike = LINEAR_ATTENTION_CHUNK,
) -> Cost:
    """Normalised linear attention of features q (B,H,N,F), k (B,Hk,M,F), v (B,Hk,M,Dv) → out
    (B,H,N,Dv), as the kernels compute it. A multiply-add is 2 FLOPs.

    Non-causal (two phases): the state per batch and *key* head, ``S = φ(k)ᵀ v`` (2·M·F·Dv) and
    ``z = Σ_j φ(k_j)`` (M·F: 1 add per key feature); the readout per batch and *query* head,
    ``φ(q) S`` (2·N·F·Dv), ``φ(q)·z`` (2·N·F) and the division (N·Dv)::

        B·Hk·M·F·(2·Dv + 1) + B·H·N·(2·F·Dv + 2·F + Dv)

    Causal: the chunked prefix-sum algorithm (chunks of C = ``chunk`` queries, N/C of them, the
    last one counted as full; self-attention, so M = N is assumed and M does not enter), per batch
    and query head and per chunk: the masked block ``tril(q_c k_cᵀ)`` counted in full (2·C²·F), its
    product with v_c (2·C²·Dv) and row sums (C²); the prefix state ``q_c S`` (2·C·F·Dv) and ``q_c·z``
    (2·C·F); adding the two parts (C·Dv + C); the division (C·Dv); the state update ``S += k_cᵀ v_c``
    (2·C·F·Dv, accumulated in the product) and ``z += Σ k_c`` (C·F)::

        B·H·N·(C·(2·F + 2·Dv + 1) + 4·F·Dv + 3·F + 2·Dv + 1)

    linear in N for a fixed chunk. A key mask costs no FLOPs (applied when keys load).
    Bytes: q, k, v, the key mask (``mask_bytes``) read once, the output written once.
    """
    B, H, N, M, F, Dv, C = map(sympy.sympify, (B, H, N, M, F, Dv, chunk))
    Hk = H if Hk is None else sympy.sympify(Hk)
    if causal:
        flops = B * H * N * (C * (2 * F + 2 * Dv + 1) + 4 * F * Dv + 3 * F + 2 * Dv + 1)
    else:
        flops = B * Hk * M * F * (2 * Dv + 1) + B * H * N * (2 * F * Dv + 2 * F + Dv)
    nbytes = (B * H * N * F + B * Hk * M * (F + Dv) + B * H * N * Dv) * elem_bytes + sympy.sympify(mask_bytes)
    return Cost(sympy.expand(flops), sympy.expand(nbytes))


def _linear_attention_node_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    """:func:`linear_attention_cost` of a ``tcomp.linear_attention`` node, from its shapes."""
    a = LINEAR_ATTENTION.bind(node)
    q, k, v = (fake(a[n]) for n in ("q", "k", "v"))
    if q is None or k is None or v is None:
        return None
    qs, ks, vs = sym_shape(q, symbols), sym_shape(k, symbols), sym_shape(v, symbols)
    return linear_attention_cost(
        sym_numel(qs[:-3]), qs[-3], qs[-2], ks[-2], qs[-1], vs[-1], q.dtype.itemsize, bool(a["causal"]),
        Hk=ks[-3], mask_bytes=tensor_bytes(fake(a["key_mask"]), symbols),
    )  # fmt: skip


LINEAR_ATTENTION = define(linear_attention, kind="linear_attention", cost=_linear_attention_node_cost)


def is_linear_attention(node) -> bool:
    """True for an fx node that calls ``tcomp.linear_attention``."""
    return LINEAR_ATTENTION.matches(node)
