"""The Triton backend: generated kernels for the dialect.

Each kernel module of this package declares the dialect ops it implements with
``@TRITON.implements(op, check=..., sources=...)``; the backend imports them all the first time it
lowers a graph (``Backend.discover``), so adding a kernel touches only its own file. Kernels are
generated as source text, cached on disk (``codegen``) and launched with the plan's target, whose
properties (``Target.hopper``, shared memory) choose tiles, warps and stages. Without a GPU they
run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors, which is how CI tests them.

A plan runs five named steps for this backend, each verified like a pass:
``lower.triton`` (dialect ops to their kernels), ``fuse.triton.projections`` (a decode step's
linears that share their input, q/k/v and gate/up, to one GEMV), ``fuse.triton.gemm_epilogue`` (linear layers with
their activation / residual epilogue to one GEMM launch), ``fuse.triton.rotary`` (the rotate-half
RoPE chain to one kernel; in a decoder step the q and k rotations and the K/V cache writes in one) and ``fuse.triton.elementwise`` (elementwise chains, and the LayerNorm or
RMSNorm ending one, to generated fused kernels).
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
                "fuse.triton.projections",
                fuse_projections,
                FP_EQUIVALENT,
                description="linears of a decode step that read the same input (q/k/v, gate/up) to one "
                "GEMV over their concatenated weights",
            ),
            Pass(
                "fuse.triton.gemm_epilogue",
                partial(fuse_gemm_epilogues, target=tgt.name),
                FP_EQUIVALENT,
                description="linear + activation / residual add to one generated GEMM launch "
                "(or cuBLAS, whichever the autotuner measures faster)",
            ),
            Pass(
                "fuse.triton.rotary",
                fuse_rotary,
                FP_EQUIVALENT,
                description="rotary position embedding (the rotate-half chain) to one generated kernel per tensor; "
                "in a decode step the key rotation and the K/V cache writes are one launch",
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


def _fusion_step(gm: fx.GraphModule, run, done: str) -> PassResult:
    """A fusion step's record: ``run(gm)`` returns the rewrite count (and notes); ``done`` formats
    the count. Nothing runs where Triton cannot (the reason is the note)."""
    result = PassResult(gm)
    if (reason := _why_not_fuse(gm)) is not None:
        result.notes.append(f"nothing fused ({reason})")
        return result
    out = run(gm)
    result.rewrites, notes = out if isinstance(out, tuple) else (out, [])
    result.notes += [done.format(result.rewrites), *notes]
    return result


def fuse_gemm_epilogues(gm: fx.GraphModule, target: Target | str) -> PassResult:
    """Step ``fuse.triton.gemm_epilogue``: every ``linear -> activation -> residual add`` chain
    becomes one ``gemm.linear`` launch on ``target``. FP_EQUIVALENT (the epilogue runs in fp32
    registers instead of after a rounded store)."""
    from tcomp.backends.triton.gemm import fuse_epilogues

    return _fusion_step(
        gm, partial(fuse_epilogues, target=target), "fused the epilogue of {} linear layers into GEMM launches"
    )


def fuse_projections(gm: fx.GraphModule) -> PassResult:
    """Step ``fuse.triton.projections``: few-row linears sharing their input become one linear
    over the concatenated weights and a slice per original output. FP_EQUIVALENT."""
    from tcomp.backends.triton.projections import fuse

    return _fusion_step(gm, fuse, "joined {} linears into the projection that shares their input")


def fuse_rotary(gm: fx.GraphModule) -> PassResult:
    """Step ``fuse.triton.rotary``: each ``x*cos + rotate_half(x)*sin`` becomes one generated
    kernel launch. FP_EQUIVALENT (one rounding instead of three)."""
    from tcomp.backends.triton.rotary import fuse, fuse_cache_writes

    def run(g: fx.GraphModule) -> tuple[int, list[str]]:
        found = fuse(g)
        writes = fuse_cache_writes(g)
        return found, [f"{writes} of them write the rotated keys (and the values beside them) straight into the KV cache"] if writes else []

    return _fusion_step(gm, run, "fused {} rotary embeddings into generated kernels")


def fuse_elementwise(gm: fx.GraphModule) -> PassResult:
    """Step ``fuse.triton.elementwise``: elementwise chains (and a LayerNorm or RMSNorm ending one)
    become one generated kernel each. FP_EQUIVALENT (intermediates stay in fp32 registers)."""
    from tcomp.backends.triton.fusion import fuse

    return _fusion_step(gm, fuse, "fused {} elementwise/norm groups into generated kernels")
