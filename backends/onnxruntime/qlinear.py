"""ONNX translations of the quantized linear dialect ops (tcomp/dialect/, formats: tcomp/quant.py) for
the ONNX Runtime backend: the exported model carries the low-bit weights as they are in the graph
(int8 / packed uint8 initializers), never float copies, and computes what the eager op computes.

* ``tcomp.linear_int8w`` (weight-only int8, per output channel): the int8 weight (transposed to
  (K, N)) through ``DequantizeLinear`` (per-column scale, ``axis=1``) into ``MatMul`` -- QDQ.
  Neither the exporter's nor ORT's constant folding touches ``DequantizeLinear``, so the file holds
  int8; at session start ORT fuses the pair into ``com.microsoft.MatMulNBits`` (bits=8), which
  keeps the weight int8 in memory too. That fusion computes in float only with the session option
  ``session.qdq_matmulnbits_accuracy_level=0``, which the backend sets: ORT's default (4)
  quantizes the activations to int8 as well (measured: 0.9% relative error on a 3-layer MLP).
  ``q * s`` has one float32 rounding, as the reference's dequantized weight (measured: bit-equal).
* ``tcomp.linear_w8a8`` (W8A8): the reference's per-token symmetric quantization built from basic
  ops (ORT's ``DynamicQuantizeLinear`` is asymmetric uint8 per tensor, another function):
  ``sx = float32(max_k |x| / 127)`` (1 for a row of zeros), ``qx = clip(round(x / sx), -127, 127)``
  computed in float64 exactly as the reference does, then ``MatMulInteger`` (exact int32 sums;
  uint8 operands with zero point 128, the MLAS path without int16 saturation on AVX2) and the
  rescale ``acc * sx * sw`` in float64, rounded once to the activation dtype, plus bias: the
  reference's own arithmetic, so on equal inputs the result is the eager op's bit for bit. Run
  time rounding is discontinuous: where ORT computes a W8A8 layer's *input* with a different last
  bit, a value on a rounding boundary may land one step sx away, and the model-level drift from
  the eager graph is then above the float tolerance. On MiniLM that drift is 2.9e-2 (the lowering
  is rolled back), and it stays 2.9e-2 with every ORT graph optimization disabled or with ORT's
  LayerNorm/SkipLayerNorm/GELU/MatMul fusions switched off one family at a time (measured
  2026-11-28): the exported graph's own ops (LayerNormalization, Softmax, Erf) already round
  differently from torch's kernels.
* ``tcomp.linear_int4w`` (group-wise asymmetric int4): ``com.microsoft.MatMulNBits`` (bits=4,
  ``block_size`` = group, ``accuracy_level`` 0: float32 compute). Its layout is tcomp's: B is
  (N, K/group, group/2) bytes with element 2j in the low nibble, scales (N * K/group), and zero
  points packed two per byte along the blocks (N, ceil(K/group/2)) -- derived in the graph from
  the (N, K/group) uint8 zeros the model holds. Dequantization ``(q - z) * s`` as the reference.
  Float32 activations only (ORT's kernel); float64 dequantizes with basic ops and ``MatMul``.
* ``tcomp.linear_w1`` (1-bit): the packed sign bits are the initializer (1/32 of float32); basic
  ops unpack them (``BitShift`` / ``BitwiseAnd``), map to ±1 and scale by alpha. The chain starts
  with an OR against a ``ConstantOfShape`` zero, which the exporter's constant folder never folds,
  so the file stays bit-packed; ORT folds the whole chain once at session start into a float
  weight and runs a plain ``MatMul`` (fast, float weights in memory).
* ``tcomp.linear_w1a1`` (W1A1): the weight signs as for ``linear_w1``; the activations' signs
  around ``tau`` and their per-token ``beta = mean |x - tau|`` with basic ops; the sign product as a
  float ``MatMul`` of ±1 (integer sums, exact in float32), then ``beta * alpha``, shift and bias.
* ``tcomp.linear_fp8w`` (weight-only e4m3): the weight a FLOAT8E4M3FN initializer read through
  ``DequantizeLinear`` with scale 1 (exact, not folded), times the per-channel scale in the
  activation's dtype (the reference's one rounding), into ``MatMul``.
* ``tcomp.fp8_linear`` (e4m3): the weight is a FLOAT8E4M3FN initializer (1 byte each) read through
  ``DequantizeLinear`` with scale 1 (exact, and never constant-folded); the activations' dynamic
  scales in float64 as the reference computes them, the e4m3 rounding as a saturating ``Cast`` to
  FLOAT8E4M3FN and back (opset 19), ``MatMul`` in float32 (the e4m3 products are exact), then the
  scales and the bias (measured: equal to the eager op on a 2-layer MLP).

Each factory below is declared with ``@ONNX.implements(op)``; onnxscript is imported lazily.
Each translation is trace-only: Python branches on the call's constant arguments and the
static dtype of ``x``.
"""

from __future__ import annotations

from typing import Any

import torch

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.linear_* / fp8_linear
from tcomp.backends.onnxruntime import ONNX
from tcomp.backends.onnxruntime.contrib import contrib_op

_F32 = 1  # onnx.TensorProto.FLOAT
_F64 = 11  # onnx.TensorProto.DOUBLE


def _dtype(x: Any) -> int | None:
    """The ONNX element type of a traced value (None when unknown)."""
    t = getattr(x, "dtype", None)
    return None if t is None else int(t)


def _msft_matmul_nbits() -> Any:
    return contrib_op(
        "MatMulNBits",
        ["A", "B:T2", "scales", "zero_points?:T3"],
        {"K": "INT", "N": "INT", "bits": "INT", "block_size": "INT", "accuracy_level": "INT"},
        {"T": ["tensor(float)", "tensor(float16)"], "T2": ["tensor(uint8)"], "T3": ["tensor(uint8)"]},
    )


def _add_bias(op: Any, y: Any, bias: Any, x: Any) -> Any:
    return y if bias is None else op.Add(y, op.CastLike(bias, x))


@ONNX.implements(torch.ops.tcomp.linear_int8w.default)
def int8w_onnx(fused: bool = False):
    """``tcomp.linear_int8w`` as DequantizeLinear(int8 weight) + MatMul."""
    from onnxscript import FLOAT, INT8
    from onnxscript import opset18 as op

    def tcomp_linear_int8w(x, qweight, scale, bias=None):
        qt = op.Transpose(qweight, perm=[1, 0])  # (K, N): folded by ORT into an int8 initializer
        if _dtype(x) in (None, _F32) and _dtype(scale) in (None, _F32):
            w = op.DequantizeLinear(qt, scale, axis=1)
        else:  # float64: the reference dequantizes in the wider dtype
            w = op.Mul(op.CastLike(qt, x), op.CastLike(scale, x))
        return _add_bias(op, op.MatMul(x, op.CastLike(w, x)), bias, x)

    tcomp_linear_int8w.__annotations__ = {
        "x": FLOAT,
        "qweight": INT8,
        "scale": FLOAT,
        "bias": FLOAT | None,
        "return": FLOAT,
    }
    return tcomp_linear_int8w


@ONNX.implements(torch.ops.tcomp.linear_w8a8.default)
def w8a8_onnx(fused: bool = False):
    """``tcomp.linear_w8a8`` as per-token symmetric int8 quantization + MatMulInteger + rescale."""
    from onnxscript import DOUBLE, FLOAT, INT8, INT32, UINT8
    from onnxscript import opset18 as op

    def tcomp_linear_w8a8(x, qweight, scale, bias=None):
        sdt = _F64 if _dtype(x) == _F64 else _F32  # sx is stored like the reference's scales
        x64 = op.Cast(x, to=DOUBLE.dtype)
        amax = op.ReduceMax(op.Abs(x64), op.Constant(value_ints=[-1]), keepdims=1)
        zero = _c("DOUBLE", 0.0, op)
        sx = op.Cast(op.Div(amax, _c("DOUBLE", 127.0, op)), to=sdt)  # stored like scale
        sx = op.Where(op.Greater(amax, zero), sx, op.CastLike(op.Constant(value_float=1.0), sx))
        sx64 = op.Cast(sx, to=DOUBLE.dtype)
        q = op.Clip(op.Round(op.Div(x64, sx64)), _c("DOUBLE", -127.0, op), _c("DOUBLE", 127.0, op))
        off = _c("DOUBLE", 128.0, op)
        qx = op.Cast(op.Add(q, off), to=UINT8.dtype)  # uint8 = int8 + 128 (exact)
        qw = op.Cast(
            op.Add(op.Cast(op.Transpose(qweight, perm=[1, 0]), to=INT32.dtype), _c("INT32", 128, op)),
            to=UINT8.dtype,
        )  # (K, N) uint8, folded by ORT at session start
        zp = _c("UINT8", 128, op)
        acc = op.MatMulInteger(qx, qw, zp, zp)  # sum_k (qx+128-128)(qw+128-128), exact int32
        y = op.Mul(op.Mul(op.Cast(acc, to=DOUBLE.dtype), sx64), op.Cast(scale, to=DOUBLE.dtype))
        return _add_bias(op, op.CastLike(y, x), bias, x)

    tcomp_linear_w8a8.__annotations__ = {
        "x": FLOAT,
        "qweight": INT8,
        "scale": FLOAT,
        "bias": FLOAT | None,
        "return": FLOAT,
    }
    return tcomp_linear_w8a8


@ONNX.implements(torch.ops.tcomp.linear_int4w.default)
def int4w_onnx(fused: bool = False):
    """``tcomp.linear_int4w`` as com.microsoft.MatMulNBits (float32) or basic ops (other dtypes)."""
    from onnxscript import FLOAT, UINT8
    from onnxscript import opset18 as op

    nbits = _msft_matmul_nbits()

    def tcomp_linear_int4w(x, packed, scales, zeros, group: int = 128, bias=None):
        n, half_k = packed.shape[0], packed.shape[1]
        k, nb = 2 * half_k, (2 * half_k) // group
        if _dtype(x) in (None, _F32) and _dtype(scales) in (None, _F32):
            b = op.Reshape(packed, op.Constant(value_ints=[n, nb, group // 2]))
            s = op.Reshape(scales, op.Constant(value_ints=[n * nb]))
            z = zeros
            if nb % 2:  # pad the blocks to an even count: two zero points per byte
                z = op.Pad(z, op.Constant(value_ints=[0, 0, 0, 1]))
            z = op.Reshape(z, op.Constant(value_ints=[n, (nb + 1) // 2, 2]))
            lo = op.Slice(z, [0], [1], [2])
            hi = op.Slice(z, [1], [2], [2])
            zp = op.Reshape(
                op.BitwiseOr(lo, op.BitShift(hi, _c("UINT8", 4, op), direction="LEFT")),
                op.Constant(value_ints=[n * ((nb + 1) // 2)]),
            )
            y = nbits(x, b, s, zp, K=k, N=n, bits=4, block_size=group, accuracy_level=0)
            return _add_bias(op, y, bias, x)
        # other dtypes: unpack with basic ops, dequantize in x's dtype (the reference's arithmetic)
        lo = op.BitwiseAnd(packed, _c("UINT8", 15, op))
        hi = op.BitShift(packed, _c("UINT8", 4, op), direction="RIGHT")
        codes = op.Reshape(op.Concat(op.Unsqueeze(lo, [2]), op.Unsqueeze(hi, [2]), axis=2), [n, nb, group])
        zq = op.Unsqueeze(op.CastLike(zeros, x), [2])
        w = op.Mul(op.Sub(op.CastLike(codes, x), zq), op.Unsqueeze(op.CastLike(scales, x), [2]))
        w = op.Transpose(op.Reshape(w, op.Constant(value_ints=[n, k])), perm=[1, 0])
        return _add_bias(op, op.MatMul(x, w), bias, x)

    tcomp_linear_int4w.__annotations__ = {
        "x": FLOAT,
        "packed": UINT8,
        "scales": FLOAT,
        "zeros": UINT8,
        "group": int,
        "bias": FLOAT | None,
        "return": FLOAT,
    }
    return tcomp_linear_int4w


def _sign_matrix(op: Any, packed, alpha, k: int):
    """(N, K) ±1 in alpha's type from packed sign bits, with basic ops (folded by ORT)."""
    n, nbytes = packed.shape[0], packed.shape[1]
    # OR with a ConstantOfShape zero: the exporter's constant folder leaves ConstantOfShape (and
    # so everything after it) alone, keeping the bits packed in the file; ORT folds it all at
    # session start
    zero = op.ConstantOfShape(op.Constant(value_ints=[1]), value=_tensor("UINT8", [0]))
    packed = op.BitwiseOr(packed, zero)
    shifts = _c("UINT8", list(range(8)), op)
    bits = op.BitwiseAnd(
        op.BitShift(op.Unsqueeze(packed, [2]), shifts, direction="RIGHT"), _c("UINT8", 1, op)
    )  # (N, bytes, 8): bit j of byte b is column 8b + j
    bits = op.Slice(op.Reshape(bits, op.Constant(value_ints=[n, nbytes * 8])), [0], [k], [1])
    one = op.CastLike(op.Constant(value_float=1.0), alpha)
    return op.Sub(op.Add(op.CastLike(bits, alpha), op.CastLike(bits, alpha)), one)  # {0,1} -> {-1,+1}


@ONNX.implements(torch.ops.tcomp.linear_w1.default)
def w1_onnx(fused: bool = False):
    """``tcomp.linear_w1``: unpack the sign bits with basic ops (folded by ORT), then MatMul."""
    from onnxscript import FLOAT, UINT8
    from onnxscript import opset18 as op

    def tcomp_linear_w1(x, packed, alpha, k: int = 0, bias=None):
        signs = _sign_matrix(op, packed, alpha, k)
        w = op.Mul(op.CastLike(signs, x), op.Unsqueeze(op.CastLike(alpha, x), [1]))
        return _add_bias(op, op.MatMul(x, op.Transpose(w, perm=[1, 0])), bias, x)

    tcomp_linear_w1.__annotations__ = {
        "x": FLOAT,
        "packed": UINT8,
        "alpha": FLOAT,
        "k": int,
        "bias": FLOAT | None,
        "return": FLOAT,
    }
    return tcomp_linear_w1


@ONNX.implements(torch.ops.tcomp.linear_w1a1.default)
def w1a1_onnx(fused: bool = False):
    """``tcomp.linear_w1a1``: the activations' signs and per-token mean |x - tau| with basic ops,
    the sign product as a float MatMul of ±1 (exact: integer sums far below 2^24), then the scales."""
    from onnxscript import FLOAT, UINT8
    from onnxscript import opset18 as op

    def tcomp_linear_w1a1(x, packed, alpha, tau, shift, k: int = 0, bias=None):
        s_w = op.CastLike(_sign_matrix(op, packed, alpha, k), x)
        d = op.Sub(x, op.CastLike(tau, x))
        zero = op.CastLike(op.Constant(value_float=0.0), x)
        one = op.CastLike(op.Constant(value_float=1.0), x)
        s_x = op.Where(op.GreaterOrEqual(d, zero), one, op.Neg(one))
        beta = op.ReduceMean(op.Abs(d), op.Constant(value_ints=[-1]), keepdims=1)
        dot = op.MatMul(s_x, op.Transpose(s_w, perm=[1, 0]))
        y = op.Add(op.Mul(op.Mul(beta, op.CastLike(alpha, x)), dot), op.CastLike(shift, x))
        return _add_bias(op, y, bias, x)

    tcomp_linear_w1a1.__annotations__ = {
        "x": FLOAT,
        "packed": UINT8,
        "alpha": FLOAT,
        "tau": FLOAT,
        "shift": FLOAT,
        "k": int,
        "bias": FLOAT | None,
        "return": FLOAT,
    }
    return tcomp_linear_w1a1


def _tensor(kind: str, vals: list) -> Any:
    import onnx

    return onnx.helper.make_tensor("c", getattr(onnx.TensorProto, kind), [len(vals)], vals)


def _c(kind: str, value: float | list, op: Any) -> Any:
    """A Constant of ONNX element type ``kind`` ("UINT8", "INT32", "DOUBLE"): scalar or 1-D."""
    import onnx

    if isinstance(value, list):
        return op.Constant(value=_tensor(kind, value))
    return op.Constant(value=onnx.helper.make_tensor("c", getattr(onnx.TensorProto, kind), [], [value]))


@ONNX.implements(torch.ops.tcomp.linear_fp8w.default)
def fp8w_onnx(fused: bool = False):
    """``tcomp.linear_fp8w``: e4m3 weights stay 1 byte each in the file, dequantized in-graph
    (``DequantizeLinear`` with scale 1 is exact), scaled per output channel, then MatMul."""
    from onnxscript import FLOAT, FLOAT8E4M3FN
    from onnxscript import opset18 as op
    from onnxscript import opset19 as op19

    def tcomp_linear_fp8w(x, qweight, scale, bias=None):
        w = op19.DequantizeLinear(qweight, op.Constant(value_float=1.0))  # (N, K) float32, exact
        w = op.Mul(op.CastLike(w, x), op.Unsqueeze(op.CastLike(scale, x), op.Constant(value_ints=[1])))
        return _add_bias(op, op.MatMul(x, op.Transpose(w, perm=[1, 0])), bias, x)

    tcomp_linear_fp8w.__annotations__ = {
        "x": FLOAT,
        "qweight": FLOAT8E4M3FN,
        "scale": FLOAT,
        "bias": FLOAT | None,
        "return": FLOAT,
    }
    return tcomp_linear_fp8w


@ONNX.implements(torch.ops.tcomp.fp8_linear.default)
def fp8_onnx(fused: bool = False):
    """``tcomp.fp8_linear``: e4m3 weights stay 1 byte each in the file (a FLOAT8E4M3FN initializer,
    dequantized in-graph); the activations get their dynamic scales and the e4m3 rounding with basic
    ops (a saturating Cast to FLOAT8E4M3FN and back, opset 19); MatMul in float32 sums the exact
    e4m3 products; then the scales and the bias."""
    from onnxscript import DOUBLE, FLOAT, FLOAT8E4M3FN
    from onnxscript import opset18 as op
    from onnxscript import opset19 as op19

    from tcomp.quant import FP8_MAX

    def tcomp_fp8_linear(x, qweight, scale, granularity: str = "row", bias=None):
        x64 = op.Cast(x, to=DOUBLE.dtype)
        a = op.Abs(x64)
        if granularity == "row":
            amax = op.ReduceMax(a, op.Constant(value_ints=[-1]), keepdims=1)
        else:
            amax = op.ReduceMax(a, keepdims=1)
        s = op.Cast(op.Div(amax, _c("DOUBLE", FP8_MAX, op)), to=FLOAT.dtype)
        s = op.Where(op.Greater(s, op.Constant(value_float=0.0)), s, op.Constant(value_float=1.0))
        bad = op.Or(op.IsNaN(amax), op.IsInf(amax))
        s = op.Where(bad, op.Constant(value_float=float("nan")), s)
        v = op.Clip(
            op.Div(x64, op.Cast(s, to=DOUBLE.dtype)), _c("DOUBLE", -FP8_MAX, op), _c("DOUBLE", FP8_MAX, op)
        )
        qx = op.Cast(op19.Cast(v, to=FLOAT8E4M3FN.dtype, saturate=1), to=FLOAT.dtype)
        # DequantizeLinear with scale 1 is exact and, unlike a Cast, is not constant-folded by the
        # exporter: the initializer stays FLOAT8E4M3FN (1 byte per weight) in the file
        w = op19.DequantizeLinear(qweight, op.Constant(value_float=1.0))
        y = op.MatMul(qx, op.Transpose(w, perm=[1, 0]))
        y = op.Mul(op.Mul(y, s), op.CastLike(scale, y))
        return op.CastLike(_add_bias(op, y, bias, y), x)

    tcomp_fp8_linear.__annotations__ = {
        "x": FLOAT,
        "qweight": FLOAT8E4M3FN,
        "scale": FLOAT,
        "granularity": str,
        "bias": FLOAT | None,
        "return": FLOAT,
    }
    return tcomp_fp8_linear
