"""ONNX translation of ``tcomp.rms_norm`` (tcomp/dialect/norm.py) for the ONNX Runtime backend.

Standard opset-18 ops in the reference's order -- ``x / sqrt(ReduceMean(x * x, -1) + eps)``, then
the weight -- which ORT's graph optimizer fuses into its SimplifiedLayerNormalization kernel where
it applies. The backend runs float32 and float64 graphs, so no casts are needed. Declared with
``@ONNX.implements``; onnxscript is imported lazily.
"""

from __future__ import annotations

import torch

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.rms_norm
from tcomp.backends.onnxruntime import ONNX


@ONNX.implements(torch.ops.tcomp.rms_norm.default)
def rms_norm_onnx(fused: bool = False):
    """The trace-only onnxscript function translating ``tcomp.rms_norm``."""
    from onnxscript import FLOAT
    from onnxscript import opset18 as op

    def tcomp_rms_norm(x: FLOAT, weight: FLOAT | None = None, eps: float = 1e-6) -> FLOAT:
        ms = op.ReduceMean(op.Mul(x, x), op.Constant(value_ints=[-1]), keepdims=1)
        y = op.Div(x, op.Sqrt(op.Add(ms, op.CastLike(op.Constant(value_float=float(eps)), x))))
        return y if weight is None else op.Mul(y, op.CastLike(weight, x))

    # the module's annotations are strings (``from __future__``); the exporter reads the types
    tcomp_rms_norm.__annotations__ = {"x": FLOAT, "weight": FLOAT | None, "eps": float, "return": FLOAT}
    return tcomp_rms_norm
