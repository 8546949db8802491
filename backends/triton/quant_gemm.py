"""Launching the generated weight-only quantized kernels for the dialect ops ``tcomp.linear_int8w``,
``tcomp.linear_fp8w`` and ``tcomp.linear_int4w`` (same semantics, see tcomp/dialect/): the tensor-core GEMM
(``quant_template``) and, for at most ``quant_gemv.MAX_ROWS`` activation rows, the GEMV
(``gemv_template``); a ``QConfig`` with ``block_m == 1`` names the GEMV. The autotuner times both
families on a GPU; untuned, a few rows take the GEMV."""

from __future__ import annotations

import functools

import torch
import torch.fx as fx

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.linear_int8w / linear_int4w
from tcomp.backends.triton import TRITON, lowbit, quant_gemv
from tcomp.backends.triton import quant_template as tmpl
from tcomp.backends.triton.configs import QConfig, cdiv, pow2
from tcomp.graph import val
from tcomp.targets import Target, get_target

QGEMM = lowbit.LowBitFormat(tmpl.render)


def spec_of(fmt: str, x_dtype: torch.dtype, bias) -> tmpl.QuantGemmSpec:
    return tmpl.QuantGemmSpec(fmt, bias is not None, x_dtype == torch.float32)


def default_config(m: int, n: int, k: int) -> QConfig:
    bm, bn, bk, warps, stages = lowbit.blocks(m, n, k)
    return QConfig(bm, bn, bk, 1, warps, stages)


def candidates(default: QConfig, m: int) -> list[QConfig]:
    """What the autotuner times on a GPU (the default first). Small M is memory-bound on the
    weight: the choices are how much weight each program streams per step (N x K tile), how deep
    the pipeline is, and how many K splits keep all SMs busy when N / BLOCK_N programs cannot."""
    bm = default.block_m
    if m <= 16:
        shapes = [(64, 128, 1, 4, 4), (128, 128, 1, 4, 4), (32, 256, 1, 4, 4), (64, 256, 1, 4, 3),
                  (128, 64, 1, 4, 5), (64, 128, 2, 4, 4), (64, 128, 4, 4, 4), (128, 128, 2, 8, 4),
                  (128, 128, 4, 8, 4), (32, 128, 4, 4, 5), (64, 256, 2, 4, 3), (64, 128, 8, 4, 4),
                  (32, 256, 4, 4, 4), (128, 256, 1, 8, 3), (128, 256, 2, 8, 3), (64, 512, 1, 4, 3),
                  (32, 512, 2, 4, 3), (256, 128, 1, 8, 4), (256, 256, 1, 8, 3), (64, 256, 4, 4, 4)]  # fmt: skip
    else:
        shapes = [(128, 64, 1, 8, 3), (128, 128, 1, 8, 3), (64, 128, 1, 4, 4), (128, 64, 2, 8, 3),
                  (256, 64, 1, 8, 3), (64, 64, 1, 4, 4)]  # fmt: skip
    extra = [QConfig(bm, bn, bk, sk, w, st) for bn, bk, sk, w, st in shapes]
    return list(dict.fromkeys([default, *extra]))


def _fit(cfg: QConfig, fmt: str, k: int, group: int) -> QConfig:
    """The config made valid for the weight: an int4 K tile never straddles a group."""
    if cfg.block_m == 1:
        return quant_gemv.fit(cfg, fmt, k, group)
    bk = min(cfg.block_k, group) if fmt == "int4" else min(cfg.block_k, pow2(k, 16))
    k_tiles = -(-k // bk)
    return QConfig(cfg.block_m, cfg.block_n, bk, max(1, min(cfg.split_k, k_tiles)), cfg.num_warps,
                   cfg.num_stages)  # fmt: skip


def _run(fmt, a, w, s, z, group, bias, out_dtype, cfg: QConfig):
    m, n, k = a.shape[0], w.shape[0], a.shape[1]
    if cfg.block_m == 1:
        words = quant_gemv.words_of(w, fmt, k)
        if words is None or m > quant_gemv.MAX_ROWS:
            raise ValueError(
                f"GEMV config {cfg.name} needs at most {quant_gemv.MAX_ROWS} rows and a word-aligned "
                f"packed weight (got {m} rows, weight {tuple(w.shape)} with strides {w.stride()})"
            )
        return quant_gemv.launch(fmt, a, words, s, z, group, bias, out_dtype, cfg)
    split = cfg.split_k
    out, stride_cs = lowbit.split_output(split, m, n, out_dtype, a.device)
    sg = s.stride(1) if s.dim() == 2 else 0
    zz = z if z is not None else s
    grid = (cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n), split)
    (kernel,) = QGEMM.load(spec_of(fmt, a.dtype, bias))
    kernel[grid](
        a, w, s, zz, bias if bias is not None else a, out, m, n, k,
        *a.stride(), *w.stride(), s.stride(0), sg, zz.stride(0), *out.stride()[-2:],
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=8, GROUP=group,
        SPLIT_K=split, stride_cs=stride_cs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return lowbit.reduce_splits(out, split, out_dtype)


def tune_key(fmt: str, m: int, n: int, k: int, group: int, dtype, has_bias: bool, target: str) -> str:
    """The autotuner's key of a launch (M bucketed to a power of two, rows the GEMV can take
    apart from the rest; the weight shape exact)."""
    rows = pow2(m, 1) if m <= quant_gemv.MAX_ROWS else pow2(m, 16)
    return f"qgemm|{fmt}|m{rows}|n{n}|k{k}|g{group}|{dtype}|{'b' if has_bias else ''}|{target}"


def _launch(fmt, x, w, s, z, group, bias, config: QConfig | None, target: Target | str):
    n = w.shape[0]
    k = w.shape[1] * (2 if fmt == "int4" else 1)

    def run_rows(a: torch.Tensor) -> torch.Tensor:
        m = a.shape[0]
        run = functools.partial(_run, fmt, a, w, s, z, group, bias, x.dtype)
        if config is not None:
            return run(_fit(config, fmt, k, group))
        gemv = quant_gemv.words_for(w, fmt, k, m) is not None
        dot = _fit(default_config(m, n, k), fmt, k, group)
        default = quant_gemv.default(fmt, m, n, k, group) if gemv else dot

        def family() -> list[QConfig]:
            dots = [_fit(c, fmt, k, group) for c in candidates(dot, m)]
            return quant_gemv.candidates(fmt, m, n, k, group) + dots if gemv else dots

        key = tune_key(fmt, m, n, k, group, x.dtype, bias is not None, get_target(target).name)
        chosen = lowbit.tuned(key, family, run, default)
        if chosen.block_m == 1 and not gemv:  # a winner for another layout of this shape
            chosen = dot
        return run(chosen)

    return lowbit.launch(x, k, n, run_rows)


def _sources(fmt: str, node: fx.Node, bias_at: int) -> dict[str, str]:
    """{file name: source} of the kernels a lowered quantized linear node may launch (the GEMM,
    and the GEMV when its batch is small enough)."""
    bias = lowbit.arg(node, bias_at, "bias")
    x = val(node.args[0])
    out = dict([QGEMM.source(spec_of(fmt, x.dtype, bias))])
    rows = lowbit.rows_of(x)
    if not isinstance(rows, int) or rows <= quant_gemv.MAX_ROWS:  # symbolic batch: may be small
        out.update([quant_gemv.source_of(fmt, bias)])
    return out


@TRITON.implements(
    torch.ops.tcomp.linear_int8w.default,
    check=lowbit.check,
    sources=functools.partial(_sources, "int8", bias_at=3),
)
def linear_int8w(x, qweight, scale, bias=None, *, target: Target | str, config: QConfig | None = None):
    """``tcomp.linear_int8w`` on the generated kernel (``config`` fixes the launch, else the
    autotuner picks on a GPU, cached per shape)."""
    return _launch("int8", x, qweight, scale, None, 1, bias, config, target)


@TRITON.implements(
    torch.ops.tcomp.linear_fp8w.default,
    check=lowbit.check,
    sources=functools.partial(_sources, "fp8", bias_at=3),
)
def linear_fp8w(x, qweight, scale, bias=None, *, target: Target | str, config: QConfig | None = None):
    """``tcomp.linear_fp8w`` on the generated kernel: the e4m3 weight read as its bytes and decoded
    with integer ops (no fp8 hardware needed); launch choice as for ``linear_int8w``."""
    return _launch("fp8", x, qweight.view(torch.uint8), scale, None, 1, bias, config, target)


@TRITON.implements(
    torch.ops.tcomp.linear_int4w.default,
    check=lowbit.check,
    sources=functools.partial(_sources, "int4", bias_at=5),
)
def linear_int4w(
    x, packed, scales, zeros, group: int, bias=None, *, target: Target | str, config: QConfig | None = None
):
    """``tcomp.linear_int4w`` on the generated kernel (``config`` as for ``linear_int8w``)."""
    return _launch("int4", x, packed, scales, zeros, group, bias, config, target)
