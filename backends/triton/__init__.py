"""The Triton backend: generated kernels for the dialect.

Each kernel module of this package declares the dialect ops it implements with
``@TRITON.implements(op, check=..., sources=...)``; the backend imports them all the first time it
lowers a graph (``Backend.discover``), so adding a kernel touches only its own file. Kernels are
generated as source text, cached on disk (``codegen``) and launched with the plan's target, whose
properties (``Target.hopper``, shared memory) choose tiles, warps and stages. Without a GPU they
run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors, which is how CI tests them.

A plan runs three named steps for this backend, each verified like a pass:
``lower.triton`` (dialect ops to their kernels), ``fuse.triton.gemm_epilogue`` (linear layers with
their activation / residual epilogue to one GEMM launch) and ``fuse.triton.elementwise``
(elementwise chains, and the LayerNorm ending one, to generated fused kernels).
"""

from __future__ import annotations

import importlib.util
from functools import partial
from typing import Any

import torch
import torch.fx as fx

from tcomp.backend import Backend, register_backend
from tcomp.contract import FP_EQUIVALENT, PassResult
from tcomp.graph import val
from tcomp.registry import Pass
from tcomp.targets import Target, get_target


class TritonBackend(Backend):
    name = "triton"
    package = "tcomp.backends.triton"

    def available(self) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install 'tcomp[triton]')"
        return None

    def launch_kwargs(self, target: str) -> dict[str, Any]:
        return {"target": target}

    def steps(self, target: Target | str) -> list[Pass]:
        """``lower.triton``, then the two fusions (they act only where tensors are on CUDA, or
        under the interpreter)."""
        tgt = get_target(target)
        return [
            *super().steps(tgt),
            Pass(
                "fuse.triton.gemm_epilogue",
                partial(fuse_gemm_epilogues, target=tgt.name),
                FP_EQUIVALENT,
                description="linear + activation / residual add to one generated GEMM launch "
                "(or cuBLAS, whichever the autotuner measures faster)",
            ),
            Pass(
                "fuse.triton.elementwise",
                fuse_elementwise,
                FP_EQUIVALENT,
                description="elementwise chains (and the LayerNorm ending one) to generated fused kernels",
            ),
        ]


TRITON = register_backend(TritonBackend())


def _why_not_fuse(gm: fx.GraphModule) -> str | None:
    from tcomp.backends.triton.codegen import interpreting

    if (reason := TRITON.available()) is not None:
        return reason
    devices = {
        v.device.type
        for n in gm.graph.nodes
        if n.op == "placeholder" and isinstance(v := val(n), torch.Tensor)
    }
    if "cuda" in devices or interpreting():
        return None
    return f"inputs on {', '.join(sorted(devices)) or 'no device'}: Triton needs CUDA (or TRITON_INTERPRET=1)"


def fuse_gemm_epilogues(gm: fx.GraphModule, target: Target | str) -> PassResult:
    """Step ``fuse.triton.gemm_epilogue``: every ``linear -> activation -> residual add`` chain
    becomes one ``gemm.linear`` launch on ``target``. FP_EQUIVALENT (the epilogue runs in fp32
    registers instead of after a rounded store)."""
    from tcomp.backends.triton.gemm import fuse_epilogues

    result = PassResult(gm)
    if (reason := _why_not_fuse(gm)) is not None:
        result.notes.append(f"nothing fused ({reason})")
        return result
    result.rewrites = fuse_epilogues(gm, target)
    result.notes.append(f"fused the epilogue of {result.rewrites} linear layers into GEMM launches")
    return result


def fuse_elementwise(gm: fx.GraphModule) -> PassResult:
    """Step ``fuse.triton.elementwise``: elementwise chains (and a LayerNorm ending one) become
    one generated kernel each. FP_EQUIVALENT (intermediates stay in fp32 registers)."""
    from tcomp.backends.triton.fusion import fuse

    result = PassResult(gm)
    if (reason := _why_not_fuse(gm)) is not None:
        result.notes.append(f"nothing fused ({reason})")
        return result
    result.rewrites, notes = fuse(gm)
    result.notes += [f"fused {result.rewrites} elementwise/LayerNorm groups into generated kernels", *notes]
    return result
