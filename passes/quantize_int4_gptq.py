"""``quantize.int4_gptq``: int4 weights (the ``quantize.int4_weight`` format and dialect op) chosen
by GPTQ (Frantar et al. 2023) on calibration data instead of round-to-nearest.

Per selected linear layer, with ``H = sum X^T X`` over the inputs ``X`` that layer sees on the
calibration batches, the columns of ``W`` (along K) are quantized one by one and each column's
rounding error is spread over the columns not yet quantized through the inverse Hessian's Cholesky
factor, minimising ``||X W^T - X Q^T||`` rather than ``|W - Q|``. Scales and zero points of a group
come from the error-updated weights when its first column is reached. Layers are done in graph
order and each sees the inputs produced by the layers quantized before it (``sequential=True``).

Contract: EMPIRICAL. GPTQ moves weights by more than ``s / 2`` on purpose, so the per-weight bound
of ``quantize.int4_weight`` does not hold; what is checked is the model's relative output error
vs float64 (``tolerance``). Each site's report row carries the layer-output error on the
calibration inputs for GPTQ and for round-to-nearest, so the gain is visible per layer.
Selection and its defaults: ``tcomp/passes/quant_common.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from tcomp.calibration import record_inputs
from tcomp.contract import Contract, Exactness, PassResult
from tcomp.errors import PassError
from tcomp.graph import module_path
from tcomp.options import option
from tcomp.passes.quant_common import Selection, select, swap_linear, weight_of
from tcomp.quant import (
    INT4_GROUPS,
    dequantize_int4,
    int4_codes,
    int4_scale_zero,
    int4_scale_zero_clipped,
    pack_int4,
    quantize_int4,
    scale_dtype,
)
from tcomp.registry import PassContext, register_pass

LINEAR_INT4 = torch.ops.tcomp.linear_int4w.default


@dataclass(frozen=True)
class GptqOptions(Selection):
    """Options of ``quantize.int4_gptq`` (it needs the run's calibration batches)."""

    group: int = option(128, choices=INT4_GROUPS, help="weights per scale and zero point, along K")
    damp: float = option(0.01, gt=0.0, lt=1.0, help="Hessian dampening, a fraction of its mean diagonal")
    act_order: bool = option(True, help="quantize columns in order of decreasing Hessian diagonal")
    sequential: bool = option(True, help="each layer sees the inputs the already-quantized layers produce")
    clip: bool = option(True, help="choose each group's range by a clipping search instead of min/max")
    tolerance: float = option(0.5, gt=0.0, help="the contract's threshold on the model's relative output error")

    def check(self, ctx: PassContext) -> None:
        if ctx.calibration is None:
            raise PassError(
                "quantize.int4_gptq needs calibration data: tcomp.optimize(..., calibration=batches) "
                "with inputs like the model's (or use quantize.int4_weight, which needs none)"
            )


def contract(opts: GptqOptions) -> Contract:
    return Contract(
        Exactness.EMPIRICAL,
        metric="relative error of the model outputs vs float64 (int4 weights chosen by GPTQ)",
        tolerance=opts.tolerance,
        preconditions="calibration batches representative of the inputs; K % group == 0",
    )


@register_pass("quantize.int4_gptq", contract, options=GptqOptions, after=("canonicalize",))
def quantize_int4_gptq(gm: fx.GraphModule, opts: GptqOptions, ctx: PassContext) -> PassResult:
    """Int4 weights chosen by GPTQ on the context's calibration batches (EMPIRICAL)."""
    calibration, group, sequential = ctx.calibration, opts.group, opts.sequential
    nodes, sites = select(gm, **opts.selection)
    result = PassResult(gm, sites=sites)
    hessians = {} if sequential else _hessians(gm, nodes, calibration)
    for idx, lin in enumerate(nodes):
        path = module_path(lin) or lin.name
        w = weight_of(gm, lin)
        if w.shape[1] % group:
            sites.append(
                {"site": path, "status": "skipped", "reason": f"K ({w.shape[1]}) % group ({group}) != 0"}
            )
            continue
        h = _hessians(gm, [lin], calibration)[lin.name] if sequential else hessians[lin.name]
        packed, s, z = gptq_int4(w, h, group, opts.damp, opts.act_order, clip=opts.clip)
        row = {"site": path, "status": "quantized", "format": f"int4_gptq_g{group}"}
        row |= _layer_errors(w, h, group, dequantize_int4(packed, s, z, group))
        swap_linear(
            gm, lin, LINEAR_INT4, {"packed": packed, "scales": s, "zeros": z}, (group,),
            f"_tcomp_int4gptq_g{group}_{idx}", {"format": f"int4_gptq_g{group}", "source": path},
        )  # fmt: skip
        gm.recompile()
        sites.append(row)
        result.rewrites += 1
    done = [s for s in sites if s["status"] == "quantized"]
    if done:
        gain = sum(s["rtn_output_error"] for s in done) / max(
            sum(s["gptq_output_error"] for s in done), 1e-30
        )
        result.notes.append(
            f"int4 GPTQ g{group}: quantized {len(done)} linear layers, skipped {len(sites) - len(done)}; "
            f"layer-output error on the calibration inputs {gain:.2f}x lower than round-to-nearest (summed)"
        )
    result.notes += [f"{s['site']}: skipped ({s['reason']})" for s in sites if s["status"] == "skipped"]
    return result


def _hessians(gm: fx.GraphModule, nodes: list[fx.Node], calibration: Any) -> dict[str, Tensor]:
    """``X^T X`` (float64, K x K) of the inputs each linear node sees on the calibration batches."""
    acc: dict[str, Tensor] = {}

    def observe(name: str, args: tuple) -> None:
        x = args[0].detach().to(torch.float64).reshape(-1, args[0].shape[-1]).cpu()
        acc[name] = acc.get(name, 0) + x.T @ x

    record_inputs(gm, nodes, calibration, observe)
    missing = [n.name for n in nodes if n.name not in acc]
    if missing:
        raise PassError(f"quantize.int4_gptq: the calibration batches never reached {missing}")
    return acc


def gptq_int4(
    w: Tensor,
    h: Tensor,
    group: int,
    damp: float = 0.01,
    act_order: bool = False,
    block: int = 128,
    clip: bool = False,
):
    """(packed, scales, zeros) in the ``tcomp.quant`` int4 layout for weight ``w`` (N, K) given the
    input second moment ``h`` (K, K). Columns in blocks of ``block``, the rest of the matrix updated
    once per block (lazy batch updates). ``act_order``: columns in order of decreasing ``H_jj``
    (inputs with the most energy first), with each group's scale and zero point fixed beforehand
    from the original weights (groups stay contiguous along K, as the format stores them); else
    in K order, each group's parameters from the error-updated weights at its first column.
    ``clip``: each group's range may shrink (``tcomp.quant.int4_scale_zero_clipped``), chosen by the
    rounding error weighted by ``H_jj``, the energy of the input each weight multiplies."""
    n, k = w.shape
    h = h.to(torch.float64).clone()
    dead = h.diagonal() == 0  # inputs that are always zero: any weight there is free
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * h.diagonal().mean())
    sdt = scale_dtype(w.dtype)
    energy = h.diagonal().clone()  # H_jj: the weight of column j's rounding error on the output

    def params(groups: Tensor, imp: Tensor) -> tuple[Tensor, Tensor]:
        return int4_scale_zero_clipped(groups, sdt, imp) if clip else int4_scale_zero(groups, sdt)

    wt = w.detach().float().T.contiguous()  # rows are W's columns (contiguous)
    wt[dead] = 0.0
    scales = torch.empty(k // group, n, dtype=sdt)
    zeros = torch.empty(k // group, n, dtype=torch.float64)
    perm = torch.arange(k)
    if act_order:
        perm = torch.argsort(h.diagonal(), descending=True, stable=True)
        groups = wt.double().reshape(k // group, group, n).transpose(1, 2)
        scales[:], zeros[:] = params(groups, energy.reshape(k // group, 1, group))
        wt, h = wt[perm], h[perm][:, perm]
    # H^-1 = L^-T L^-1 from H's Cholesky factor (torch.cholesky_inverse is ~30x slower on CPU), then
    # the upper Cholesky factor of H^-1: row i holds how column i's error moves the later columns
    eye = torch.eye(k, dtype=torch.float64)
    linv = torch.linalg.solve_triangular(torch.linalg.cholesky(h), eye, upper=False)
    u = torch.linalg.cholesky(linv.T @ linv, upper=True).float()
    codes = torch.empty(k, n, dtype=torch.uint8)
    block = max(block // group, 1) * group
    for b0 in range(0, k, block):  # the error feedback runs in float32, as GPTQ's does
        b1 = min(b0 + block, k)
        wb, ub = wt[b0:b1].clone(), u[b0:b1, b0:b1]
        err = torch.empty_like(wb)
        for i in range(b1 - b0):
            col = int(perm[b0 + i])
            g = col // group
            if not act_order and col % group == 0:
                scales[g], zeros[g] = params(wb[i : i + group].T.double(), energy[col : col + group])
            s64, z = scales[g].double(), zeros[g]
            q = int4_codes(wb[i].double(), scales[g], z)
            codes[col] = q
            e = ((wb[i].double() - (q.double() - z) * s64) / ub[i, i].double()).float()
            wb[i:] -= ub[i, i:, None] * e[None, :]
            err[i] = e
        wt[b1:] -= u[b0:b1, b1:].T @ err
    return pack_int4(codes.T), scales.T.contiguous(), zeros.T.to(torch.uint8)


def _layer_errors(w: Tensor, h: Tensor, group: int, deq: Tensor) -> dict[str, float]:
    """Relative layer-output error ``sqrt(tr(D H D^T) / tr(W H W^T))`` on the calibration inputs for
    ``deq`` and for round-to-nearest int4 of the same group size."""
    w64, h64 = w.detach().to(torch.float64), h.to(torch.float64)

    def err(d: Tensor) -> float:
        diff = d - w64
        return float(
            ((diff @ h64) * diff).sum().clamp_min(0).sqrt()
            / ((w64 @ h64) * w64).sum().sqrt().clamp_min(1e-300)
        )

    rtn = dequantize_int4(*quantize_int4(w, group), group)
    return {"gptq_output_error": err(deq), "rtn_output_error": err(rtn)}
