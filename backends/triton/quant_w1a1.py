"""W1A1 on Triton for the dialect op ``tcomp.linear_w1a1`` (semantics: tcomp/dialect/): two generated
kernels.

* ``_act``: one program per token row binarizes ``d = x - tau`` into sign bits packed 8 per byte in
  the weights' layout (bit j of byte b is channel 8b + j; padding bits are +1 like the weights')
  and writes ``beta = mean |d|``.
* the GEMM: each program XORs (BLOCK_M, BLOCK_B) activation bytes against (BLOCK_N, BLOCK_B)
  weight bytes, counts the set bits with a SWAR popcount (shift / mask / add, no lookup table,
  so it runs in the interpreter as well) and accumulates the disagreements in int32; the sign dot
  product is ``K - 2 * disagreements`` exactly (padding bits agree). The epilogue applies
  ``beta * alpha`` and adds the folded threshold shift and the bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.linear_w1a1
from tcomp.backends.triton import TRITON, lowbit
from tcomp.backends.triton.codegen import interpreting
from tcomp.backends.triton.configs import cdiv, pow2
from tcomp.targets import Target


@dataclass(frozen=True)
class W1A1Spec:
    has_bias: bool

    @property
    def name(self) -> str:
        return "tcomp_w1a1" + ("_b" if self.has_bias else "")


def render(spec: W1A1Spec) -> str:
    bias = lowbit.BIAS_EPILOGUE if spec.has_bias else ""
    return (
        lowbit.header("quant_w1a1.py", spec)
        + f"""
@triton.jit
def {spec.name}_act(X, TAU, XB, BETA, K, KB, stride_xm, stride_xk, stride_bm, BLOCK_B: tl.constexpr):
    row = tl.program_id(0)
    lane = tl.arange(0, 8)
    total = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for b0 in range(0, KB, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        rk = rb[:, None] * 8 + lane[None, :]
        ok = rk < K
        x = tl.load(X + row * stride_xm + rk * stride_xk, mask=ok, other=0.0).to(tl.float32)
        d = x - tl.load(TAU + rk, mask=ok, other=0.0).to(tl.float32)
        bit = tl.where((d >= 0) | (rk >= K), 1, 0)
        byte = tl.sum(bit << lane[None, :], axis=1)
        tl.store(XB + row * stride_bm + rb, byte.to(tl.uint8), mask=rb < KB)
        total += tl.sum(tl.where(ok, tl.abs(d), 0.0), axis=1)
    tl.store(BETA + row, tl.sum(total, axis=0) / K)


@triton.jit
def {spec.name}(
    XB, WB, BETA, ALPHA, SHIFT, BIAS, C, M, N, K, KB,
    stride_xm, stride_wn, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
):
{lowbit.TILE_2D}
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for b0 in range(0, KB, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        xb = tl.load(XB + am[:, None] * stride_xm + rb[None, :], mask=rb[None, :] < KB, other=0).to(tl.int32)
        wb = tl.load(WB + wn[:, None] * stride_wn + rb[None, :], mask=rb[None, :] < KB, other=0).to(tl.int32)
        v = xb[:, None, :] ^ wb[None, :, :]
        v = v - ((v >> 1) & 0x55)
        v = (v & 0x33) + ((v >> 2) & 0x33)
        v = (v + (v >> 4)) & 0x0F
        acc += tl.sum(v, axis=2)
    dot = (K - 2 * acc).to(tl.float32)
    beta = tl.load(BETA + am)
    alpha = tl.load(ALPHA + wn).to(tl.float32)
    acc = beta[:, None] * alpha[None, :] * dot + tl.load(SHIFT + wn).to(tl.float32)[None, :]{bias}
{lowbit.STORE}
"""
    )


def _spec(node: fx.Node) -> W1A1Spec:
    return W1A1Spec(lowbit.arg(node, 6, "bias") is not None)


W1A1 = lowbit.LowBitFormat(render, _spec, kernels=("_act", ""))


@TRITON.implements(torch.ops.tcomp.linear_w1a1.default, check=lowbit.check, sources=W1A1.sources)
def linear_w1a1(x, packed, alpha, tau, shift, k: int, bias=None, *, target: Target | str):
    """``tcomp.linear_w1a1`` on the generated kernels."""
    n, kb = packed.shape

    def run(a: torch.Tensor) -> torch.Tensor:
        m = a.shape[0]
        act, gemm = W1A1.load(W1A1Spec(bias is not None))
        xb = torch.empty((m, kb), dtype=torch.uint8, device=x.device)
        beta = torch.empty((m,), dtype=torch.float32, device=x.device)
        act[(m,)](a, tau, xb, beta, k, kb, *a.stride(), xb.stride(0), BLOCK_B=min(512, pow2(kb, 1)))
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
        if interpreting():  # few, large programs
            bm, bn, bb = min(16, pow2(m, 1)), min(64, pow2(n, 1)), min(64, pow2(kb, 1))
        else:  # a (BM, BN, BB) XOR tile per step, kept to 8k lanes
            bm = min(16, pow2(m, 1))
            bn = 64 if bm <= 4 else 32
            bb = max(8, 8192 // (bm * bn))
        gemm[(cdiv(m, bm), cdiv(n, bn))](
            xb, packed, beta, alpha, shift, bias if bias is not None else alpha, out, m, n, k, kb,
            xb.stride(0), packed.stride(0), *out.stride(),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_B=bb, num_warps=4,
        )  # fmt: skip
        return out

    return lowbit.launch(x, k, n, run)
