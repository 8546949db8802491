"""W8A8 on Triton for the dialect op ``tcomp.linear_w8a8`` (semantics: tcomp/dialect/).

Two generated kernels per specialisation (one source text): ``..._act`` quantizes each activation
row (token) to int8 with its own scale (one program per row: an amax sweep over K, then a quantize
sweep; rounding is half away from zero where the reference rounds half to even — only exact ties
differ), and the GEMM multiplies int8 tiles with ``tl.dot`` into an int32 accumulator (exact) and
rescales by ``sx[m] * sw[n]`` (plus the bias) once, in the epilogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.linear_w8a8
from tcomp.backends.triton import TRITON, lowbit
from tcomp.backends.triton.configs import cdiv
from tcomp.targets import Target


@dataclass(frozen=True)
class W8A8Spec:
    has_bias: bool

    @property
    def name(self) -> str:
        return "tcomp_w8a8" + ("_b" if self.has_bias else "")


def render(spec: W8A8Spec) -> str:
    bias = lowbit.BIAS_EPILOGUE if spec.has_bias else ""
    return (
        lowbit.header("quant_w8a8.py", spec)
        + f"""
{lowbit.ACT_HEAD.format(name=spec.name)}
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
{lowbit.LOAD_ROW}
        amax = tl.maximum(amax, tl.abs(x))
    top = tl.max(amax, axis=0)
    s = tl.where(top > 0, top / 127.0, 1.0)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
{lowbit.LOAD_ROW}
        v = x / s
        q = tl.where(v >= 0, tl.floor(v + 0.5), -tl.floor(0.5 - v))
        q = tl.minimum(tl.maximum(q, -127.0), 127.0)
        tl.store(Q + row * K + cols, q.to(tl.int8), mask=cols < K)
    tl.store(SX + row, s)


@triton.jit
def {spec.name}(
    A, W, SX, SW, BIAS, C, M, N, K,
    stride_wn, stride_wk, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    am = rm % M
    wn = rn % N
    a_ptrs = A + am[:, None] * K + rk[None, :]
    w_ptrs = W + wn[None, :] * stride_wn + rk[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=rk[None, :] < left, other=0)
        w = tl.load(w_ptrs, mask=rk[:, None] < left, other=0)
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk
    sx = tl.load(SX + am)
    sw = tl.load(SW + wn).to(tl.float32)
    acc = acc.to(tl.float32) * sx[:, None] * sw[None, :]{bias}
{lowbit.STORE}
"""
    )


def _spec(node: fx.Node) -> W8A8Spec:
    return W8A8Spec(lowbit.arg(node, 3, "bias") is not None)


W8A8 = lowbit.LowBitFormat(render, _spec, kernels=("_act", ""))


@TRITON.implements(torch.ops.tcomp.linear_w8a8.default, check=lowbit.check, sources=W8A8.sources)
def linear_w8a8(x, qweight, scale, bias=None, *, target: Target | str):
    """``tcomp.linear_w8a8`` on the generated kernels."""
    n, k = qweight.shape

    def run(a: torch.Tensor) -> torch.Tensor:
        m = a.shape[0]
        act, gemm = W8A8.load(W8A8Spec(bias is not None))
        sx = torch.empty((m,), dtype=torch.float32, device=x.device)
        qx = lowbit.quantize_rows(act, a, torch.int8, sx, min_block=16)
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
        bm, bn, bk, warps, stages = lowbit.blocks(m, n, k)
        bk = max(bk, 32)  # int8 dots need K tiles of at least 32 on the GPU
        gemm[(cdiv(m, bm), cdiv(n, bn))](
            qx, qweight, sx, scale, bias if bias is not None else sx, out, m, n, k,
            *qweight.stride(), *out.stride(),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        return out

    return lowbit.launch(x, k, n, run)
