"""attention.softmax_free (SOFT): Newton–Schulz pseudo-inverse with its convergence check,
the rewrite through tcomp.linear_attention, landmarks from calibration, masks and normalisation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tcomp.passes  # noqa: F401
from tcomp.capture import capture
from tcomp.dialect import attention_nodes, is_linear_attention
from tcomp.passes.softmax_free import newton_pinv
from tcomp.pipeline import run_pipeline
from tests.attention_zoo import AttnSpec, build, inputs


@settings(max_examples=15)
@given(st.integers(2, 12), st.integers(0, 2**16), st.booleans())
def test_newton_pinv_matches_moore_penrose(m, seed, singular):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, m, 4 if singular else m, generator=g, dtype=torch.float64)
    a = x @ x.transpose(-2, -1) + (0 if singular else 0.1) * torch.eye(m, dtype=torch.float64)
    pinv, res, iters = newton_pinv(a, iters=200, tol=1e-9)
    assert res < 1e-9 and iters <= 200
    want = torch.linalg.pinv(a, hermitian=True, rtol=1e-10)
    # the residual E = A X A - A bounds the error on A's range: X - A+ = A+ E A+, so per matrix
    # |X - A+| <= |A+|^2 |A| res (res is the batch's worst) -- large for the ill-conditioned full-rank
    # draws ("singular" with m <= 4: a seed with |A+| = 1.3e4 failed a plain 1e-5 relative bound);
    # 1e-5 |A+|: rounding in A's null space (rank-deficient draws), which the residual cannot see.
    # Over m = 2..12, 400 seeds each, the error stays below half of this bound.
    an, pn = a.flatten(-2).norm(dim=-1), want.flatten(-2).norm(dim=-1)
    err = (pinv - want).flatten(-2).norm(dim=-1)
    assert (err <= 2 * res * an * pn**2 + 1e-5 * pn).all(), (err, res * an * pn**2)


def test_newton_reports_non_convergence():
    a = torch.diag(torch.tensor([1.0, 1e-3], dtype=torch.float64))[None]
    _, res, iters = newton_pinv(a, iters=5, tol=1e-9)  # needs ~20 iterations
    assert iters == 5 and res > 1e-9


def _calib(spec, n=2):
    return [inputs(spec, 4, 10, padded=True, seed=20 + i) for i in range(n)]


@pytest.mark.parametrize("normalize", ["row", "symmetric"])
def test_soft_rewrite_structure_and_fidelity(normalize):
    spec = AttnSpec(spelling="sdpa", mask="bool", heads=2, head_dim=8)
    model = build(spec, layers=2, seed=3)
    args = inputs(spec, 3, 10, padded=True, seed=1)
    gm = run_pipeline(capture(model, args).gm, ["canonicalize"]).gm
    res = run_pipeline(
        gm,
        [("attention.softmax_free", {"calibration": _calib(spec), "landmarks": 8, "normalize": normalize})],
    )
    rec = res.records[-1]
    assert rec.rewrites == 2 and not attention_nodes(res.gm)
    assert sum(is_linear_attention(n) for n in res.gm.graph.nodes) == 2
    assert all(s["newton_residual"] < 1e-6 and s["calib_error"] < 1.0 for s in rec.sites)
    assert any(k.startswith("tcomp_soft_l0_pinv") for k in dict(res.gm.named_buffers()))
    got, want = res.gm(*args), gm(*args)
    assert torch.isfinite(got).all()
    assert (got - want).norm() / want.norm() < 0.5
    if normalize == "symmetric":
        return  # column sums run over every query, padded ones included (documented)
    # padded keys contribute nothing
    x, pad = args
    x2 = torch.where(pad.bool()[..., None], x, x * 2 - 1)
    keep = pad.bool()
    assert torch.allclose(res.gm(x2, pad)[keep], got[keep], atol=1e-4)


def test_more_landmarks_fit_better():
    """Nyström with more landmarks approximates the kernel better on the calibration data."""
    spec = AttnSpec(spelling="sdpa", heads=2, head_dim=8)
    model = build(spec, layers=1, seed=7)
    args = inputs(spec, 2, 12, padded=False)
    gm = run_pipeline(capture(model, args).gm, ["canonicalize"]).gm
    calib = [inputs(spec, 4, 12, padded=False, seed=30)]
    errs = []
    for m in (2, 24):
        rec = run_pipeline(
            gm, [("attention.softmax_free", {"calibration": calib, "landmarks": m, "scales": (1.0,)})]
        ).records[-1]
        errs.append(rec.sites[0]["calib_error"])
    assert errs[1] < errs[0]


def test_without_calibration_nothing_is_done_and_bias_sites_are_skipped():
    spec = AttnSpec(spelling="matmul_div", bias=True)
    model = build(spec, layers=1)
    args = inputs(spec, 2, 6, padded=False)
    gm = run_pipeline(capture(model, args).gm, ["canonicalize"]).gm
    rec = run_pipeline(gm, ["attention.softmax_free"]).records[-1]
    assert rec.status == "skipped" and "needs calibration" in rec.notes[0]
    rec = run_pipeline(gm, [("attention.softmax_free", {"calibration": [args]})]).records[-1]
    assert rec.status == "skipped" and "query position" in rec.notes[0]
