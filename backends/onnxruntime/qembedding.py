"""ONNX translation of ``tcomp.embedding_int8`` (tcomp/dialect/qembedding.py): ``Gather`` the int8
codes and the per-row scales by the ids, cast the codes to the scale's dtype and multiply -- the
reference's one rounding. The backend runs float32 and float64 graphs, whose tables keep scales of
their own dtype, so the output dtype is the scale's. Declared with ``@ONNX.implements``;
onnxscript is imported lazily."""

from __future__ import annotations

import torch

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.embedding_int8
from tcomp.backends.onnxruntime import ONNX


@ONNX.implements(torch.ops.tcomp.embedding_int8.default)
def embedding_int8_onnx(fused: bool = False):
    """The trace-only onnxscript function translating ``tcomp.embedding_int8``."""
    from onnxscript import FLOAT, INT8, INT64
    from onnxscript import opset18 as op

    def tcomp_embedding_int8(ids, qweight, scale, out_dtype: int = 6):
        rows = op.Gather(qweight, ids, axis=0)
        s = op.Unsqueeze(op.Gather(scale, ids, axis=0), op.Constant(value_ints=[-1]))
        return op.Mul(op.CastLike(rows, s), s)

    # the module's annotations are strings (``from __future__``); the exporter reads the types
    tcomp_embedding_int8.__annotations__ = {"ids": INT64, "qweight": INT8, "scale": FLOAT, "out_dtype": int,
                                            "return": FLOAT}  # fmt: skip
    return tcomp_embedding_int8
