"""Finding the q/k/v projections of canonical attention sites (used by ``canonicalize``).

From each of q, k and v the walk goes back through views, transposes, head splits, unbind/split/
getitem and elementwise ops (RoPE, scaling: the first tensor operand) to the ``aten.linear`` or
``aten.addmm`` that produced it. The attention node records ``{"q": linear, ...}`` and each
projection records its role; one linear feeding several roles is a fused projection ("qkv").
"""

from __future__ import annotations

import torch
import torch.fx as fx

from tcomp import meta

aten = torch.ops.aten
PROJECTIONS = {aten.linear.default, aten.addmm.default}
_THROUGH = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.transpose.int,
    aten.permute.default,
    aten.unflatten.int,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.contiguous.default,
    aten.clone.default,
    aten.select.int,
    aten.slice.Tensor,
    aten.unbind.int,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.chunk.default,
    aten.expand.default,
    aten.repeat_interleave.self_int,
    aten.mul.Tensor,
    aten.add.Tensor,
    aten.div.Tensor,
    aten.to.dtype,
    aten._to_copy.default,
}


def find_projection(x: fx.Node, depth: int = 0) -> fx.Node | None:
    if not isinstance(x, fx.Node) or depth > 24:
        return None
    if x.op == "call_function" and x.target in PROJECTIONS:
        return x
    if x.op == "call_function" and (x.target in _THROUGH or getattr(x.target, "__name__", "") == "getitem"):
        first = next((a for a in x.args if isinstance(a, fx.Node)), None)
        return find_projection(first, depth + 1)
    return None


def annotate(attn: fx.Node) -> dict[str, str]:
    """Record the q/k/v projections of one attention node; returns ``{role: linear name}``."""
    found = {}
    for role, x in zip("qkv", attn.args[:3]):
        p = find_projection(x)
        if p is not None:
            found[role] = p
    attn.meta[meta.ATTN_PROJ] = {r: p.name for r, p in found.items()}
    for p in set(found.values()):
        roles = "".join(r for r in "qkv" if found.get(r) is p)
        p.meta[meta.PROJ_ROLE] = (roles, attn.meta.get(meta.ATTN_LAYER))
    return attn.meta[meta.ATTN_PROJ]
