"""ONNX translation of ``tcomp.attention`` (semantics in tcomp/dialect/attention.py).

A trace-only onnxscript function, specialised in Python on the call's arguments: bias None or
additive float, mask None or bool (True = keep), causal (top-left), GQA/MQA (k/v heads expanded),
any static scale. Fully-masked rows give zeros (NaN rows from Softmax over all ``-inf`` are
zeroed), as the reference does. With the backend's ``fused`` option the site becomes ORT's
com.microsoft ``MultiHeadAttention`` (float32) instead of MatMul/Softmax/Where (opset 18).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.attention
from tcomp.backends.onnxruntime import ONNX, SUPPORTED_DTYPES
from tcomp.backends.onnxruntime.contrib import MsftOps
from tcomp.graph import val


def check(node: fx.Node) -> str | None:
    """Why an attention node cannot be exported (None: it can)."""
    q = val(node.args[0])
    if q is None or q.dim() != 4:
        return "needs 4-D q/k/v with known shapes"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"attention dtype {q.dtype} (supported: float32, float64)"
    return None


@ONNX.implements(torch.ops.tcomp.attention.default, check=check)
def attention_onnx(fused: bool = False):
    """The translation function for ``tcomp.attention`` (built lazily: onnxscript is optional).
    ``fused``: emit ORT's com.microsoft MultiHeadAttention contrib op (float32, CPU) instead of
    MatMul/Softmax/Where."""
    from onnxscript import BOOL, FLOAT
    from onnxscript import opset18 as op

    msft = MsftOps() if fused else None

    def tcomp_attention(
        q: FLOAT,
        k: FLOAT,
        v: FLOAT,
        bias: FLOAT | None = None,
        mask: BOOL | None = None,
        scale: float = 1.0,
        causal: bool = False,
    ) -> FLOAT:
        h, hk = q.shape[1], k.shape[1]
        d, dv = q.shape[3], v.shape[3]
        if isinstance(h, int) and isinstance(hk, int) and h != hk:  # GQA / MQA: expand k/v heads
            k, v = _expand_heads(op, k, h, hk), _expand_heads(op, v, h, hk)
        if fused and all(isinstance(x, int) for x in (h, d, dv)):
            return _mha(op, msft, q, k, v, bias, mask, float(scale), bool(causal), h, d, dv)
        kt = op.Transpose(k, perm=[0, 1, 3, 2])
        scores = op.Mul(op.MatMul(q, kt), op.CastLike(op.Constant(value_float=float(scale)), q))
        if bias is not None:
            scores = op.Add(scores, op.CastLike(bias, scores))
        keep = mask
        if causal:
            shp = op.Shape(scores)
            n = op.Squeeze(op.Slice(shp, [-2], [-1]), [0])
            m = op.Squeeze(op.Slice(shp, [-1], [2**62]), [0])
            zero = op.Constant(value_int=0)
            one = op.Constant(value_int=1)
            rows = op.Unsqueeze(op.Range(zero, n, one), [1])
            cols = op.Unsqueeze(op.Range(zero, m, one), [0])
            tri = op.LessOrEqual(cols, rows)  # (N, M): key j <= query i
            keep = tri if keep is None else op.And(keep, tri)
        if keep is not None:
            neg_inf = op.CastLike(op.Constant(value_float=float("-inf")), scores)
            scores = op.Where(keep, scores, neg_inf)
        p = op.Softmax(scores, axis=-1)
        if keep is not None or bias is not None:  # rows with every key masked give zeros; a NaN stays
            p = op.Where(_dead_rows(op, scores), op.CastLike(op.Constant(value_float=0.0), p), p)
        return op.MatMul(p, v)

    # this module uses string annotations; the exporter infers the signature from real types
    tcomp_attention.__annotations__ = {
        "q": FLOAT,
        "k": FLOAT,
        "v": FLOAT,
        "bias": FLOAT | None,
        "mask": BOOL | None,
        "scale": float,
        "causal": bool,
        "return": FLOAT,
    }
    return tcomp_attention


def _mha(op, msft, q, k, v, bias, mask, scale, causal, h, d, dv):
    """tcomp.attention through com.microsoft.MultiHeadAttention: (B, H, N, D) -> (B, N, H*D) in,
    bias and masks folded into one additive ``attention_bias`` (B|1, H|1, N, M) with -inf where
    masked, rows with every key masked set to zeros afterwards."""

    def to_bsd(x, width):
        return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, h * width]))

    keep = mask
    n = op.Slice(op.Shape(q), [2], [3])
    m = op.Slice(op.Shape(k), [2], [3])
    if causal:
        zero, one = op.Constant(value_int=0), op.Constant(value_int=1)
        rows = op.Unsqueeze(op.Range(zero, op.Squeeze(n, [0]), one), [1])
        cols = op.Unsqueeze(op.Range(zero, op.Squeeze(m, [0]), one), [0])
        tri = op.LessOrEqual(cols, rows)
        keep = tri if keep is None else op.And(keep, tri)
    ab = None
    if bias is not None:
        ab = op.CastLike(bias, q)
    if keep is not None:
        zero_f = op.CastLike(op.Constant(value_float=0.0), q)
        neg_inf = op.CastLike(op.Constant(value_float=float("-inf")), q)
        ab = op.Where(keep, zero_f if ab is None else ab, neg_inf)
    inputs = [to_bsd(q, d), to_bsd(k, d), to_bsd(v, dv)]
    if ab is not None:
        full = op.Concat(op.Constant(value_ints=[1, 1]), n, m, axis=0)
        ab = op.Expand(ab, full)
        inputs += [None, None, ab]  # bias (QKV projection bias), key_padding_mask, attention_bias
    out = msft.MultiHeadAttention(*inputs, num_heads=h, scale=scale)
    out = op.Transpose(op.Reshape(out, op.Constant(value_ints=[0, 0, h, dv])), perm=[0, 2, 1, 3])
    if ab is not None:  # rows with every key masked give zeros; a NaN from the inputs stays
        out = op.Where(_dead_rows(op, ab), op.CastLike(op.Constant(value_float=0.0), out), out)
    return out


def _dead_rows(op: Any, scores: Any) -> Any:
    """(…, N, 1) True where a row of ``scores`` is -inf at every key (every key masked): softmax gives
    NaN there and tcomp.attention zeros. Only those rows: a NaN the inputs carry must come out as
    NaN, as in eager (replacing every NaN by 0 hid it)."""
    top = op.ReduceMax(scores, op.Constant(value_ints=[-1]), keepdims=1)
    return op.IsInf(top, detect_negative=1, detect_positive=0)


def _expand_heads(op: Any, x: Any, h: int, hk: int) -> Any:
    """(B, Hk, M, D) -> (B, H, M, D), key/value head ``j`` repeated ``h // hk`` times in place."""
    rep = h // hk
    x5 = op.Unsqueeze(x, [2])  # (B, Hk, 1, M, D)
    shp = op.Shape(x)
    target = op.Concat(
        op.Slice(shp, [0], [2]), op.Constant(value_ints=[rep]), op.Slice(shp, [2], [4]), axis=0
    )
    x5 = op.Expand(x5, target)
    new = op.Concat(op.Slice(shp, [0], [1]), op.Constant(value_ints=[h]), op.Slice(shp, [2], [4]), axis=0)
    return op.Reshape(x5, new)
