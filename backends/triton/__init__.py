"""The Triton backend: generated kernels for the dialect (``tcomp.attention`` so far).

Kernels are generated as source text (``attention_template.render``), cached on disk and launched
from ``runtime``. Without a GPU they run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU
tensors, which is how CI tests them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import torch
import torch.fx as fx

from tcomp.backend import Backend, register_backend
from tcomp.graph import val


class TritonBackend(Backend):
    name = "triton"

    def __init__(self) -> None:
        super().__init__()
        import tcomp.dialect  # noqa: F401 - the dialect must be registered to key on it
        from tcomp.backends.triton import linear_attention as lin
        from tcomp.backends.triton import quant_gemm, runtime

        self.impls[torch.ops.tcomp.attention.default] = (_check_attention, runtime.attention)
        self.impls[torch.ops.tcomp.linear_attention.default] = (_check_attention, lin.linear_attention)
        self.impls[torch.ops.tcomp.linear_int8w.default] = (quant_gemm.check, quant_gemm.linear_int8w)
        self.impls[torch.ops.tcomp.linear_int4w.default] = (quant_gemm.check, quant_gemm.linear_int4w)
        from tcomp.backends.triton import quant_w8a8  # W8A8 (quantize.int8_dynamic)

        self.impls[torch.ops.tcomp.linear_w8a8.default] = (quant_gemm.check, quant_w8a8.linear_w8a8)
        from tcomp.backends.triton import quant_w1  # W1A16 (binarize)

        self.impls[torch.ops.tcomp.linear_w1.default] = (quant_gemm.check, quant_w1.linear_w1)
        from tcomp.backends.triton import quant_w1a1  # W1A1 (binarize, activations=True)

        self.impls[torch.ops.tcomp.linear_w1a1.default] = (quant_gemm.check, quant_w1a1.linear_w1a1)
        from tcomp.backends.triton import quant_fp8  # fp8 e4m3 (quantize.fp8), capability >= 8.9

        self.impls[torch.ops.tcomp.fp8_linear.default] = (quant_fp8.check, quant_fp8.linear_fp8)
        from tcomp.backends.triton import token_merge  # tokens.merge: the merge as one kernel

        self.impls[torch.ops.tcomp.token_merge.default] = (token_merge.check, token_merge.token_merge)

    def available(self) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install 'tcomp[triton]')"
        return None

    def launch_kwargs(self, target: str) -> dict[str, Any]:
        return {"target": target}

    def lower(self, gm: fx.GraphModule, target: str = ""):
        """Attention sites to the generated attention kernel, linear layers with an epilogue
        (activation, residual) to the fused GEMM, then elementwise chains (and the LayerNorm ending
        one) to generated fused kernels."""
        from tcomp.backends.triton.codegen import interpreting
        from tcomp.backends.triton.fusion import fuse
        from tcomp.backends.triton.gemm import fuse_epilogues

        result = super().lower(gm, target)
        devices = {
            v.device.type
            for n in gm.graph.nodes
            if n.op == "placeholder" and isinstance(v := val(n), torch.Tensor)
        }
        if self.available() is None and ("cuda" in devices or interpreting()):
            gemms = fuse_epilogues(gm, target)
            result.rewrites += gemms
            result.notes.append(f"fused the epilogue of {gemms} linear layers into GEMM launches")
            fused, notes = fuse(gm)
            result.rewrites += fused
            result.notes += [f"fused {fused} elementwise/LayerNorm groups into generated kernels"] + notes
        return result


def _check_attention(node: fx.Node) -> str | None:
    from tcomp.backends.triton.codegen import interpreting
    from tcomp.backends.triton.runtime import SUPPORTED_DTYPES

    q, k, v = (val(a) for a in node.args[:3])
    if any(x is None for x in (q, k, v)) or q.dim() != 4:
        return "needs 4-D q/k/v with known shapes"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} (supported: fp16, bf16, fp32)"
    if q.device.type != "cuda" and not interpreting():
        return f"tensors on {q.device.type}: Triton needs CUDA (or TRITON_INTERPRET=1)"
    d, dv = q.shape[-1], v.shape[-1]
    if not (isinstance(d, int) and isinstance(dv, int)) or max(d, dv) > 256:
        return "head dim must be static and at most 256"
    return None


def kernel_sources(gm: fx.GraphModule) -> dict[str, str]:
    """Source text of every generated kernel a lowered graph launches (file name -> text): the
    attention specialisations its attention nodes select and the kernels of its fused groups."""
    from tcomp.backends.triton import attention_template as tmpl
    from tcomp.backends.triton import fusion, gemm, quant_gemm, quant_w1, runtime
    from tcomp.backends.triton import linear_attention as lin

    out = {}
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        if n.target is runtime.attention:
            q, _k, _v, bias, mask, scale, causal = n.args[:7]
            spec = tmpl.AttnKernelSpec(
                bias is not None, mask is not None, bool(causal), val(q).dtype == torch.float32, scale > 0
            )
            out[f"{spec.name}.py"] = tmpl.render(spec)
        elif n.target is gemm.linear:
            x, _w, bias, residual, act = n.args[:5]
            spec = gemm.tmpl.GemmSpec(
                bias is not None, act, residual is not None, val(x).dtype == torch.float32
            )
            out[f"{spec.name}.py"] = gemm.tmpl.render(spec)
            if n.kwargs.get("target") in ("h100", "h200"):  # the autotuner may pick the Hopper variant
                tma = dataclasses.replace(spec, tma=True)
                out[f"{tma.name}.py"] = gemm.tmpl.render(tma)
        elif n.target is lin.linear_attention:
            out.update(lin.sources(n))

        elif found := quant_gemm.kernel_sources_of(n) or quant_w1.kernel_sources_of(n):
            out.update(found)
        elif (found := _quant_low_bit_source(n)) is not None:
            out[found[0]] = found[1]
        elif n.target is fusion.run_fused:
            src, name = fusion.render(n.args[0])
            out[f"{name}.py"] = src
    return out


def _quant_low_bit_source(n: fx.Node) -> tuple[str, str] | None:
    from tcomp.backends.triton import quant_fp8, quant_w1a1, quant_w8a8, token_merge

    return (
        token_merge.kernel_name_and_source(n)
        or quant_w1a1.kernel_name_and_source(n)
        or quant_w8a8.kernel_name_and_source(n)
        or quant_fp8.kernel_name_and_source(n)
    )


register_backend(TritonBackend())
