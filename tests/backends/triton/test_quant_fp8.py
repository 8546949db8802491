"""The fp8 e4m3 kernels for ``tcomp.fp8_linear``.

Triton's interpreter cannot cast to fp8, so the kernels run only on a GPU of compute capability
>= 8.9 (the tests marked ``needs_fp8_gpu``: kernel vs the dialect reference, bf16/fp16, shapes that
are not multiples of the tiles, NaN rows). Everywhere: the backend's fallback to the reference op
(with its reason) and, without a GPU, a compile of the generated kernels for sm_90 and sm_89 with
Triton's own ptxas (catches what the interpreter cannot: fp8 dot and cast lowering)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp import quant as Q  # noqa: E402
from tcomp.backends.triton import TRITON, quant_fp8  # noqa: E402
from tcomp.verify import eps  # noqa: E402

CUDA = torch.cuda.is_available()
FP8_GPU = CUDA and torch.cuda.get_device_capability() >= quant_fp8.MIN_CAPABILITY
needs_fp8_gpu = pytest.mark.skipif(
    not FP8_GPU,
    reason="GPU-only: fp8 kernels need CUDA capability >= 8.9 (the interpreter cannot cast to fp8)",
)
DEVICE = "cuda" if CUDA else "cpu"


def test_capability_gate():
    assert quant_fp8.capability_reason((8, 0)) is not None and "8.9" in quant_fp8.capability_reason((8, 6))
    assert quant_fp8.capability_reason((8, 9)) is None and quant_fp8.capability_reason((9, 0)) is None
    assert "CUDA GPU" in quant_fp8.fp8_unsupported_device(torch.device("cpu"))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (
            nn.Linear(48, 64),
            nn.Linear(64, 80),
            nn.Linear(80, 72),
            nn.Linear(72, 24),
        )

    def forward(self, x):
        return self.d(torch.tanh(self.c(torch.nn.functional.silu(self.b(torch.relu(self.a(x)))))))


@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_triton_lowering_runs_kernels_or_falls_back(granularity):
    """On an fp8 GPU the fp8 nodes lower to the kernels; anywhere else they stay on the reference
    op and the lowering says why, with the same outputs as the eager backend.

    On the GPU the lowering is checked here rather than by the pipeline: the kernels' fp32 sums
    (and the fused elementwise kernels) differ from the reference's by rounding, and dynamic
    activation quantization can turn such a difference into one e4m3 step of one activation
    (2^-3 of it) in a later layer: a legitimate ~1e-3 change that the lowering's FP_EQUIVALENT
    check (a few fp32 ulps) would refuse."""
    torch.manual_seed(0)
    model = MLP().eval().to(DEVICE)
    x = torch.randn(3, 5, 48, device=DEVICE)
    spec = ("quantize.fp8", {"target": "h200", "granularity": granularity, "skip_first_last": False})
    om = tcomp.optimize(model, (x,), passes=[spec], backend="triton", verify=not FP8_GPU)
    ref = tcomp.optimize(model, (x,), passes=[spec], backend="eager")
    assert om.report["quantize.fp8"].rewrites == 4 and ref.report["quantize.fp8"].rewrites == 4
    low = om.report["lower.triton"]
    targets = [n.target for n in om.graph_module.graph.nodes if n.op == "call_function"]
    with torch.no_grad():
        got, want, exact = om(x), ref(x), copy.deepcopy(model).double()(x.double())
    if FP8_GPU:
        assert low.status == "applied" and targets.count(quant_fp8.linear_fp8) == 4, (low.reason, low.notes)
        assert any(
            name.startswith("tcomp_fp8_" + granularity) for name in TRITON.kernel_sources(om.graph_module)
        )
        assert torch.isfinite(got).all() and ((got - want).norm() / want.norm()).item() <= 1e-2
        assert ((got.double() - exact).norm() / exact.norm()).item() <= 0.2  # the contract's tolerance
    else:
        assert targets.count(torch.ops.tcomp.fp8_linear.default) == 4
        assert not any(name.startswith("tcomp_fp8") for name in TRITON.kernel_sources(om.graph_module))
        stays = [n for n in low.notes if "fp8_linear" in n]
        assert len(stays) == 4 and all("fp8 kernels need a CUDA GPU" in n for n in stays), low.notes
        # the same reference op either way; only the fused elementwise kernels round differently
        assert ((got - want).norm() / want.norm()).item() <= 1e-5


AOT_COMPILE = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tcomp.backends.triton import quant_fp8

spec = quant_fp8.Fp8Spec(per_row=True, has_bias=True)
act, gemm = quant_fp8.FP8.load(spec)
sig = dict.fromkeys(("A", "W"), "*fp8e4nv") | dict.fromkeys(("SX", "SW"), "*fp32")
sig |= dict.fromkeys(("BIAS", "C"), "*bf16")
sig |= dict.fromkeys(("M", "N", "K", "stride_wn", "stride_cm", "stride_cn"), "i32")
sig |= dict.fromkeys(("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"), "constexpr")
out = {}
for arch in (90, 89):
    bm, bn, bk, warps, stages = quant_fp8.blocks(1)
    consts = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}
    opts = {"num_warps": warps, "num_stages": stages}
    k = triton.compile(ASTSource(gemm, sig, consts), target=GPUTarget("cuda", arch, 32), options=opts)
    out[arch] = k.asm["ptx"]
asig = {"X": "*bf16", "Q": "*fp8e4nv", "SX": "*fp32", "K": "i32", "stride_xm": "i32", "stride_xk": "i32"}
asig["BLOCK_K"] = "constexpr"
k = triton.compile(ASTSource(act, asig, {"BLOCK_K": 256}), target=GPUTarget("cuda", 90, 32))
out["act"] = k.asm["ptx"]
print(json.dumps(out))
"""


@pytest.mark.skipif(CUDA, reason="on a GPU the kernels are compiled and run by the tests below")
def test_kernels_compile_for_sm90_and_sm89():
    """Compile (no GPU needed; Triton ships ptxas) both generated kernels for Hopper and Ada: the fp8
    dot lowers to wgmma (sm_90) / mma.sync e4m3 (sm_89), each K tile's fp8 partial sums are added
    in full fp32, and the activation cast is round-to-nearest-even with saturation after an IEEE
    division. In a fresh process: Triton's own library kernels must not be in interpreter mode."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", AOT_COMPILE], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ptx = json.loads(run.stdout.strip().splitlines()[-1])
    assert "wgmma.mma_async" in ptx["90"] and "e4m3" in ptx["90"] and "add.f32" in ptx["90"]
    assert "mma.sync" in ptx["89"] and "e4m3" in ptx["89"]
    assert "cvt.rn.satfinite.e4m3x2.f32" in ptx["act"] and "div.rn.f32" in ptx["act"]


@needs_fp8_gpu
@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.sampled_from([1, 5, 64, 65, 130]),
    n=st.sampled_from([16, 72, 200]),
    k=st.sampled_from([32, 100, 256, 520]),
    dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    granularity=st.sampled_from(["row", "tensor"]),
    with_bias=st.booleans(),
)
def test_kernel_matches_reference_op(seed, m, n, k, dtype, granularity, with_bias):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    x = (torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 4).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype) if with_bias else None
    q, s = Q.quantize_fp8(w, granularity)
    cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
    out = quant_fp8.linear_fp8(cuda(x), cuda(q), cuda(s), granularity, cuda(bias), target="h200").cpu()
    ref = torch.ops.tcomp.fp8_linear(x, q, s, granularity, bias)  # the reference op, on the CPU
    assert out.dtype == dtype and out.shape == (m, n) and torch.isfinite(out).all()
    # The kernel quantizes x as the reference does (same scale, IEEE division, nearest-even cast), so
    # an activation can differ by at most one e4m3 step (2^-3 |x|, or 2^-9 sx below the normal
    # range) where a quotient rounds differently; the fp32 sums differ in order (and tile-wise
    # promotion); both round to the output dtype.
    sx = Q.fp8_scale(x, granularity).double()[:, None]
    wd = Q.dequantize_fp8(q, s)
    x64 = x.double()
    step = (2.0**-3 * x64.abs() + 2.0**-9 * sx) @ wd.abs().T
    xd = Q.dequantize_fp8(*Q.quantize_fp8(x, granularity))
    sums = 2 * (k + 2) * 2.0**-24 * (xd.abs() @ wd.abs().T + (0 if bias is None else bias.double().abs()))
    slack = 2 * eps(dtype) * ref.double().abs() + sums
    diff = (out.double() - ref.double()).abs()
    assert (diff <= step + slack).all()
    assert ((out.double() - ref.double()).norm() / ref.double().norm()).item() <= 2 * eps(dtype)
    exact = torch.nn.functional.linear(x64, w.double(), None if bias is None else bias.double())
    assert ((out.double() - exact).norm() / exact.norm()).item() <= 0.1  # and it is an fp8 linear


@needs_fp8_gpu
@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_kernel_nan_never_passes(granularity):
    torch.manual_seed(1)
    q, s = Q.quantize_fp8(torch.randn(40, 96), granularity)
    x = torch.randn(7, 96, dtype=torch.bfloat16)
    x[3, 10] = float("nan")
    x[5, 20] = float("inf")
    out = quant_fp8.linear_fp8(x.cuda(), q.cuda(), s.cuda(), granularity, None, target="h200").cpu()
    ref = torch.ops.tcomp.fp8_linear(x, q, s, granularity, None)
    bad = [3, 5] if granularity == "row" else list(range(7))
    assert torch.isnan(out[bad]).all() and torch.isnan(ref[bad]).all()
    good = [i for i in range(7) if i not in bad]
    assert torch.isfinite(out[good]).all()
