"""``tcomp.rms_norm`` on its generated Triton kernel (interpreter on CPU, real kernel on a GPU):
against float64 at random shapes, with and without a weight, NaN rows, and lowered inside a
Llama-like model through ``tcomp.optimize(backend="triton")``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp.backends.triton.fusion import run_fused  # noqa: E402
from tcomp.backends.triton.rms_norm import rms_norm as rms_norm_kernel  # noqa: E402
from tcomp.dialect.norm import rms_norm  # noqa: E402
from tcomp.verify import rel_error  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TARGET = "h100" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])  # bf16: GPU only


def _f64(x, w, eps):
    x = x.double()
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return y if w is None else y * w.double()


@settings(deadline=None, max_examples=12)
@given(
    lead=st.sampled_from([(1,), (3,), (2, 5), (7, 1, 3)]), d=st.sampled_from([1, 16, 48, 96, 200]),
    weighted=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_kernel_matches_float64(lead, d, weighted, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*lead, d, generator=g) * 2 + 0.5).to(dtype).to(DEVICE)
    w = torch.randn(d, generator=g).to(dtype).to(DEVICE) if weighted else None
    y = rms_norm_kernel(x, w, 1e-6, target=TARGET)
    ref = _f64(x.cpu(), None if w is None else w.cpu(), 1e-6)
    assert y.dtype == dtype and y.shape == x.shape and torch.isfinite(y).all()
    # the same roundings as the dialect's reference: the output's cast, fp32 sums in another order
    own = rel_error(rms_norm(x.cpu(), None if w is None else w.cpu(), 1e-6), ref)
    assert rel_error(y.cpu(), ref) <= 2 * own + 8 * torch.finfo(torch.float32).eps


def test_non_contiguous_input_and_nan_rows():
    x = torch.randn(6, 64, device=DEVICE)[:, :40]  # (6, 40) view with a row stride of 64
    assert x.stride() == (64, 1)  # the kernel reads the strided rows in place (no copy)
    w = torch.randn(40, device=DEVICE)
    x[3, 7] = float("nan")
    y = rms_norm_kernel(x, w, 1e-5, target=TARGET)
    assert torch.isnan(y[3]).all()
    keep = [0, 1, 2, 4, 5]
    assert rel_error(y[keep].cpu(), _f64(x[keep].cpu(), w.cpu(), 1e-5)) < 1e-6


def test_lowered_in_a_llama_like_model():
    from tcomp import models as zoo

    e = zoo.get("gpt-gqa")
    model = e.model.to(DEVICE)
    args = tuple(a.to(DEVICE) for a in e.example_inputs)
    om = tcomp.optimize(model, args, target=TARGET, passes=["canonicalize"], backend="triton")
    records = {r.name: r for r in om.report.passes}
    assert records["lower.triton"].status == "applied"
    n_norms = sum(isinstance(m, torch.nn.RMSNorm) for m in model.modules())
    lowered = [n for n in om.graph_module.graph.nodes if n.target is rms_norm_kernel]
    # a norm after a residual add runs inside that add's fused kernel (which stores both the sum and
    # the normalised row); the others on their own kernel
    fused = [n for n in om.graph_module.graph.nodes if n.target is run_fused and '["rms"' in n.args[0]]
    assert fused, "the residual adds of a pre-norm model fuse with the next RMSNorm"
    assert len(lowered) + len(fused) == n_norms
    assert "tcomp_rms_norm.py" in tcomp.backend.get_backend("triton").kernel_sources(om.graph_module)
