"""``tcomp.token_merge``: one step of bipartite soft matching (ToMe) with size tracking."""

from __future__ import annotations

import sympy
import torch
from torch import Tensor
from torch.fx import Node

from tcomp.cost import Cost, SymbolMap, SymLike, fake, sym_shape
from tcomp.dialect.base import define
from tcomp.dialect.common import work_dtype
from tcomp.meta import VAL

# -- tcomp.token_merge ------------------------------------------------------------------------------
# ``tcomp.token_merge(x, k, size, keep, r, protected) -> (x', size', keep', assign)``: one step of
# ToMe's bipartite soft matching (Bolya et al. 2023) with size tracking, used by ``tokens.merge``.
#
# * ``x``: (B, N, C) token states; ``k``: (B, H, N, D) attention keys of the same tokens. The
#   matching metric is the cosine similarity of the keys averaged over heads.
# * ``size``: (B, N) float token sizes (how many original tokens each one stands for), None = ones.
# * ``keep``: (B, N) bool, False = padding (a masked key), None = no padding.
# * ``r``: how many tokens to remove (static); needs ``r <= (N - len(protected)) // 2``.
# * ``protected``: token indices (negative from the end) never merged and never merged into.
# * Split: protected tokens aside, the others alternate between sets A and B in their order; each A
#   token's best B partner by score; the ``r`` A tokens with the best scores merge into their
#   partners (size-weighted mean). Padding only pairs with padding (its pairs rank first: merging
#   masked tokens is free) and real tokens only with real tokens. An A token left without a valid
#   partner that still has to go (rows with almost no tokens of its kind) is dropped with weight 0.
# * Output order: protected tokens (in ``protected`` order), unmerged A tokens, then B tokens (the
#   dst), each in their previous order. ``assign`` (B, N) int64 gives each input token's new index.
# * ``size'`` = sum of the sizes merged into each slot (float32, float64 for float64 ``x``);
#   ``keep'`` is False exactly for padding slots; ``x'`` has the dtype of ``x``.


_SPLITS: dict[tuple, tuple[Tensor, Tensor]] = {}


def _bipartite_split(n: int, prot_idx: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """Indices of sets A and B (the unprotected tokens alternating, in order). Static for a given
    ``n`` and protected set: built once per device from Python ints and cached, so a merge step
    issues no host-to-device copy (a stream sync) and can be captured in a CUDA graph."""
    key = (n, prot_idx, torch.device(device))
    if key not in _SPLITS:
        prot = set(prot_idx)
        rest = [i for i in range(n) if i not in prot]
        _SPLITS[key] = (
            torch.tensor(rest[0::2], dtype=torch.long, device=device),
            torch.tensor(rest[1::2], dtype=torch.long, device=device),
        )
    return _SPLITS[key]


def merge_plan(
    k: Tensor, size: Tensor | None, keep: Tensor | None, r: int, protected: list[int]
) -> tuple[Tensor, Tensor]:
    """``(assign, weight)`` of one bipartite soft matching step (see ``token_merge``)."""
    b, _, n, _ = k.shape
    dev, work = k.device, work_dtype(k)
    metric = k.mean(1, dtype=work)  # fp32 sums without an fp32 copy of k
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(work).tiny)
    prot_idx = tuple(i % n for i in protected)
    p = len(prot_idx)
    if len(set(prot_idx)) != p or r > (n - p) // 2:
        raise ValueError(
            f"tcomp.token_merge: cannot remove r={r} of {n} tokens with {p} protected "
            f"(at most {(n - p) // 2}; protected indices must be distinct)"
        )
    a_idx, b_idx = _bipartite_split(n, prot_idx, dev)
    na, nb = a_idx.numel(), b_idx.numel()
    scores = metric[:, a_idx] @ metric[:, b_idx].transpose(-1, -2)  # (B, nA, nB)
    ka = kb = None
    if keep is not None:
        ka, kb = keep[:, a_idx], keep[:, b_idx]
        both_pad = (~ka)[:, :, None] & (~kb)[:, None, :]
        scores = torch.where(both_pad, torch.full_like(scores, 2.0), scores)
        scores = scores.masked_fill(ka[:, :, None] != kb[:, None, :], float("-inf"))
    best, dst = scores.max(dim=-1)  # (B, nA)
    if ka is not None:  # no partner of its kind: padding can go for free, real tokens only last
        fallback = torch.where(ka, torch.full_like(best, -3.0), torch.full_like(best, -2.0))
        best = torch.where(torch.isfinite(best), best, fallback)
    rank = torch.argsort(best, dim=-1, descending=True, stable=True)
    merged = torch.zeros(b, na, dtype=torch.bool, device=dev).scatter(1, rank[:, :r], True)
    unmerged_pos = p + torch.cumsum((~merged).long(), dim=1) - 1
    a_new = torch.where(merged, p + (na - r) + dst, unmerged_pos)
    assign = torch.empty(b, n, dtype=torch.long, device=dev)
    for j, i in enumerate(prot_idx):
        assign[:, i] = j
    assign[:, a_idx] = a_new
    assign[:, b_idx] = p + (na - r) + torch.arange(nb, device=dev)
    weight = torch.ones(b, n, dtype=work, device=dev) if size is None else size.to(work)
    if ka is not None:
        ok = torch.ones(b, n, dtype=torch.bool, device=dev)
        ok[:, a_idx] = ~merged | (ka == kb.gather(1, dst))
        weight = weight * ok
    return assign, weight


@torch.library.custom_op("tcomp::token_merge", mutates_args=())
def token_merge(
    x: Tensor, k: Tensor, size: Tensor | None, keep: Tensor | None, r: int, protected: list[int]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference bipartite soft matching merge (see the comment above ``merge_plan``)."""
    b, n, c = x.shape
    assign, weight = merge_plan(k, size, keep, r, protected)
    new_size, new_keep = merged_sizes(assign, weight, keep, n - r)
    idx = assign.unsqueeze(-1).expand(b, n, c)
    summed = torch.zeros(b, n - r, c, dtype=weight.dtype, device=x.device).scatter_add(
        1, idx, x.to(weight.dtype) * weight.unsqueeze(-1)
    )
    new_x = (summed / new_size.unsqueeze(-1)).to(x.dtype)
    return new_x, new_size, new_keep, assign


def merged_sizes(assign: Tensor, weight: Tensor, keep: Tensor | None, n_out: int) -> tuple[Tensor, Tensor]:
    """``(size', keep')`` of a merge step given its plan (see ``token_merge``)."""
    b = assign.shape[0]
    new_size = torch.zeros(b, n_out, dtype=weight.dtype, device=assign.device).scatter_add(1, assign, weight)
    if keep is None:
        return new_size, torch.ones(b, n_out, dtype=torch.bool, device=assign.device)
    return new_size, torch.zeros_like(new_size).scatter_add(1, assign, weight * keep) > 0


@token_merge.register_fake
def _token_merge_fake(x, k, size, keep, r, protected):
    b, n, c = x.shape
    return (
        x.new_empty((b, n - r, c)),
        x.new_empty((b, n - r), dtype=work_dtype(x)),
        x.new_empty((b, n - r), dtype=torch.bool),
        x.new_empty((b, n), dtype=torch.long),
    )


def token_merge_cost(
    B: SymLike,
    N: SymLike,
    C: SymLike,
    H: SymLike,
    D: SymLike,
    r: SymLike,
    n_protected: int,
    x_bytes: int,
    k_bytes: int,
    *,
    size_bytes: int = 4,
    size_in_bytes: int = 0,
    has_keep: bool = False,
) -> Cost:
    """One bipartite soft matching step (``tcomp.token_merge``) on x (B,N,C) with keys k
    (B,H,N,D), removing ``r`` tokens; sets A and B hold ``(N - P)/2`` tokens each for P protected
    ones (exact for even N - P; for odd N - P, A holds one more). A multiply-add is 2 FLOPs; a
    compare counts 1. Per batch:

    * metric: mean of the keys over heads, 1 per key element (N·H·D); cosine normalisation, 3 per
      element of the mean (square, accumulate, divide: 3·N·D) + 1 per token (the square root);
    * similarity of the split, ``A Bᵀ``: 2·(N-P)/2·(N-P)/2·D; best partner (argmax): 1 per score;
      ranking the A tokens (sort): ``nA·log2(nA)`` compares;
    * merge: the size-weighted scatter-add of x, 2 per element of x (2·N·C), and the mean, 1 per
      element of x' ((N-r)·C); new sizes: 1 add per token (N), and with a ``keep`` mask another
      multiply and add per token (2·N) for the new mask. Padding masks are selects (no FLOPs).

    Bytes: x (``x_bytes`` per element), k (``k_bytes``), ``size`` (``size_in_bytes`` per element, 0
    when absent) and the bool ``keep`` when given, read once; x' (B,N-r,C), size' (B,N-r;
    ``size_bytes``, the op's work precision: 4, or 8 for float64 inputs), keep' (B,N-r; bool) and
    assign (B,N; int64) written once."""
    B, N, C, H, D, r = map(sympy.sympify, (B, N, C, H, D, r))
    half = (N - n_protected) / 2
    per_batch = (
        N * H * D + 3 * N * D + N  # metric
        + 2 * half * half * D + half * half + half * sympy.log(half) / sympy.log(2)  # matching
        + 2 * N * C + (N - r) * C + N + (2 * N if has_keep else 0)  # merge and sizes
    )  # fmt: skip
    reads = N * C * x_bytes + H * N * D * k_bytes + N * size_in_bytes + (N if has_keep else 0)
    writes = (N - r) * (C * x_bytes + size_bytes + 1) + N * 8
    return Cost(sympy.expand(B * per_batch), sympy.expand(B * (reads + writes)))


def _token_merge_node_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    """:func:`token_merge_cost` of a ``tcomp.token_merge`` node; bytes of the optional inputs and
    of the outputs at their real element sizes."""
    a = TOKEN_MERGE.bind(node)
    x, k, size, keep = (fake(a[n]) for n in ("x", "k", "size", "keep"))
    out = node.meta.get(VAL)
    if x is None or k is None or not isinstance(out, (tuple, list)):
        return None
    (b, n, c), (_, h, _, d) = sym_shape(x, symbols), sym_shape(k, symbols)
    return token_merge_cost(
        b, n, c, h, d, int(a["r"]), len(a["protected"]), x.dtype.itemsize, k.dtype.itemsize,
        size_bytes=out[1].dtype.itemsize, size_in_bytes=0 if size is None else size.dtype.itemsize,
        has_keep=keep is not None,
    )  # fmt: skip


TOKEN_MERGE = define(token_merge, kind="token_merge", cost=_token_merge_node_cost)


def is_token_merge(node) -> bool:
    """True for an fx node that calls ``tcomp.token_merge``."""
    return TOKEN_MERGE.matches(node)
