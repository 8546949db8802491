"""Launching the generated low-bit GEMV (``gemv_template``) for small batches of the weight-only
dialect ops: ``tcomp.linear_int8w``, ``tcomp.linear_int4w`` (from quant_gemm's launcher, as one more
family of autotune candidates) and ``tcomp.linear_w1`` (from quant_w1)."""

from __future__ import annotations

import functools

import torch

from tcomp.backends.triton import autotune
from tcomp.backends.triton import gemv_template as tmpl
from tcomp.backends.triton.codegen import interpreting, load
from tcomp.backends.triton.configs import QConfig

MAX_ROWS = tmpl.MAX_ROWS


@functools.cache
def _kernel(spec: tmpl.GemvSpec, interp: bool):
    return load(tmpl.render(spec), spec.name)


def spec_of(fmt: str, bias) -> tmpl.GemvSpec:
    return tmpl.GemvSpec(fmt, bias is not None)


def source_of(fmt: str, bias) -> tuple[str, str]:
    spec = spec_of(fmt, bias)
    return f"{spec.name}.py", tmpl.render(spec)


def words_of(packed: torch.Tensor, fmt: str, k: int) -> torch.Tensor | None:
    """The packed weight seen as (N, K / codes-per-word) int32 words (a view, no copy), or None
    when its layout does not allow that (K not a multiple of the codes per word, rows not
    contiguous or not 4-byte aligned): the caller then uses the GEMM kernel."""
    per = tmpl.PER_WORD[fmt]
    row_bytes = {"int8": k, "int4": k // 2, "w1": k // 8}[fmt]
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


def fit(cfg: QConfig, fmt: str, k: int, group: int) -> QConfig:
    """``cfg`` made valid for the weight: a power-of-two K tile of whole words, within one int4
    group, no longer than K needs; no more K splits than K tiles."""
    per = tmpl.PER_WORD[fmt]
    need = max(per, 1 << (max(k, 1) - 1).bit_length())
    bk = max(per, min(cfg.block_k, need, group if fmt == "int4" else need))
    splits = max(1, min(cfg.split_k, -(-k // bk)))
    return QConfig(1, cfg.block_n, bk, splits, cfg.num_warps, cfg.num_stages)


def default(fmt: str, m: int, n: int, k: int, group: int) -> QConfig:
    """The untuned GEMV launch: in the interpreter few, large programs; on a GPU the tile that won
    the H200 sweep, with enough K splits to give every SM several programs."""
    if interpreting():
        return fit(QConfig(1, min(128, max(16, 1 << (n - 1).bit_length())), 1024, 1, 4, 1), fmt, k, group)
    bk = {"int8": 256, "int4": 128, "w1": 1024}[fmt]
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
    }[fmt]  # fmt: skip
    cands = [default(fmt, m, n, k, group)]
    cands += [fit(QConfig(1, bn, bk, sp, w, st), fmt, k, group) for bn, bk, sp, w, st in shapes]
    return list(dict.fromkeys(cands))


def tuned(key: str, family, run, default: QConfig) -> QConfig:
    """The launch to use for ``key``: ``default`` without a GPU autotuner, else the fastest of
    ``family()`` (built and timed once per key with ``run(config)``, then cached)."""
    if not autotune.enabled():
        return default
    best = autotune.lookup(key)
    if best is None:
        cands = {c.name: c for c in family()}
        best = autotune.choose(key, {nm: functools.partial(run, c) for nm, c in cands.items()}, default.name)
    return QConfig.parse(best)


def output_for(split: int, m: int, n: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, int]:
    """(output, its split stride): (M, N) in ``dtype``, or with K splits fp32 partial sums, one
    (M, N) slab per split (the GEMM and the GEMV launchers sum them)."""
    if split == 1:
        return torch.empty((m, n), dtype=dtype, device=device), 0
    out = torch.empty((split, m, n), dtype=torch.float32, device=device)
    return out, out.stride(0)


def launch(fmt, a, words, s, z, group, bias, out_dtype, cfg: QConfig):
    """``a`` (M, K) times the decoded ``words`` (N, K / per) transposed, scaled (+ bias): (M, N)."""
    m, k = a.shape
    n = words.shape[0]
    split = cfg.split_k
    out, stride_cs = output_for(split, m, n, out_dtype, a.device)
    zz = z if z is not None else s
    grid = (m * -(-n // cfg.block_n), split)
    _kernel(spec_of(fmt, bias), interpreting())[grid](
        a, words, s, zz, bias if bias is not None else s, out, m, n, k,
        *a.stride(), words.stride(0), s.stride(0), s.stride(1) if s.dim() == 2 else 0, zz.stride(0),
        out.stride(-2), stride_cs,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP=group, SPLIT_K=split, EVEN_K=k % cfg.block_k == 0,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out if split == 1 else out.sum(0).to(out_dtype)
