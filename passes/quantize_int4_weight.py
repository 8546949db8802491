"""``quantize.int4_weight``: weight-only int4 linear layers, group-wise (``group`` = 32/64/128
along K) asymmetric, two codes per byte.

Guarantee (BOUNDED): every dequantized weight is within ``s[n, g] / 2`` of the original (checked
here, site by site; a site that fails, or whose K is not a multiple of ``group``, is skipped), so
each output element moves by at most ``sum_k |x[m, k]| * s[n, k // group] / 2`` on any input.
Selection and its defaults: ``tcomp/passes/quant_common.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from tcomp.contract import Contract, Exactness, PassResult
from tcomp.options import option
from tcomp.passes.quant_common import Selection, quantize_linears
from tcomp.quant import INT4_GROUPS, dequantize_int4, max_weight_error, quantize_int4
from tcomp.registry import PassContext, register_pass

CONTRACT = Contract(
    Exactness.BOUNDED,
    bound="|dequantized w - w| <= s/2 per weight (s per group of K); |dy[m,n]| <= sum_k |x[m,k]| s[n,k/g]/2",
    tolerance=0.5,
    preconditions="finite weights, K % group == 0; tolerance is the end-to-end relative-error guard",
)


def _encode(w: torch.Tensor, group: int):
    p, s, z = quantize_int4(w, group)
    return (
        {"packed": p, "scales": s, "zeros": z},
        (group,),
        max_weight_error(w, dequantize_int4(p, s, z, group), s),
    )


@dataclass(frozen=True)
class Int4WeightOptions(Selection):
    """Options of ``quantize.int4_weight``."""

    group: int = option(128, choices=INT4_GROUPS, help="weights per scale and zero point, along K")


@register_pass("quantize.int4_weight", CONTRACT, options=Int4WeightOptions, after=("canonicalize",))
def quantize_int4_weight(gm, opts: Int4WeightOptions, ctx: PassContext) -> PassResult:
    """Weight-only int4 (group-wise asymmetric, packed) for the selected linear layers."""
    enc = functools.partial(_encode, group=opts.group)
    return quantize_linears(
        gm, f"int4w_g{opts.group}", torch.ops.tcomp.linear_int4w.default, enc, selection=opts.selection
    )
