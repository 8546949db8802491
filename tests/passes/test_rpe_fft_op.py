"""tcomp.rpe_linear_attention (FFT) against the quadratic kernelized-attention-with-RPE reference
(an explicit Toeplitz matrix of c_{j-i}), float64 and float32, over n including 1 and primes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tcomp.dialect  # noqa: F401 - registers the dialect

RPE = torch.ops.tcomp.rpe_linear_attention


def reference(q, k, v, coeffs, key_mask, causal):
    """Float64 quadratic form: weights c_{j-i} (q_i . k_j), c = exp(b - max b) per head over the
    offsets in use, masked/future keys dropped, rows normalised (zeros where the sum is 0)."""
    q, k, v, b = (t.double() for t in (q, k, v, coeffs))
    n = q.shape[2]
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    idx = torch.arange(n)[None, :] - torch.arange(n)[:, None] + n - 1  # (j - i) + n - 1
    if causal:
        b = b.clone()
        b[:, n:] = float("-inf")
    c = torch.exp(b - b.amax(-1, keepdim=True))[:, idx]  # (H, n, n) Toeplitz
    w = (q @ k.transpose(-2, -1)) * c
    if key_mask is not None:
        w = w * key_mask.expand(q.shape[0], n)[:, None, None, :]
    den = w.sum(-1, keepdim=True)
    return torch.where(den > 0, (w @ v) / torch.where(den > 0, den, 1.0), 0.0)


@st.composite
def problems(draw):
    b = draw(st.integers(1, 2))
    hk = draw(st.sampled_from([1, 2]))
    h = hk * draw(st.sampled_from([1, 2]))
    n = draw(st.sampled_from([1, 2, 3, 5, 7, 8, 13, 16, 31]))
    f, dv = draw(st.sampled_from([1, 4, 8])), draw(st.sampled_from([1, 3, 8]))
    causal, masked = draw(st.booleans()), draw(st.booleans())
    spread = draw(st.sampled_from([0.5, 3.0]))  # range of the bias in log space
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    q = torch.rand(b, h, n, f, generator=g) + 0.05  # non-negative features, as every map emits
    k = torch.rand(b, hk, n, f, generator=g) + 0.05
    v = torch.randn(b, hk, n, dv, generator=g)
    coeffs = (torch.rand(h, 2 * n - 1, generator=g) * 2 - 1) * spread
    mask = (torch.rand(b, n, generator=g) > 0.4) if masked else None
    return q, k, v, coeffs, mask, causal


# Bounds (relative L2 error of the output): FFT round-off is ~eps * log2(L) relative to the largest
# weight c = 1, amplified by at most exp(spread) where a row's weights are small; spread <= 3 here.
TOL = {torch.float64: 1e-10, torch.float32: 2e-4}


@given(problems(), st.sampled_from([torch.float64, torch.float32]))
def test_fft_matches_quadratic_toeplitz_reference(prob, dtype):
    q, k, v, coeffs, mask, causal = prob
    out = RPE(q.to(dtype), k.to(dtype), v.to(dtype), coeffs.to(dtype), mask, causal)
    ref = reference(q, k, v, coeffs, mask, causal)
    assert out.dtype == dtype and out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.double() - ref).norm() <= TOL[dtype] * max(float(ref.norm()), 1e-6)
    # rows with no key in reach (all masked, or -- causal -- every earlier key masked) are exactly
    # zero: the op counts the keys in reach exactly instead of trusting a round-off-sized normaliser
    if mask is not None:
        reach = mask.cumsum(-1) > 0 if causal else mask.any(-1, keepdim=True).expand_as(mask)
        dead = (~reach)[:, None, :].expand(out.shape[:-1])
        assert torch.equal(out[dead], torch.zeros_like(out[dead]))


@given(problems())
def test_masked_and_future_keys_contribute_nothing(prob):
    q, k, v, coeffs, mask, causal = prob
    n = q.shape[2]
    mask = torch.ones(q.shape[0], n, dtype=torch.bool)
    mask[:, -1] = False
    out = RPE(q.double(), k.double(), v.double(), coeffs.double(), mask, causal)
    k2, v2 = k.double().clone(), v.double().clone()
    k2[:, :, -1] = k2[:, :, -1] * 7 + 3  # change the masked key and value
    v2[:, :, -1] = v2[:, :, -1] * -5 + 1
    out2 = RPE(q.double(), k2, v2, coeffs.double(), mask, causal)
    assert torch.allclose(out, out2, rtol=1e-9, atol=1e-12)
    if causal and n > 1:  # changing the last key/value changes no earlier row
        ref = RPE(q.double(), k.double(), v.double(), coeffs.double(), None, True)
        alt = RPE(q.double(), k2, v2, coeffs.double(), None, True)
        assert torch.allclose(ref[:, :, :-1], alt[:, :, :-1], rtol=1e-9, atol=1e-12)
        assert not torch.allclose(ref[:, :, -1], alt[:, :, -1])


def test_bias_constant_shift_cancels_and_half_inputs():
    g = torch.Generator().manual_seed(0)
    q, k = torch.rand(1, 2, 11, 4, generator=g) + 0.1, torch.rand(1, 2, 11, 4, generator=g) + 0.1
    v, b = torch.randn(1, 2, 11, 5, generator=g), torch.randn(2, 21, generator=g)
    base = RPE(q, k, v, b, None, False)
    assert torch.allclose(base, RPE(q, k, v, b + 50.0, None, False), rtol=1e-4, atol=1e-5)
    half = RPE(q.half(), k.half(), v.half(), b.half(), None, True)
    assert half.dtype == torch.float16
    ref = reference(q.half(), k.half(), v.half(), b.half(), None, True)
    assert (half.double() - ref).norm() <= 2e-3 * ref.norm()


def test_fake_kernel_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = torch.empty(2, 4, 9, 6), torch.empty(2, 2, 9, 6), torch.empty(2, 2, 9, 3)
        out = RPE(q, k, v, torch.empty(4, 17), None, True)
    assert tuple(out.shape) == (2, 4, 9, 3)


# On the GPU (cuFFT): half-precision inputs are computed in float32, so the error vs float64 on the
# same (rounded) inputs is the float32 FFT error (TOL[float32]) plus rounding the output to the
# dtype: 2^-8 relative for bf16, 2^-11 for fp16. Bounds with a 2x margin over that sum.
GPU_TOL = {torch.bfloat16: 1e-2, torch.float16: 1.5e-3, torch.float32: 2e-4}
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (cuFFT)")


@cuda_only
@given(problems(), st.sampled_from(sorted(GPU_TOL, key=str)))
def test_cuda_half_precision_vs_float64(prob, dtype):
    q, k, v, coeffs, mask, causal = (t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                                     for t in prob)  # fmt: skip
    dev = [t.cuda() if isinstance(t, torch.Tensor) else t for t in (q, k, v, coeffs, mask)]
    out = RPE(*dev, causal)
    ref = reference(q, k, v, coeffs, mask, causal)  # float64 on the CPU, from the rounded inputs
    assert out.dtype == dtype and out.is_cuda and torch.isfinite(out).all()
    assert (out.cpu().double() - ref).norm() <= GPU_TOL[dtype] * max(float(ref.norm()), 1e-6)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_long_sequence_half_precision(dtype):
    g = torch.Generator().manual_seed(7)
    n, h = 2048, 2
    q, k = torch.rand(1, h, n, 16, generator=g) + 0.05, torch.rand(1, h, n, 16, generator=g) + 0.05
    v = torch.randn(1, h, n, 8, generator=g)
    slopes = torch.tensor([0.5, 0.01])
    coeffs = -slopes[:, None] * torch.arange(-(n - 1), n).abs()  # ALiBi: weights over 1e-200..1
    q, k, v, coeffs = (t.to(dtype) for t in (q, k, v, coeffs))
    out = RPE(q.cuda(), k.cuda(), v.cuda(), coeffs.cuda(), None, True)
    ref = reference(q, k, v, coeffs, None, True)
    assert (out.cpu().double() - ref).norm() <= GPU_TOL[dtype] * ref.norm()


@given(problems())
def test_feature_chunks_give_the_same_result(prob):
    """A memory budget that forces one feature per FFT chunk changes only the order of the sum."""
    q, k, v, coeffs, mask, causal = (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                                     for t in prob)  # fmt: skip
    whole = RPE(q, k, v, coeffs, mask, causal)
    saved = tcomp.dialect.rpe.RPE_CHUNK_BYTES
    try:
        tcomp.dialect.rpe.RPE_CHUNK_BYTES = 1  # one feature at a time
        chunked = RPE(q, k, v, coeffs, mask, causal)
    finally:
        tcomp.dialect.rpe.RPE_CHUNK_BYTES = saved
    assert torch.allclose(chunked, whole, rtol=1e-10, atol=1e-12)
    ref = reference(q, k, v, coeffs, mask, causal)
    assert (chunked - ref).norm() <= TOL[torch.float64] * max(float(ref.norm()), 1e-6)


def test_feature_chunk_size_follows_the_budget():
    from tcomp.dialect import rpe_feature_chunk

    cpu, f32 = torch.device("cpu"), torch.float32
    # per feature: b*h*(dv+1) channels * 4 bytes * (n + 4*(L/2+1) + L), n = 1024, L = 2048
    per = 2 * 8 * 65 * 4 * (1024 + 4 * 1025 + 2048)
    saved = tcomp.dialect.rpe.RPE_CHUNK_BYTES
    try:
        for budget, want in [(per * 10, 10), (per * 10 - 1, 9), (1, 1), (per * 1000, 64)]:
            tcomp.dialect.rpe.RPE_CHUNK_BYTES = budget
            assert rpe_feature_chunk(2, 8, 1024, 64, 64, f32, cpu) == want
        tcomp.dialect.rpe.RPE_CHUNK_BYTES = None  # the CPU default, 4 GiB
        assert rpe_feature_chunk(2, 8, 1024, 64, 64, f32, cpu) == 64
        assert rpe_feature_chunk(16, 16, 262144, 64, 64, f32, cpu) == 1
    finally:
        tcomp.dialect.rpe.RPE_CHUNK_BYTES = saved
