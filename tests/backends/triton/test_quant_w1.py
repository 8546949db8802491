"""The generated W1A16 kernel (Triton interpreter on CPU, fp32/fp16 activations, K not a multiple
of 8 included) against the float64 linear with alpha*sign(W), and lowering of a binarized model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp import quant as Q  # noqa: E402
from tcomp.backends.triton import TRITON, quant_w1  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (conftest)


@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.sampled_from([(1, 16, 64), (2, 48, 96), (3, 40, 100), (17, 64, 37), (5, 24, 200)]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    with_bias=st.booleans(),
)
def test_kernel_matches_signs_times_alpha(seed, shape, dtype, with_bias):
    m, n, k = shape
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g)
    x = torch.randn(m, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype) if with_bias else None
    p, alpha = Q.binarize(w)
    out = quant_w1.linear_w1(
        x.to(DEVICE),
        p.to(DEVICE),
        alpha.to(DEVICE),
        k,
        None if bias is None else bias.to(DEVICE),
        target="h200",
    ).cpu()
    w_hat = torch.where(w >= 0, 1.0, -1.0).double() * alpha.double()[:, None]
    ref = torch.nn.functional.linear(x.double(), w_hat, None if bias is None else bias.double())
    assert out.dtype == dtype and out.shape == (m, n) and torch.isfinite(out).all()
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    assert rel <= (1e-5 if dtype == torch.float32 else 2e-3), rel


def test_triton_lowering_of_binarized_model():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(40, 72), nn.ReLU(), nn.Linear(72, 56), nn.GELU(), nn.Linear(56, 12))
    model = model.eval().to(DEVICE)
    x = torch.randn(2, 6, 40, device=DEVICE)
    spec = ("binarize", {"skip_first_last": False})
    om = tcomp.optimize(model, (x,), passes=[spec], backend="triton")
    low = om.report["lower.triton"]
    assert low.status == "applied" and low.rewrites >= 3, (low.reason, low.notes)
    assert sum(n.target is quant_w1.linear_w1 for n in om.graph_module.graph.nodes) == 3
    assert any(name.startswith("tcomp_w1") for name in TRITON.kernel_sources(om.graph_module))
    eager = tcomp.optimize(model, (x,), passes=[spec], backend="eager", verify=False)
    with torch.no_grad():
        got, want = om(x), eager(x)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5
