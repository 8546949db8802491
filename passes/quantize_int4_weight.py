"""``quantize.int4_weight``: weight-only int4 linear layers, group-wise (``group`` = 32/64/128
along K) asymmetric, two codes per byte.

Guarantee (BOUNDED): every dequantized weight is within ``s[n, g] / 2`` of the original (checked
here, site by site; a site that fails, or whose K is not a multiple of ``group``, is skipped), so
each output element moves by at most ``sum_k |x[m, k]| * s[n, k // group] / 2`` on any input.
Selection and its defaults: ``tcomp/passes/quant_common.py``.
"""

from __future__ import annotations

import functools

import torch

from tcomp.passes.quant_common import DEFAULT_SKIP, quantize_linears
from tcomp.pipeline import Contract, Exactness, PassResult, register_pass
from tcomp.quant import INT4_GROUPS, dequantize_int4, max_weight_error, quantize_int4

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


@register_pass("quantize.int4_weight", CONTRACT, after=("canonicalize",))
def quantize_int4_weight(
    gm,
    group: int = 128,
    include: tuple[str, ...] = ("*",),
    skip: tuple[str, ...] = DEFAULT_SKIP,
    types: tuple[str, ...] = ("Linear",),
    skip_first_last: bool = True,
) -> PassResult:
    """Weight-only int4 (group-wise asymmetric, packed) for the selected linear layers."""
    if group not in INT4_GROUPS:
        raise ValueError(f"quantize.int4_weight: group must be one of {INT4_GROUPS}, got {group}")
    sel = dict(include=tuple(include), skip=tuple(skip), types=tuple(types), skip_first_last=skip_first_last)
    enc = functools.partial(_encode, group=group)
    return quantize_linears(gm, f"int4w_g{group}", torch.ops.tcomp.linear_int4w.default, enc, selection=sel)
