"""Linear layers that read the same input, run as one: q/k/v, gate/up (decode steps).

At a decode step each linear is a GEMV of a few rows, whose launch and tail cost as much as a small
weight's read (a 1024x4096 k or v projection moves 8 MB in ~3 us on an H100). ``fuse`` finds the
``aten.linear`` nodes of a graph that share their input, have few static rows
(:func:`tcomp.backends.triton.gemm.few_rows`) and the same dtype, and bias kind, and replaces
them by one linear over the weights concatenated along the output dim (a new graph buffer; the
separate weights go when nothing else reads them), followed by a slice of the output per original
linear. The slices are strided views; ``view`` nodes reading one directly become ``reshape`` (the
same values, a copy only where a view is impossible). Exact: each output element is the same dot
product (FP_EQUIVALENT, as cuBLAS may pick another reduction split for another shape).

Only few-row linears are joined: at prefill sizes the separate GEMMs already run at the tensor cores'
rate, and the concatenated weight would cost memory for nothing. Where it is done it costs memory
too (about 60 % of a Llama's weights are q/k/v/gate/up), as Inductor's ``concat_linear`` under
freezing does: the step's note says how much, and the separate weights are freed only when the
user's model lets them go.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.fx as fx

from tcomp.backends.triton.gemm import few_rows
from tcomp.graph import add_buffer, add_node, copy_source_meta, val

aten = torch.ops.aten


def _tensor(gm: fx.GraphModule, node) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    owner, _, attr = node.target.rpartition(".")
    t = getattr(gm.get_submodule(owner) if owner else gm, attr, None)
    return t if isinstance(t, torch.Tensor) else None


def _candidates(gm: fx.GraphModule) -> list[list[fx.Node]]:
    groups: dict[tuple, list[fx.Node]] = defaultdict(list)
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target is not aten.linear.default or n.kwargs:
            continue
        w = _tensor(gm, n.args[1])
        bias = n.args[2] if len(n.args) > 2 else None
        b = _tensor(gm, bias) if bias is not None else None
        x = val(n.args[0])
        if w is None or w.dim() != 2 or (bias is not None and b is None) or not isinstance(x, torch.Tensor):
            continue
        if x.dtype != w.dtype or w.device != x.device or not few_rows(n):
            continue
        groups[(n.args[0], w.dtype, w.shape[1], bias is not None)].append(n)
    return [g for g in groups.values() if len(g) >= 2]


def fuse(gm: fx.GraphModule) -> tuple[int, list[str]]:
    """Join each group of linears sharing an input; returns how many linears were joined away, and
    a note of the memory the concatenated weights take (the separate ones stay alive as long as
    the user's model holds them)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    joined = 0
    new_bytes = 0
    for group in _candidates(gm):
        group.sort(key=order.__getitem__)
        first = group[0]
        weights = [_tensor(gm, n.args[1]) for n in group]
        has_bias = len(first.args) > 2 and first.args[2] is not None
        tensors = {"weight": torch.cat(weights, 0).contiguous()}
        if has_bias:
            tensors["bias"] = torch.cat([_tensor(gm, n.args[2]) for n in group], 0).contiguous()
        new_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        prefix = "tcomp_joined_" + first.args[1].target.replace(".", "_").removesuffix("_weight")
        with gm.graph.inserting_before(first):
            attrs = [add_buffer(gm, f"{prefix}_{suffix}", t, like=first.args[0]) for suffix, t in tensors.items()]
            joined_lin = add_node(gm.graph, aten.linear.default, (first.args[0], *attrs))
            copy_source_meta(joined_lin, first)
            start = 0
            dim = val(first).dim() - 1
            for lin, w in zip(group, weights):
                part = add_node(gm.graph, aten.slice.Tensor, (joined_lin, dim, start, start + w.shape[0]))
                copy_source_meta(part, lin)
                start += w.shape[0]
                lin.replace_all_uses_with(part)
                for u in list(part.users):
                    if u.op == "call_function" and u.target is aten.view.default:
                        u.target = aten.reshape.default
        for lin in group:
            used = [a for a in lin.args[1:3] if isinstance(a, fx.Node)]
            gm.graph.erase_node(lin)
            for a in used:
                if not a.users:
                    gm.graph.erase_node(a)
        joined += len(group) - 1
    gm.recompile()
    notes = [f"the joined weights take {new_bytes / 2**20:.1f} MiB of new memory"] if joined else []
    return joined, notes
