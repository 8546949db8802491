"""``quantize.int4_awq``: int4 weights (the ``quantize.int4_weight`` format and dialect op) with
activation-aware per-input-channel scales (AWQ, Lin et al. 2024), chosen on calibration data.

Per selected linear layer ``y = x W^T`` the calibration batches give, for each input channel j, the
mean magnitude ``a_j = mean |x_j|`` and the second moment ``H = sum X^T X``. For each ``alpha`` of
the grid, ``s = a^alpha`` (normalised by ``sqrt(max s * min s)``; channels whose magnitude is below
1e-5 of the largest count as that floor) scales the weight's columns up where the inputs are large:
``W diag(s)`` is rounded to int4 exactly as ``quantize.int4_weight`` does (same groups, scales and
zero points), and the layer-output error
``||x W^T - (x / s) Q(W diag s)^T||`` on the calibration inputs (through ``H``) is measured. The
candidate with the smallest error wins; plain round-to-nearest (``alpha = 0`` without clipping) is
always among the candidates, so the chosen weights are never worse than ``quantize.int4_weight``'s
on the calibration inputs. With ``clip``, the best alpha is tried once more with each group's
range allowed to shrink (``quantize.int4_gptq``'s clipping search, weighted by the scaled inputs'
energy ``H_jj / s_j^2``), kept when it lowers the error (only at that alpha: the search costs 17
roundings per group, 60x the rest on MiniLM when run at every alpha). Statistics come from one run of the float graph (all layers at once, as
AWQ takes its inputs from the unquantized model).

The rewritten graph computes ``x * (1/s)`` (an ``aten.mul`` by a constant buffer in x's dtype, the
stored ``1/s`` being the one the weights were scaled by) followed by ``tcomp.linear_int4w``: no new
dialect op, so every backend that lowers both runs it. ``1/s`` is not folded into a preceding
norm's weight (a norm feeding q, k and v would need one ``s`` shared by the three layers).

Contract: EMPIRICAL. The scaled weights are within ``s/2`` of ``W diag(s)``, not of ``W``, so the
per-weight bound of ``quantize.int4_weight`` does not hold; what is checked is the model's relative
output error vs float64 (``tolerance``). Each site's report row carries the chosen ``alpha``, the
layer-output errors on the calibration inputs for AWQ and for round-to-nearest and their ratio.
Selection and its defaults: ``tcomp/passes/quant_common.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch import Tensor

from tcomp.calibration import record_inputs
from tcomp.contract import Contract, Exactness, PassResult
from tcomp.errors import PassError
from tcomp.graph import add_buffer, add_node, copy_source_meta, module_path, val
from tcomp.options import option
from tcomp.passes.quant_common import Selection, select, swap_linear, weight_of
from tcomp.quant import (
    INT4_GROUPS,
    dequantize_int4,
    int4_codes,
    int4_scale_zero,
    int4_scale_zero_clipped,
    pack_int4,
    scale_dtype,
)
from tcomp.registry import PassContext, register_pass

LINEAR_INT4 = torch.ops.tcomp.linear_int4w.default
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0
FLOOR = 1e-5  # channel magnitudes below FLOOR * the largest count as that (dead channels)


@dataclass(frozen=True)
class AwqOptions(Selection):
    """Options of ``quantize.int4_awq`` (it needs the run's calibration batches)."""

    group: int = option(128, choices=INT4_GROUPS, help="weights per scale and zero point, along K")
    alphas: tuple[float, ...] = option(
        ALPHAS,
        range=(0.0, 1.0),
        help="exponents tried for the scales s = mean|x|^alpha (0: round-to-nearest)",
    )
    clip: bool = option(
        True, help="at the best alpha, also try shrinking each group's range (clipping search)"
    )
    tolerance: float = option(
        0.5, gt=0.0, help="the contract's threshold on the model's relative output error"
    )

    def __post_init__(self) -> None:
        if not self.alphas:
            raise ValueError("alphas=() leaves nothing to choose; give at least one exponent in [0, 1]")

    def check(self, ctx: PassContext) -> None:
        if ctx.calibration is None:
            raise PassError(
                "quantize.int4_awq needs calibration data: tcomp.optimize(..., calibration=batches) "
                "with inputs like the model's (or use quantize.int4_weight, which needs none)"
            )


def contract(opts: AwqOptions) -> Contract:
    return Contract(
        Exactness.EMPIRICAL,
        metric="relative error of the model outputs vs float64 (int4 weights with activation-aware scales)",
        tolerance=opts.tolerance,
        preconditions="calibration batches representative of the inputs; K % group == 0",
    )


class AwqChoice(NamedTuple):
    """The chosen int4 weights of one layer: ``x W^T ~ (x * inv_scale) @ dequantize_int4(packed,
    scales, zeros)^T``; ``alpha`` and ``clipped`` say which candidate won; errors are relative
    layer-output errors on the calibration inputs (``rtn_error``: round-to-nearest int4)."""

    packed: Tensor
    scales: Tensor
    zeros: Tensor
    inv_scale: Tensor
    alpha: float
    clipped: bool
    error: float
    rtn_error: float


def awq_scales(absmean: Tensor, alpha: float) -> Tensor:
    """``s = a^alpha / sqrt(max * min)`` (float64) of per-channel magnitudes ``a`` (K,); channels
    below ``FLOOR`` of the largest count as that; all ones when every magnitude is 0 or alpha is 0."""
    a = absmean.detach().to(torch.float64)
    top = a.max()
    if alpha == 0 or not top > 0:
        return torch.ones_like(a)
    s = a.clamp_min(top * FLOOR) ** alpha
    return s / (s.max() * s.min()).sqrt()


def awq_int4(
    w: Tensor,
    h: Tensor,
    absmean: Tensor,
    group: int,
    alphas: tuple[float, ...] = ALPHAS,
    clip: bool = False,
    x_dtype: torch.dtype | None = None,
) -> AwqChoice:
    """Activation-aware int4 weights for ``w`` (N, K) given the inputs' second moment ``h`` (K, K)
    and mean magnitude per channel ``absmean`` (K,). ``1/s`` is stored in ``x_dtype`` (default
    ``w``'s) and the weight scaled by exactly that stored value, so ``(x * inv_scale) @ W'^T``
    equals ``x W^T`` in real arithmetic before rounding. Scales and zero points in the dtype
    ``quantize.int4_weight`` stores for ``w``."""
    n, k = w.shape
    if group not in INT4_GROUPS or k % group:
        raise ValueError(f"int4 needs K ({k}) divisible by the group size ({group}, one of {INT4_GROUPS})")
    w64, h64 = w.detach().to(torch.float64), h.to(torch.float64)
    sdt, xdt = scale_dtype(w.dtype), x_dtype or w.dtype
    energy = h64.diagonal()
    ref = ((w64 @ h64) * w64).sum().clamp_min(0).sqrt().clamp_min(1e-300)

    def candidate(alpha: float, clipped: bool):
        inv = (1.0 / awq_scales(torch.as_tensor(absmean), alpha)).to(xdt)
        ws = w64 / inv.to(torch.float64)  # W diag(s), s the inverse of the stored multiplier
        g = ws.reshape(n, k // group, group)
        if clipped:
            imp = (energy * inv.to(torch.float64) ** 2).reshape(1, k // group, group)
            s, z = int4_scale_zero_clipped(g, sdt, imp)
        else:
            s, z = int4_scale_zero(g, sdt)
        packed, zeros = pack_int4(int4_codes(g, s, z).reshape(n, k)), z.to(torch.uint8)
        diff = dequantize_int4(packed, s, zeros, group) * inv.to(torch.float64) - w64
        err = float(((diff @ h64) * diff).sum().clamp_min(0).sqrt() / ref)
        return AwqChoice(packed, s, zeros, inv, float(alpha), clipped, err, 0.0)

    rtn = candidate(0.0, False)
    best = rtn
    for alpha in alphas:
        c = rtn if alpha == 0 else candidate(alpha, False)
        best = c if c.error < best.error else best
    if clip:  # the clipping search (17 range shrinks per group) at the best alpha only
        c = candidate(best.alpha, True)
        best = c if c.error < best.error else best
    return best._replace(rtn_error=rtn.error)


@register_pass("quantize.int4_awq", contract, options=AwqOptions, after=("canonicalize",))
def quantize_int4_awq(gm: fx.GraphModule, opts: AwqOptions, ctx: PassContext) -> PassResult:
    """Int4 weights with activation-aware per-channel scales chosen on calibration data (EMPIRICAL)."""
    group = opts.group
    nodes, sites = select(gm, **opts.selection)
    result = PassResult(gm, sites=sites)
    todo = []
    for lin in nodes:
        w = weight_of(gm, lin)
        if w.shape[1] % group:
            path = module_path(lin) or lin.name
            sites.append(
                {"site": path, "status": "skipped", "reason": f"K ({w.shape[1]}) % group ({group}) != 0"}
            )
        else:
            todo.append(lin)
    stats = _statistics(gm, todo, ctx.calibration)
    for idx, lin in enumerate(todo):
        path = module_path(lin) or lin.name
        w, x = weight_of(gm, lin), lin.args[0]
        xv = val(x)
        x_dtype = xv.dtype if isinstance(xv, Tensor) and xv.is_floating_point() else w.dtype
        h, absmean = stats[lin.name]
        c = awq_int4(w, h, absmean, group, opts.alphas, opts.clip, x_dtype)
        prefix = f"_tcomp_int4awq_g{group}_{idx}"
        with gm.graph.inserting_before(lin):
            inv = add_buffer(gm, f"{prefix}_inv_scale", c.inv_scale, like=x)
            scaled = add_node(gm.graph, torch.ops.aten.mul.Tensor, (x, inv))
        copy_source_meta(scaled, lin)
        lin.args = (scaled, *lin.args[1:])
        fmt = f"int4_awq_g{group}"
        swap_linear(
            gm, lin, LINEAR_INT4, {"packed": c.packed, "scales": c.scales, "zeros": c.zeros}, (group,),
            prefix, {"format": fmt, "source": path, "alpha": c.alpha},
        )  # fmt: skip
        sites.append({
            "site": path, "status": "quantized", "format": fmt, "alpha": c.alpha, "clipped": c.clipped,
            "awq_output_error": c.error, "rtn_output_error": c.rtn_error,
            "error_ratio_vs_rtn": c.error / c.rtn_error if c.rtn_error > 0 else 1.0,
        })  # fmt: skip
        result.rewrites += 1
    gm.recompile()
    done = [s for s in sites if s["status"] == "quantized"]
    if done:
        gain = sum(s["rtn_output_error"] for s in done) / max(sum(s["awq_output_error"] for s in done), 1e-30)
        alphas = sorted({s["alpha"] for s in done})
        result.notes.append(
            f"int4 AWQ g{group}: quantized {len(done)} linear layers, skipped {len(sites) - len(done)}; "
            f"alphas chosen {alphas}; layer-output error on the calibration inputs {gain:.2f}x lower than "
            "round-to-nearest (summed)"
        )
    result.notes += [f"{s['site']}: skipped ({s['reason']})" for s in sites if s["status"] == "skipped"]
    return result


def _statistics(
    gm: fx.GraphModule, nodes: list[fx.Node], calibration: Any
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per linear node: (``X^T X`` float64 (K, K), mean ``|x|`` per input channel float64 (K,)) of
    the inputs it sees on the calibration batches (one run of the graph as it is)."""
    acc: dict[str, list] = {}

    def observe(name: str, args: tuple) -> None:
        x = args[0].detach().to(torch.float64).reshape(-1, args[0].shape[-1]).cpu()
        if not torch.isfinite(x).all():
            raise PassError(f"quantize.int4_awq: the calibration inputs of {paths[name]} have NaN/inf")
        h, a, rows = acc.get(name, (0, 0, 0))
        acc[name] = [h + x.T @ x, a + x.abs().sum(0), rows + x.shape[0]]

    paths = {n.name: module_path(n) or n.name for n in nodes}
    if nodes:
        record_inputs(gm, nodes, calibration, observe)
    missing = [paths[n.name] for n in nodes if n.name not in acc or acc[n.name][2] == 0]
    if missing:
        raise PassError(
            f"quantize.int4_awq: the calibration batches never reached the linear layers {missing}"
        )
    return {name: (h, a / rows) for name, (h, a, rows) in acc.items()}
