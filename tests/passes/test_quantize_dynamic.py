"""quantize.int8_dynamic (W8A8): the reference op's integer math is exact, and on random linear
layers in float64 the output moves by at most sum_k |x| sw/2 + |w| sx/2 + sx sw/4 per element."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tcomp
from tcomp import quant as Q

W8A8 = "quantize.int8_dynamic"


@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 6), k=st.sampled_from([16, 96, 256]))
def test_reference_integer_math_is_exact(seed, m, k):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, m, k, generator=g) * 3
    w = torch.randn(24, k, generator=g)
    q, s = Q.quantize_int8(w)
    y = torch.ops.tcomp.linear_w8a8(x, q, s, None)
    qx, sx = Q.quantize_int8(x.reshape(-1, k))
    exact = (qx.long() @ q.long().T).double()  # int64 sums on the CPU: the ground truth
    want = (exact * sx.double()[:, None] * s.double()[None, :]).float().reshape(2, m, 24)
    assert y.dtype == torch.float32 and torch.equal(y, want)
    assert (qx.abs() <= 127).all() and (qx.abs().amax(dim=1) == 127).all()


@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 5),
    k=st.sampled_from([32, 128]),
    n=st.sampled_from([16, 64]),
    wscale=st.sampled_from([0.02, 1.0, 30.0]),
    xscale=st.sampled_from([0.1, 1.0, 50.0]),
    with_bias=st.booleans(),
)
def test_output_error_within_w8a8_bound(seed, rows, k, n, wscale, xscale, with_bias):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(k, n, bias=with_bias)).double().eval()
    with torch.no_grad():
        model[0].weight.mul_(wscale)
    x = torch.randn(rows, k, dtype=torch.float64) * xscale
    om = tcomp.optimize(
        model, (x,), passes=[(W8A8, {"skip_first_last": False})], backend="eager", verify=False
    )
    ops = [n_ for n_ in om.graph_module.graph.nodes if n_.target is torch.ops.tcomp.linear_w8a8.default]
    assert len(ops) == 1 and om.report.passes[-1].rewrites == 1
    q, sw = (getattr(om.graph_module, a.target) for a in ops[0].args[1:3])
    w = model[0].weight.detach()
    sw = sw.double()
    assert ((Q.dequantize_int8(q, sw) - w).abs() <= sw[:, None] / 2 * (1 + 1e-12)).all()
    _, sx = Q.quantize_int8(x)
    sx = sx.double()
    bound = x.abs() @ (sw[:, None] / 2).expand(n, k).T + (sx[:, None] / 2) @ w.abs().sum(1)[None, :]
    bound = bound + k * sx[:, None] * sw[None, :] / 4
    with torch.no_grad():
        y, y_hat = model(x), om(x)
    assert torch.isfinite(y_hat).all() and (y_hat != y).any()
    slack = 1e-12 * (1 + y.abs() + bound)
    assert ((y_hat - y).abs() <= bound + slack).all()
    # the bound is not vacuous: it is within a few hundred times the typical error
    assert bound.mean() <= 1e3 * (y_hat - y).abs().mean() + 1e-300


def test_mlp_pipeline_checked_and_untouched():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16)
    ).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 32)
    om = tcomp.optimize(model, (x,), passes=[W8A8], backend="eager")
    rec = om.report.passes[-1]
    assert rec.status == "applied" and rec.rewrites == 1 and 0 < rec.error <= rec.tolerance
    sites = {s["site"]: s["status"] for s in rec.sites}
    assert sites == {"0": "skipped", "2": "quantized", "4": "skipped"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
