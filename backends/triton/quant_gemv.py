"""Launching the generated low-bit GEMV (``gemv_template``) for small batches of the weight-only
dialect ops: ``tcomp.linear_int8w``, ``tcomp.linear_fp8w``, ``tcomp.linear_int4w`` (from quant_gemm's launcher, as one more
family of autotune candidates) and ``tcomp.linear_w1`` (from quant_w1)."""

from __future__ import annotations

import torch

from tcomp.backends.triton import gemv_template as tmpl
from tcomp.backends.triton import lowbit
from tcomp.backends.triton.codegen import interpreting
from tcomp.backends.triton.configs import QConfig, pow2

MAX_ROWS = tmpl.MAX_ROWS
GEMV = lowbit.LowBitFormat(tmpl.render)


def spec_of(fmt: str, bias) -> tmpl.GemvSpec:
    return tmpl.GemvSpec(fmt, bias is not None)


def source_of(fmt: str, bias) -> tuple[str, str]:
    return GEMV.source(spec_of(fmt, bias))


def words_of(packed: torch.Tensor, fmt: str, k: int) -> torch.Tensor | None:
    """The packed weight seen as (N, K / codes-per-word) int32 words (a view, no copy), or None
    when its layout does not allow that (K not a multiple of the codes per word, rows not
    contiguous or not 4-byte aligned): the caller then uses the GEMM kernel."""
    per = tmpl.PER_WORD[fmt]
    row_bytes = {"int8": k, "fp8": k, "int4": k // 2, "w1": k // 8}[fmt]
    if (
        k % per
        or packed.dim() != 2
        or packed.element_size() != 1
        or packed.shape[1] != row_bytes
        or packed.stride(1) != 1
        or packed.stride(0) % 4
        or packed.storage_offset() % 4
    ):
        return None
    return packed.view(torch.int32)


def words_for(packed: torch.Tensor, fmt: str, k: int, m: int) -> torch.Tensor | None:
    """``words_of(packed)`` when the GEMV can take ``m`` rows (1 to ``MAX_ROWS``), else None."""
    return words_of(packed, fmt, k) if 0 < m <= MAX_ROWS else None


def fit(cfg: QConfig, fmt: str, k: int, group: int) -> QConfig:
    """``cfg`` made valid for the weight: a power-of-two K tile of whole words, within one int4
    group, no longer than K needs; no more K splits than K tiles."""
    per = tmpl.PER_WORD[fmt]
    need = pow2(k, per)
    bk = max(per, min(cfg.block_k, need, group if fmt == "int4" else need))
    splits = max(1, min(cfg.split_k, -(-k // bk)))
    return QConfig(1, cfg.block_n, bk, splits, cfg.num_warps, cfg.num_stages)


def default(fmt: str, m: int, n: int, k: int, group: int) -> QConfig:
    """The untuned GEMV launch: in the interpreter few, large programs; on a GPU the tile that won
    the H200 sweep, with enough K splits to give every SM several programs."""
    if interpreting():
        return fit(QConfig(1, min(128, pow2(n, 16)), 1024, 1, 4, 1), fmt, k, group)
    bk = {"int8": 256, "fp8": 256, "int4": 128, "w1": 1024}[fmt]
    tiles = m * -(-n // 64)
    split = 1
    while split < 8 and tiles * split < 1024:
        split *= 2
    return fit(QConfig(1, 64, bk, split, 4, 3), fmt, k, group)


def candidates(fmt: str, m: int, n: int, k: int, group: int) -> list[QConfig]:
    """GEMV launches the autotuner times (the default first), around what won on the H200:
    64-128 weight rows per program, 4-8 K splits for the tall layers."""
    shapes = {
        "int4": [(64, 128, 8, 4, 2), (64, 128, 4, 4, 4), (128, 128, 8, 4, 2), (128, 128, 4, 4, 4),
                 (32, 128, 8, 4, 2), (64, 128, 2, 4, 4)],
        "int8": [(64, 256, 8, 4, 3), (64, 128, 8, 4, 3), (128, 256, 4, 4, 3), (128, 512, 4, 4, 3),
                 (64, 512, 2, 4, 3), (32, 256, 8, 4, 3)],
        "w1": [(128, 1024, 4, 4, 3), (128, 256, 4, 4, 3), (64, 1024, 4, 4, 3), (128, 1024, 1, 4, 3),
               (64, 256, 8, 4, 3)],
    }
    shapes["fp8"] = shapes["int8"]  # one byte a weight, as int8 (not swept on its own)
    shapes = shapes[fmt]
    cands = [default(fmt, m, n, k, group)]
    cands += [fit(QConfig(1, bn, bk, sp, w, st), fmt, k, group) for bn, bk, sp, w, st in shapes]
    return list(dict.fromkeys(cands))


def launch(fmt, a, words, s, z, group, bias, out_dtype, cfg: QConfig):
    """``a`` (M, K) times the decoded ``words`` (N, K / per) transposed, scaled (+ bias): (M, N)."""
    m, k = a.shape
    n = words.shape[0]
    split = cfg.split_k
    out, stride_cs = lowbit.split_output(split, m, n, out_dtype, a.device)
    zz = z if z is not None else s
    grid = (m * -(-n // cfg.block_n), split)
    (kernel,) = GEMV.load(spec_of(fmt, bias))
    kernel[grid](
        a, words, s, zz, bias if bias is not None else s, out, m, n, k,
        *a.stride(), words.stride(0), s.stride(0), s.stride(1) if s.dim() == 2 else 0, zz.stride(0),
        out.stride(-2), stride_cs,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP=group, SPLIT_K=split, EVEN_K=k % cfg.block_k == 0,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return lowbit.reduce_splits(out, split, out_dtype)
