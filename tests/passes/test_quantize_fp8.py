"""quantize.fp8: the e4m3 round trip within its rounding bound (property test, saturation at 448),
the reference op against an independent float64 computation, NaN handling, the target gate, the
selection, and the measured output error (EMPIRICAL) on random layers and the zoo's BERT."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tcomp
from tcomp import quant as Q
from tcomp.capture import capture
from tcomp.errors import PassError
from tcomp.models.bert import Bert, BertConfig
from tcomp.outcome import PassFailed
from tcomp.pipeline import run_pipeline

FP8 = "quantize.fp8"
TINY = 1e-12  # float64 slack of the bound check (q * s is exact in float64 for float32 scales)


@st.composite
def wide_matrices(draw):
    """(N, K) matrices spanning many binades per row, with zero rows, single outliers and constants."""
    seed = draw(st.integers(0, 2**31 - 1))
    n, k = draw(st.integers(1, 9)), draw(st.sampled_from([1, 7, 64]))
    span = draw(st.sampled_from([2.0, 12.0, 40.0]))  # binades spanned within a row
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp2((torch.rand(n, k, generator=g, dtype=torch.float64) - 0.5) * span)
    w = mag * torch.where(torch.rand(n, k, generator=g) < 0.5, -1.0, 1.0).double()
    w = w * torch.exp2(torch.randint(-20, 20, (n, 1), generator=g)).double()  # per-row magnitude
    kind = draw(st.sampled_from(["plain", "zero_row", "outlier", "constant_row"]))
    if kind == "zero_row":
        w[0] = 0
    elif kind == "outlier":
        w[0, 0] *= 1e4
    elif kind == "constant_row":
        w[-1] = w[-1, 0]
    if dtype == torch.float16:
        w = w.clamp(-6e4, 6e4)  # float16 overflows at 65504
    return w.to(dtype)


def _assert_within_e4m3_bound(w, q, s, granularity):
    rows = w.shape[0] if granularity == "row" else 1
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape and s.shape == (rows,)
    qf = q.double()
    assert torch.isfinite(qf).all() and (qf.abs() <= 448).all()
    w64, s64 = w.double(), s.double()[:, None]
    err = (qf * s64 - w64).abs()
    bound = torch.maximum(2.0**-4 * w64.abs(), 2.0**-10 * s64.expand_as(w64))
    assert (err <= bound * (1 + TINY)).all(), (err / bound).max()
    assert Q.fp8_error_ratio(w, q, s) <= 1 + TINY
    groups = w64.abs().amax(dim=1) if granularity == "row" else w64.abs().amax().reshape(1)
    for amax, qg, sg in zip(groups, qf if granularity == "row" else qf.reshape(1, -1), s.double()):
        if amax > 0:  # the largest magnitude lands on 448: the whole range is used, nothing overflows
            assert qg.abs().max() == 448 and sg > 0
        else:
            assert sg == 1 and (qg == 0).all()


@given(w=wide_matrices(), granularity=st.sampled_from(["row", "tensor"]))
def test_round_trip_within_e4m3_bound(w, granularity):
    q, s = Q.quantize_fp8(w, granularity)
    _assert_within_e4m3_bound(w, q, s, granularity)
    assert torch.equal(Q.dequantize_fp8(q, s, torch.float64), q.double() * s.double()[:, None])


def test_round_trip_bound_is_attained_and_rounding_is_nearest():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 256, generator=g)
    q, s = Q.quantize_fp8(w, "row")
    # random values fill the rounding interval: the bound is nearly reached, so it is not vacuous
    assert 0.8 < Q.fp8_error_ratio(w, q, s) <= 1 + TINY
    # nearest: from each dequantized value, the neighbouring e4m3 codes are no closer to w / s
    v = w.double() / s.double()[:, None]
    codes = q.view(torch.uint8)
    for step in (-1, 1):  # the next code down and up in magnitude (0x7E is 448, 0x7F NaN)
        mag = ((codes & 0x7F).to(torch.int16) + step).clamp(0, 0x7E).to(torch.uint8)
        other = (mag | (codes & 0x80)).view(torch.float8_e4m3fn).double()
        assert ((q.double() - v).abs() <= (other - v).abs() + 1e-12).all()


def test_saturation_at_448_and_nan():
    v = torch.tensor([448.0, 448 * (1 + 2**-20), 464.0, 1e6, -1e6, float("inf"), float("-inf"), float("nan")])
    out = Q.to_e4m3(v.double()).double()
    assert out[:7].tolist() == [448, 448, 448, 448, -448, 448, -448] and torch.isnan(out[7])
    # scales whose float32 rounding falls below amax / 448 put the row max just above 448: clamped
    amax = torch.tensor([448.0 * 3 + 1, 1.0e-3, 7.123456789], dtype=torch.float64)
    lower = [a for a in amax.tolist() if torch.tensor(a / 448, dtype=torch.float32).item() < a / 448]
    assert lower, "the case this test is about must occur"
    w = torch.stack([amax, -amax / 3], dim=1).float()
    q, s = Q.quantize_fp8(w, "row")
    assert (q.double().abs().amax(dim=1) == 448).all()
    _assert_within_e4m3_bound(w, q, s, "row")
    # a NaN or inf turns its whole group NaN (never finite garbage); the other rows stay exact
    x = torch.randn(3, 8)
    x[1, 2] = float("nan")
    x[2, 5] = float("inf")
    q, s = Q.quantize_fp8(x, "row")
    assert torch.isnan(s[1:]).all() and torch.isnan(Q.dequantize_fp8(q, s)[1:]).all()
    assert torch.equal(q[0].view(torch.uint8), Q.quantize_fp8(x[:1], "row")[0][0].view(torch.uint8))
    assert torch.isnan(Q.dequantize_fp8(*Q.quantize_fp8(x, "tensor"))).all()


@given(
    seed=st.integers(0, 2**31 - 1),
    granularity=st.sampled_from(["row", "tensor"]),
    m=st.integers(1, 5),
    k=st.sampled_from([16, 96]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    with_bias=st.booleans(),
)
def test_reference_op_is_e4m3_products_rescaled(seed, granularity, m, k, dtype, with_bias):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, k, generator=g)
    x = (torch.randn(2, m, k, generator=g) * torch.rand(2, m, 1, generator=g) * 8).to(dtype)
    bias = torch.randn(12, generator=g).to(dtype) if with_bias else None
    qw, sw = Q.quantize_fp8(w, granularity)
    y = torch.ops.tcomp.fp8_linear(x, qw, sw, granularity, bias)
    assert y.dtype == dtype and y.shape == (2, m, 12) and torch.isfinite(y).all()
    # independent float64 computation from the dequantized activations and weights
    qx, sx = Q.quantize_fp8(x.reshape(-1, k), granularity)
    xd, wd = Q.dequantize_fp8(qx, sx), Q.dequantize_fp8(qw, sw)
    want = xd @ wd.T + (0 if bias is None else bias.double())
    # float32 sums of K exact products (float64 sums for float64 x), then the cast to x's dtype
    work_eps = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    slack = (k + 2) * work_eps * (xd.abs() @ wd.abs().T + (0 if bias is None else bias.double().abs()))
    slack = slack + torch.finfo(dtype).eps * want.abs()
    assert ((y.reshape(-1, 12).double() - want).abs() <= slack + 1e-300).all()
    assert (xd - x.reshape(-1, k).double()).abs().max() > 0  # the activations really were rounded


def test_reference_op_nan_never_passes_and_shapes_checked():
    w = torch.randn(6, 16)
    qw, sw = Q.quantize_fp8(w, "row")
    x = torch.randn(3, 16)
    x[1, 4] = float("nan")
    y = torch.ops.tcomp.fp8_linear(x, qw, sw, "row", None)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()
    assert torch.isnan(torch.ops.tcomp.fp8_linear(x, *Q.quantize_fp8(w, "tensor"), "tensor", None)).all()
    with pytest.raises(ValueError, match="granularity 'tensor' needs a scale of 1"):
        torch.ops.tcomp.fp8_linear(x, qw, sw, "tensor", None)


class MLP(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))

    def forward(self, x):
        for i, lin in enumerate(self.layers):
            x = lin(x)
            x = torch.relu(x) if i < len(self.layers) - 1 else x
        return x


def _fp8_nodes(om):
    return [n for n in om.graph_module.graph.nodes if n.target is torch.ops.tcomp.fp8_linear.default]


@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_pipeline_on_h200_rewrites_measures_and_leaves_the_model_alone(granularity, tmp_path):
    torch.manual_seed(1)
    model = MLP([64, 128, 128, 128, 16]).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 64)
    spec = (FP8, {"target": "h200", "granularity": granularity})
    om = tcomp.optimize(model, (x,), passes=[spec], backend="eager")
    rec = om.report.passes[-1]
    assert rec.status == "applied" and rec.rewrites == 2 and len(_fp8_nodes(om)) == 2
    assert 0.005 < rec.error <= rec.tolerance == 0.2  # lossy, and measured against float64
    sites = {s["site"]: s for s in rec.sites}
    assert [sites[f"layers.{i}"]["status"] for i in range(4)] == [
        "skipped",
        "quantized",
        "quantized",
        "skipped",
    ]
    assert sites["layers.1"]["format"] == f"fp8_{granularity}"
    assert sites["layers.1"]["max_weight_error_in_scales"] <= 0.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    held = dict(om.graph_module.named_buffers())
    assert sum(t.dtype == torch.float8_e4m3fn for t in held.values()) == 2
    # the artifact carries the e4m3 bytes (two 128x128 layers: 64 KiB of fp32 -> 16 KiB) and reloads
    sizes = {}
    for label, mod in (("fp32", tcomp.optimize(model, (x,), passes=[], backend="eager")), ("fp8", om)):
        mod.save(str(tmp_path / label))
        sizes[label] = os.path.getsize(tmp_path / label / "weights.safetensors")
    assert sizes["fp8"] <= sizes["fp32"] - 0.7 * 2 * 128 * 128 * 4
    with torch.no_grad():
        assert torch.equal(tcomp.load(str(tmp_path / "fp8"))(x), om(x))


def test_target_gate_skips_every_site_and_says_why():
    """The pass's own options decide (run_pipeline, so no face hands it a target)."""
    torch.manual_seed(2)
    model = MLP([32, 48, 48, 8]).eval()
    x = torch.randn(4, 32)
    gm = capture(model, (x,)).gm

    def run(opts):
        res = run_pipeline(gm, ["canonicalize", (FP8, opts)])
        n = sum(n.target is torch.ops.tcomp.fp8_linear.default for n in res.gm.graph.nodes)
        return res.records[-1], n

    for opts, who in (
        ({}, "not told the target"),
        ({"target": "a100"}, "'a100' has no fp8"),
        ({"target": "cpu"}, "'cpu'"),
    ):
        rec, n = run(opts)
        assert rec.status == "skipped" and rec.rewrites == 0 and n == 0
        assert who in rec.notes[0] and "h100, h200" in rec.notes[0] and "force=True" in rec.notes[0]
        sites = {s["site"]: s["reason"] for s in rec.sites}
        assert "first/last" in sites["layers.0"] and who in sites["layers.1"]
    for opts in ({"target": "h100"}, {"target": "h200"}, {"target": "cpu", "force": True}, {"force": True}):
        rec, n = run(opts)
        assert rec.status == "applied" and rec.rewrites == 1 and n == 1
    assert "fp8 forced" in run({"target": "cpu", "force": True})[0].notes[0]
    with pytest.raises(PassError, match="valid targets"):  # refused when the plan is built, before any work
        run({"target": "h300"})


def test_selection_skip_list_types_and_non_finite_weights():
    torch.manual_seed(3)
    model = MLP([32, 48, 48, 48, 8]).eval()
    with torch.no_grad():
        model.layers[2].weight[0, 0] = float("nan")
    x = torch.randn(4, 32)
    opts = {"target": "h200", "skip_first_last": False, "skip": ("layers.1",)}
    om = tcomp.optimize(model, (x,), passes=[(FP8, opts)], backend="eager", verify=False)
    sites = {s["site"]: s for s in om.report.passes[-1].sites}
    assert "skip list" in sites["layers.1"]["reason"] and "NaN" in sites["layers.2"]["reason"]
    assert {s for s, r in sites.items() if r["status"] == "quantized"} == {"layers.0", "layers.3"}
    om = tcomp.optimize(
        model, (x,), passes=[(FP8, {**opts, "types": ("Conv2d",)})], backend="eager", verify=False, on_failure="skip"
    )
    assert om.report.passes[-1].rewrites == 0


@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_zoo_bert_error_vs_float64(granularity):
    torch.manual_seed(4)
    model = Bert(BertConfig()).eval()
    ids = torch.randint(1, 1000, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 11:] = 0
    om = tcomp.optimize(
        model, (ids, mask), passes=[(FP8, {"target": "h200", "granularity": granularity})], backend="eager"
    )
    rec = om.report.passes[-1]
    # 2 layers x 6 linears, the first and the last kept: 10 fp8 layers; measured error ~0.018
    assert rec.status == "applied" and rec.rewrites == 10, (rec.status, rec.reason)
    assert 1e-3 < rec.error <= 0.05 and om.report.final_error == rec.error
    with torch.no_grad():
        out, ref = om(ids, mask), copy.deepcopy(model).double()(ids, mask)
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).norm() / ref.norm()).item() <= 0.05


def test_pipeline_refuses_nan_outputs():
    """A model whose activations hold an inf that it handles itself (isinf -> 0): the fp8 layer turns
    the row NaN (its scale is NaN), which the model no longer catches; the pipeline's check counts
    NaN as infinite error and rolls the pass back."""

    class Inf(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            h = self.a(x)
            h = torch.where(h > 1e3, torch.full_like(h, float("inf")), h)
            y = self.b(h)  # +inf where h holds one (b's weights are positive), finite elsewhere
            return self.c(torch.where(torch.isinf(y), torch.zeros_like(y), y))

    torch.manual_seed(5)
    model = Inf().eval()
    with torch.no_grad():
        model.b.weight.abs_()
    x = torch.randn(4, 8)
    x[0] *= 1e6
    with torch.no_grad():
        assert torch.isfinite(model(x)).all() and torch.isinf(model.a(x)).sum() == 0
    with pytest.raises(PassFailed, match="quantize.fp8 did not apply.*NaN"):  # asked for, rolled back: said
        tcomp.optimize(model, (x,), passes=[(FP8, {"target": "h200"})], backend="eager", verify_samples=1)
    om = tcomp.optimize(model, (x,), passes=[(FP8, {"target": "h200"})], backend="eager", verify_samples=1,
                        on_failure="skip")  # fmt: skip
    rec = om.report.passes[-1]
    assert rec.status == "rolled_back" and "NaN" in rec.reason and not _fp8_nodes(om)


def test_optimize_hands_its_target_to_the_pass():
    """``tcomp.optimize(target=...)`` tells passes that take a ``target`` which one it is; an
    option the user gave wins."""
    torch.manual_seed(2)
    model = MLP([64, 128, 128, 16]).eval()
    x = torch.randn(4, 64)
    on = tcomp.optimize(model, (x,), target="h200", passes=[FP8], backend="eager", verify=False)
    assert on.report[FP8].rewrites == 1 and len(_fp8_nodes(on)) == 1
    off = tcomp.optimize(model, (x,), target="cpu", passes=[FP8], backend="eager", verify=False, on_failure="skip")
    assert off.report[FP8].rewrites == 0 and any("'cpu'" in n for n in off.report[FP8].notes)
    mine = tcomp.optimize(
        model, (x,), target="h200", passes=[(FP8, {"target": "a100"})], backend="eager", verify=False,
        on_failure="skip",
    )  # fmt: skip
    assert mine.report[FP8].rewrites == 0


def test_float64_values_round_once_to_the_nearest_e4m3():
    """Values a few float64 ulps either side of every e4m3 midpoint (both signs), and random ones:
    each becomes its nearest e4m3 value. torch's own float64 cast goes through float32 and rounds
    twice -- a value just below a midpoint lands on it and then goes to even (found by the round-trip
    property above: 3.4999999 subnormal steps became 4)."""
    codes = torch.arange(0, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).double()  # finite, >= 0
    mids = (codes[1:] + codes[:-1]) / 2
    eps = torch.tensor([-1e-9, -1e-12, -1e-15, 1e-15, 1e-12, 1e-9], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    v = torch.cat([(mids[:, None] * (1 + eps)).reshape(-1), torch.rand(20000, generator=g, dtype=torch.float64) * 448])
    v = torch.cat([v, -v])
    got = Q.to_e4m3(v).double()
    nearest = (codes[None, :] - v.abs()[:, None]).abs().min(1).values
    assert ((got - v).abs() <= nearest).all() and (torch.sign(got) * torch.sign(v) >= 0).all()
    assert torch.equal(Q.to_e4m3(mids), mids.to(torch.float32).to(torch.float8_e4m3fn))  # exact ties: to even
