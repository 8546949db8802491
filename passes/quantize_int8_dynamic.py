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

import torch

from tcomp.passes.quant_common import DEFAULT_SKIP, quantize_linears
from tcomp.passes.quantize_int8_weight import _encode
from tcomp.pipeline import Contract, Exactness, PassResult, register_pass

CONTRACT = Contract(
    Exactness.BOUNDED,
    bound=(
        "|dw| <= sw/2, |dx| <= sx/2 per element; "
        "|dy[m,n]| <= sum_k |x[m,k]| sw[n]/2 + |w[n,k]| sx[m]/2 + sx[m] sw[n]/4 per linear"
    ),
    tolerance=0.2,
    preconditions="finite weights and activations; tolerance is the end-to-end relative-error guard",
)


@register_pass("quantize.int8_dynamic", CONTRACT, after=("canonicalize",))
def quantize_int8_dynamic(
    gm,
    include: tuple[str, ...] = ("*",),
    skip: tuple[str, ...] = DEFAULT_SKIP,
    types: tuple[str, ...] = ("Linear",),
    skip_first_last: bool = True,
) -> PassResult:
    """W8A8 (per-channel int8 weights, per-token dynamic int8 activations) for the selected linears."""
    sel = dict(include=tuple(include), skip=tuple(skip), types=tuple(types), skip_first_last=skip_first_last)
    return quantize_linears(
        gm, "w8a8", torch.ops.tcomp.linear_w8a8.default, _encode, selection=sel, rounds_activations=True
    )
