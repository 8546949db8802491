"""quantize.int4_gptq: GPTQ reduces to round-to-nearest when the inputs are uncorrelated, lowers the
layer-output error when they are correlated, emits the int4 format the dialect op reads, and the
pass needs calibration, reports per-site errors and leaves the user's model alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tcomp
from tcomp import quant as Q
from tcomp.errors import PassError
from tcomp.passes.quantize_int4_gptq import _layer_errors, gptq_int4
from tcomp.pipeline import get_pass

GPTQ = "quantize.int4_gptq"


def _correlated(seed: int, rows: int, k: int, mix: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.eye(k) + mix * torch.randn(k, k, generator=g) / k**0.5
    scale = torch.rand(k, generator=g) * 2 + 0.1  # channels of different magnitude, as in real models
    return (torch.randn(rows, k, generator=g) @ a) * scale


@settings(max_examples=15)
@given(
    seed=st.integers(0, 2**31 - 1), group=st.sampled_from([32, 64, 128]), n=st.integers(1, 48), act_order=st.booleans()
)  # fmt: skip
def test_uncorrelated_inputs_give_round_to_nearest(seed, group, n, act_order):
    """With a diagonal H no error can be moved to another column: GPTQ's codes are RTN's."""
    g = torch.Generator().manual_seed(seed)
    k = 2 * group
    w = torch.randn(n, k, generator=g) * (torch.rand(n, 1, generator=g) + 0.1)
    h = torch.diag(torch.rand(k, generator=g, dtype=torch.float64) + 0.5)
    got = gptq_int4(w, h, group, act_order=act_order)
    want = Q.quantize_int4(w, group)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@settings(max_examples=15)
@given(
    seed=st.integers(0, 2**31 - 1), group=st.sampled_from([32, 64]), mix=st.floats(1.0, 4.0), act_order=st.booleans()
)  # fmt: skip
def test_correlated_inputs_lower_the_layer_output_error(seed, group, mix, act_order):
    x = _correlated(seed, 512, 128, mix).double()
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(seed + 1))
    h = x.T @ x
    packed, s, z = gptq_int4(w, h, group, act_order=act_order)
    deq = Q.dequantize_int4(packed, s, z, group)
    errs = _layer_errors(w, h, group, deq)
    assert torch.isfinite(deq).all()
    assert errs["gptq_output_error"] < errs["rtn_output_error"], errs
    # the same quantity measured directly on the inputs
    direct = ((x @ deq.T - x @ w.double().T).norm() / (x @ w.double().T).norm()).item()
    assert abs(direct - errs["gptq_output_error"]) <= 1e-6 * max(direct, 1e-12)
    # every stored code dequantizes through the dialect op to the same product
    b = torch.randn(48, dtype=torch.float64)
    got = torch.ops.tcomp.linear_int4w(x[:16], packed, s.double(), z, group, b)
    assert (got - (x[:16] @ deq.T + b)).abs().max() <= 1e-9 * got.abs().max()


def test_always_zero_inputs_are_handled():
    x = _correlated(3, 256, 64, 2.0).double()
    x[:, 5] = 0.0
    w = torch.randn(8, 64)
    packed, s, z = gptq_int4(w, x.T @ x, 32)
    deq = Q.dequantize_int4(packed, s, z, 32)
    assert torch.isfinite(deq).all() and torch.isfinite(s).all()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 128)
        self.mid = nn.ModuleList(nn.Linear(128, 128) for _ in range(2))
        self.out = nn.Linear(128, 16)

    def forward(self, x):
        x = torch.relu(self.inp(x))
        for m in self.mid:
            x = torch.relu(m(x))
        return self.out(x)


def test_pass_on_a_model_with_calibration():
    torch.manual_seed(0)
    model = Net().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _correlated(1, 32, 64, 3.0)
    calib = [_correlated(s, 64, 64, 3.0) for s in (10, 11)]
    with pytest.raises(PassError, match="calibration=batches"):  # refused before any work
        tcomp.optimize(model, (x,), passes=[GPTQ], backend="eager")
    om = tcomp.optimize(model, (x,), passes=[(GPTQ, {"group": 64})], backend="eager", calibration=calib)
    rec = om.report[GPTQ]
    assert rec.status == "applied" and rec.rewrites == 2 and rec.error <= rec.tolerance
    done = [s for s in rec.sites if s["status"] == "quantized"]
    assert [s["site"] for s in done] == ["mid.0", "mid.1"]
    assert all(s["gptq_output_error"] < s["rtn_output_error"] for s in done)
    assert any("lower than round-to-nearest" in n for n in rec.notes)
    ops = [n for n in om.graph_module.graph.nodes if n.target is torch.ops.tcomp.linear_int4w.default]
    assert len(ops) == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        y, want = om(x), model(x)
    assert torch.isfinite(y).all() and (y - want).norm() <= 0.2 * want.norm()
    with pytest.raises(PassError, match="group"):
        get_pass(GPTQ)(om.graph_module, calibration=calib, group=48)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), group=st.sampled_from([32, 128]), weighted=st.booleans())
def test_clipped_group_ranges_never_round_worse(seed, group, weighted):
    """The clip search keeps the full range when shrinking does not pay, so its (weighted) rounding
    error is never above round-to-nearest's; a lone outlier makes shrinking pay."""
    g = torch.Generator().manual_seed(seed)
    vals = torch.randn(6, 4, group, generator=g, dtype=torch.float64)
    vals[..., 0] *= 8  # one large weight per group
    imp = torch.rand(1, 1, group, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    s0, z0 = Q.int4_scale_zero(vals, torch.float32)
    s1, z1 = Q.int4_scale_zero_clipped(vals, torch.float32, imp)
    assert torch.isfinite(s1).all() and ((z1 >= 0) & (z1 <= 15)).all()
    assert (s1 <= s0).all()  # ranges only shrink

    def err(s, z):
        deq = (Q.int4_codes(vals, s, z).double() - z[..., None]) * s.double()[..., None]
        sq = (deq - vals) ** 2
        return (sq if imp is None else sq * imp).sum(-1)

    e0, e1 = err(s0, z0), err(s1, z1)
    assert (e1 <= e0 * (1 + 1e-12)).all()
    assert (e1 < e0).any()


def test_gptq_pass_option_clip_reaches_the_quantizer():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64)).eval()
    x = torch.randn(4, 64)
    calib = [(torch.randn(16, 64),) for _ in range(2)]
    errs = {}
    for clip in (True, False):
        om = tcomp.optimize(
            model, (x,), passes=[(GPTQ, {"group": 32, "clip": clip, "skip_first_last": False})],
            backend="eager", calibration=calib,
        )  # fmt: skip
        rec = om.report.passes[-1]
        assert rec.status == "applied" and rec.rewrites == 2, rec.reason
        errs[clip] = [s["gptq_output_error"] for s in rec.sites if s["status"] == "quantized"]
    assert errs[True] != errs[False]  # the option reaches the quantizer
