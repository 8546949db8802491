"""Launching the generated attention kernel: ``attention(q, k, v, bias, mask, scale, causal)``
with the exact semantics of ``tcomp.attention`` (see tcomp/ops.py)."""

from __future__ import annotations

import functools

import torch

from tcomp.backends.triton import attention_template as tmpl
from tcomp.backends.triton.codegen import interpreting, load
from tcomp.backends.triton.configs import AttnConfig, _pow2, attention_config

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def kernel_for(spec: tmpl.AttnKernelSpec, interp: bool):
    """The compiled kernel for ``spec`` (rendered and hashed once per process, not per call)."""
    return load(tmpl.render(spec), spec.name)


def _strides4(t: torch.Tensor | None, shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    if t is None:
        return (0, 0, 0, 0)
    return tuple(t.expand(shape).stride())  # broadcast dims get stride 0: no copy


def attention(
    q, k, v, bias, mask, scale: float, causal: bool, target: str = "h200", config: AttnConfig | None = None
) -> torch.Tensor:
    b, h, n, d = q.shape
    hk, m, dv = k.shape[1], k.shape[2], v.shape[3]
    out = torch.empty((b, h, n, dv), dtype=q.dtype, device=q.device)
    if n == 0 or b * h == 0:
        return out
    k, v = k.to(q.dtype), v.to(q.dtype)
    spec = tmpl.AttnKernelSpec(
        bias is not None, mask is not None, bool(causal), q.dtype == torch.float32, scale > 0
    )
    kern = kernel_for(spec, interpreting())
    full = (b, h, n, m)
    bias_t = bias.expand(full) if bias is not None else q
    mask_t = mask.expand(full) if mask is not None else q
    key = (spec, d, dv, q.dtype, target)
    candidates = (
        [config]
        if config is not None
        else _fitting.get(key) or fallbacks(attention_config(target, d, n, m, interpreting()))
    )
    for i, cfg in enumerate(candidates):
        grid = (triton_cdiv(n, cfg.block_m), b * h)
        try:
            kern[grid](
                q, k, v, bias_t, mask_t, out,
                *q.stride(), *k.stride(), *v.stride(),
                *_strides4(bias, full), *_strides4(mask, full), *out.stride(),
                h, n, m, d, dv, h // hk, float(scale) * tmpl.LOG2E,
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=_pow2(d), BLOCK_DV=_pow2(dv),
                EVEN_M=n % cfg.block_m == 0, EVEN_D=d == _pow2(d) and dv == _pow2(dv),
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )  # fmt: skip
        except Exception as exc:  # triton.runtime.errors.OutOfResources, imported lazily
            if type(exc).__name__ != "OutOfResources" or i == len(candidates) - 1:
                raise
            continue
        _fitting[key] = [cfg]
        return out
    return out


_fitting: dict[tuple, list[AttnConfig]] = {}  # first config that fit in shared memory, per kernel shape


def fallbacks(cfg: AttnConfig) -> list[AttnConfig]:
    """``cfg`` then smaller ones, for kernels (fp32, masks, bias) whose tiles do not fit in shared memory."""
    ladder = [cfg, AttnConfig(cfg.block_m, min(cfg.block_n, 64), cfg.num_warps, 2),
              AttnConfig(64, 64, 4, 2), AttnConfig(64, 32, 4, 1), AttnConfig(32, 32, 4, 1)]  # fmt: skip
    return list(dict.fromkeys(ladder))


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
