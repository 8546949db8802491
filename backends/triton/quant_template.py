"""Source text of the generated weight-only quantized GEMM/GEMV: ``x @ dequant(W).T + bias``.

One kernel per ``QuantGemmSpec``: the weight format (``int8``: int8 (N, K) codes with a scale per
output channel; ``fp8``: e4m3 (N, K) bytes, laid out and scaled as int8; ``int4``: two 4-bit codes per byte along K with a scale and a zero point per group
of K) and whether there is a bias. Dequantisation is fused into the main loop: each program loads
int8 / uint8 weight tiles, converts the codes (exact small integers) to the activation dtype and
feeds ``tl.dot`` with an fp32 accumulator. Scales and zero points factor out of each K tile's sum:
int8 per-channel scales multiply the accumulator once, in the epilogue; an int4 tile lies inside one
group (BLOCK_K divides GROUP), so its partial product is ``s * (a @ q) - s * z * rowsum(a)`` per
column -- the per-element work is only the nibble unpack. fp32 inputs use ``ieee`` dots.

Split-K (``SPLIT_K`` > 1, for small M where N / BLOCK_N programs cannot fill the GPU): program
``(tile, s)`` sums the s-th run of K tiles and writes fp32 partials to a (SPLIT_K, M, N) workspace
(the bias added by split 0 only); the launcher sums them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcomp.backends.triton.gemm_template import TILE_ORDER
from tcomp.backends.triton.lowbit import header

FORMATS = ("int8", "int4", "fp8")


@dataclass(frozen=True)
class QuantGemmSpec:
    fmt: str
    has_bias: bool
    ieee: bool

    @property
    def name(self) -> str:
        return "_".join(
            ["tcomp_qgemm", self.fmt] + (["b"] if self.has_bias else []) + (["ieee"] if self.ieee else [])
        )


_INT8_INIT = """\
    a_ptrs = A + am[:, None] * stride_am + (k_lo * BLOCK_K + rk[None, :]) * stride_ak
    w_ptrs = W + wn[None, :] * stride_wn + (k_lo * BLOCK_K + rk[:, None]) * stride_wk"""

_INT8_STEP = """\
        left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=rk[None, :] < left, other=0.0)
        q = tl.load(w_ptrs, mask=rk[:, None] < left, other=0)
        acc = tl.dot(a, q.to(a.dtype), acc{precision})
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk"""

# fp8 (e4m3, weight-only): the byte tile decoded to fp16 bit patterns (the value times 2^-8, exact;
# see gemv_template) and cast to the activation dtype (exact: 4 significant bits); the scale, times
# 2^8, multiplies the accumulator in the epilogue as int8's does.
_FP8_STEP = """\
        left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=rk[None, :] < left, other=0.0)
        b = tl.load(w_ptrs, mask=rk[:, None] < left, other=0).to(tl.int32)
        h = (((b & 0x80) << 8) | ((b & 0x7F) << 7)).to(tl.int16)
        q = h.to(tl.float16, bitcast=True)
        acc = tl.dot(a, q.to(a.dtype), acc{precision})
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk"""

# int4: byte j of a row holds codes 2j (low nibble) and 2j + 1 (high nibble); the (BLOCK_N,
# BLOCK_K // 2) byte tile is unpacked with ``tl.interleave`` and transposed for the dot. (Reading the
# activations as even and odd columns instead, two half-depth dots and no interleave, measured 2x
# slower at batch 16 on the H200 and no faster at batch 1.)
_INT4_INIT = """\
    a_ptrs = A + am[:, None] * stride_am + (k_lo * BLOCK_K + rk[None, :]) * stride_ak
    w_ptrs = W + wn[:, None] * stride_wn + (k_lo * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)[None, :]) * stride_wk"""

_INT4_STEP = """\
        # BLOCK_K divides GROUP (and K): one scale/zero per column for the whole tile, no K mask
        a = tl.load(a_ptrs)
        byte = tl.load(w_ptrs)
        q = tl.trans(tl.interleave(byte & 0xF, byte >> 4)).to(a.dtype)
        g = (k * BLOCK_K) // GROUP * stride_sg
        s = tl.load(S + wn * stride_sn + g).to(tl.float32)
        zs = tl.load(Z + wn * stride_zn + g).to(tl.float32) * s
        part = tl.dot(a, q{precision})
        acc += part * s[None, :] - tl.sum(a.to(tl.float32), axis=1)[:, None] * zs[None, :]
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += (BLOCK_K // 2) * stride_wk"""


def render(spec: QuantGemmSpec) -> str:
    if spec.fmt not in FORMATS:
        raise ValueError(f"unknown weight format {spec.fmt!r}; known: {FORMATS}")
    precision = ', input_precision="ieee"' if spec.ieee else ""
    init = _INT4_INIT if spec.fmt == "int4" else _INT8_INIT  # fp8: bytes laid out as int8's
    step = {"int8": _INT8_STEP, "int4": _INT4_STEP, "fp8": _FP8_STEP}[spec.fmt].format(precision=precision)
    epilogue = []
    if spec.fmt == "int8":
        epilogue.append("acc = acc * tl.load(S + wn * stride_sn).to(tl.float32)[None, :]")
    if spec.fmt == "fp8":
        epilogue.append("acc = acc * (tl.load(S + wn * stride_sn).to(tl.float32) * 256.0)[None, :]")
    if spec.has_bias:
        epilogue.append("bias = tl.load(BIAS + rn, mask=rn < N, other=0.0).to(tl.float32)")
        epilogue.append("acc += tl.where(split == 0, bias, 0.0)[None, :]")
    body = "\n".join("    " + line for line in epilogue)
    return (
        header("quant_template.py", spec)
        + f"""
@triton.jit
def {spec.name}(
    A, W, S, Z, BIAS, C, M, N, K,
    stride_am, stride_ak, stride_wn, stride_wk, stride_sn, stride_sg, stride_zn, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    GROUP: tl.constexpr, SPLIT_K: tl.constexpr, stride_cs,
):
{TILE_ORDER}
    split = tl.program_id(1)
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    k_lo = split * per_split
    k_hi = tl.minimum(k_lo + per_split, k_tiles)
    # rows/cols past the edge wrap around (loads stay in bounds); the store masks them out
    am = rm % M
    wn = rn % N
{init}
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_lo, k_hi):
{step}
{body}
    ok = (rm[:, None] < M) & (rn[None, :] < N)
    c_ptrs = C + split * stride_cs + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=ok)
"""
    )
