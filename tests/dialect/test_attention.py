"""The tcomp.attention reference: equal to SDPA in float64 on random shapes, masks, biases, causal
flags and GQA; fully masked rows give zeros, never NaN; the fake kernel gives the right shape. Its
cost formula against counted FLOPs and bytes of one reference call."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import tcomp.dialect  # noqa: F401

attention = torch.ops.tcomp.attention.default


@given(
    b=st.integers(1, 3),
    h=st.sampled_from([1, 2, 4]),
    rep=st.sampled_from([1, 2]),
    n=st.integers(1, 9),
    m=st.integers(1, 9),
    d=st.sampled_from([4, 8]),
    dv=st.sampled_from([4, 6]),
    causal=st.booleans(),
    use_mask=st.booleans(),
    use_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_sdpa_float64(b, h, rep, n, m, d, dv, causal, use_mask, use_bias, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h * rep, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, h, m, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, h, m, dv, generator=g, dtype=torch.float64)
    bias = torch.randn(1, h * rep, n, m, generator=g, dtype=torch.float64) if use_bias else None
    mask = torch.rand(b, 1, n, m, generator=g) > 0.3 if use_mask else None
    if mask is not None:
        mask[..., 0] = True  # every row keeps a key (SDPA's result for empty rows differs by backend)
    scale = 0.5 + torch.rand(1, generator=g).item()
    got = attention(q, k, v, bias, mask, scale, causal)
    full = None
    if bias is not None or mask is not None:
        full = torch.zeros(b, h * rep, n, m, dtype=torch.float64)
        if bias is not None:
            full = full + bias
        if mask is not None:
            full = full.masked_fill(~mask, float("-inf"))
    if causal and full is not None:
        full = full.masked_fill(~torch.ones(n, m, dtype=torch.bool).tril(), float("-inf"))
    want = F.scaled_dot_product_attention(
        q, k, v, attn_mask=full, is_causal=causal and full is None, scale=scale, enable_gqa=rep > 1
    )
    assert got.shape == (b, h * rep, n, dv)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = (torch.randn(1, 2, 3, 4) for _ in range(3))
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    mask[..., 1, :] = False
    out = attention(q, k, v, None, mask, 0.5, False)
    assert torch.isfinite(out).all() and torch.equal(out[:, :, 1], torch.zeros(1, 2, 4))


def test_half_inputs_computed_in_float32():
    q, k, v = (torch.randn(2, 2, 5, 8, dtype=torch.float64) for _ in range(3))
    ref = attention(q, k, v, None, None, 0.35, True)
    got = attention(q.half(), k.half(), v.half(), None, None, 0.35, True)
    assert got.dtype == torch.float16
    assert ((got.double() - ref).norm() / ref.norm()).item() < 2e-3


def test_fake_kernel_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = torch.empty(2, 4, 7, 8), torch.empty(2, 2, 9, 8), torch.empty(2, 2, 9, 16)
        out = attention(q, k, v, None, None, 1.0, False)
    assert out.shape == (2, 4, 7, 16)


# -- cost formula ----------------------------------------------------------------------------------


def test_cost_matches_counted_flops_and_bytes():
    from tcomp.cost import SOFTMAX_FLOPS
    from tcomp.dialect import op_def
    from tests.dialect.costing import counted_flops, io_bytes, static_cost

    b, h, hk, n, m, d, dv = 2, 4, 2, 5, 7, 8, 6
    q, k, v = torch.randn(b, h, n, d), torch.randn(b, hk, m, d), torch.randn(b, hk, m, dv)
    bias, mask = torch.randn(1, h, n, m), torch.rand(b, 1, n, m) > 0.3
    for causal in (False, True):
        flops, nbytes = static_cost(lambda *t, c=causal: attention(*t, 0.5, c), (q, k, v, bias, mask))
        matmuls, out = counted_flops(op_def(attention), q, k, v, bias, mask, 0.5, causal)
        assert nbytes == io_bytes((q, k, v, bias, mask), out)
        # QK^T and PV (counted on the expanded GQA heads) + softmax and the bias add per score
        dense = matmuls + (SOFTMAX_FLOPS + 1) * b * h * n * m
        assert flops == (dense / 2 if causal else dense)  # causal: half the scores (documented)
