"""Source text of the generated low-bit GEMV: ``x @ dequant(W).T (+ bias)`` for a few rows of ``x``
(decode, batch <= ``MAX_ROWS``), without ``tl.dot``.

At batch 1 a tensor-core tile wastes 15 of its 16 rows and its operand has to be re-laid out through
shared memory; what bounds the GEMV is the weight stream and the per-weight decode. So each program
owns one activation row and ``BLOCK_N`` weight rows, reads the packed weight as 32-bit words
(``PER`` codes a word: int8 4, int4 8, 1-bit 32) and unrolls the codes of a word with
``tl.static_range``: code ``t`` of word ``i`` multiplies activation ``PER * i + t``, so every tensor
stays two-dimensional (``(BLOCK_N, words)``; 3-D unpacking measured 3x slower on the H200) and the
row sums are reduced once, after the K loop. Decoding uses exact bit tricks instead of int-to-float
conversions:

* int4 ``q`` in [0, 15]: the fp32 with bits ``0x4B000000 | q`` is ``2^23 + q``; subtracting
  ``2^23 + z`` (exact) gives ``q - z`` in one float op. The group's scale multiplies the tile's
  partial sums (a K tile lies inside one group).
* int8 ``q`` in [-128, 127] stored as byte ``u``: ``(u ^ 0x80) | 0x4B000000`` is ``2^23 + q + 128``.
  The per-channel scale multiplies the row sum in the epilogue.
* fp8 e4m3: the byte's sign, exponent and mantissa shifted into an fp16 bit pattern (the value
  times 2^-8, exact, subnormals too) and converted to fp32; 2^8 joins the scale in the epilogue.
* 1-bit (W1A16, bit 1 = +1): the weight sign goes straight into the activation's sign bit
  (``bits(a) ^ (~bit << 31)``), so each weight costs a shift, a logic op and an add. ``alpha``
  multiplies the row sum in the epilogue.

``EVEN_K`` (K a multiple of the tile) drops the bounds masks from the loads: the activation loads
are a real share of the work here (one per code position and weight-row slice): on the H200 at
batch 1 the masks cost 13-15 % of the int4 and int8 GEMVs' time and 22-29 % of the 1-bit one's.

Programs are numbered row-fastest (``pid % M`` is the row), so the programs that share a weight tile
run together and the rows after the first read it from L2. ``SPLIT_K`` > 1 writes fp32 partials
to a (SPLIT_K, M, N) workspace as the GEMM does (the bias added by split 0 only).
"""

from __future__ import annotations

from dataclasses import dataclass

from tcomp.backends.triton.lowbit import header

PER_WORD = {"int8": 4, "int4": 8, "w1": 32, "fp8": 4}
MAX_ROWS = 4  # beyond this the tensor-core kernels win (each row re-runs the whole decode)

_INT4 = """\
        g = (kt * BLOCK_K) // GROUP * stride_sg
        s = tl.load(S + wn * stride_sn + g).to(tl.float32)
        off = 8388608.0 + tl.load(Z + wn * stride_zn + g).to(tl.float32)
        part = tl.zeros((BLOCK_N, WORDS), dtype=tl.float32)
        for t in tl.static_range(8):
{load_a}
            q = (((words >> (4 * t)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - off[:, None]
            part += q * a_t[None, :]
        acc += part * s[:, None]"""

_INT8 = """\
        for t in tl.static_range(4):
{load_a}
            q = (((words >> (8 * t)) & 0xFF) ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
            acc += q * a_t[None, :]"""

# fp8 e4m3 byte ``b`` (sign, 4 exponent bits biased by 7, 3 mantissa bits) moved into the fp16 bit
# pattern ``sign << 15 | (b & 0x7F) << 7`` is the same number times 2^-8, subnormals included (fp16's
# exponent bias is 8 more, its subnormal step 2^-24 = 2^-9 * 2^-15 ... exactly 2^-8 of e4m3's); the
# fp16 -> fp32 conversion is exact, and the 2^8 goes into the per-channel scale in the epilogue.
_FP8 = """\
        for t in tl.static_range(4):
{load_a}
            b = (words >> (8 * t)) & 0xFF
            h = (((b & 0x80) << 8) | ((b & 0x7F) << 7)).to(tl.int16)
            q = h.to(tl.float16, bitcast=True).to(tl.float32)
            acc += q * a_t[None, :]"""

_W1 = """\
        flips = ~words
        for t in tl.static_range(32):
{load_a}
            flip = (flips << (31 - t)) & -2147483648
            acc += (a_t.to(tl.int32, bitcast=True)[None, :] ^ flip).to(tl.float32, bitcast=True)"""

_LOAD_A = """\
            col = kt * BLOCK_K + {per} * ri + t
            if EVEN_K:
                a_t = tl.load(A + row * stride_am + col * stride_ak).to(tl.float32)
            else:
                a_t = tl.load(A + row * stride_am + col * stride_ak, mask=col < K, other=0.0).to(tl.float32)"""

_EPILOGUE = {
    "int4": "out = tl.sum(acc, axis=1)",
    "int8": "out = tl.sum(acc, axis=1) * tl.load(S + wn * stride_sn).to(tl.float32)",
    "w1": "out = tl.sum(acc, axis=1) * tl.load(S + wn * stride_sn).to(tl.float32)",
    "fp8": "out = tl.sum(acc, axis=1) * (tl.load(S + wn * stride_sn).to(tl.float32) * 256.0)",
}


@dataclass(frozen=True)
class GemvSpec:
    fmt: str  # "int8" | "int4" | "w1" | "fp8"
    has_bias: bool

    @property
    def name(self) -> str:
        return f"tcomp_gemv_{self.fmt}" + ("_b" if self.has_bias else "")


def render(spec: GemvSpec) -> str:
    if spec.fmt not in PER_WORD:
        raise ValueError(f"unknown GEMV weight format {spec.fmt!r}; known: {tuple(PER_WORD)}")
    per = PER_WORD[spec.fmt]
    step = {"int4": _INT4, "int8": _INT8, "w1": _W1, "fp8": _FP8}[spec.fmt].format(load_a=_LOAD_A.format(per=per))
    bias = ""
    if spec.has_bias:
        bias = "\n    bias = tl.load(BIAS + wn).to(tl.float32)\n    out += tl.where(split == 0, bias, 0.0)"
    return (
        header("gemv_template.py", spec)
        + f"""
@triton.jit
def {spec.name}(
    A, W, S, Z, BIAS, C, M, N, K,
    stride_am, stride_ak, stride_wn, stride_sn, stride_sg, stride_zn, stride_cm, stride_cs,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr, SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    row = pid % M
    rn = (pid // M) * BLOCK_N + tl.arange(0, BLOCK_N)
    wn = rn % N  # columns past the edge wrap around (loads stay in bounds); the store masks them
    WORDS: tl.constexpr = BLOCK_K // {per}
    ri = tl.arange(0, WORDS)
    k_words = K // {per}
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    k_lo = split * per_split
    k_hi = tl.minimum(k_lo + per_split, k_tiles)
    acc = tl.zeros((BLOCK_N, WORDS), dtype=tl.float32)
    for kt in range(k_lo, k_hi):
        wi = kt * WORDS + ri
        w_ptrs = W + wn[:, None] * stride_wn + wi[None, :]
        if EVEN_K:
            words = tl.load(w_ptrs)
        else:
            words = tl.load(w_ptrs, mask=(wi < k_words)[None, :], other=0)
{step}
    {_EPILOGUE[spec.fmt]}{bias}
    tl.store(C + split * stride_cs + row * stride_cm + rn, out.to(C.dtype.element_ty), mask=rn < N)
"""
    )
