"""``tcomp.rpe_linear_attention``: kernelized attention with a relative-position (Toeplitz) term, by FFT."""

from __future__ import annotations

import sympy
import torch
from torch import Tensor
from torch.fx import Node

from tcomp.cost import RFFT_FLOPS, Cost, SymbolMap, SymLike, fake, sym_shape, tensor_bytes
from tcomp.dialect.base import define
from tcomp.dialect.common import expand_kv, work_dtype

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
    work = work_dtype(q)
    b, h, n, f = q.shape
    if k.shape[-2] != n or coeffs.shape[-1] != 2 * n - 1 or coeffs.shape[0] != h:
        raise ValueError(
            f"tcomp.rpe_linear_attention: needs self-attention and coeffs (H, 2N-1); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, coeffs {tuple(coeffs.shape)}"
        )
    n_rep = h // k.shape[-3]
    qf, kf, vf = q.to(work), expand_kv(k.to(work), n_rep), expand_kv(v.to(work), n_rep)
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


def rpe_attention_cost(
    B: SymLike, H: SymLike, N: SymLike, F: SymLike, Dv: SymLike, elem_bytes: int, *, Hk: SymLike | None = None
) -> Cost:
    """Kernelized attention with a Toeplitz relative-position weight by FFT (``tcomp.rpe_linear_attention``):
    features q (B,H,N,F), k (B,Hk,N,F), v (B,Hk,N,Dv), coefficients (H, 2N-1) → out (B,H,N,Dv).

    FLOPs per batch and head, with P = F·(Dv+1) channels and L = 2N: P·N (outer products
    ``φ(k_j)[v_j, 1]ᵀ``) + P·(2·RFFT_FLOPS·L·log2 L + 6·(L/2+1)) (rfft, irfft, complex products) +
    2·N·P (contraction with φ(q)) + N·Dv (normalisation); plus H·RFFT_FLOPS·L·log2 L for the weights.
    Bytes: q, k, v and the coefficients read once, the output written once."""
    B, H, N, F, Dv = map(sympy.sympify, (B, H, N, F, Dv))
    Hk = H if Hk is None else sympy.sympify(Hk)
    L = 2 * N
    fft = RFFT_FLOPS * L * sympy.log(L) / sympy.log(2)
    P = F * (Dv + 1)
    flops = B * H * (P * N + P * (2 * fft + 6 * (L / 2 + 1)) + 2 * N * P + N * Dv) + H * fft
    nbytes = (B * H * N * F + B * Hk * N * (F + Dv) + H * (2 * N - 1) + B * H * N * Dv) * elem_bytes
    return Cost(sympy.expand(flops), sympy.expand(nbytes))


def _rpe_node_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    """:func:`rpe_attention_cost` of a ``tcomp.rpe_linear_attention`` node, plus the bool key mask
    (1 byte per element) when it has one."""
    a = RPE_LINEAR_ATTENTION.bind(node)
    q, k, v = (fake(a[n]) for n in ("q", "k", "v"))
    if q is None or k is None or v is None:
        return None
    qs, ks, vs = sym_shape(q, symbols), sym_shape(k, symbols), sym_shape(v, symbols)
    c = rpe_attention_cost(qs[0], qs[1], qs[2], qs[3], vs[3], q.dtype.itemsize, Hk=ks[1])
    return Cost(c.flops, c.bytes + tensor_bytes(fake(a["key_mask"]), symbols))


RPE_LINEAR_ATTENTION = define(rpe_linear_attention, kind="rpe_attention", cost=_rpe_node_cost)


def is_rpe_linear_attention(node) -> bool:
    """True for an fx node that calls ``tcomp.rpe_linear_attention``."""
    return RPE_LINEAR_ATTENTION.matches(node)
