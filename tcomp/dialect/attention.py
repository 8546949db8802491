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

import sympy
import torch
from torch import Tensor
from torch.fx import Node

from tcomp.cost import SOFTMAX_FLOPS, Cost, SymbolMap, SymLike, fake, sym_numel, sym_shape
from tcomp.dialect.base import define
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


def attention_cost(
    B: SymLike,
    H: SymLike,
    N: SymLike,
    M: SymLike,
    D: SymLike,
    Dv: SymLike,
    elem_bytes: int,
    causal: bool = False,
    has_bias: bool = False,
    bias_numel: SymLike | None = None,
    has_mask: bool = False,
    *,
    Hk: SymLike | None = None,
    mask_numel: SymLike | None = None,
    bias_bytes: int | None = None,
) -> Cost:
    """Softmax attention of q (B,H,N,D), k (B,Hk,M,D), v (B,Hk,M,Dv) → out (B,H,N,Dv).

    FLOPs: ``B·H·S·(2D + 2Dv + 5 [+1 with bias])`` where ``S = N·M`` scores per head, or ``N·M/2``
    when causal (see the module docstring). Bytes: q, k, v, bias (``bias_numel``, default the full
    ``B·H·N·M``, ``bias_bytes`` each, default ``elem_bytes``) and bool mask (``mask_numel``, default
    ``B·H·N·M``, 1 byte each) read once, the output written once; ``Hk`` defaults to ``H``.
    """
    B, H, N, M, D, Dv = map(sympy.sympify, (B, H, N, M, D, Dv))
    Hk = H if Hk is None else sympy.sympify(Hk)
    scores = B * H * N * M
    if causal:
        scores = scores / 2
    per_score = 2 * D + 2 * Dv + SOFTMAX_FLOPS + (1 if has_bias else 0)
    flops = scores * per_score
    nbytes = (B * H * N * D + B * Hk * M * D + B * Hk * M * Dv + B * H * N * Dv) * elem_bytes
    if has_bias:
        numel = B * H * N * M if bias_numel is None else sympy.sympify(bias_numel)
        nbytes += numel * (elem_bytes if bias_bytes is None else bias_bytes)
    if has_mask:
        nbytes += B * H * N * M if mask_numel is None else sympy.sympify(mask_numel)
    return Cost(sympy.expand(flops), sympy.expand(nbytes))


def attention_tensors_cost(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    causal: bool,
    symbols: SymbolMap | None = None,
) -> Cost:
    """:func:`attention_cost` from the (fake) tensors of one attention call: q (..., H, N, D) with any
    number of leading batch dims (or none, as SDPA allows), k, v, an additive ``bias`` and a bool
    ``mask`` (each None when absent) at their real shapes and element sizes."""
    qs, ks, vs = sym_shape(q, symbols), sym_shape(k, symbols), sym_shape(v, symbols)
    return attention_cost(
        sym_numel(qs[:-3]), qs[-3] if len(qs) >= 3 else 1, qs[-2], ks[-2], qs[-1], vs[-1], q.dtype.itemsize,
        causal=causal, has_bias=bias is not None,
        bias_numel=None if bias is None else sym_numel(sym_shape(bias, symbols)),
        has_mask=mask is not None, Hk=ks[-3] if len(ks) >= 3 else 1,
        mask_numel=None if mask is None else sym_numel(sym_shape(mask, symbols)),
        bias_bytes=None if bias is None else bias.dtype.itemsize,
    )  # fmt: skip


def _attention_node_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    """:func:`attention_cost` of a ``tcomp.attention`` node, from its FakeTensor shapes."""
    a = ATTENTION.bind(node)
    q, k, v, bias, mask = (fake(a[n]) for n in ("q", "k", "v", "bias", "mask"))
    if q is None or k is None or v is None:
        return None
    return attention_tensors_cost(q, k, v, bias, mask, bool(a["causal"]), symbols)


ATTENTION = define(attention, kind="attention", cost=_attention_node_cost)


def is_attention(node) -> bool:
    """True for an fx node that calls ``tcomp.attention``."""
    return ATTENTION.matches(node)


def attention_nodes(gm) -> list:
    """All ``tcomp.attention`` call nodes of a GraphModule, in graph order."""
    return [n for n in gm.graph.nodes if is_attention(n)]
