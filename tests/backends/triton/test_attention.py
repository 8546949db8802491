"""The generated Triton attention kernel against the float64 reference of tcomp.attention.

CPU (CI): under TRITON_INTERPRET=1 in fp32 and fp16 at small shapes. GPU: the same in bf16 too and
at larger shapes. The contract is FP_EQUIVALENT: the kernel's error vs float64 must stay within a
small multiple of the error the reference implementation itself makes in that dtype.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp.backends.triton.runtime import attention as triton_attention  # noqa: E402
from tcomp.dialect import attention_nodes  # noqa: E402

REF = torch.ops.tcomp.attention.default
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
EPS = {torch.float32: 1.2e-7, torch.float16: 9.8e-4, torch.bfloat16: 7.8e-3}


def _check(b, h, rep, n, m, d, dv, causal, use_bias, use_mask, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h * rep, n, d, generator=g)
    k, v = torch.randn(b, h, m, d, generator=g), torch.randn(b, h, m, dv, generator=g)
    bias = torch.randn(1, h * rep, n, m, generator=g) if use_bias else None
    mask = (torch.rand(b, 1, n, m, generator=g) > 0.3) if use_mask else None
    scale = d**-0.5
    ref = REF(
        q.double(), k.double(), v.double(), None if bias is None else bias.double(), mask, scale, causal
    )
    cast = [x.to(DEVICE, dtype) if x is not None else None for x in (q, k, v, bias)]
    m_dev = mask.to(DEVICE) if mask is not None else None
    own = REF(*cast[:3], cast[3], m_dev, scale, causal)
    got = triton_attention(*cast[:3], cast[3], m_dev, scale, causal, target="h200")
    assert got.shape == ref.shape and got.dtype == dtype
    assert torch.isfinite(got).all()
    denom = ref.norm().item() or 1.0
    err = (got.double().cpu() - ref).norm().item() / denom
    own_err = (own.double().cpu() - ref).norm().item() / denom
    assert err <= 4 * own_err + 16 * EPS[dtype], (err, own_err)


@given(
    b=st.integers(1, 2), h=st.sampled_from([1, 2]), rep=st.sampled_from([1, 2]), n=st.integers(1, 40),
    m=st.integers(1, 40), d=st.sampled_from([16, 32, 64, 128]), causal=st.booleans(),
    use_bias=st.booleans(), use_mask=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_kernel_matches_reference(b, h, rep, n, m, d, causal, use_bias, use_mask, dtype, seed):
    _check(b, h, rep, n, m, d, d, causal, use_bias, use_mask, dtype, seed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_head_dims_and_value_dim(dtype):
    _check(2, 2, 1, 13, 17, 24, 40, True, True, True, dtype, 0)


@pytest.mark.parametrize("scale", [-0.3, 0.0])
def test_non_positive_scale(scale):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 20, 16, generator=g) for _ in range(3))
    got = triton_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), None, None, scale, False, target="h200")
    ref = REF(q.double(), k.double(), v.double(), None, None, scale, False)
    assert ((got.double().cpu() - ref).norm() / ref.norm()).item() < 1e-5


def test_fully_masked_rows_are_zero():
    q, k, v = (torch.randn(1, 1, 4, 16, device=DEVICE) for _ in range(3))
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool, device=DEVICE)
    mask[..., 2, :] = False
    out = triton_attention(q, k, v, None, mask, 0.25, False, target="h200")
    assert torch.isfinite(out).all() and torch.equal(out[0, 0, 2].cpu(), torch.zeros(16))


@pytest.mark.skipif(not CUDA, reason="large shapes: GPU run (CI covers the same code at small shapes)")
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_large_bf16_gpu(d, causal):
    _check(2, 8, 2, 2048, 2048, d, d, causal, False, True, torch.bfloat16, 1)


def test_optimize_lowers_attention_to_triton():
    from tcomp import models as zoo

    e = zoo.get("bert", batch=2, seq=12)
    model = e.model.to(DEVICE)
    args = tuple(a.to(DEVICE) for a in e.example_inputs)
    kwargs = {k: v.to(DEVICE) for k, v in e.example_kwargs.items()}
    fast = tcomp.optimize(model, args, target="h200", example_kwargs=kwargs)
    rec = fast.report["lower.triton"]
    assert rec.status == "applied", (rec.reason, rec.notes)
    assert sum(s["runs_on"] == "triton" for s in fast.report.sites) == e.n_attention_layers
    assert rec.error <= rec.tolerance
    assert not attention_nodes(fast.graph_module)  # every site runs the generated kernel
    assert "triton" in fast.graph_module.code


def test_cpu_target_stays_eager():
    from tcomp import models as zoo

    e = zoo.get("bert")
    fast = tcomp.optimize(e.model, e.example_inputs, target="cpu", example_kwargs=e.example_kwargs)
    assert "lower.triton" not in [r.name for r in fast.report.passes]
    assert len(attention_nodes(fast.graph_module)) == e.n_attention_layers
