"""``quantize.int8_dynamic``: W8A8 linear layers — int8 weights (per output channel, symmetric) and
int8 activations quantized per token at run time (symmetric, ``sx[m] = max_k |x[m, k]| / 127``),
int32 accumulation, rescaled by ``sx[m] * sw[n]`` (op ``tcomp.linear_w8a8``).

Guarantee (BOUNDED): every dequantized weight is within ``sw[n] / 2`` of the original (checked here,
site by site; a site that fails is skipped) and every dequantized activation within ``sx[m] / 2``;
the integer sums are exact, so with ``x^ = x + dx``, ``w^ = w + dw`` each output element moves by
at most ``sum_k |x[m,k]| sw[n]/2 + |w[n,k]| sx[m]/2 + sx[m] sw[n]/4`` (plus the final float rounding)
on any input. Selection and its defaults: ``tcomp/passes/quant_common.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcomp.contract import Contract, Exactness, PassResult
from tcomp.passes.quant_common import Selection, quantize_linears
from tcomp.passes.quantize_int8_weight import _encode
from tcomp.registry import PassContext, register_pass

CONTRACT = Contract(
    Exactness.BOUNDED,
    bound=(
        "|dw| <= sw/2, |dx| <= sx/2 per element; "
        "|dy[m,n]| <= sum_k |x[m,k]| sw[n]/2 + |w[n,k]| sx[m]/2 + sx[m] sw[n]/4 per linear"
    ),
    tolerance=0.2,
    preconditions="finite weights and activations; tolerance is the end-to-end relative-error guard",
)


@dataclass(frozen=True)
class Int8DynamicOptions(Selection):
    """Options of ``quantize.int8_dynamic``: which linear layers (the format has no options)."""


@register_pass("quantize.int8_dynamic", CONTRACT, options=Int8DynamicOptions, after=("canonicalize",))
def quantize_int8_dynamic(gm, opts: Int8DynamicOptions, ctx: PassContext) -> PassResult:
    """W8A8 (per-channel int8 weights, per-token dynamic int8 activations) for the selected linears."""
    return quantize_linears(
        gm, "w8a8", torch.ops.tcomp.linear_w8a8.default, _encode, selection=opts.selection, rounds_activations=True
    )
