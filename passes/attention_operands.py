"""What canonicalize reads off an attention site's operands and masks (helper of ``canonicalize``).

* :func:`peel_scale`: a constant factor the model applies to q or to k before the product
  (``(q * d**-0.5) @ k^T``, ``q @ (k / sqrt(d))^T``, ``d**-0.25`` on each) is the op's ``scale``, not
  part of its operands;
* :func:`take_causal`: a mask that is the causal triangle (a bool ``tril`` of ones, ``arange[:, None]
  >= arange[None, :]``, a registered buffer sliced to the length, or an additive 0/-inf form),
  alone or and-ed with other masks, is the op's ``causal`` flag, not a mask tensor. Recognised by
  evaluating the mask at several sizes (:func:`tcomp.mask_probe.causal_form`).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from tcomp.graph import add_node, val
from tcomp.mask_probe import causal_form
from tcomp.passes.attention_chain import MASK_FLOOR, constant_value

aten = torch.ops.aten

_SCALE = {aten.mul.Tensor: 1, aten.mul.Scalar: 1, aten.div.Tensor: -1, aten.div.Scalar: -1}
# ops a constant factor commutes with: the factor may be applied before or after them
_LAYOUT = {
    aten.transpose.int,
    aten.permute.default,
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.expand.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.clone.default,
    aten.contiguous.default,
    aten.repeat_interleave.self_int,
}
_VIEWS = {aten.view.default, aten._unsafe_view.default}
_AND = {aten.logical_and.default, aten.bitwise_and.Tensor, aten.__and__.Tensor}


def _factor(n: fx.Node, gm: fx.GraphModule) -> tuple[fx.Node, float] | None:
    """``(x, c)`` when ``n`` is ``x * c`` or ``x / c`` with a constant scalar ``c`` that changes
    neither the shape nor the dtype of ``x``; else None."""
    if n.op != "call_function" or n.target not in _SCALE or len(n.args) != 2:
        return None
    a, b = n.args
    x, c = (a, b) if isinstance(a, fx.Node) and constant_value(a, gm) is None else (b, a)
    if _SCALE[n.target] < 0 and x is not a:
        return None  # c / x is no scale
    c = constant_value(c, gm)
    if not isinstance(x, fx.Node) or c is None or c == 0 or c != c or abs(c) == float("inf"):
        return None
    vx, vn = val(x), val(n)
    if not isinstance(vx, torch.Tensor) or vx.dtype != vn.dtype or tuple(vx.shape) != tuple(vn.shape):
        return None
    return x, (c if _SCALE[n.target] > 0 else 1.0 / c)


def peel_scale(x: fx.Node, gm: fx.GraphModule) -> tuple[fx.Node, float]:
    """``(x', c)`` with ``x = c * x'``: the constant factors applied to an operand of the QK product,
    found through the layout ops between them (transposes, views, head repeats). The layout ops
    above the innermost factor are built again on the unscaled tensor at the graph's insertion
    point; the model's own nodes are left as they are for their other readers."""
    steps, factor, node = [], 1.0, x  # steps: the layout ops met on the way down, and the factors
    inner, rebuild = x, 0  # the tensor under the innermost factor; how many steps lie above it
    while node.op == "call_function":
        peeled = _factor(node, gm)
        if peeled is not None:
            node, c = peeled
            factor *= c
            steps.append(None)
            inner, rebuild = node, len(steps)
        elif node.target in _LAYOUT:
            steps.append(node)
            node = node.args[0]
        else:
            break
    for op in reversed(steps[:rebuild]):
        if op is not None:  # a view of the product's operand may not be one of the unscaled tensor
            target = aten.reshape.default if op.target in _VIEWS else op.target
            inner = add_node(gm.graph, target, (inner, *op.args[1:]), dict(op.kwargs))
    return inner, (factor if rebuild else 1.0)


def _conjuncts(m: fx.Node) -> list[fx.Node]:
    if m.op == "call_function" and m.target in _AND:
        return [c for a in m.args[:2] for c in _conjuncts(a)]
    return [m]


def take_causal(
    gm: fx.GraphModule, masks: list, biases: list, sizes: tuple, memo: dict | None = None
) -> tuple[list, list, bool]:
    """``(masks, biases, causal)``: the bool masks (split at ``&``) and additive masks that are the
    causal triangle for scores of ``sizes`` (queries, keys) removed, and whether one was. ``memo``
    keeps the answers across the sites of one graph (layers share their masks)."""
    memo = {} if memo is None else memo

    def is_causal(m: fx.Node) -> bool:
        key = (m, *map(str, sizes))
        if key not in memo:
            memo[key] = causal_form(gm, m, sizes, floor=MASK_FLOOR) == "causal"
        return memo[key]

    causal, kept_masks = False, []
    for mask in masks:
        parts = _conjuncts(mask)
        rest = [p for p in parts if not is_causal(p)]
        causal |= len(rest) < len(parts)
        kept_masks += rest if len(rest) < len(parts) else [mask]
    kept_biases = [b for b in biases if not is_causal(b)]
    return kept_masks, kept_biases, causal or len(kept_biases) < len(biases)
