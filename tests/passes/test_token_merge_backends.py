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
from tcomp.dialect import attention_nodes, merge_plan
from tcomp.pipeline import copy_graph_module, run_pipeline
from tcomp.verify import Reference, rel_error


def _on(device, value):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _merged(name, r, device="cpu", **cfg):
    e = models.get(name, **cfg)
    e.model.to(device)
    e.example_inputs = tuple(_on(device, t) for t in e.example_inputs)
    e.example_kwargs = {key: _on(device, t) for key, t in e.example_kwargs.items()}
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

    device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    e, gm, ref = _merged(name, 2, device, depth=2, dim=32, heads=2)
    lowered = copy_graph_module(gm)
    res = get_backend("triton").lower(lowered, target="cpu" if device == "cpu" else "h200")
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
    res = get_backend("onnxruntime").lower(lowered, target="cpu")
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


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1", reason="no GPU"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("padded", [False, True])
def test_triton_merge_kernel_matches_reference_op(dtype, padded):
    """The Triton merge (plan + one gather-sum kernel) against the dialect's reference op."""
    from tcomp.backends.triton import token_merge as tm

    device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    g = torch.Generator().manual_seed(7 + padded)
    b, n, c, h, d, r = 3, 23, 40, 2, 8, 7
    x = torch.randn(b, n, c, generator=g).to(device, dtype)
    k = torch.randn(b, h, n, d, generator=g).to(device, dtype)
    k[:, :, 5] = k[:, :, 6]  # an exact duplicate pair: merged first
    size = (1 + torch.rand(b, n, generator=g) * 3).to(device)
    keep = None
    if padded:
        keep = torch.ones(b, n, dtype=torch.bool)
        keep[1, -6:] = False
        keep = keep.to(device)
    ref = torch.ops.tcomp.token_merge(x, k, size, keep, r, [0, -1])
    got = tm.token_merge(x, k, size, keep, r, [0, -1], target="h200")
    assert torch.equal(got[3], ref[3]) and torch.equal(got[2], ref[2])
    torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=0)
    assert got[0].dtype == dtype and torch.isfinite(got[0]).all()
    # float64 merge under the same plan; the bound is relative to the weighted mean of |x| in the
    # slot (cancelling tokens make the result itself tiny): one rounding to ``dtype``, fp32 sums
    assign, weight = merge_plan(k, size, keep, r, [0, -1])
    idx = assign.unsqueeze(-1).expand(b, n, c)

    def merge64(t):
        summed = torch.zeros(b, n - r, c, dtype=torch.float64, device=device)
        summed.scatter_add_(1, idx, t.double() * weight.double().unsqueeze(-1))
        return summed / ref[1].double().unsqueeze(-1)

    exact, scale = merge64(x), merge64(x.abs())
    tol = 2 * torch.finfo(dtype).eps + 16 * torch.finfo(torch.float32).eps
    err = ((got[0].double() - exact).abs() / scale.clamp_min(1e-30)).max().item()
    assert err <= tol, err
