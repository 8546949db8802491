"""Quantized and binarized linear layers: weight-only int8/int4/fp8, W8A8, fp8, 1-bit (W1A16, W1A1).

Weight formats live in tcomp/quant.py."""

from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch
from torch import Tensor
from torch.fx import Node

from tcomp.cost import Cost, SymbolMap, SymLike, fake, sym_numel, sym_shape
from tcomp.dialect.base import define
from tcomp.dialect.common import work_dtype

# -- weight-only quantized linear layers (formats: tcomp/quant.py) -------------------------------
# ``linear_int8w(x, qweight, scale, bias)``: x (..., K), qweight int8 (N, K), scale (N,);
# ``linear_int4w(x, packed, scales, zeros, group, bias)``: packed uint8 (N, K/2), scales and uint8
# zeros (N, K/group). Reference: dequantize, then ``F.linear`` in x's dtype. Output dtype of x.


def _linear(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear`` of x with a dequantized weight ``w`` (x's dtype), the bias cast to x's dtype."""
    return torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))


@torch.library.custom_op("tcomp::linear_int8w", mutates_args=())
def linear_int8w(x: Tensor, qweight: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    """Reference weight-only int8 linear: ``x @ (qweight * scale[:, None]).T + bias``."""
    from tcomp.quant import dequantize_int8

    return _linear(x, dequantize_int8(qweight, scale, x.dtype), bias)


@linear_int8w.register_fake
def _linear_int8w_fake(x, qweight, scale, bias):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


@torch.library.custom_op("tcomp::linear_int4w", mutates_args=())
def linear_int4w(
    x: Tensor, packed: Tensor, scales: Tensor, zeros: Tensor, group: int, bias: Tensor | None
) -> Tensor:
    """Reference weight-only int4 linear: dequantize the packed group-wise weight, then linear."""
    from tcomp.quant import dequantize_int4

    return _linear(x, dequantize_int4(packed, scales, zeros, group, x.dtype), bias)


@linear_int4w.register_fake
def _linear_int4w_fake(x, packed, scales, zeros, group, bias):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


# ``linear_fp8w(x, qweight, scale, bias)``: qweight float8_e4m3fn (N, K), scale (N,) per output
# channel; weight-only (x stays in its dtype, unlike ``fp8_linear``). Reference: dequantize, linear.


@torch.library.custom_op("tcomp::linear_fp8w", mutates_args=())
def linear_fp8w(x: Tensor, qweight: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    """Reference weight-only fp8 linear: ``x @ (float(qweight) * scale[:, None]).T + bias``."""
    from tcomp.quant import dequantize_fp8

    return _linear(x, dequantize_fp8(qweight, scale, x.dtype), bias)


@linear_fp8w.register_fake
def _linear_fp8w_fake(x, qweight, scale, bias):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


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

    return _linear(x, dequantize_bits(packed, alpha, k, x.dtype), bias)


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
    work = work_dtype(x)
    qx, sx = quantize_fp8(x.reshape(-1, k), granularity)
    y = (qx.to(work) @ qweight.to(work).T) * sx.to(work)[:, None] * scale.to(work)[None, :]
    if bias is not None:
        y = y + bias.to(work)
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


@fp8_linear.register_fake
def _fp8_linear_fake(x, qweight, scale, granularity, bias):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


# -- cost formulas ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QFormat:
    """Per-element FLOP constants of one quantized linear format (besides the 2·M·K·N of the
    matmul itself; a ±1 or int8 product counts as a multiply-add). Scale computations (one per row
    or tensor) are not counted."""

    per_weight: int  # dequantizing one weight element
    per_x: int  # quantizing / binarizing one activation element at run time
    per_out: int  # the epilogue's rescale per output element (the bias add not included)


QFORMATS: dict[str, QFormat] = {
    "int8w": QFormat(per_weight=1, per_x=0, per_out=0),  # q·s
    "fp8w": QFormat(per_weight=1, per_x=0, per_out=0),  # e4m3 decode·s
    "int4w": QFormat(per_weight=2, per_x=0, per_out=0),  # (q - z)·s
    "w8a8": QFormat(per_weight=0, per_x=3, per_out=2),  # |x| max, x/s, round; acc·sx·sw
    "w1": QFormat(per_weight=1, per_x=0, per_out=0),  # sign·alpha
    "w1a1": QFormat(
        per_weight=0, per_x=4, per_out=3
    ),  # x - tau, sign, |d| and its sum; beta·alpha·dot + shift
    "fp8": QFormat(per_weight=0, per_x=3, per_out=2),  # |x| max, x/s, cast; acc·sx·sw
}


def qweight_bytes(
    fmt: str,
    K: SymLike,
    N: SymLike,
    scale_bytes: int,
    *,
    group: SymLike | None = None,
    n_scales: SymLike | None = None,
) -> sympy.Expr:
    """Bytes of a packed (N, K) weight in format ``fmt`` with its scales (``scale_bytes`` each):

    * ``int8w``, ``w8a8``, ``fp8w``: K·N one-byte codes + N scales;
    * ``fp8``: K·N e4m3 codes + ``n_scales`` scales (N per row, 1 per tensor; default N);
    * ``int4w``: K·N/2 bytes (two codes a byte) + (K/group)·N scales and as many uint8 zero points;
    * ``w1``: ceil(K/8)·N bytes of sign bits + N alphas;
    * ``w1a1``: as ``w1``, + the threshold tau (K) and the folded shift (N), ``scale_bytes`` each.
    """
    K, N = sympy.sympify(K), sympy.sympify(N)
    if fmt in ("int8w", "w8a8", "fp8w"):
        return K * N + N * scale_bytes
    if fmt == "fp8":
        return K * N + (N if n_scales is None else sympy.sympify(n_scales)) * scale_bytes
    if fmt == "int4w":
        if group is None:
            raise ValueError("int4w weight bytes need the group size")
        return K * N / 2 + K / sympy.sympify(group) * N * (scale_bytes + 1)
    if fmt == "w1":
        return sympy.ceiling(K / 8) * N + N * scale_bytes
    if fmt == "w1a1":
        return sympy.ceiling(K / 8) * N + (2 * N + K) * scale_bytes
    raise ValueError(f"unknown quantized format {fmt!r}; known: {', '.join(QFORMATS)}")


def qlinear_cost(
    fmt: str,
    M: SymLike,
    K: SymLike,
    N: SymLike,
    x_bytes: int,
    *,
    scale_bytes: int = 4,
    has_bias: bool = False,
    bias_bytes: int | None = None,
    group: SymLike | None = None,
    n_scales: SymLike | None = None,
) -> Cost:
    """``y = x Wᵀ (+ b)`` for M rows of x (M, K) and a quantized weight (N, K) in format ``fmt``
    (one of :data:`QFORMATS`).

    FLOPs: 2·M·K·N (the matmul) + ``per_weight``·K·N (dequantizing each weight once) +
    ``per_x``·M·K (quantizing or binarizing the activations in the kernel) + ``per_out``·M·N (the
    rescale) + M·N for the bias. Bytes: x (``x_bytes``), the packed weight with its scales
    (:func:`qweight_bytes`: the point of these formats is fewer weight bytes), the bias (N,
    ``bias_bytes``, default ``x_bytes``) read once; y (M, N, ``x_bytes``) written once.
    Activations quantized at run time stay in the kernel (no round trip)."""
    f = QFORMATS[fmt]
    M, K, N = map(sympy.sympify, (M, K, N))
    flops = 2 * M * K * N + f.per_weight * K * N + f.per_x * M * K + f.per_out * M * N
    nbytes = M * K * x_bytes + qweight_bytes(fmt, K, N, scale_bytes, group=group, n_scales=n_scales)
    nbytes += M * N * x_bytes
    if has_bias:
        flops += M * N
        nbytes += N * (x_bytes if bias_bytes is None else bias_bytes)
    return Cost(sympy.expand(flops), sympy.expand(nbytes))


def _qlinear_node_cost(fmt: str, scale_arg: str):
    """The node cost function of the ops of format ``fmt``; ``scale_arg`` names the op's scales."""

    def cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
        a = QLINEAR_OPS[fmt].bind(node)
        x, scale, bias, out = fake(a["x"]), fake(a[scale_arg]), fake(a["bias"]), fake(node)
        if x is None or scale is None or out is None:
            return None
        xs = sym_shape(x, symbols)
        return qlinear_cost(
            fmt, sym_numel(xs[:-1]), xs[-1], sym_shape(out, symbols)[-1], x.dtype.itemsize,
            scale_bytes=scale.dtype.itemsize, has_bias=bias is not None,
            bias_bytes=None if bias is None else bias.dtype.itemsize, group=a.get("group"),
            n_scales=sym_numel(sym_shape(scale, symbols)) if fmt == "fp8" else None,
        )  # fmt: skip

    cost.__doc__ = f":func:`qlinear_cost` of a node of the {fmt} format, from its shapes and dtypes."
    return cost


QLINEAR_OPS = {
    "int8w": define(linear_int8w, kind="qlinear", cost=_qlinear_node_cost("int8w", "scale")),
    "fp8w": define(linear_fp8w, kind="qlinear", cost=_qlinear_node_cost("fp8w", "scale")),
    "int4w": define(linear_int4w, kind="qlinear", cost=_qlinear_node_cost("int4w", "scales")),
    "w8a8": define(linear_w8a8, kind="qlinear", cost=_qlinear_node_cost("w8a8", "scale")),
    "w1": define(linear_w1, kind="qlinear", cost=_qlinear_node_cost("w1", "alpha")),
    "w1a1": define(linear_w1a1, kind="qlinear", cost=_qlinear_node_cost("w1a1", "alpha")),
    "fp8": define(fp8_linear, kind="qlinear", cost=_qlinear_node_cost("fp8", "scale")),
}
