"""Launching the generated weight-only quantized GEMM (``quant_template``) for the dialect ops
``tcomp.linear_int8w`` and ``tcomp.linear_int4w`` (same semantics, see tcomp/ops.py)."""

from __future__ import annotations

import functools

import torch
import torch.fx as fx

from tcomp.backends.triton import quant_template as tmpl
from tcomp.backends.triton.codegen import interpreting, load
from tcomp.graph import val

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def kernel_for(spec: tmpl.QuantGemmSpec, interp: bool):
    return load(tmpl.render(spec), spec.name)


def spec_of(fmt: str, x_dtype: torch.dtype, bias) -> tmpl.QuantGemmSpec:
    return tmpl.QuantGemmSpec(fmt, bias is not None, x_dtype == torch.float32)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, 1 << (max(n, 1) - 1).bit_length())


def _blocks(m: int, n: int, k: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): few large programs in the interpreter;
    on a GPU a small M (decode, GEMV-like) takes a 16-row tile and wide N/K tiles."""
    if interpreting():
        return min(64, _pow2(m)), min(64, _pow2(n)), min(64, _pow2(k)), 4, 1
    if m <= 16:
        return 16, 64, 128, 4, 4
    return min(128, _pow2(m)), 128, 64, 8, 3


def _launch(fmt, x, w, s, z, group, bias):
    n = w.shape[0]
    k = w.shape[1] * (2 if fmt == "int4" else 1)
    a = x.reshape(-1, k)
    m = a.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out.view(*x.shape[:-1], n)
    bm, bn, bk, warps, stages = _blocks(m, n, k)
    if fmt == "int4":
        bk = min(bk, group)  # a K tile never straddles a group (K % group == 0)
    sg = s.stride(1) if s.dim() == 2 else 0
    zz = z if z is not None else s
    grid = (triton_cdiv(m, bm) * triton_cdiv(n, bn),)
    kernel_for(spec_of(fmt, x.dtype, bias), interpreting())[grid](
        a, w, s, zz, bias if bias is not None else a, out, m, n, k,
        *a.stride(), *w.stride(), s.stride(0), sg, zz.stride(0), *out.stride(),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, GROUP=group,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out.view(*x.shape[:-1], n)


def linear_int8w(x, qweight, scale, bias=None, target: str = "h200"):
    """``tcomp.linear_int8w`` on the generated kernel."""
    return _launch("int8", x, qweight, scale, None, 1, bias)


def linear_int4w(x, packed, scales, zeros, group: int, bias=None, target: str = "h200"):
    """``tcomp.linear_int4w`` on the generated kernel."""
    return _launch("int4", x, packed, scales, zeros, group, bias)


def check(node: fx.Node) -> str | None:
    """Why a quantized linear node cannot run on the kernel (None: it can)."""
    x, w = val(node.args[0]), val(node.args[1])
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        return "needs known shapes"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} (supported: fp16, bf16, fp32)"
    if x.device.type != "cuda" and not interpreting():
        return f"tensors on {x.device.type}: Triton needs CUDA (or TRITON_INTERPRET=1)"
    if not all(isinstance(d, int) for d in w.shape):
        return "weight shape must be static"
    return None


def kernel_name_and_source(node: fx.Node) -> tuple[str, str] | None:
    """(file name, source) of the kernel a lowered quantized linear node launches, else None."""
    if node.target is linear_int8w:
        fmt, bias = "int8", node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
    elif node.target is linear_int4w:
        fmt, bias = "int4", node.args[5] if len(node.args) > 5 else node.kwargs.get("bias")
    else:
        return None
    spec = spec_of(fmt, val(node.args[0]).dtype, bias)
    return f"{spec.name}.py", tmpl.render(spec)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
