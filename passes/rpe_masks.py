"""Masks that a model writes into an additive attention bias, taken back out as a bool mask so that
what is left of the bias can be proven Toeplitz (``attention.rpe_fft``): ``masked_fill(b, ~keep,
fill)``, ``where(keep, b, fill)`` and ``b + where(keep, 0, fill)`` (Hugging Face's eager padding
mask), with ``fill <= -65504`` (zero weight after the softmax's max subtraction) and ``keep`` an AND of
key-only (…, 1, n) and query-only (…, n, 1) factors."""

from __future__ import annotations

import torch
import torch.fx as fx

from tcomp.graph import shape
from tcomp.passes.feature_maps import _factors, graph_call

aten = torch.ops.aten

MASK_FILL = torch.finfo(torch.float16).min  # fills at or below this are -inf after the softmax max


def _huge_negative(v) -> bool:
    return isinstance(v, (int, float)) and float(v) <= MASK_FILL


def _zero(x) -> bool:
    """``x`` is the number 0 or a node that makes zeros (``zeros``, ``zeros_like``, ``full(.., 0)``)."""
    if isinstance(x, (int, float)):
        return float(x) == 0.0
    if not isinstance(x, fx.Node):
        return False
    if x.target is aten.full.default:
        return _zero(x.args[1])
    return x.target in (aten.zeros.default, aten.zeros_like.default)


def _separable(mask: fx.Node) -> bool:
    """The bool mask is an AND of key-only (…, 1, n) and query-only (…, n, 1) factors."""
    for f in _factors(mask):
        s = shape(f) or ()
        if not (len(s) <= 1 or s[-2] == 1 or s[-1] == 1):
            return False
    return True


def _masked(b):
    """``(x, m, negated)`` when ``b`` writes a huge negative fill where a bool mask says so:
    ``masked_fill(x, m, fill)`` (keep = ~m, ``negated``) or ``where(m, x, fill)`` (keep = m); else None."""
    if not isinstance(b, fx.Node) or b.op != "call_function":
        return None
    if b.target is aten.masked_fill.Scalar and isinstance(b.args[1], fx.Node) and _huge_negative(b.args[2]):
        return b.args[0], b.args[1], True
    if b.target is aten.where.ScalarOther and isinstance(b.args[0], fx.Node) and _huge_negative(b.args[2]):
        return b.args[1], b.args[0], False
    return None


def peel_masks(gm: fx.GraphModule, node: fx.Node, bias: fx.Node, mask):
    """Masks written into the bias come back out as a bool mask, so that the rest of the bias can
    be Toeplitz: ``masked_fill(b, ~keep, fill)``, ``where(keep, b, fill)`` and ``b + where(keep, 0,
    fill)`` (HF T5's eager mask) with a fill <= -65504 and ``keep`` an AND of key-only and
    query-only factors (padding masks; HF builds them as (B, 1, n, n)). Copies and ``contiguous``
    in between are looked through. Returns the bias left and the site's mask."""
    keeps = []
    while isinstance(bias, fx.Node):
        if bias.target in (aten.contiguous.default, aten.clone.default):
            bias = bias.args[0]
            continue
        hit = _masked(bias)
        if hit is None and bias.target is aten.add.Tensor:
            for x, y in (bias.args[:2], bias.args[1::-1]):
                m = _masked(y)
                if m is not None and _zero(m[0]) and isinstance(x, fx.Node):
                    hit = (x, *m[1:])
                    break
        if hit is None or not _separable(hit[1]):
            break
        bias = hit[0]
        keeps.append(hit[1:])
    if not keeps:
        return bias, mask
    with gm.graph.inserting_before(node):
        call = graph_call(gm.graph)
        for m, negate in keeps:
            keep = call(aten.logical_not.default, m) if negate else m
            mask = keep if mask is None else call(aten.logical_and.default, mask, keep)
    return bias, mask
