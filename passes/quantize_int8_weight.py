"""``quantize.int8_weight``: weight-only int8 linear layers (per output channel, symmetric).

Guarantee (BOUNDED): every dequantized weight is within ``s[n] / 2`` of the original (checked
here, site by site; a site that fails is skipped), so each output element of a quantized linear
moves by at most ``sum_k |x[m, k]| * s[n] / 2`` (the ``|x| @ |dW|.T`` row sums) on any input ``x``;
through a network the per-layer errors propagate through Lipschitz activations. Activations stay
in the model's dtype. Selection and its defaults: ``tcomp/passes/quant_common.py``.
"""

from __future__ import annotations

import torch

from tcomp.passes.quant_common import DEFAULT_SKIP, quantize_linears
from tcomp.pipeline import Contract, Exactness, PassResult, register_pass
from tcomp.quant import dequantize_int8, max_weight_error, quantize_int8

CONTRACT = Contract(
    Exactness.BOUNDED,
    bound="|dequantized w - w| <= s/2 per weight; |dy[m,n]| <= sum_k |x[m,k]| s[n]/2 per linear",
    tolerance=0.15,
    preconditions="finite weights; tolerance is the end-to-end relative-error guard the pipeline checks",
)


def _encode(w: torch.Tensor):
    q, s = quantize_int8(w)
    return {"qweight": q, "scale": s}, (), max_weight_error(w, dequantize_int8(q, s), s)


@register_pass("quantize.int8_weight", CONTRACT, after=("canonicalize",))
def quantize_int8_weight(
    gm,
    include: tuple[str, ...] = ("*",),
    skip: tuple[str, ...] = DEFAULT_SKIP,
    types: tuple[str, ...] = ("Linear",),
    skip_first_last: bool = True,
) -> PassResult:
    """Weight-only int8 (per-channel symmetric) for the selected linear layers."""
    sel = dict(include=tuple(include), skip=tuple(skip), types=tuple(types), skip_first_last=skip_first_last)
    return quantize_linears(gm, "int8w", torch.ops.tcomp.linear_int8w.default, _encode, selection=sel)
