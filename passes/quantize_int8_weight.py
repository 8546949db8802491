"""``quantize.int8_weight``: weight-only int8 linear layers (per output channel, symmetric).

Guarantee (BOUNDED): every dequantized weight is within ``s[n] / 2`` of the original (checked
here, site by site; a site that fails is skipped), so each output element of a quantized linear
moves by at most ``sum_k |x[m, k]| * s[n] / 2`` (the ``|x| @ |dW|.T`` row sums) on any input ``x``;
through a network the per-layer errors propagate through Lipschitz activations. Activations stay
in the model's dtype. Selection and its defaults: ``tcomp/passes/quant_common.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcomp.contract import Contract, Exactness, PassResult
from tcomp.passes.quant_common import Selection, quantize_linears
from tcomp.quant import dequantize_int8, max_weight_error, quantize_int8
from tcomp.registry import PassContext, register_pass

CONTRACT = Contract(
    Exactness.BOUNDED,
    bound="|dequantized w - w| <= s/2 per weight; |dy[m,n]| <= sum_k |x[m,k]| s[n]/2 per linear",
    tolerance=0.15,
    preconditions="finite weights; tolerance is the end-to-end relative-error guard the pipeline checks",
)


def _encode(w: torch.Tensor):
    q, s = quantize_int8(w)
    return {"qweight": q, "scale": s}, (), max_weight_error(w, dequantize_int8(q, s), s)


@dataclass(frozen=True)
class Int8WeightOptions(Selection):
    """Options of ``quantize.int8_weight``: which linear layers (the format has no options)."""


@register_pass("quantize.int8_weight", CONTRACT, options=Int8WeightOptions, after=("canonicalize",))
def quantize_int8_weight(gm, opts: Int8WeightOptions, ctx: PassContext) -> PassResult:
    """Weight-only int8 (per-channel symmetric) for the selected linear layers."""
    return quantize_linears(gm, "int8w", torch.ops.tcomp.linear_int8w.default, _encode, selection=opts.selection)
