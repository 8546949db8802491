"""Launching the generated attention kernel: ``attention(q, k, v, bias, mask, scale, causal)``
with the exact semantics of ``tcomp.attention`` (see tcomp/dialect/), declared to the Triton
backend as its implementation of that op."""

from __future__ import annotations

import functools

import torch
import torch.fx as fx

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.attention
from tcomp.backends.triton import TRITON, autotune
from tcomp.backends.triton import attention_template as tmpl
from tcomp.backends.triton.codegen import interpreting, load
from tcomp.backends.triton.configs import AttnConfig, attention_config, cdiv, pow2
from tcomp.graph import val
from tcomp.targets import Target, get_target

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def kernel_for(spec: tmpl.AttnKernelSpec, interp: bool):
    """The compiled kernel for ``spec`` (rendered and hashed once per process, not per call)."""
    return load(tmpl.render(spec), spec.name)


def strides4(t: torch.Tensor | None, shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    if t is None:
        return (0, 0, 0, 0)
    return tuple(t.expand(shape).stride())  # broadcast dims get stride 0: no copy


def check(node: fx.Node) -> str | None:
    """Why an attention node (``tcomp.attention`` or ``tcomp.linear_attention``) cannot run on
    the generated kernels (None: it can)."""
    q, k, v = (val(a) for a in node.args[:3])
    if any(x is None for x in (q, k, v)) or q.dim() != 4:
        return "needs 4-D q/k/v with known shapes"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} (supported: fp16, bf16, fp32)"
    return device_and_head_dims(q, v)


def device_and_head_dims(q: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the attention kernels cannot take these q/v values (device, head dims), or None."""
    if q.device.type != "cuda" and not interpreting():
        return f"tensors on {q.device.type}: Triton needs CUDA (or TRITON_INTERPRET=1)"
    d, dv = q.shape[-1], v.shape[-1]
    if not (isinstance(d, int) and isinstance(dv, int)) or max(d, dv) > 256:
        return "head dim must be static and at most 256"
    return None


def sources(node: fx.Node) -> dict[str, str]:
    """The attention specialisation a lowered node launches (file name -> source)."""
    q, _k, _v, bias, mask, scale, causal = node.args[:7]
    spec = tmpl.AttnKernelSpec(
        bias is not None, mask is not None, bool(causal), val(q).dtype == torch.float32, scale > 0
    )
    return {f"{spec.name}.py": tmpl.render(spec)}


@TRITON.implements(torch.ops.tcomp.attention.default, check=check, sources=sources)
def attention(
    q, k, v, bias, mask, scale: float, causal: bool, *, target: Target | str, config: AttnConfig | None = None
) -> torch.Tensor:
    """``tcomp.attention`` on the generated kernel, tiled for ``target`` (``config`` forces one
    launch configuration; else the autotuner picks on a GPU)."""
    return flash(q, k, v, bias, mask, scale, causal, target=target, config=config)


def flash(
    q, k, v, bias, mask, scale: float, causal: bool, *, target: Target | str, config: AttnConfig | None = None,
    kv_len: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The flash kernel launch: ``tcomp.attention``, and with ``kv_len`` (int tensor, one length or
    one per batch row, read on the device) the prefill of ``tcomp.cached_attention``, whose keys
    past ``kv_len`` are never loaded."""
    tgt = get_target(target)
    b, h, n, d = q.shape
    hk, m, dv = k.shape[1], k.shape[2], v.shape[3]
    # (b, n, h, dv) in memory, like SDPA's flash output: the usual transpose(1, 2).reshape(b, n, h * dv)
    # that follows is then a view, not a copy (canonicalize turned views after attention into reshapes)
    out = torch.empty((b, n, h, dv), dtype=q.dtype, device=q.device).transpose(1, 2)
    if n == 0 or b * h == 0:
        return out
    k, v = k.to(q.dtype), v.to(q.dtype)  # a copy only where the dtypes differ
    spec = tmpl.AttnKernelSpec(
        bias is not None, mask is not None, bool(causal), q.dtype == torch.float32, scale > 0, kv_len=kv_len is not None
    )
    kern = kernel_for(spec, interpreting())
    full = (b, h, n, m)
    bias_t = bias.expand(full) if bias is not None else q
    mask_t = mask.expand(full) if mask is not None else q
    lens = () if kv_len is None else lens_arg(kv_len, q.device)

    def launch(cfg: AttnConfig) -> torch.Tensor:
        grid = (cdiv(n, cfg.block_m), b * h)
        kern[grid](
            q, k, v, bias_t, mask_t, out,
            *q.stride(), *k.stride(), *v.stride(),
            *strides4(bias, full), *strides4(mask, full), *out.stride(),
            *lens,
            h, n, m, d, dv, h // hk, float(scale) * tmpl.LOG2E,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=pow2(d), BLOCK_DV=pow2(dv),
            EVEN_M=n % cfg.block_m == 0, EVEN_D=d == pow2(d) and dv == pow2(dv),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
        return out

    if config is not None:
        return launch(config)
    default = attention_config(tgt, d, n, m, interpreting())
    if autotune.enabled():
        cands = _candidates_by_name(default)
        # the number of (batch, head) programs is part of the key: tiles timed on the small verification
        # batch are the wrong choice for a large one (measured: ViT-B/16 at batch 256, 5x slower)
        key = f"attn|{spec.name}|bh{pow2(b * h)}|d{d}|dv{dv}|n{pow2(n)}|m{pow2(m)}|{q.dtype}|{tgt.name}"
        best = autotune.lookup(key)
        if best is None and not torch.cuda.is_current_stream_capturing():  # never time inside a capture
            best = autotune.choose(key, {c: functools.partial(launch, cfg) for c, cfg in cands.items()}, _name(default))
        if best is not None:
            return launch(cands.get(best, default))
    launch_fitting((spec, d, dv, q.dtype, tgt.name), fallbacks(default), launch)
    return out


def lens_arg(kv_len: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, int]:
    """kv_len on the kernel's device and the stride between batch rows (0: one length for all)."""
    lens = kv_len.reshape(-1)
    if lens.device != device:
        lens = lens.to(device)
    return lens, (0 if lens.numel() == 1 else lens.stride(0))


def _name(c: AttnConfig) -> str:
    return f"{c.block_m}x{c.block_n}_w{c.num_warps}_s{c.num_stages}"


@functools.cache
def _candidates_by_name(default: AttnConfig) -> dict[str, AttnConfig]:
    return {_name(c): c for c in candidates(default)}


def candidates(default: AttnConfig) -> list[AttnConfig]:
    """What the autotuner times on a GPU: the target's default, its smaller fallbacks, and the
    FlashAttention-2 tile shapes around it."""
    extra = [
        AttnConfig(128, 64, 4, 3),
        AttnConfig(128, 128, 8, 2),
        AttnConfig(64, 64, 4, 3),
        AttnConfig(64, 128, 4, 3),
    ]
    return list(dict.fromkeys([default, *extra, *fallbacks(default)]))


_fitting: dict[tuple, list[AttnConfig]] = {}  # first config that fit in shared memory, per kernel shape


def launch_fitting(key: tuple, ladder: list, launch) -> None:
    """Launch the first config of ``ladder`` that fits in shared memory, and remember it under
    ``key`` so later calls start there (a config too large raises Triton's OutOfResources)."""
    ladder = _fitting.get(key) or ladder
    for i, cfg in enumerate(ladder):
        try:
            launch(cfg)
        except Exception as exc:  # triton.runtime.errors.OutOfResources, imported lazily
            if type(exc).__name__ != "OutOfResources" or i == len(ladder) - 1:
                raise
            continue
        _fitting[key] = [cfg]
        return


def fallbacks(cfg: AttnConfig) -> list[AttnConfig]:
    """``cfg`` then smaller ones, for kernels (fp32, masks, bias) whose tiles do not fit in shared memory."""
    ladder = [cfg, AttnConfig(cfg.block_m, min(cfg.block_n, 64), cfg.num_warps, 2),
              AttnConfig(64, 64, 4, 2), AttnConfig(64, 32, 4, 1), AttnConfig(32, 32, 4, 1)]  # fmt: skip
    return list(dict.fromkeys(ladder))
