"""Attention transfer (passes/attention_transfer.py): padded stacking of calibration samples, the
loss choices, the closed-form output correction, and the pass options that drive them."""

from __future__ import annotations

import math

import pytest
import torch

import tcomp
import tcomp.passes  # noqa: F401 - registers the passes
from tcomp.capture import capture
from tcomp.dialect import attention_nodes
from tcomp.passes.attention_transfer import (
    eager_site,
    fit_correction,
    fit_hedgehog,
    query_rows,
    site_error,
    stack,
)
from tcomp.passes.feature_maps import analyze, capture_sites, make_feature_map
from tcomp.pipeline import run_pipeline
from tests.attention_zoo import AttnSpec, build, inputs

SPEC = AttnSpec(spelling="sdpa", mask="bool", heads=2, head_dim=8)


def _site(seed: int, n_batches: int = 3):
    model = build(SPEC, layers=1, seed=seed)
    gm = run_pipeline(capture(model, inputs(SPEC, 2, 8, padded=True)).gm, ["canonicalize"]).gm
    node = attention_nodes(gm)[0]
    # batches of different lengths, so stacking has to pad
    calib = [inputs(SPEC, 3, 5 + 2 * i, padded=True, seed=20 + seed + i) for i in range(n_batches)]
    return analyze(node), capture_sites(gm, calib)[node.name]


@pytest.mark.parametrize("seed", [1, 2])
def test_stacked_samples_give_the_same_attention_on_real_rows(seed):
    _, samples = _site(seed)
    assert len({s.q.shape[-2] for s in samples}) > 1
    (merged,), _ = stack(samples)
    out, rows = merged.attention(), query_rows(merged)
    i = 0
    for s in samples:
        b, n = s.q.shape[0], s.q.shape[-2]
        got = (out[i : i + b, :, :n] * rows[i : i + b, :, :n]).double()
        ref = (s.attention() * query_rows(s)).double()
        assert torch.isfinite(got).all() and float((got - ref).norm() / ref.norm()) < 1e-5
        assert torch.equal(rows[i : i + b, :, :n], query_rows(s))
        assert not rows[i : i + b, :, n:].any()  # padded positions never count
        i += b


@pytest.mark.parametrize("loss", ["output", "both"])
def test_output_losses_reduce_the_error(loss):
    site, samples = _site(3)
    fmap = make_feature_map("hedgehog", site.scale, 8, 2, 2)
    before = site_error(fmap, samples)
    fit_hedgehog(fmap, samples, steps=40, lr=0.03, loss=loss)
    after = site_error(fmap, samples)
    assert math.isfinite(after) and after < 0.8 * before
    with pytest.raises(ValueError, match="loss"):
        fit_hedgehog(fmap, samples, steps=1, lr=0.01, loss="mse")


def test_output_correction_never_increases_the_fitted_error():
    site, samples = _site(4)
    fmap = make_feature_map("hedgehog", site.scale, 8, 2, 2)
    fit_hedgehog(fmap, samples, steps=10, lr=0.02)
    before = site_error(fmap, samples)
    fit_correction(fmap, samples, ridge=0.1)
    assert fmap.out_weight.shape == (2, 8, 8) and fmap.out_bias.shape == (2, 1, 8)
    after = site_error(fmap, samples)
    # ridge towards the identity: the least-squares objective at the solution is <= at the identity
    assert math.isfinite(after) and after <= before * 1.001
    assert torch.isfinite(eager_site(fmap, samples[0])).all()


def test_pass_with_correction_and_sequential_fitting_matches_its_eager_sites():
    model = build(SPEC, layers=2, seed=5)
    args = inputs(SPEC, 2, 8, padded=True)
    calib = [inputs(SPEC, 3, 8, padded=True, seed=30 + i) for i in range(2)]
    opts = {"feature_map": "hedgehog", "steps": 15, "loss": "both", "sequential": True, "correction": True}
    om = tcomp.optimize(model, args, passes=[("attention.linear", {**opts, "tolerance": 10.0})], calibration=calib)
    rec = om.report["attention.linear"]
    assert rec.status == "applied" and rec.rewrites == 2
    assert any("sequential" in n and "correction" in n for n in rec.notes)
    bufs = dict(om.graph_module.named_buffers())
    assert sum(k.endswith("_out_w") for k in bufs) == 2 and sum(k.endswith("_out_b") for k in bufs) == 2
    out = om(*args)
    assert torch.isfinite(out).all()
    with torch.no_grad():
        ref = model(*args)
    assert float((out - ref).norm() / ref.norm()) < 1.0
