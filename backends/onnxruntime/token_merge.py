"""ONNX translation of ``tcomp.token_merge`` (see tcomp/dialect/) for the ONNX Runtime backend.

The same steps as the reference, in standard opset-18 ops: ReduceMean/MatMul for the key cosine
scores, ReduceMax/ArgMax for each A token's best partner, TopK (ties: lower index first, as the
reference's stable sort) for the ``r`` best pairs, CumSum for the new positions, and
ScatterElements with ``reduction="add"`` for sizes and size-weighted sums. Declared with
``@ONNX.implements``; onnxscript is imported lazily.
"""

from __future__ import annotations

import torch

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.token_merge
from tcomp.backends.onnxruntime import ONNX


@ONNX.implements(torch.ops.tcomp.token_merge.default)
def token_merge_onnx(fused: bool = False):
    """The trace-only onnxscript function translating ``tcomp.token_merge``."""
    from onnxscript import BOOL, FLOAT, INT64
    from onnxscript import opset18 as op

    def i64(*v):
        return op.Constant(value_ints=list(v))

    def tcomp_token_merge(x, k, size=None, keep=None, r: int = 0, protected=()):
        protected = [int(i) for i in (protected or ())]
        p = len(protected)
        shp = op.Shape(x)
        b, n, c = op.Slice(shp, [0], [1]), op.Slice(shp, [1], [2]), op.Slice(shp, [2], [3])
        zero_f = op.CastLike(op.Constant(value_float=0.0), x)
        metric = op.ReduceMean(op.CastLike(k, x), i64(1), keepdims=0)  # (B, N, D)
        norm = op.Sqrt(op.ReduceSum(op.Mul(metric, metric), i64(-1), keepdims=1))
        tiny = op.CastLike(op.Constant(value_float=1.1754943508222875e-38), x)
        metric = op.Div(metric, op.Max(norm, tiny))
        # protected first (in the order given), then the rest in order
        prot = [op.Add(i64(i), n) if i < 0 else i64(i) for i in protected]
        prot_idx = op.Concat(*prot, axis=0) if prot else None
        pos = op.Range(op.Constant(value_int=0), op.Squeeze(n, [0]), op.Constant(value_int=1))
        key = pos
        if prot_idx is not None:
            flag = op.ScatterElements(op.Expand(i64(0), n), prot_idx, op.Expand(i64(1), i64(p)), axis=0)
            key = op.Add(pos, op.Mul(flag, n))
        _, order = op.TopK(key, n, axis=0, largest=0, sorted=1)
        rest = op.Slice(order, i64(0), op.Sub(n, i64(p)))
        big = 2**62
        a_idx, b_idx = op.Slice(rest, [0], [big], [0], [2]), op.Slice(rest, [1], [big], [0], [2])
        na, nb = op.Shape(a_idx), op.Shape(b_idx)
        scores = op.MatMul(
            op.Gather(metric, a_idx, axis=1), op.Transpose(op.Gather(metric, b_idx, axis=1), perm=[0, 2, 1])
        )
        if keep is not None:
            ka, kb = op.Gather(keep, a_idx, axis=1), op.Gather(keep, b_idx, axis=1)
            ka3, kb3 = op.Unsqueeze(ka, [2]), op.Unsqueeze(kb, [1])
            both_pad = op.And(op.Not(ka3), op.Not(kb3))
            scores = op.Where(both_pad, op.CastLike(op.Constant(value_float=2.0), x), scores)
            scores = op.Where(
                op.Xor(ka3, kb3), op.CastLike(op.Constant(value_float=float("-inf")), x), scores
            )
        best = op.ReduceMax(scores, i64(-1), keepdims=0)
        dst = op.ArgMax(scores, axis=-1, keepdims=0)
        if keep is not None:
            fallback = op.Where(
                ka,
                op.CastLike(op.Constant(value_float=-3.0), x),
                op.CastLike(op.Constant(value_float=-2.0), x),
            )
            best = op.Where(op.IsInf(best), fallback, best)
        _, rank = op.TopK(best, na, axis=-1, largest=1, sorted=1)
        chosen = op.Slice(rank, [0], [r], [1])
        merged = op.ScatterElements(
            op.Expand(i64(0), op.Concat(b, na, axis=0)), chosen, op.Expand(i64(1), op.Shape(chosen)), axis=1
        )
        kept_a = op.Sub(na, i64(r))
        unmerged_pos = op.Add(op.CumSum(op.Sub(i64(1), merged), op.Constant(value_int=1)), i64(p - 1))
        a_new = op.Where(op.Cast(merged, to=BOOL.dtype), op.Add(op.Add(dst, kept_a), i64(p)), unmerged_pos)
        b_new = op.Add(
            op.Range(op.Constant(value_int=0), op.Squeeze(nb, [0]), op.Constant(value_int=1)),
            op.Add(kept_a, i64(p)),
        )
        idx = [a_idx, b_idx]
        upd = [a_new, op.Expand(op.Unsqueeze(b_new, [0]), op.Concat(b, nb, axis=0))]
        if prot_idx is not None:
            idx.insert(0, prot_idx)
            upd.insert(0, op.Expand(op.Unsqueeze(i64(*range(p)), [0]), op.Concat(b, i64(p), axis=0)))
        bn = op.Concat(b, n, axis=0)
        idx_all = op.Expand(op.Unsqueeze(op.Concat(*idx, axis=0), [0]), bn)
        assign = op.ScatterElements(op.Expand(i64(0), bn), idx_all, op.Concat(*upd, axis=1), axis=1)
        weight = (
            op.Expand(op.CastLike(op.Constant(value_float=1.0), x), bn)
            if size is None
            else op.CastLike(size, x)
        )
        if keep is not None:
            ok_a = op.Or(
                op.Not(op.Cast(merged, to=BOOL.dtype)),
                op.Equal(
                    op.Cast(ka, to=INT64.dtype), op.GatherElements(op.Cast(kb, to=INT64.dtype), dst, axis=1)
                ),
            )
            a_full = op.Expand(op.Unsqueeze(a_idx, [0]), op.Concat(b, na, axis=0))
            ok = op.ScatterElements(op.Expand(i64(1), bn), a_full, op.Cast(ok_a, to=INT64.dtype), axis=1)
            weight = op.Mul(weight, op.CastLike(ok, x))
        m = op.Sub(n, i64(r))
        bm = op.Concat(b, m, axis=0)
        new_size = op.ScatterElements(op.Expand(zero_f, bm), assign, weight, axis=1, reduction="add")
        bnc = op.Concat(b, n, c, axis=0)
        summed = op.ScatterElements(
            op.Expand(zero_f, op.Concat(b, m, c, axis=0)),
            op.Expand(op.Unsqueeze(assign, [2]), bnc),
            op.Mul(x, op.Unsqueeze(weight, [2])),
            axis=1,
            reduction="add",
        )
        new_x = op.Div(summed, op.Unsqueeze(new_size, [2]))
        if keep is None:
            new_keep = op.Expand(op.Constant(value=_bool_true()), bm)
        else:
            kept = op.ScatterElements(
                op.Expand(zero_f, bm), assign, op.Mul(weight, op.CastLike(keep, x)), axis=1, reduction="add"
            )
            new_keep = op.Greater(kept, zero_f)
        return new_x, new_size, new_keep, assign

    tcomp_token_merge.__annotations__ = {
        "x": FLOAT,
        "k": FLOAT,
        "size": FLOAT | None,
        "keep": BOOL | None,
        "r": int,
        "protected": list[int],
    }
    return tcomp_token_merge


def _bool_true():
    import onnx

    return onnx.helper.make_tensor("true", onnx.TensorProto.BOOL, [], [True])
