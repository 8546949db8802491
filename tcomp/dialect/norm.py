"""``tcomp.rms_norm``: root-mean-square normalisation over the last dim (Llama, Mistral, Qwen, T5).

``tcomp.rms_norm(x, weight, eps) -> y``:

* ``x``: (..., D); ``weight``: (D,) or None; ``eps``: added to the mean square.
* ``y = x / sqrt(mean(x^2, -1) + eps) * weight``, computed in float32 (float64 for float64 ``x``)
  and cast once to ``x``'s dtype. Hugging Face's LlamaRMSNorm rounds to ``x``'s dtype before the
  weight multiply and ``aten.rms_norm`` after it: both equal ``y`` in real arithmetic, so
  canonicalizing either is FP_EQUIVALENT.

Canonical forms (``canonical_forms``, applied by canonicalize): ``aten.rms_norm`` (``nn.RMSNorm``,
``F.rms_norm``) and the decomposed chain Hugging Face decoders write,
``w * (x32 * rsqrt(mean(x32.pow(2), -1, keepdim=True) + eps)).to(dtype)`` with ``x32 = x.float()``
(casts optional, the weight on either side of the product, any 1-D tensor of D values as weight).
"""

from __future__ import annotations

import sympy
import torch
import torch.fx as fx
from torch import Tensor
from torch.fx import Node

from tcomp.cost import Cost, SymbolMap, SymLike, fake, sym_numel, sym_shape
from tcomp.dialect.base import define
from tcomp.dialect.common import work_dtype
from tcomp.graph import add_node, arg, copy_source_meta, module_path, remove_dead, val

aten = torch.ops.aten


@torch.library.custom_op("tcomp::rms_norm", mutates_args=())
def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """Reference RMSNorm over the last dim (see the module docstring for the contract)."""
    work = work_dtype(x)
    xf = x.to(work)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(work)
    return y.to(x.dtype)


@rms_norm.register_fake
def _rms_norm_fake(x, weight, eps):
    return torch.empty_like(x)


# -- cost ------------------------------------------------------------------------------------------

# FLOPs of RMSNorm per element: the square and the sum (2), the product with 1/rms (1), with the
# weight (1, when given); per row: the division by D, + eps and the reciprocal square root (3).
RMS_NORM_ELEMENT_FLOPS = 3
RMS_NORM_ROW_FLOPS = 3


def rms_norm_cost(
    numel: SymLike,
    channels: SymLike,
    elem_bytes: int,
    *,
    has_weight: bool = True,
    weight_bytes: int | None = None,
) -> Cost:
    """RMSNorm of ``numel`` elements in rows of ``channels``: per element
    :data:`RMS_NORM_ELEMENT_FLOPS` (+1 for the weight), per row :data:`RMS_NORM_ROW_FLOPS`. Bytes: x
    read once, the weight (``channels`` values of ``weight_bytes``, default ``elem_bytes``) read once,
    the output (x's shape and dtype) written once."""
    e, c = sympy.sympify(numel), sympy.sympify(channels)
    flops = e * (RMS_NORM_ELEMENT_FLOPS + int(has_weight)) + e / c * RMS_NORM_ROW_FLOPS
    wbytes = c * (elem_bytes if weight_bytes is None else weight_bytes) if has_weight else 0
    return Cost(sympy.expand(flops), sympy.expand(2 * e * elem_bytes + wbytes))


def _rms_norm_node_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    a = RMS_NORM.bind(node)
    x, w = fake(a["x"]), fake(a["weight"])
    if x is None:
        return None
    xs = sym_shape(x, symbols)
    return rms_norm_cost(
        sym_numel(xs), xs[-1], x.dtype.itemsize, has_weight=w is not None,
        weight_bytes=None if w is None else w.dtype.itemsize,
    )  # fmt: skip


# -- canonical forms -------------------------------------------------------------------------------


def _call(n: object, *targets: object) -> bool:
    return isinstance(n, Node) and n.op == "call_function" and n.target in targets


def _cast_source(n: object) -> Node | None:
    """The input of a dtype cast (``x.to(dtype)`` / ``_to_copy(x, dtype=...)``), else None."""
    if _call(n, aten.to.dtype) or (_call(n, aten._to_copy.default) and set(n.kwargs) <= {"dtype"}):
        return n.args[0]
    return None


def _other(n: Node, one: object) -> object:
    a, b = n.args[0], n.args[1]
    return b if a is one else a if b is one else None


def _mean_square_of(n: object) -> Node | None:
    """``t`` when ``n`` is ``mean(t^2, [-1], keepdim=True)`` (``t.pow(2)`` or ``t * t``)."""
    if not _call(n, aten.mean.dim) or len(n.users) != 1:
        return None
    sq, dims, keep = n.args[0], arg(n, 1, "dim"), arg(n, 2, "keepdim", False)
    rank = val(n).dim() if isinstance(val(n), Tensor) else None
    if not keep or list(dims or ()) not in ([-1], [None if rank is None else rank - 1]) or len(sq.users) != 1:
        return None
    if _call(sq, aten.pow.Tensor_Scalar) and sq.args[1] == 2:
        return sq.args[0]
    if _call(sq, aten.mul.Tensor) and sq.args[0] is sq.args[1]:
        return sq.args[0]
    return None


def _normalized(n: Node) -> tuple[Node, float] | None:
    """``(t, eps)`` when ``n`` is ``t * rsqrt(ms + eps)`` or ``t / sqrt(ms + eps)`` with ``ms`` the
    mean square of ``t`` over the last dim."""
    if _call(n, aten.mul.Tensor):
        inv = next((a for a in n.args[:2] if _call(a, aten.rsqrt.default)), None)
    elif _call(n, aten.div.Tensor) and _call(n.args[1], aten.sqrt.default):
        inv = n.args[1]
    else:
        return None
    if inv is None or len(inv.users) != 1:
        return None
    t = _other(n, inv) if n.target is aten.mul.Tensor else n.args[0]
    add = inv.args[0]
    if not _call(add, aten.add.Tensor, aten.add.Scalar) or len(add.users) != 1:
        return None
    ms, eps = add.args[0], add.args[1]
    if not isinstance(eps, (int, float)):
        ms, eps = add.args[1], add.args[0]
    if not isinstance(eps, (int, float)) or arg(add, 2, "alpha", 1) != 1 or _mean_square_of(ms) is not t:
        return None
    return t, float(eps)


def _replace(gm: fx.GraphModule, last: Node, x: Node, weight: Node | None, eps: float) -> None:
    with gm.graph.inserting_before(last):
        new = add_node(gm.graph, torch.ops.tcomp.rms_norm.default, (x, weight, eps))
    copy_source_meta(new, last)
    last.replace_all_uses_with(new)
    remove_dead(gm.graph, [last])


def _from_aten(gm: fx.GraphModule) -> list[str]:
    """``aten.rms_norm(x, [D], weight, eps)`` (``nn.RMSNorm``, ``F.rms_norm``) over the last dim."""
    notes = []
    for n in [n for n in gm.graph.nodes if _call(n, aten.rms_norm.default)]:
        x, shape, weight = n.args[0], arg(n, 1, "normalized_shape"), arg(n, 2, "weight")
        eps = arg(n, 3, "eps")
        xv = val(x)
        if not isinstance(xv, Tensor) or len(shape) != 1 or shape[0] != xv.shape[-1]:
            continue
        eps = torch.finfo(xv.dtype).eps if eps is None else float(eps)  # aten's default
        _replace(gm, n, x, weight, eps)
        notes.append(f"rms_norm at {module_path(n) or n.name}: aten.rms_norm -> tcomp.rms_norm")
    return notes


def _from_chain(gm: fx.GraphModule) -> list[str]:
    """The decomposed spelling: ``[w *] (t * rsqrt(mean(t^2) + eps))[.to(dtype)]``, ``t`` = ``x`` or
    ``x`` cast to float32/float64; the result must have ``x``'s dtype (else the chain is left)."""
    notes = []
    for n in [n for n in gm.graph.nodes if _call(n, aten.mul.Tensor, aten.div.Tensor)]:
        found = None if getattr(n, "_erased", False) else _normalized(n)  # erased: part of a match
        if found is None:
            continue
        t, eps = found
        x = _cast_source(t) or t  # a cast's other users (if any) keep it alive
        last = n
        down = next(iter(n.users)) if len(n.users) == 1 else None
        if _cast_source(down) is n:
            last = down
        weight = None
        up = next(iter(last.users)) if len(last.users) == 1 else None
        w = _other(up, last) if _call(up, aten.mul.Tensor) else None
        wv, xv = val(w), val(x)
        if (
            isinstance(w, Node)
            and isinstance(wv, Tensor)
            and wv.shape == (xv.shape[-1],)
            and val(up).dtype == xv.dtype
        ):
            weight, last = w, up
        if val(last).dtype != val(x).dtype or tuple(val(last).shape) != tuple(val(x).shape):
            continue
        _replace(gm, last, x, weight, eps)
        notes.append(f"rms_norm at {module_path(last) or last.name}: decomposed chain -> tcomp.rms_norm")
    return notes


RMS_NORM = define(rms_norm, kind="fused", cost=_rms_norm_node_cost, canonical_forms=(_from_aten, _from_chain))
