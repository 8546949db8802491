"""``quantize.fp8``: fp8 linear layers — e4m3 weights (scale per output channel or per tensor) and
e4m3 activations quantized at run time with the same granularity (per token or per tensor), fp32
accumulation, rescaled by ``sx * sw`` (op ``tcomp.fp8_linear``; format: tcomp/quant.py).

Targets: e4m3 matmuls need fp8 tensor cores (compute capability 8.9+: Hopper, Ada). The pass asks
its ``target`` option, else the plan's target (``optimize(target=...)``; none under a bare
``run_pipeline``): a target whose peak-rate table lists an fp8 rate gets the rewrite — of the built-in ones h100 and
h200, and any registered later with an fp8 rate (no name list to keep up to date); any other
(``cpu``, ``a100``, or none given) gets none, and every site is reported skipped with the reason,
because there fp8 would only be simulated — slower and less accurate than the model as it is.
``force=True`` rewrites anyway (the reference op simulates e4m3 exactly on any device: fidelity
measurements on a CPU, bench/quant_minilm.py). On the GPU the Triton backend runs the op on its
fp8 kernels (backends/triton/quant_fp8.py) and keeps it on the reference elsewhere.

Contract (EMPIRICAL): e4m3 keeps 4 significant bits, so activations move by up to 2^-4 of their
value and there is no useful worst-case bound on a deep model's outputs; what is promised is the
relative L2 error of the outputs to the float64 reference on the given inputs, at most
``tolerance`` = 0.2 (else the pipeline rolls the pass back). Measured on CPU (the reference op):
one random linear 0.036 (sqrt(2) x e4m3's rms rounding error of ~0.026 per tensor, as expected),
the test zoo's tiny BERT 0.018, real MiniLM (34 linears, per row) 0.078 with embedding cosine
>= 0.9969 (bench/quant_minilm.py). 0.2 is ~2.5x the real model's error (room for deeper stacks,
where it grows about as sqrt(depth)) and the same guard as W8A8's, while refusing anything
grossly wrong. Checked site by site (a site that fails is skipped): every dequantized weight within ``max(2^-4 |w|, 2^-10 s)`` of the original; the
sites report ``max_weight_error_in_scales`` as half the ratio to that bound (<= 1/2 when it holds).
Selection and its defaults: ``tcomp/passes/quant_common.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcomp.contract import Contract, Exactness, PassResult
from tcomp.graph import module_path
from tcomp.options import option
from tcomp.passes.quant_common import Selection, quantize_linears, select
from tcomp.quant import FP8_GRANULARITIES, fp8_error_ratio, quantize_fp8
from tcomp.registry import PassContext, register_pass
from tcomp.targets import Target, get_target

CONTRACT = Contract(
    Exactness.EMPIRICAL,
    metric="relative L2 error of the outputs to the float64 reference on the given inputs",
    tolerance=0.2,
    preconditions="finite weights; per weight |w_hat - w| <= max(2^-4 |w|, 2^-10 s) (checked); "
    "a target with fp8 tensor cores (h100, h200) or force=True",
)


def fp8_unsupported(target: str | Target | None) -> str | None:
    """Why ``target`` gets no fp8 rewrite, in a few words (None: it has fp8 tensor cores)."""
    if target is None:
        return "the pass was not told the target"
    tgt = get_target(target)
    return None if "fp8" in tgt.peak_flops else f"target {tgt.name!r} has no fp8 tensor cores"


WHY = (
    "e4m3 matmuls need fp8 tensor cores (Hopper: h100, h200); elsewhere fp8 would only be simulated, "
    "slower and less accurate than the model as it is. Optimize for such a target (target='h200'), "
    "give the pass its target (('quantize.fp8', {'target': 'h200'})) or force=True to simulate e4m3 anyway"
)


def _encode(granularity: str):
    def encode(w: torch.Tensor):
        q, s = quantize_fp8(w, granularity)
        return {"qweight": q, "scale": s}, (granularity,), 0.5 * fp8_error_ratio(w, q, s)

    return encode


@dataclass(frozen=True)
class Fp8Options(Selection):
    """Options of ``quantize.fp8``."""

    granularity: str = option(
        "row", choices=FP8_GRANULARITIES, help="scales per output channel and token ('row') or one per tensor"
    )
    target: str | None = option(
        None, help="the target whose tensor cores decide (default: the plan's target)"
    )
    force: bool = option(False, help="rewrite even without fp8 tensor cores (e4m3 simulated by the reference op)")

    def __post_init__(self) -> None:
        if self.target is not None:
            get_target(self.target)  # an unknown name fails when the plan is built


@register_pass("quantize.fp8", CONTRACT, options=Fp8Options, after=("canonicalize",))
def quantize_fp8_pass(gm, opts: Fp8Options, ctx: PassContext) -> PassResult:
    """fp8 e4m3 weights and dynamic e4m3 activations (per row or per tensor) for the selected linears,
    on targets with fp8 tensor cores (h100, h200) or when forced."""
    sel = opts.selection
    why_not = fp8_unsupported(opts.target or ctx.target)
    if why_not and not opts.force:
        chosen, sites = select(gm, **sel)
        reason = f"{why_not}: {WHY}"
        sites += [{"site": module_path(n) or n.name, "status": "skipped", "reason": reason} for n in chosen]
        return PassResult(gm, notes=[f"fp8: rewrote nothing: {reason}"], sites=sites)
    fmt = f"fp8_{opts.granularity}"
    result = quantize_linears(
        gm, fmt, torch.ops.tcomp.fp8_linear.default, _encode(opts.granularity), selection=sel,
        rounds_activations=True,
    )  # fmt: skip
    if why_not:
        result.notes.insert(0, f"fp8 forced ({why_not}): e4m3 is simulated by the reference op")
    return result
