"""binarize: bit packing round-trips, alpha = mean|W| per channel, the reference op equals
F.linear with alpha*sign(W), the pipeline measures the output error (EMPIRICAL), and artifacts carry
the packed bits (1/32 of fp32 weight bytes)."""

from __future__ import annotations

import os

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tcomp
from tcomp import quant as Q


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9), k=st.integers(1, 70))
def test_pack_roundtrip_and_alpha(seed, n, k):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    w[0, 0] = 0.0  # sign(0) -> +1
    p, alpha = Q.binarize(w)
    assert p.dtype == torch.uint8 and p.shape == (n, (k + 7) // 8)
    bits = Q.unpack_bits(p, k)
    assert torch.equal(bits, w >= 0)
    assert torch.allclose(alpha, w.abs().mean(dim=1), rtol=1e-15, atol=0)
    deq = Q.dequantize_bits(p, alpha, k)
    assert torch.equal(deq, torch.where(w >= 0, 1.0, -1.0) * alpha[:, None])
    # alpha is the L2-optimal scale of the signs: any other scale is no closer
    for c in (0.9, 1.1):
        assert (deq - w).norm() <= (c * deq - w).norm()


@given(seed=st.integers(0, 2**31 - 1), k=st.sampled_from([13, 64]), with_bias=st.booleans())
def test_reference_op_is_signs_times_alpha(seed, k, with_bias):
    g = torch.Generator().manual_seed(seed)
    w, x = torch.randn(12, k, generator=g), torch.randn(2, 3, k, generator=g)
    bias = torch.randn(12, generator=g) if with_bias else None
    p, alpha = Q.binarize(w)
    y = torch.ops.tcomp.linear_w1(x, p, alpha, k, bias)
    want = torch.nn.functional.linear(x.double(), torch.sign(w).double() * alpha.double()[:, None])
    want = want if bias is None else want + bias.double()
    assert y.shape == (2, 3, 12) and ((y.double() - want).norm() / want.norm()) <= 1e-6


def test_pipeline_measures_error_and_artifact_carries_bits(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8)
    ).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 64)
    om = tcomp.optimize(model, (x,), passes=["binarize"], backend="eager")
    rec = om.report.passes[-1]
    assert rec.status == "applied" and rec.rewrites == 1
    assert 0.05 < rec.error <= rec.tolerance  # binarization is lossy, and the error is measured
    sites = {s["site"]: s for s in rec.sites}
    assert sites["2"]["status"] == "quantized" and sites["2"]["max_weight_error_in_scales"] <= 0.5
    with torch.no_grad():
        assert torch.isfinite(om(x)).all()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    sizes = {}
    for label, mod in (("fp32", tcomp.optimize(model, (x,), passes=[], backend="eager")), ("w1", om)):
        mod.save(str(tmp_path / label))
        sizes[label] = os.path.getsize(tmp_path / label / "weights.safetensors")
    assert sizes["w1"] <= sizes["fp32"] - 0.9 * 256 * 256 * 4  # 256 KiB of fp32 became 8 KiB of bits


def test_over_tolerance_binarization_is_rolled_back():
    """A near-identity layer (one dominant weight per row) is destroyed by sign(W) * mean|W|: the
    measured error exceeds the EMPIRICAL tolerance and the pipeline keeps the original graph."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    with torch.no_grad():
        model[2].weight.copy_(torch.eye(32) * 3 + 0.01 * torch.randn(32, 32))
    x = torch.randn(8, 32)
    om = tcomp.optimize(model, (x,), passes=["binarize"], backend="eager")
    rec = om.report.passes[-1]
    assert rec.status != "applied" and rec.error > rec.tolerance, (rec.status, rec.error)
    assert not any(n.target is torch.ops.tcomp.linear_w1.default for n in om.graph_module.graph.nodes)
    with torch.no_grad():
        assert torch.allclose(om(x), model(x), rtol=1e-5, atol=1e-6)
