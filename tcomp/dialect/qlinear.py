"""Quantized and binarized linear layers: weight-only int8/int4, W8A8, fp8, 1-bit (W1A16, W1A1).

Weight formats live in tcomp/quant.py."""

from __future__ import annotations

import torch
from torch import Tensor

from tcomp.dialect.common import work_dtype

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

    work = work_dtype(x)
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
