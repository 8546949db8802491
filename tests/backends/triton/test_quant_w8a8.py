"""The generated W8A8 kernels (Triton interpreter on CPU, fp32/fp16 activations) against the
reference op ``tcomp.linear_w8a8`` and the float64 unquantized linear, and lowering of a W8A8 model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp import quant as Q
from tcomp.backends.triton import TRITON, quant_w8a8  # noqa: E402
from tcomp.verify import eps  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (conftest)


@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.sampled_from([1, 3, 17]),
    n=st.sampled_from([16, 40, 64]),
    k=st.sampled_from([32, 96, 192]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    with_bias=st.booleans(),
)
def test_kernel_matches_reference_op(seed, m, n, k, dtype, with_bias):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    x = (torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 4).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype) if with_bias else None
    q, s = Q.quantize_int8(w)
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    out = quant_w8a8.linear_w8a8(dev(x), dev(q), dev(s), dev(bias), target="h200").cpu()
    ref = torch.ops.tcomp.linear_w8a8(x.float(), q, s, None if bias is None else bias.float()).double()
    exact = torch.nn.functional.linear(x.double(), w.double(), None if bias is None else bias.double())
    assert out.dtype == dtype and out.shape == (m, n) and torch.isfinite(out).all()
    # int32 sums are exact, so kernel and reference differ only where an activation lands on the other
    # side of a rounding boundary (the kernel divides by its scale in fp32, the reference in fp64; ties
    # round away from zero vs to even): at most one code, sx[m], per element, times |q[n, k]| s[n];
    # plus the fp32 rescale and the output's rounding to its dtype
    sx = x.double().abs().amax(dim=1, keepdim=True) / 127
    one_code = sx * (q.double().abs().sum(dim=1) * s.double())[None, :]
    slack = 2 * eps(dtype) * ref.abs() + 1e-6
    assert ((out.double() - ref).abs() <= one_code + slack).all()
    # (no bound on how many outputs differ: one activation on a rounding boundary moves every output
    # of its row, so with m = 1 all of them can -- CI failed on such a case; the per-element bound
    # above is the contract)
    assert ((out.double() - exact).norm() / exact.norm()).item() <= 0.05  # and it is a W8A8 linear


def test_triton_lowering_of_w8a8_model():
    torch.manual_seed(0)
    layers = [nn.Linear(48, 64), nn.SiLU(), nn.Linear(64, 80), nn.Tanh(), nn.Linear(80, 24)]
    model = nn.Sequential(*layers).eval().to(DEVICE)
    x = torch.randn(3, 4, 48, device=DEVICE)
    spec = ("quantize.int8_dynamic", {"skip_first_last": False})
    om = tcomp.optimize(model, (x,), passes=[spec], backend="triton")
    low = om.report["lower.triton"]
    assert low.status == "applied" and low.rewrites >= 3, (low.reason, low.notes)
    assert sum(n.target is quant_w8a8.linear_w8a8 for n in om.graph_module.graph.nodes) == 3
    assert any(name.startswith("tcomp_w8a8") for name in TRITON.kernel_sources(om.graph_module))
    ref = tcomp.optimize(model, (x,), passes=[spec], backend="eager", verify=False)
    with torch.no_grad():
        got, want = om(x), ref(x)
    assert ((got - want).norm() / want.norm()).item() <= 1e-4
