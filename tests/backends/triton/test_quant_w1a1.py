"""The generated W1A1 kernels (activation binarize + XNOR-popcount GEMM; Triton interpreter on CPU,
fp32/fp16 activations, K not a multiple of 8 included) against the dialect's reference op, and
lowering of a W1A1-binarized model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp import quant as Q  # noqa: E402
from tcomp.backends.triton import TRITON, quant_w1a1  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (conftest)


@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.sampled_from([(1, 16, 64), (3, 40, 100), (17, 64, 37), (5, 24, 200), (2, 8, 9)]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    with_bias=st.booleans(),
)
def test_kernel_matches_reference_op(seed, shape, dtype, with_bias):
    m, n, k = shape
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g)
    x = (torch.randn(m, k, generator=g) + 0.3).to(dtype)
    tau, shift = torch.randn(k, generator=g) * 0.2, torch.randn(n, generator=g)
    bias = torch.randn(n, generator=g).to(dtype) if with_bias else None
    p, alpha = Q.binarize(w)
    args = [t if t is None else t.to(DEVICE) for t in (x, p, alpha, tau, shift)]
    out = quant_w1a1.linear_w1a1(*args, k, None if bias is None else bias.to(DEVICE), target="h200").cpu()
    ref = torch.ops.tcomp.linear_w1a1(x, p, alpha, tau, shift, k, bias)
    assert out.dtype == dtype and out.shape == (m, n) and torch.isfinite(out).all()
    # same float32 signs and exact sign sums; beta's sum order differs, then one rounding to dtype
    rel = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert rel <= (1e-5 if dtype == torch.float32 else 2e-3), rel


def test_popcount_is_exact_on_every_agreement_count():
    """alpha = beta = 1 and no shift: the output is the sign dot product itself, for x's signs
    agreeing with w's on 0..K channels (K = 77, not a multiple of 8)."""
    k = 77
    w = torch.randn(1, k)
    s_w = torch.where(w >= 0, 1.0, -1.0)
    agree = torch.arange(k + 1)
    x = torch.stack([torch.where(torch.arange(k) < a, s_w[0], -s_w[0]) for a in agree])  # |x| = 1
    p, _ = Q.binarize(w)
    ones, zeros = torch.ones(1), torch.zeros(k)
    args = [t.to(DEVICE) for t in (x, p, ones, zeros, torch.zeros(1))]
    out = quant_w1a1.linear_w1a1(*args, k, target="h200").cpu()[:, 0]
    assert torch.equal(out, (2 * agree - k).float())


def test_triton_lowering_of_w1a1_model():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(40, 72), nn.ReLU(), nn.Linear(72, 56), nn.GELU(), nn.Linear(56, 12))
    model = model.eval().to(DEVICE)
    x = torch.randn(2, 6, 40, device=DEVICE)
    spec = ("binarize", {"activations": True, "skip_first_last": False})
    om = tcomp.optimize(model, (x,), passes=[spec], backend="triton", verify=False)
    low = om.report["lower.triton"]
    assert low.status == "applied" and low.rewrites >= 3, (low.reason, low.notes)
    assert sum(n.target is quant_w1a1.linear_w1a1 for n in om.graph_module.graph.nodes) == 3
    assert any(name.startswith("tcomp_w1a1") for name in TRITON.kernel_sources(om.graph_module))
    eager = tcomp.optimize(model, (x,), passes=[spec], backend="eager", verify=False)
    with torch.no_grad():
        got, want = om(x), eager(x)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5
