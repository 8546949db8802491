"""``tcomp.rms_norm`` through the ONNX Runtime backend: a Llama-like model with its RMSNorms
canonicalized to the dialect op, exported with the op's translation, against float64."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import tcomp
from tcomp.verify import rel_error

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript", "onnx")),
    reason="needs onnxruntime, onnxscript and onnx (pip install 'tcomp[onnx]')",
)


def test_llama_like_model_on_onnxruntime():
    from tcomp import models as zoo

    e = zoo.get("gpt-gqa")
    om = tcomp.optimize(e.model, tuple(e.example_inputs), passes=["canonicalize"], backend="onnxruntime")
    recs = {r.name: r for r in om.report.passes}
    assert sum("rms_norm at" in n for n in recs["canonicalize"].notes) >= 3
    assert recs["lower.onnxruntime"].status == "applied", recs["lower.onnxruntime"].reason
    ids = torch.randint(0, 100, (3, 11))  # another batch and length than the example
    with torch.no_grad():
        ref = e.model.double()(ids)
        e.model.float()
        out, base = om(ids), e.model(ids)
    assert rel_error(out, ref) <= 4 * max(rel_error(base, ref), torch.finfo(torch.float32).eps)
