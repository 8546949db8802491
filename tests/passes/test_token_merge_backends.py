"""tokens.merge with the rest of tcomp: the merged graph lowered to the Triton backend (interpreter
on the CPU, small shapes) and exported to ONNX Runtime gives what the eager merged graph gives."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import tcomp.passes  # noqa: F401 - registers the passes
from tcomp import models
from tcomp.backend import get_backend
from tcomp.capture import capture
from tcomp.ops import attention_nodes
from tcomp.pipeline import copy_graph_module, run_pipeline
from tcomp.verify import Reference, rel_error


def _merged(name, r, **cfg):
    e = models.get(name, **cfg)
    cap = capture(e.model, e.example_inputs, e.example_kwargs)
    gm = run_pipeline(cap.gm, ["canonicalize", ("tokens.merge", {"r": r})]).gm
    with torch.no_grad():
        ref = gm(*e.example_inputs, **e.example_kwargs)
    return e, gm, ref


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1", reason="no GPU"
)
@pytest.mark.parametrize("name", ["vit", "bert"])
def test_triton_backend_runs_proportional_attention(name):
    import tcomp.backends  # noqa: F401

    e, gm, ref = _merged(name, 2, depth=2, dim=32, heads=2)
    lowered = copy_graph_module(gm)
    res = get_backend("triton").lower(lowered, target="cpu")
    assert res.rewrites >= 2 and not attention_nodes(lowered)  # both sites on the kernel
    with torch.no_grad():
        out = lowered(*e.example_inputs, **e.example_kwargs)
    assert rel_error(out, ref) < 1e-5


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
@pytest.mark.parametrize("name", ["bert"])  # padding mask, dynamic sequence length
def test_onnxruntime_backend_exports_the_merge(name):
    import tcomp.backends  # noqa: F401

    e, gm, ref = _merged(name, 2, depth=2)
    lowered = copy_graph_module(gm)
    res = get_backend("onnxruntime").lower(lowered)
    assert res.rewrites == 1, res.notes
    with torch.no_grad():
        out = lowered(*e.example_inputs, **e.example_kwargs)
    assert rel_error(out, ref) < 1e-5


def test_pipeline_verifies_the_merge_against_its_contract():
    e = models.get("vit", depth=2)
    cap = capture(e.model, e.example_inputs, e.example_kwargs)
    ref = Reference.build(e.model, e.example_inputs, e.example_kwargs, samples=2)
    res = run_pipeline(cap.gm, ["canonicalize", ("tokens.merge", {"r": 2})], reference=ref)
    rec = res.records[-1]
    assert rec.status == "applied" and 0 < rec.error <= rec.tolerance


@pytest.mark.parametrize("name", ["bert"])  # post-LN: native_layer_norm in the AOT graph
def test_torch_compile_backend_merges_like_export(name):
    """``torch.compile(m, backend="tcomp", options={"passes": [("tokens.merge", ...)]})`` rewrites
    the AOTAutograd graph (native_layer_norm there) the same way as the exported one."""
    import tcomp.dynamo

    e, gm, ref = _merged(name, 2, depth=2)
    tcomp.dynamo.clear_reports()
    compiled = torch.compile(e.model, backend="tcomp", options={"passes": [("tokens.merge", {"r": 2})]})
    with torch.no_grad():
        out = compiled(*e.example_inputs, **e.example_kwargs)
    rec = next(p for p in tcomp.dynamo.reports()[-1].passes if p["name"] == "tokens.merge")
    assert rec["status"] == "applied" and rec["rewrites"] == 2
    assert rel_error(out, ref) < 1e-5
    torch._dynamo.reset()
