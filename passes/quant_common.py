"""What the weight-quantization passes share: choosing the linear layers and swapping each for a
quantized dialect op whose low-bit tensors live in the graph as buffers (so artifacts carry them).

Selection, in this order, each excluded site reported with its reason: the weight must be a 2-D
floating parameter of the graph (``get_attr``), finite; then the options of :class:`Selection`
(every quantization pass's options class derives from it): ``skip_first_last``, ``skip``,
``include``, ``types``.
"""

from __future__ import annotations

import fnmatch
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from tcomp import meta
from tcomp.contract import PassResult
from tcomp.graph import add_buffer, add_node, copy_source_meta, module_path
from tcomp.options import option

aten = torch.ops.aten
DEFAULT_SKIP = ("*embed*", "*lm_head*", "*classifier*")


@dataclass(frozen=True)
class Selection:
    """Which linear layers a quantization pass rewrites (options shared by every such pass)."""

    include: tuple[str, ...] = option(("*",), help="fnmatch patterns on the module path a layer must match")
    skip: tuple[str, ...] = option(
        DEFAULT_SKIP, help="fnmatch patterns on the module path that stay in full precision (embeddings, heads)"
    )
    types: tuple[str, ...] = option(("Linear",), help="module class names a layer must be (empty: any)")
    skip_first_last: bool = option(
        True, help="keep the model's first and last linear layer (in graph order) in full precision"
    )

    @property
    def selection(self) -> dict[str, Any]:
        """The keyword arguments of :func:`select`."""
        return {"include": self.include, "skip": self.skip, "types": self.types, "skip_first_last": self.skip_first_last}

# encode(weight) -> (buffers {suffix: tensor} in op order, extra non-tensor args, max error in scales)
Encoder = Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], tuple, float]]


def module_type(node: fx.Node) -> str:
    stack = node.meta.get(meta.NN_MODULE_STACK) or {}
    if not stack:
        return ""
    t = list(stack.values())[-1][1]
    name = t if isinstance(t, str) else getattr(t, "__qualname__", str(t))
    return name.rsplit(".", 1)[-1].strip("'>")


def weight_of(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    w = node.args[1] if len(node.args) > 1 else None
    if not isinstance(w, fx.Node) or w.op != "get_attr":
        return None
    t = operator.attrgetter(w.target)(gm)
    return t if isinstance(t, torch.Tensor) and t.dim() == 2 and t.is_floating_point() else None


def select(
    gm: fx.GraphModule,
    include: tuple[str, ...] = ("*",),
    skip: tuple[str, ...] = DEFAULT_SKIP,
    types: tuple[str, ...] = ("Linear",),
    skip_first_last: bool = True,
) -> tuple[list[fx.Node], list[dict[str, Any]]]:
    """(linear nodes to quantize, report rows of the ones left alone with the reason)."""
    linears = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is aten.linear.default]
    chosen, skipped = [], []
    for i, n in enumerate(linears):
        path, w = module_path(n) or n.name, weight_of(gm, n)
        reason = None
        if w is None:
            reason = "weight is not a 2-D floating parameter"
        elif not torch.isfinite(w).all():
            reason = "weight has NaN/inf"
        elif skip_first_last and i in (0, len(linears) - 1):
            reason = "first/last linear layer (skip_first_last=True)"
        elif any(fnmatch.fnmatch(path, p) for p in skip):
            reason = f"matches the skip list {list(skip)}"
        elif not any(fnmatch.fnmatch(path, p) for p in include):
            reason = f"not in include {list(include)}"
        elif types and module_type(n) not in types:
            reason = f"module type {module_type(n) or '?'} not in {list(types)}"
        if reason:
            skipped.append({"site": path, "status": "skipped", "reason": reason})
        else:
            chosen.append(n)
    return chosen, skipped


def quantize_linears(
    gm: fx.GraphModule, fmt: str, op: Any, encode: Encoder, *, selection: dict[str, Any],
    site_data: dict[str, Any] | None = None, rounds_activations: bool = False,
) -> PassResult:  # fmt: skip
    """Replace each selected ``aten.linear`` by ``op(x, *buffers, *extra, bias)``; a site whose
    dequantized weights are not all within scale/2 of the originals is left alone (reported).
    With ``site_data`` (linear node name -> statistics, e.g. calibration inputs) the encoder is
    called as ``encode(weight, site_data.get(node name))``. ``rounds_activations``: the op rounds
    its input at run time (W8A8, W1A1, fp8), recorded in the node's QUANT meta for the pipeline."""
    nodes, sites = select(gm, **selection)
    result = PassResult(gm, sites=sites)
    for idx, lin in enumerate(nodes):
        path = module_path(lin) or lin.name
        w = weight_of(gm, lin)
        try:
            tensors, extra, err = encode(w) if site_data is None else encode(w, site_data.get(lin.name))
        except ValueError as exc:  # the format does not fit this layer's shape
            sites.append({"site": path, "status": "skipped", "reason": str(exc)})
            continue
        if not err <= 0.5 + 1e-9:
            sites.append(
                {"site": path, "status": "skipped", "reason": f"weight error {err:.3g} scales > 1/2"}
            )
            continue
        swap_linear(
            gm,
            lin,
            op,
            tensors,
            extra,
            f"_tcomp_{fmt}_{idx}",
            {"format": fmt, "source": path, "max_err": err, "rounds_activations": rounds_activations},
        )
        sites.append({"site": path, "status": "quantized", "format": fmt, "max_weight_error_in_scales": err})
        result.rewrites += 1
    gm.recompile()
    done = sum(s["status"] == "quantized" for s in sites)
    result.notes.append(f"{fmt}: quantized {done} linear layers, skipped {len(sites) - done}")
    result.notes += [f"{s['site']}: skipped ({s['reason']})" for s in sites if s["status"] == "skipped"]
    return result


def swap_linear(
    gm: fx.GraphModule, lin: fx.Node, op: Any, tensors: dict[str, torch.Tensor], extra: tuple,
    prefix: str, quant_meta: dict[str, Any],
) -> fx.Node:  # fmt: skip
    """Replace ``aten.linear`` node ``lin`` by ``op(x, *tensors, *extra, bias)``, each tensor a new
    graph buffer ``<prefix>_<suffix>``; the float weight goes when nothing else reads it."""
    x, w_node = lin.args[0], lin.args[1]
    bias = lin.args[2] if len(lin.args) > 2 else lin.kwargs.get("bias")
    with gm.graph.inserting_before(lin):
        attrs = [add_buffer(gm, f"{prefix}_{suffix}", t, like=x) for suffix, t in tensors.items()]
        new = add_node(gm.graph, op, (x, *attrs, *extra, bias))
    copy_source_meta(new, lin)
    new.meta[meta.QUANT] = quant_meta
    lin.replace_all_uses_with(new)
    gm.graph.erase_node(lin)
    if not w_node.users:
        gm.graph.erase_node(w_node)
    return new
