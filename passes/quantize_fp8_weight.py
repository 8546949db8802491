"""``quantize.fp8_weight``: weight-only fp8 linear layers -- e4m3 weights with a scale per output
channel, activations kept in the model's dtype (op ``tcomp.linear_fp8w``; format: tcomp/quant.py).

The same bytes as int8 weight-only (one per weight), a different trade: e4m3 keeps 4 significant
bits of every weight whatever its size (relative error <= 2^-4), where int8's uniform steps
(amax/127) lose small weights of a row with one large one. Unlike ``quantize.fp8`` nothing needs fp8
tensor cores: the Triton kernels decode the bytes with integer ops (any GPU, and the interpreter),
so every target gets the rewrite; on a CPU target the reference op runs (dequantize, then linear).

Guarantee (BOUNDED): every dequantized weight is within ``max(2^-4 |w|, 2^-10 s[n])`` of the
original (checked here, site by site; a site that fails is skipped), so each output element of a
quantized linear moves by at most ``sum_k |x[m, k]| max(2^-4 |w[n, k]|, 2^-10 s[n])`` on any input;
``tolerance`` is the end-to-end relative-error guard the pipeline checks (0.2, as ``quantize.fp8``'s,
whose error adds the activations' rounding to this one). tests/passes/test_quantize.py checks the
propagated bound on random MLPs in float64. Selection and its defaults: ``tcomp/passes/quant_common.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcomp.contract import Contract, Exactness, PassResult
from tcomp.passes.quant_common import Selection, quantize_linears
from tcomp.quant import fp8_error_ratio, quantize_fp8
from tcomp.registry import PassContext, register_pass

CONTRACT = Contract(
    Exactness.BOUNDED,
    bound="|dequantized w - w| <= max(2^-4 |w|, 2^-10 s) per weight; "
    "|dy[m,n]| <= sum_k |x[m,k]| max(2^-4 |w[n,k]|, 2^-10 s[n]) per linear",
    tolerance=0.2,
    preconditions="finite weights; tolerance is the end-to-end relative-error guard the pipeline checks",
)


def _encode(w: torch.Tensor):
    q, s = quantize_fp8(w, "row")
    return {"qweight": q, "scale": s}, (), 0.5 * fp8_error_ratio(w, q, s)


@dataclass(frozen=True)
class Fp8WeightOptions(Selection):
    """Options of ``quantize.fp8_weight``: which linear layers (the format has no options)."""


@register_pass("quantize.fp8_weight", CONTRACT, options=Fp8WeightOptions, after=("canonicalize",))
def quantize_fp8_weight(gm, opts: Fp8WeightOptions, ctx: PassContext) -> PassResult:
    """Weight-only fp8 (e4m3, per-channel scale) for the selected linear layers; activations unchanged."""
    return quantize_linears(gm, "fp8w", torch.ops.tcomp.linear_fp8w.default, _encode, selection=opts.selection)
