"""Low-bit weight formats shared by the quantization passes, the dialect ops and the backends.

* int8, per output channel, symmetric: ``w ≈ q * s[n]`` with ``q`` in [-127, 127] and
  ``s[n] = max|w[n, :]| / 127``.
* int4, group-wise along K, asymmetric: ``w ≈ (q - z[n, g]) * s[n, g]`` with ``q, z`` in [0, 15],
  ``s = (max - min) / 15`` over the group's range widened to contain 0 (so the zero point is an
  integer in [0, 15], as ONNX's MatMulNBits stores it); two codes per byte along K, the even
  column in the low nibble.

Guarantee (both formats): every dequantized weight is within ``s / 2`` of the original, computed
exactly in float64 from the stored scale (``max_weight_error`` measures it). Scales are stored in
float32 (float64 for float64 weights); a row or group of zeros gets scale 1 (and dequantizes exactly).
"""

from __future__ import annotations

import torch
from torch import Tensor

INT4_GROUPS = (32, 64, 128)


def scale_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if weight_dtype == torch.float64 else torch.float32


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """(qweight int8 (N, K), scale (N,)) of a 2-D weight, per output channel, symmetric."""
    w64 = w.detach().to(torch.float64)
    amax = w64.abs().amax(dim=1)
    s = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).to(scale_dtype(w.dtype))
    q = torch.round(w64 / s.to(torch.float64)[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, s


def dequantize_int8(q: Tensor, s: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    work = torch.promote_types(s.dtype, dtype)
    return (q.to(work) * s.to(work)[:, None]).to(dtype)


def quantize_int4(w: Tensor, group: int) -> tuple[Tensor, Tensor, Tensor]:
    """(packed uint8 (N, K/2), scales (N, K/group), zeros uint8 (N, K/group)) of a 2-D weight."""
    n, k = w.shape
    if group not in INT4_GROUPS or k % group:
        raise ValueError(f"int4 needs K ({k}) divisible by the group size ({group}, one of {INT4_GROUPS})")
    g = w.detach().to(torch.float64).reshape(n, k // group, group)
    s, z = int4_scale_zero(g, scale_dtype(w.dtype))
    q = int4_codes(g, s, z).reshape(n, k)
    return pack_int4(q), s, z.to(torch.uint8)


def int4_scale_zero(g: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(scale in ``dtype``, zero point as float64) over the last axis of float64 groups ``g``: the
    range widened to contain 0, split into 15 steps; zero point an integer in [0, 15]."""
    lo = g.amin(dim=-1).clamp(max=0)
    hi = g.amax(dim=-1).clamp(min=0)
    span = hi - lo
    s = _round_up(torch.where(span > 0, span / 15, torch.ones_like(span)), dtype)
    return s, torch.round(-lo / s.to(torch.float64)).clamp_(0, 15)


def _round_up(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` (float64) in ``dtype``, rounded up where rounding to nearest went below: a scale that
    is never smaller than span / 15 keeps the top of the range on the grid, so every weight stays
    within s/2 (rounded to nearest, 15 * s could fall short of the span by a few ulps and the largest
    weight land 0.5000002 steps from its code -- every int4 site was then refused)."""
    y = x.to(dtype)
    low = y.to(torch.float64) < x
    return torch.where(low, torch.nextafter(y, torch.full_like(y, float("inf"))), y)


CLIP_SHRINKS = tuple(1.0 - 0.025 * i for i in range(17))  # 1.0 down to 0.6


def int4_scale_zero_clipped(
    g: Tensor, dtype: torch.dtype, importance: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Like ``int4_scale_zero`` but each group's range may be shrunk toward 0 (by a factor in
    ``CLIP_SHRINKS``): the factor with the smallest squared rounding error of the group's values,
    each weighted by ``importance`` (broadcast against ``g``; e.g. the mean squared input of the
    weight's column, so the error is measured on the layer's output), wins. Clipping the few
    largest weights buys a finer step for the rest. The values outside the shrunk range move by more
    than half a step: only for passes whose contract does not promise that (GPTQ)."""
    best_s, best_z = int4_scale_zero(g, dtype)
    best = _weighted_rounding_error(g, best_s, best_z, importance)
    for r in CLIP_SHRINKS[1:]:
        s, z = int4_scale_zero(g * r, dtype)
        err = _weighted_rounding_error(g, s, z, importance)
        better = err < best
        best = torch.where(better, err, best)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    return best_s, best_z


def _weighted_rounding_error(g: Tensor, s: Tensor, z: Tensor, importance: Tensor | None) -> Tensor:
    s64 = s.to(torch.float64)[..., None]
    deq = (int4_codes(g, s, z).to(torch.float64) - z[..., None]) * s64
    sq = (deq - g) ** 2
    return (sq if importance is None else sq * importance).sum(-1)


def int4_codes(g: Tensor, s: Tensor, z: Tensor) -> Tensor:
    """Nearest int4 codes (uint8 in [0, 15]) of float64 values ``g`` (..., group) or (...,) given
    the scale and zero point of their group (broadcast over the last axis of ``g`` when it has one
    more dimension than ``s``)."""
    s64 = s.to(torch.float64)
    if g.dim() > s.dim():
        s64, z = s64[..., None], z[..., None]
    return (torch.round(g / s64) + z).clamp_(0, 15).to(torch.uint8)


def pack_int4(q: Tensor) -> Tensor:
    """(N, K) codes in [0, 15] -> (N, K/2) bytes, column 2j in the low nibble, 2j+1 in the high."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    lo, hi = packed & 0xF, packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1)


def dequantize_int4(
    packed: Tensor, s: Tensor, z: Tensor, group: int, dtype: torch.dtype = torch.float64
) -> Tensor:
    work = torch.promote_types(s.dtype, dtype)
    q = unpack_int4(packed).to(work)
    n, k = q.shape
    q = q.reshape(n, k // group, group) - z.to(work)[..., None]
    return (q * s.to(work)[..., None]).reshape(n, k).to(dtype)


def max_weight_error(w: Tensor, deq: Tensor, s: Tensor) -> float:
    """Largest ``|deq - w| / s`` over the weight (float64): at most 0.5 when the format holds."""
    w64, d64 = w.detach().to(torch.float64), deq.to(torch.float64)
    s64 = s.to(torch.float64)
    per = (
        s64[:, None].expand_as(w64)
        if s.dim() == 1
        else s64.repeat_interleave(w.shape[1] // s.shape[1], dim=1)
    )
    return float(((d64 - w64).abs() / per).max()) if w.numel() else 0.0


# -- W8A8 (``quantize.int8_dynamic``) -------------------------------------------------------------
# Activations are quantized per token (row) at run time with the int8 format above (``quantize_int8``
# of the (M, K) activation matrix: ``x ≈ qx * sx[m]``, |dequantized x - x| <= sx/2); the int8 x int8
# products are summed exactly (int32 on the kernel; float64 sums of integers in the reference, exact
# while K * 127^2 < 2^53) and rescaled by ``sx[m] * sw[n]``.


def int8_matmul_exact(qx: Tensor, qw: Tensor) -> Tensor:
    """``qx @ qw.T`` of int8 matrices as exact integers (float64: every partial sum is an integer
    below 2^53 for K < 5.5e11, so no rounding happens); works on every device."""
    return qx.to(torch.float64) @ qw.to(torch.float64).T


# -- 1-bit weights (``binarize``) -----------------------------------------------------------------
# ``w ≈ alpha[n] * sign(w)`` with ``alpha[n] = mean_k |w[n, k]|`` (the L2-optimal scale for sign(w));
# sign(0) counts as +1. Bits are packed 8 per byte along K (column 8b + j in bit j of byte b, 1 = +1),
# K padded with +1 bits up to a multiple of 8 (the padding is sliced off when unpacking).
# Every binarized weight is within max_k |w[n, k]| of the original (same sign, alpha <= max|w|).


def binarize(w: Tensor) -> tuple[Tensor, Tensor]:
    """(packed uint8 (N, ceil(K/8)), alpha (N,)) of a 2-D weight."""
    w64 = w.detach().to(torch.float64)
    alpha = w64.abs().mean(dim=1).to(scale_dtype(w.dtype))
    return pack_bits(w64 >= 0), alpha


def pack_bits(bits: Tensor) -> Tensor:
    n, k = bits.shape
    pad = (-k) % 8
    b = torch.cat([bits.to(torch.uint8), bits.new_ones(n, pad, dtype=torch.uint8)], dim=1)
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    return (b.reshape(n, -1, 8) << shifts).sum(dim=2, dtype=torch.uint8)


def unpack_bits(packed: Tensor, k: int) -> Tensor:
    """(N, K) bool, True for +1."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed[..., None] >> shifts) & 1
    return bits.reshape(packed.shape[0], -1)[:, :k].bool()


def binarize_activations(a: Tensor, tau: Tensor, work: torch.dtype) -> tuple[Tensor, Tensor]:
    """(signs ±1 in ``work``, beta (M,)) of activations ``a`` (M, K) around the threshold ``tau``
    (K,): ``d = a - tau`` in ``work``, sign with 0 as +1, ``beta = mean |d|`` per row (W1A1)."""
    d = a.to(work) - tau.to(work)
    return torch.where(d >= 0, 1.0, -1.0).to(work), d.abs().mean(dim=1)


def dequantize_bits(packed: Tensor, alpha: Tensor, k: int, dtype: torch.dtype = torch.float64) -> Tensor:
    work = torch.promote_types(alpha.dtype, dtype)
    signs = unpack_bits(packed, k).to(work) * 2 - 1
    return (signs * alpha.to(work)[:, None]).to(dtype)


# -- fp8 e4m3 (``quantize.fp8``) ------------------------------------------------------------------
# ``w ≈ q * s`` with ``q`` in torch.float8_e4m3fn (4 significant bits, largest finite 448, no inf)
# and ``s = amax / 448`` per row ("row": per output channel for weights, per token for
# activations) or over the whole tensor ("tensor"), so the largest magnitude lands on 448. Values
# are divided in float64, clamped to +-448 (torch versions differ on what an out-of-range cast
# gives) and cast, rounding to nearest even; NaN stays NaN. Scales are float32 (float64 for
# float64 tensors); an all-zero row or tensor gets scale 1.
# Guarantee (``fp8_error_ratio`` measures it; <= 1 when it holds): with ``v = w / s``,
# |dequantized - w| <= 2^-4 |w| where |v| >= 2^-6 (e4m3's normal range: 3 stored mantissa bits,
# rounding error at most half a step) and <= 2^-10 s below it (subnormal spacing 2^-9).
# A NaN or inf makes its scale NaN, so every value of its row (or tensor) dequantizes to NaN.

FP8_MAX = 448.0
FP8_GRANULARITIES = ("row", "tensor")
FP8_REL_BOUND = 2.0**-4  # half an e4m3 step relative to the value, normal range
FP8_SUB_BOUND = 2.0**-10  # half the subnormal spacing, in units of the scale


def fp8_scale(x: Tensor, granularity: str) -> Tensor:
    """Scale of a 2-D tensor: (rows,) for "row", (1,) for "tensor"; amax / 448, 1 where that is 0,
    NaN where the group holds a NaN or inf (so the whole group turns NaN, never finite garbage)."""
    if granularity not in FP8_GRANULARITIES:
        raise ValueError(f"fp8 granularity must be one of {FP8_GRANULARITIES}, not {granularity!r}")
    a = x.detach().abs()  # the amax is exact in any dtype
    if a.shape[1] == 0 or (granularity == "tensor" and a.numel() == 0):
        amax = a.new_zeros(a.shape[0] if granularity == "row" else 1)
    else:
        amax = a.amax(dim=1) if granularity == "row" else a.amax().reshape(1)
    s = (amax.to(torch.float64) / FP8_MAX).to(scale_dtype(x.dtype))
    s = torch.where(s > 0, s, torch.ones_like(s))  # also where amax/448 underflows
    return torch.where(torch.isfinite(amax), s, torch.full_like(s, float("nan")))


def to_e4m3(v: Tensor) -> Tensor:
    """Round to float8_e4m3fn, to nearest (ties to even), saturating at +-448 (NaN stays NaN).

    torch casts float64 to e4m3 through float32, which rounds twice: a value just off an e4m3 tie
    lands on the tie in float32 and then goes to even, the wrong way (seen: 3.4999999 subnormal steps
    rounded to 4). So float64 values are first narrowed to float32 with round-to-odd (truncate, then
    set the last bit when inexact), which keeps the one e4m3 rounding correct: float32 carries 20
    more significant bits than e4m3."""
    v = v.clamp(-FP8_MAX, FP8_MAX)
    if v.dtype == torch.float64:
        v = _to_float32_round_to_odd(v)
    return v.to(torch.float8_e4m3fn)


def _to_float32_round_to_odd(v: Tensor) -> Tensor:
    f = v.to(torch.float32)
    f = torch.where(f.to(torch.float64).abs() > v.abs(), torch.nextafter(f, torch.zeros_like(f)), f)  # toward 0
    odd = (f.view(torch.int32) | 1).view(torch.float32)
    return torch.where(f.to(torch.float64) != v, odd, f)  # NaN compares unequal: its bits only gain a 1


def quantize_fp8(x: Tensor, granularity: str = "row") -> tuple[Tensor, Tensor]:
    """(q float8_e4m3fn, same shape; scale (rows,) or (1,)) of a 2-D tensor."""
    s = fp8_scale(x, granularity)
    return to_e4m3(x.detach().to(torch.float64) / s.to(torch.float64)[:, None]), s


def dequantize_fp8(q: Tensor, s: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    work = torch.promote_types(s.dtype, dtype)
    return (q.to(work) * s.to(work)[:, None]).to(dtype)


def fp8_error_ratio(w: Tensor, q: Tensor, s: Tensor) -> float:
    """Largest ``|dequantized - w|`` over its e4m3 bound ``max(2^-4 |w|, 2^-10 s)`` (float64; the
    product q*s is exact there): at most 1 when the format holds; 0 for an empty tensor."""
    if not w.numel():
        return 0.0
    w64 = w.detach().to(torch.float64)
    bound = torch.maximum(FP8_REL_BOUND * w64.abs(), FP8_SUB_BOUND * s.to(torch.float64)[:, None])
    return float(((dequantize_fp8(q, s) - w64).abs() / bound).max())
