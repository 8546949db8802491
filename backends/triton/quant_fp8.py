"""fp8 e4m3 linear layers on Triton for the dialect op ``tcomp.fp8_linear`` (semantics: tcomp/dialect/).

Two generated kernels per specialisation (one source text): ``..._act`` quantizes the activations
to e4m3 (one program per row; per row it first sweeps K for the amax and sets ``sx = amax / 448``,
per tensor it reads the one scale computed beforehand), dividing with IEEE rounding
(``div_rn``) and casting with round-to-nearest-even after clamping to +-448, as the reference
does; the GEMM multiplies e4m3 tiles with ``tl.dot`` (fp8 tensor cores) into a float32
accumulator and applies ``sx * sw`` and the bias once, in the epilogue. Hopper's fp8 MMA keeps
only ~14 bits while it accumulates, so each K tile's products are summed from zero and added
to the accumulator in full fp32 (``max_num_imprecise_acc=BLOCK_K``).

fp8 tensor cores exist from compute capability 8.9 (Ada, Hopper); Triton's interpreter cannot
cast to fp8, so the kernels run only on such GPUs and every other case stays on the reference
op (``check`` says why).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.fp8_linear
from tcomp.backends.triton import TRITON, lowbit
from tcomp.backends.triton.configs import cdiv
from tcomp.graph import val
from tcomp.quant import fp8_scale
from tcomp.targets import Target

MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class Fp8Spec:
    per_row: bool
    has_bias: bool

    @property
    def name(self) -> str:
        return "tcomp_fp8" + ("_row" if self.per_row else "_tensor") + ("_b" if self.has_bias else "")


def render(spec: Fp8Spec) -> str:
    bias = lowbit.BIAS_EPILOGUE if spec.has_bias else ""
    if spec.per_row:
        act_scale = f"""amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
{lowbit.LOAD_ROW}
        amax = tl.maximum(amax, tl.abs(x), propagate_nan=tl.PropagateNan.ALL)
    top = tl.max(amax, axis=0)
    s = tl.math.div_rn(top, 448.0)
    s = tl.where(s > 0, s, 1.0)
    s = tl.where(top <= 3.4028234663852886e38, s, top * 0.0)  # NaN for a NaN or inf amax (as the reference)
    tl.store(SX + row, s)"""
        gemm_scale = "sx = tl.load(SX + am)[:, None]"
    else:
        act_scale = "s = tl.load(SX)"
        gemm_scale = "sx = tl.load(SX)"
    return (
        lowbit.header("quant_fp8.py", spec)
        + f"""
{lowbit.ACT_HEAD.format(name=spec.name)}
    {act_scale}
    for k in range(0, tl.cdiv(K, BLOCK_K)):
{lowbit.LOAD_ROW}
        v = tl.math.div_rn(x, s)
        v = tl.minimum(tl.maximum(v, -448.0, propagate_nan=tl.PropagateNan.ALL), 448.0, propagate_nan=tl.PropagateNan.ALL)
        tl.store(Q + row * K + cols, v.to(tl.float8e4nv, fp_downcast_rounding="rtne"), mask=cols < K)


@triton.jit
def {spec.name}(
    A, W, SX, SW, BIAS, C, M, N, K,
    stride_wn, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * grid_n)
    first_m = group * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % size_m)
    pid_n = (pid % (GROUP_M * grid_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    am = rm % M
    wn = rn % N
    a_ptrs = A + am[:, None] * K + rk[None, :]
    w_ptrs = W + wn[None, :] * stride_wn + rk[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=rk[None, :] < left, other=0.0)
        w = tl.load(w_ptrs, mask=rk[:, None] < left, other=0.0)
        acc = tl.dot(a, w, acc, max_num_imprecise_acc=BLOCK_K)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    {gemm_scale}
    sw = tl.load(SW + {"wn" if spec.per_row else "0"}).to(tl.float32)
    acc = acc * sx * sw{"[None, :]" if spec.per_row else ""}{bias}
{lowbit.STORE}
"""
    )


def _spec(node: fx.Node) -> Fp8Spec:
    return Fp8Spec(node.args[3] == "row", lowbit.arg(node, 4, "bias") is not None)


FP8 = lowbit.LowBitFormat(render, _spec, kernels=("_act", ""))


def blocks(m: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): e4m3 dots take K tiles of at least 32;
    a small M (decode) takes one 64-row tile (a warpgroup's wgmma height) and narrow N tiles so
    the weight streams through many programs."""
    if m <= 64:
        return 64, 64, 128, 4, 4
    return 128, 128, 128, 8, 3


def fp8_unsupported_device(device: torch.device) -> str | None:
    """Why the fp8 kernels cannot run on ``device`` (None: they can)."""
    if device.type != "cuda":
        return (
            f"tensors on {device.type}: fp8 kernels need a CUDA GPU (Triton's interpreter cannot cast to fp8)"
        )
    return capability_reason(torch.cuda.get_device_capability(device))


def capability_reason(capability: tuple[int, int]) -> str | None:
    if tuple(capability) < MIN_CAPABILITY:
        return (
            f"GPU of compute capability {capability[0]}.{capability[1]} has no fp8 tensor cores "
            "(needs 8.9+: Ada, Hopper)"
        )
    return None


def check(node: fx.Node) -> str | None:
    """Why an fp8_linear node cannot run on the kernels (None: it can)."""
    reason = lowbit.check(node)
    if reason:
        return reason
    if node.args[3] not in ("row", "tensor"):
        return f"granularity {node.args[3]!r}"
    w = val(node.args[1])
    if w.dtype != torch.float8_e4m3fn or w.stride(1) != 1:
        return "weight must be a contiguous float8_e4m3fn matrix"
    return fp8_unsupported_device(val(node.args[0]).device)


@TRITON.implements(torch.ops.tcomp.fp8_linear.default, check=check, sources=FP8.sources)
def linear_fp8(x, qweight, scale, granularity: str, bias=None, *, target: Target | str):
    """``tcomp.fp8_linear`` on the generated kernels (a CUDA GPU of capability >= 8.9)."""
    n, k = qweight.shape
    per_row = granularity == "row"

    def run(a: torch.Tensor) -> torch.Tensor:
        m = a.shape[0]
        act, gemm = FP8.load(Fp8Spec(per_row, bias is not None))
        if per_row:
            sx = torch.empty((m,), dtype=torch.float32, device=x.device)
        else:  # one scale over the whole activation, as the reference computes it
            sx = fp8_scale(a, "tensor").float()
        qx = lowbit.quantize_rows(act, a, torch.float8_e4m3fn, sx, min_block=32)
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
        bm, bn, bk, warps, stages = blocks(m)
        gemm[(cdiv(m, bm) * cdiv(n, bn),)](
            qx, qweight, sx, scale, bias if bias is not None else sx, out, m, n, k,
            qweight.stride(0), *out.stride(),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        return out

    return lowbit.launch(x, k, n, run)
