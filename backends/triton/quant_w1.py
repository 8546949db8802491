"""W1A16 on Triton for the dialect op ``tcomp.linear_w1`` (semantics: tcomp/dialect/). Two generated
kernels: for at most ``quant_gemv.MAX_ROWS`` activation rows (decode) the GEMV of gemv_template.py
(the weight sign flips the activation's sign bit; autotuned on a GPU), else a GEMM whose main loop
loads the packed sign bytes of a (BLOCK_K, BLOCK_N) tile, unpacks one bit per weight
(``(byte >> (k % 8)) & 1``), turns it into ±1 in the activation dtype and accumulates ``x · sign``
with ``tl.dot`` in fp32. The per-channel ``alpha`` (and the bias) is applied once, in the epilogue,
since it factors out of the K sum.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.fx as fx

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.linear_w1
from tcomp.backends.triton import TRITON, lowbit, quant_gemv
from tcomp.backends.triton.configs import QConfig, cdiv
from tcomp.graph import val
from tcomp.targets import Target, get_target


@dataclass(frozen=True)
class W1Spec:
    has_bias: bool
    ieee: bool

    @property
    def name(self) -> str:
        return "tcomp_w1" + ("_b" if self.has_bias else "") + ("_ieee" if self.ieee else "")


def render(spec: W1Spec) -> str:
    precision = ', input_precision="ieee"' if spec.ieee else ""
    bias = lowbit.BIAS_EPILOGUE if spec.has_bias else ""
    return (
        lowbit.header("quant_w1.py", spec)
        + f"""
@triton.jit
def {spec.name}(
    A, P, ALPHA, BIAS, C, M, N, K,
    stride_am, stride_ak, stride_pn, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
{lowbit.TILE_2D}
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        rk = k * BLOCK_K + tl.arange(0, BLOCK_K)
        a = tl.load(A + am[:, None] * stride_am + rk[None, :] * stride_ak, mask=rk[None, :] < K, other=0.0)
        byte = tl.load(P + wn[None, :] * stride_pn + (rk // 8)[:, None], mask=rk[:, None] < K, other=0)
        bit = (byte.to(tl.int32) >> (rk % 8)[:, None]) & 1
        sign = (bit * 2 - 1).to(a.dtype)
        acc = tl.dot(a, sign, acc{precision})
    acc = acc * tl.load(ALPHA + wn).to(tl.float32)[None, :]{bias}
{lowbit.STORE}
"""
    )


W1 = lowbit.LowBitFormat(render)


def _spec(x_dtype: torch.dtype, bias) -> W1Spec:
    return W1Spec(bias is not None, x_dtype == torch.float32)


def sources(node: fx.Node) -> dict[str, str]:
    """{file name: source} of the kernels a lowered 1-bit linear node may launch (the GEMV for a
    few rows, or a symbolic batch, when K % 32 == 0; the GEMM otherwise)."""
    x, k = val(node.args[0]), node.args[3]
    bias = lowbit.arg(node, 4, "bias")
    rows = lowbit.rows_of(x)
    out = {}
    if k % 32 == 0 and (not isinstance(rows, int) or 0 < rows <= quant_gemv.MAX_ROWS):
        out.update([quant_gemv.source_of("w1", bias)])
    if not isinstance(rows, int) or rows > quant_gemv.MAX_ROWS or k % 32:
        out.update([W1.source(_spec(x.dtype, bias))])
    return out


@TRITON.implements(torch.ops.tcomp.linear_w1.default, check=lowbit.check, sources=sources)
def linear_w1(x, packed, alpha, k: int, bias=None, *, target: Target | str, config: QConfig | None = None):
    """``tcomp.linear_w1`` on the generated kernels (``config``: a GEMV launch to use instead of the
    autotuner's choice; only for at most ``quant_gemv.MAX_ROWS`` rows)."""
    target = get_target(target).name
    n = packed.shape[0]
    m = x.reshape(-1, k).shape[0]
    words = quant_gemv.words_for(packed, "w1", k, m)
    if words is None and config is not None:
        raise ValueError(
            f"a W1 GEMV config needs 1..{quant_gemv.MAX_ROWS} rows and K % 32 == 0 (got {m}, {k})"
        )

    def run(a: torch.Tensor) -> torch.Tensor:
        if words is not None:
            return _gemv(a, words, alpha, k, bias, x.dtype, config, target)
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
        bm, bn, bk, warps, stages = lowbit.blocks(m, n, k)
        bk = max(bk, 32)  # a multiple of 8: a K tile holds whole bytes
        (kernel,) = W1.load(_spec(x.dtype, bias))
        kernel[(cdiv(m, bm), cdiv(n, bn))](
            a, packed, alpha, bias if bias is not None else alpha, out, m, n, k,
            *a.stride(), packed.stride(0), *out.stride(),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        return out

    return lowbit.launch(x, k, n, run)


def _gemv(a, words, alpha, k, bias, out_dtype, config, target):
    m, n = a.shape[0], words.shape[0]
    run = functools.partial(quant_gemv.launch, "w1", a, words, alpha, None, 1, bias, out_dtype)
    if config is not None:
        return run(quant_gemv.fit(config, "w1", k, 1))
    key = f"gemv|w1|m{m}|n{n}|k{k}|{a.dtype}|{'b' if bias is not None else ''}|{target}"
    family = lambda: quant_gemv.candidates("w1", m, n, k, 1)  # noqa: E731 - built only when tuning
    return run(lowbit.tuned(key, family, run, quant_gemv.default("w1", m, n, k, 1)))
