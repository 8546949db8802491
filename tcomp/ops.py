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


def _work_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


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
    dev, work = k.device, _work_dtype(k)
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
        x.new_empty((b, n - r), dtype=_work_dtype(x)),
        x.new_empty((b, n - r), dtype=torch.bool),
        x.new_empty((b, n), dtype=torch.long),
    )


def is_token_merge(node) -> bool:
    """True for an fx node that calls ``tcomp.token_merge``."""
    return node.op == "call_function" and node.target in (
        torch.ops.tcomp.token_merge.default,
        torch.ops.tcomp.token_merge,
    )


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


# -- kernelized attention with relative positions (RPE), by FFT ------------------------------------
#
# ``tcomp.rpe_linear_attention(q, k, v, coeffs, key_mask, causal)`` -- Luo et al. 2021:
#
# * ``q``: (B, H, N, F) query features; ``k``: (B, Hk, N, F) key features (non-negative, as
#   ``tcomp.linear_attention``); ``v``: (B, Hk, N, Dv); ``H % Hk == 0``; self-attention (M = N).
# * ``coeffs``: (H, 2N-1) float, the relative bias ``b`` in log space: ``coeffs[h, (j - i) + N - 1]``
#   is head h's additive score bias for key j seen from query i. The weights are
#   ``c = exp(b - max b)`` per head (the max over the offsets in use: a constant factor per head
#   cancels in the normalisation); ``-inf`` entries give ``c = 0``.
# * ``key_mask``: bool broadcastable to (B, N), True = the key counts, or None; ``causal``: c = 0 for
#   future offsets ``j > i``.
# * ``out[i] = sum_j c_{j-i} (q_i . k_j) v_j / sum_j c_{j-i} (q_i . k_j)``; a row whose normaliser
#   is not positive returns zeros. The sums over j for every i are one FFT convolution along the
#   sequence (circulant of size L >= 2N - 1, rfft/irfft): O(N log N F Dv) instead of O(N^2 F).
#   Long sequences are done in chunks of features so that the FFT working set fits a memory budget
#   (``RPE_CHUNK_BYTES``; the result is the same sum in another order).
# * Output: (B, H, N, Dv), dtype of ``q``; half-precision inputs are computed in float32.


def rpe_weights(coeffs: Tensor, n: int, causal: bool, work: torch.dtype) -> Tensor:
    """``c = exp(b - max b)`` per head (H, 2n-1) in ``work``; future offsets zero when causal."""
    b = coeffs.to(work)
    if causal:
        b = torch.cat([b[:, :n], torch.full_like(b[:, n:], float("-inf"))], dim=-1)
    top = b.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return torch.exp(b - top)


def _circulant_size(n: int) -> int:
    return 1 << max(0, (2 * n - 1 - 1).bit_length())  # power of two >= 2n - 1


def toeplitz_spectrum(c: Tensor, n: int) -> Tensor:
    """rfft of the circulant embedding of the (H, 2n-1) Toeplitz weights: (H, L/2+1, 1) complex.
    ``y_i = sum_j g_{i-j} x_j`` with ``g_t = c_{-t}``: g at t >= 0 is c[n-1-t], at t < 0 (index L+t)."""
    size = _circulant_size(n)
    g = torch.zeros(c.shape[0], size, dtype=c.dtype, device=c.device)
    g[:, :n] = c[:, :n].flip(-1)
    if n > 1:
        g[:, size - n + 1 :] = c[:, n:].flip(-1)
    return torch.fft.rfft(g, n=size, dim=-1)[:, :, None]


def toeplitz_conv(x: Tensor, spectrum: Tensor) -> Tensor:
    """``y[..., i, :] = sum_j c[h, (j - i) + n - 1] x[..., j, :]`` for x (B, H, n, P) and
    ``spectrum = toeplitz_spectrum(c, n)`` of c (H, 2n-1), by FFT along the sequence."""
    n = x.shape[-2]
    size = _circulant_size(n)
    xf = torch.fft.rfft(x, n=size, dim=-2)  # (B, H, L/2+1, P)
    return torch.fft.irfft(xf * spectrum, n=size, dim=-2)[..., :n, :]


# working-memory budget of one FFT chunk of tcomp.rpe_linear_attention; None: 1/4 of the free GPU
# memory on CUDA, 4 GiB on the CPU
RPE_CHUNK_BYTES: int | None = None


def rpe_feature_chunk(
    b: int, h: int, n: int, f: int, dv: int, work: torch.dtype, device: torch.device
) -> int:
    """How many features of phi(k) one FFT convolution takes at once: the outer products, their
    spectrum, its product with the weights' spectrum and the inverse FFT of ``b*h*(dv+1)`` channels
    per feature must fit the budget (``RPE_CHUNK_BYTES``); at least 1, at most ``f``."""
    budget = RPE_CHUNK_BYTES
    if budget is None:
        budget = torch.cuda.mem_get_info(device)[0] // 4 if device.type == "cuda" else 4 << 30
    w, size = torch.empty((), dtype=work).element_size(), _circulant_size(n)
    per_feature = b * h * (dv + 1) * w * (n + 2 * (size // 2 + 1) * 2 + size)
    return max(1, min(f, budget // max(per_feature, 1)))


@torch.library.custom_op("tcomp::rpe_linear_attention", mutates_args=())
def rpe_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, coeffs: Tensor, key_mask: Tensor | None, causal: bool
) -> Tensor:
    """Reference kernelized attention with a relative-position bias, by FFT (see the comment above)."""
    out_dtype = q.dtype
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    b, h, n, f = q.shape
    if k.shape[-2] != n or coeffs.shape[-1] != 2 * n - 1 or coeffs.shape[0] != h:
        raise ValueError(
            f"tcomp.rpe_linear_attention: needs self-attention and coeffs (H, 2N-1); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, coeffs {tuple(coeffs.shape)}"
        )
    n_rep = h // k.shape[-3]
    qf, kf, vf = q.to(work), _expand_kv(k.to(work), n_rep), _expand_kv(v.to(work), n_rep)
    if key_mask is not None:
        keep = key_mask.to(torch.bool).expand(b, n)[:, None, :, None]
        kf = torch.where(keep, kf, torch.zeros((), dtype=work, device=kf.device))
    dv = vf.shape[-1]
    v1 = torch.cat([vf, torch.ones_like(vf[..., :1])], dim=-1)  # the ones column gives D2
    weights = rpe_weights(coeffs, n, causal, work)
    spectrum = toeplitz_spectrum(weights, n)
    step = rpe_feature_chunk(b, h, n, f, dv, work, q.device)
    nd = None  # sum over feature chunks of phi(q_i)_f . D_i[f] (one chunk unless memory says otherwise)
    for lo in range(0, f, step):
        kc, fc = kf[..., lo : lo + step], min(step, f - lo)
        x = (kc[..., :, None] * v1[..., None, :]).reshape(b, h, n, fc * (dv + 1))
        d = toeplitz_conv(x, spectrum).reshape(b, h, n, fc, dv + 1)
        part = torch.einsum("bhnf,bhnfe->bhne", qf[..., lo : lo + step], d)
        nd = part if nd is None else nd + part
    num, den = nd[..., :dv], nd[..., dv:]
    # FFT round-off leaves small nonzero values where the exact normaliser is 0. Rows with no key in
    # reach (every one masked, in the future, or at a zero weight) are found exactly: one more
    # convolution, of 0/1 values, whose results are integers (rounding makes them exact). Within
    # reach, a normaliser below the round-off scale still counts as 0 (all q.k = 0).
    present = torch.ones(b, 1, n, 1, dtype=work, device=q.device)
    if key_mask is not None:
        present = key_mask.to(torch.bool).expand(b, n)[:, None, :, None].to(work)
    reach = toeplitz_conv(present.expand(b, h, n, 1), toeplitz_spectrum((weights > 0).to(work), n))
    scale = (qf.sum(-1, keepdim=True) * kf.sum((-2, -1), keepdim=True)[..., :1, :]).clamp_min(0)
    ok = (reach > 0.5) & (den > torch.finfo(work).eps * scale)
    out = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))
    return out.to(out_dtype)


@rpe_linear_attention.register_fake
def _rpe_linear_attention_fake(q, k, v, coeffs, key_mask, causal):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def is_rpe_linear_attention(node) -> bool:
    """True for an fx node that calls ``tcomp.rpe_linear_attention``."""
    return node.op == "call_function" and node.target in (
        torch.ops.tcomp.rpe_linear_attention.default,
        torch.ops.tcomp.rpe_linear_attention,
    )


# -- W8A8 and 1-bit linear layers (formats: tcomp/quant.py) ---------------------------------------
# ``linear_w8a8(x, qweight, scale, bias)``: qweight int8 (N, K), scale (N,); x is quantized per token
# (row) to int8 at run time, int8 x int8 products summed exactly, rescaled by sx[m] * scale[n].
# ``linear_w1(x, packed, alpha, k, bias)``: packed uint8 (N, ceil(k/8)) sign bits, alpha (N,).


@torch.library.custom_op("tcomp::linear_w8a8", mutates_args=())
def linear_w8a8(x: Tensor, qweight: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    """Reference W8A8 linear: per-token int8 activations, exact integer sums, float rescale."""
    from tcomp.quant import int8_matmul_exact, quantize_int8

    a = x.reshape(-1, x.shape[-1])
    qx, sx = quantize_int8(a)
    acc = int8_matmul_exact(qx, qweight) * sx.double()[:, None] * scale.double()[None, :]
    y = acc.to(x.dtype).reshape(*x.shape[:-1], qweight.shape[0])
    return y if bias is None else y + bias.to(x.dtype)


@linear_w8a8.register_fake
def _linear_w8a8_fake(x, qweight, scale, bias):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


@torch.library.custom_op("tcomp::linear_w1", mutates_args=())
def linear_w1(x: Tensor, packed: Tensor, alpha: Tensor, k: int, bias: Tensor | None) -> Tensor:
    """Reference 1-bit linear: unpack the sign bits, scale by alpha per output channel, linear."""
    from tcomp.quant import dequantize_bits

    w = dequantize_bits(packed, alpha, k, x.dtype)
    return torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))


@linear_w1.register_fake
def _linear_w1_fake(x, packed, alpha, k, bias):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


# ``linear_w1a1(x, packed, alpha, tau, shift, k, bias)``: W1A1 (XNOR-Net / BiT style). Weights as for
# ``linear_w1``; activations binarized at run time around a per-input-channel threshold ``tau`` (K,):
# ``d = x - tau``, ``s_x = sign(d)`` (0 counts as +1), ``beta = mean_k |d|`` per token, so that
# ``x ~ tau + beta * s_x``. Then ``y = beta * alpha * (s_x . s_w) + shift + bias`` where the sign dot
# product is an exact integer (an XNOR-popcount on packed bits: K - 2 * popcount(x_bits ^ w_bits))
# and ``shift`` (N,) = ``alpha * (s_w . tau)`` is the threshold's share, folded once by the pass.
# Sums in float32 (float64 for float64 x), result cast to x's dtype.


@torch.library.custom_op("tcomp::linear_w1a1", mutates_args=())
def linear_w1a1(
    x: Tensor, packed: Tensor, alpha: Tensor, tau: Tensor, shift: Tensor, k: int, bias: Tensor | None
) -> Tensor:
    """Reference W1A1 linear: binarize the activations around ``tau``, exact sign dot products."""
    from tcomp.quant import binarize_activations, unpack_bits

    work = _work_dtype(x)
    signs, beta = binarize_activations(x.reshape(-1, k), tau, work)
    s_w = unpack_bits(packed, k).to(work) * 2 - 1
    y = beta[:, None] * alpha.to(work)[None, :] * (signs @ s_w.T) + shift.to(work)[None, :]
    if bias is not None:
        y = y + bias.to(work)
    return y.to(x.dtype).reshape(*x.shape[:-1], packed.shape[0])


@linear_w1a1.register_fake
def _linear_w1a1_fake(x, packed, alpha, tau, shift, k, bias):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


# -- fp8 e4m3 linear layers (``quantize.fp8``; format: tcomp/quant.py) -----------------------------
# ``fp8_linear(x, qweight, scale, granularity, bias)``: qweight float8_e4m3fn (N, K); scale (N,) for
# granularity "row" or (1,) for "tensor". x (..., K) is quantized to e4m3 at run time with the same
# granularity (per token / over the whole activation), the e4m3 x e4m3 products are summed in float32
# (float64 for float64 x), rescaled by ``sx * scale`` with the bias added in that precision, and
# the result is cast to x's dtype.


@torch.library.custom_op("tcomp::fp8_linear", mutates_args=())
def fp8_linear(x: Tensor, qweight: Tensor, scale: Tensor, granularity: str, bias: Tensor | None) -> Tensor:
    """Reference fp8 linear: e4m3 activations (dynamic scales), e4m3 weights, float rescale."""
    from tcomp.quant import quantize_fp8

    n, k = qweight.shape
    if scale.numel() != (n if granularity == "row" else 1) or x.shape[-1] != k:
        raise ValueError(
            f"tcomp.fp8_linear: granularity {granularity!r} needs a scale of {n if granularity == 'row' else 1} "
            f"values and x (..., {k}); got scale {tuple(scale.shape)}, x {tuple(x.shape)}"
        )
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    qx, sx = quantize_fp8(x.reshape(-1, k), granularity)
    y = (qx.to(work) @ qweight.to(work).T) * sx.to(work)[:, None] * scale.to(work)[None, :]
    if bias is not None:
        y = y + bias.to(work)
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


@fp8_linear.register_fake
def _fp8_linear_fake(x, qweight, scale, granularity, bias):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))
