"""``tcomp.cached_attention`` on Triton: attention of new tokens against a static KV cache, reading
only the ``kv_len`` valid slots of each batch row (tcomp/dialect/cached_attention.py).

* Decode (``N <= DECODE_MAX_N`` new tokens): the split-KV (FlashDecoding) kernels of
  ``decode_attention_template``. All query heads of a kv group share one program, so the cache is
  read once per group; the valid keys are split across enough programs to fill the GPU at batch 1,
  and a second small kernel combines the partial softmaxes.
* Prefill (longer ``N``): the flash attention kernel of ``attention_template`` with its key range
  cut to ``kv_len`` per batch row.

``kv_len`` is read on the device in both: no host synchronisation, and the grid depends on shapes
only, so a launch is safe to capture in a CUDA graph and one capture serves every cache length.
"""

from __future__ import annotations

import functools

import torch
import torch.fx as fx

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.cached_attention
from tcomp.backends.triton import TRITON, autotune
from tcomp.backends.triton import attention_template as flash_tmpl
from tcomp.backends.triton import decode_attention_template as tmpl
from tcomp.backends.triton.codegen import interpreting, load
from tcomp.backends.triton.configs import (
    AttnConfig,
    DecodeConfig,
    cdiv,
    decode_config,
    pow2,
)
from tcomp.backends.triton.runtime import device_and_head_dims, flash, launch_fitting, lens_arg, strides4
from tcomp.dialect.cached_attention import CACHED_ATTENTION
from tcomp.graph import val
from tcomp.kv_cache import dequantize_rows
from tcomp.targets import Target, get_target

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DECODE_MAX_N = 16  # new tokens up to which the split-KV kernel runs (decode, speculative decode)
MAX_ROW_BLOCK = 64  # query rows (heads of a group x new tokens) per decode program
CHUNK_S = 32  # splits the combine kernel reduces per step


def check(node: fx.Node) -> str | None:
    """Why a ``tcomp.cached_attention`` node cannot run on these kernels (None: it can)."""
    a = CACHED_ATTENTION.bind(node)
    q, k, v, kv_len = (val(a[name]) for name in ("q", "k_cache", "v_cache", "kv_len"))
    if any(not isinstance(x, torch.Tensor) for x in (q, k, v, kv_len)) or q.dim() != 4:
        return "needs 4-D q/k_cache/v_cache and a kv_len tensor with known shapes"
    scales = [val(a[name]) if a.get(name) is not None else None for name in ("k_scale", "v_scale")]
    if (scales[0] is None) != (scales[1] is None):
        return "an int8 cache needs both k_scale and v_scale"
    if scales[0] is not None:  # an int8 cache: codes, one float scale per slot
        for name, x, sc in (("k_cache", k, scales[0]), ("v_cache", v, scales[1])):
            if x.dtype != torch.int8 or not isinstance(sc, torch.Tensor) or not sc.is_floating_point():
                return f"{name} with scales must be int8 codes with float scales (got {x.dtype})"
            if tuple(sc.shape) != (*x.shape[:3], 1):
                return f"{name} scales of shape {tuple(sc.shape)}: one per slot, {(*x.shape[:3], 1)}, is needed"
        k, v = k.to(q.dtype), v.to(q.dtype)  # what the kernels cast the codes to
    for name, x in (("q", q), ("k_cache", k), ("v_cache", v)):
        if x.dtype not in SUPPORTED_DTYPES:
            return f"{name} dtype {x.dtype} (supported: fp16, bf16, fp32)"
    if kv_len.dtype.is_floating_point or kv_len.dtype == torch.bool or kv_len.is_complex():
        return f"kv_len dtype {kv_len.dtype}: an integer tensor is needed"
    if kv_len.numel() not in (1, q.shape[0]):
        return f"kv_len has {kv_len.numel()} elements: 1 or the batch ({q.shape[0]}) are supported"
    return device_and_head_dims(q, v)


def _decode_spec(q: torch.Tensor, bias, mask, int8: bool = False) -> tmpl.DecodeKernelSpec:
    return tmpl.DecodeKernelSpec(bias is not None, mask is not None, q.dtype == torch.float32, int8)


def _prefill_spec(q: torch.Tensor, bias, mask, scale: float) -> flash_tmpl.AttnKernelSpec:
    return flash_tmpl.AttnKernelSpec(
        bias is not None, mask is not None, False, q.dtype == torch.float32, scale > 0, kv_len=True
    )


def sources(node: fx.Node) -> dict[str, str]:
    """The kernels a lowered node launches (file name -> source): split-KV for decode shapes,
    the kv_len-bounded flash kernel for prefill."""
    a = CACHED_ATTENTION.bind(node)
    q, bias, mask = val(a["q"]), a["bias"], a["mask"]
    if q.shape[2] <= DECODE_MAX_N:
        spec = _decode_spec(q, bias, mask, a.get("k_scale") is not None)
        return {f"{spec.name}.py": tmpl.render(spec)}
    spec = _prefill_spec(q, bias, mask, a["scale"])
    return {f"{spec.name}.py": flash_tmpl.render(spec)}


@TRITON.implements(torch.ops.tcomp.cached_attention.default, check=check, sources=sources)
def cached_attention(
    q, k_cache, v_cache, bias, mask, scale: float, kv_len, k_scale=None, v_scale=None, *, target: Target | str,
    config: DecodeConfig | AttnConfig | None = None,
) -> torch.Tensor:  # fmt: skip
    """``tcomp.cached_attention`` on the generated kernels for ``target``: split-KV decode for up
    to ``DECODE_MAX_N`` new tokens, flash prefill beyond (``config`` forces the launch
    configuration of the path taken: a DecodeConfig or an AttnConfig). An int8 cache (codes with
    ``k_scale``/``v_scale``): decode reads the codes; prefill dequantizes the cache to q's dtype
    first (once per prompt; the flash kernel reads model-dtype keys)."""
    if q.shape[2] <= DECODE_MAX_N:
        if config is not None and not isinstance(config, DecodeConfig):
            raise TypeError(
                f"cached_attention: {q.shape[2]} new tokens take the decode kernel: pass a DecodeConfig"
            )
        return decode(q, k_cache, v_cache, bias, mask, scale, kv_len, target=target, config=config,
                      k_scale=k_scale, v_scale=v_scale)  # fmt: skip
    if config is not None and not isinstance(config, AttnConfig):
        raise TypeError(
            f"cached_attention: {q.shape[2]} new tokens take the prefill kernel: pass an AttnConfig"
        )
    if k_scale is not None:
        k_cache, v_cache = dequantize_rows(k_cache, k_scale, q.dtype), dequantize_rows(v_cache, v_scale, q.dtype)
    return prefill(q, k_cache, v_cache, bias, mask, scale, kv_len, target=target, config=config)


def _output(q: torch.Tensor, dv: int) -> torch.Tensor:
    """(B, H, N, Dv) stored as (B, N, H, Dv), as the other attention kernels write it: the
    ``transpose(1, 2).reshape`` that follows in a model is then a view."""
    b, h, n, _ = q.shape
    return torch.empty((b, n, h, dv), dtype=q.dtype, device=q.device).transpose(1, 2)


def scratch(numel: int, device: torch.device) -> torch.Tensor:
    """fp32 scratch for the partials (uninitialised: the splits past kv_len leave theirs stale)."""
    return torch.empty(numel, dtype=torch.float32, device=device)


@functools.cache
def _decode_kernels(spec: tmpl.DecodeKernelSpec, interp: bool):
    src = tmpl.render(spec)
    return load(src, spec.name), load(src, "tcomp_decode_combine")


def decode(
    q, k_cache, v_cache, bias, mask, scale: float, kv_len, *, target: Target | str,
    config: DecodeConfig | None = None, k_scale=None, v_scale=None,
) -> torch.Tensor:  # fmt: skip
    """The split-KV launch (any N; the lowering sends N <= DECODE_MAX_N here); with ``k_scale`` /
    ``v_scale`` the caches are int8 codes, one scale per slot."""
    tgt = get_target(target)
    b, h, n, d = q.shape
    hk, m, dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    out = _output(q, dv)
    if n == 0 or b * h == 0 or dv == 0:
        return out
    if m == 0:  # no key at all: every row attends nothing
        return out.zero_()
    g = h // hk
    rows = g * n
    block_r = min(MAX_ROW_BLOCK, pow2(rows))
    row_blocks = cdiv(rows, block_r)
    int8 = k_scale is not None
    spec = _decode_spec(q, bias, mask, int8)
    split_kernel, combine_kernel = _decode_kernels(spec, interpreting())
    ks, vs = (k_scale, v_scale) if int8 else (q, q)  # (unread without int8)
    scale_strides = (*ks.stride()[:3], *vs.stride()[:3])
    lens, skl = lens_arg(kv_len, q.device)
    full = (b, h, n, m)
    bias_t = bias.expand(full) if bias is not None else q
    mask_t = mask.expand(full) if mask is not None else q
    block_d, block_dv = pow2(d), pow2(dv)
    rp = row_blocks * block_r  # partial rows per (batch, kv head, split)

    def launch(cfg: DecodeConfig, lens: torch.Tensor = lens, skl: int = skl) -> torch.Tensor:
        direct = cfg.splits == 1
        if direct:  # the split kernel writes the output; the partials are never touched
            mp = lp = ap = out
        else:
            mp = scratch(b * hk * cfg.splits * rp, q.device)
            lp = scratch(b * hk * cfg.splits * rp, q.device)
            ap = scratch(b * hk * cfg.splits * rp * block_dv, q.device)
        split_kernel[(b * hk * row_blocks, cfg.splits)](
            q, k_cache, v_cache, ks, vs, bias_t, mask_t, lens, mp, lp, ap, out,
            *q.stride(), *k_cache.stride(), *v_cache.stride(), *scale_strides,
            *strides4(bias, full), *strides4(mask, full), *out.stride(),
            skl, hk, n, m, d, dv, g, cfg.splits, row_blocks, float(scale) * tmpl.LOG2E,
            BLOCK_R=block_r, BLOCK_N=cfg.block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
            EVEN_D=d == block_d and dv == block_dv, DIRECT=direct,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
        if not direct:
            block_s = pow2(cfg.splits, 2)
            combine_kernel[(b * hk * rows,)](
                mp, lp, ap, lens, out, *out.stride(), skl, hk, n, m, dv, g, cfg.splits, rp,
                BLOCK_N=cfg.block_n, BLOCK_S=block_s, CHUNK_S=min(CHUNK_S, block_s), BLOCK_DV=block_dv,
                num_warps=4,
            )  # fmt: skip
        return out

    if config is not None:
        return launch(config)
    default = decode_config(tgt, b * hk * row_blocks, m, max(d, dv), interpreting())
    if autotune.enabled():
        cands = {c.name: c for c in decode_candidates(default, m)}
        key = (
            f"decode_attn|{spec.name}|bhk{b * hk}|rows{rows}|d{d}|dv{dv}|m{m}"
            f"|{q.dtype}|{k_cache.dtype}|{tgt.name}"
        )
        best = autotune.lookup(key)
        if best is None and not torch.cuda.is_current_stream_capturing():  # never time inside a capture
            # timed over the whole cache: the length the fixed grid must serve at its slowest
            whole = torch.full((1,), m, dtype=torch.int32, device=q.device)
            thunks = {name: functools.partial(launch, c, whole, 0) for name, c in cands.items()}
            best = autotune.choose(key, thunks, default.name)
        if best is not None:
            return launch(cands.get(best, default))
    key = ("decode", spec, b * hk * row_blocks, block_r, m, d, dv, q.dtype, k_cache.dtype, tgt.name)
    launch_fitting(key, decode_fallbacks(default), launch)
    return out


def decode_candidates(default: DecodeConfig, m: int) -> list[DecodeConfig]:
    """What the autotuner times on a GPU: the default, half and twice its splits, other tiles and
    pipeline depths."""
    max_splits = max(1, min(256, cdiv(m, 16)))
    split_options = sorted(
        {max(1, min(max_splits, s)) for s in (default.splits // 2, default.splits, 2 * default.splits)}
    )
    out = [default]
    for s in split_options:
        for bn, w, st in ((64, 4, 3), (64, 4, 4), (32, 4, 4), (128, 8, 3), (64, 8, 2)):
            if bn <= max(16, pow2(m)):
                out.append(DecodeConfig(bn, min(s, cdiv(m, bn)), w, st))
    return list(dict.fromkeys(out))


def decode_fallbacks(cfg: DecodeConfig) -> list[DecodeConfig]:
    """``cfg`` then smaller tiles and shallower pipelines (fp32 caches, large head dims)."""
    ladder = [
        cfg,
        DecodeConfig(cfg.block_n, cfg.splits, cfg.num_warps, 2),
        DecodeConfig(min(cfg.block_n, 32), cfg.splits, 4, 2),
        DecodeConfig(16, cfg.splits, 4, 1),
    ]
    return list(dict.fromkeys(ladder))


def prefill(
    q, k_cache, v_cache, bias, mask, scale: float, kv_len, *, target: Target | str,
    config: AttnConfig | None = None,
) -> torch.Tensor:  # fmt: skip
    """The flash attention kernel with keys limited to ``kv_len`` per batch row."""
    b, h, n, _ = q.shape
    m, dv = k_cache.shape[2], v_cache.shape[3]
    if n == 0 or b * h == 0 or dv == 0:
        return _output(q, dv)
    if m == 0:
        return _output(q, dv).zero_()
    return flash(q, k_cache, v_cache, bias, mask, scale, False, target=target, config=config, kv_len=kv_len)
