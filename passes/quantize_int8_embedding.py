"""``quantize.int8_embedding``: embedding tables as int8 codes with one scale per row.

Guarantee (BOUNDED): every dequantized table entry is within ``s[v] / 2`` of the original (checked
here, table by table; a table that fails is skipped), so each looked-up row moves by at most half
its own scale per element -- the same bound as ``quantize.int8_weight``, per token instead of per
output channel. The lookup becomes ``tcomp.embedding_int8`` (tcomp/dialect/qembedding.py) and the
table takes a quarter of its float32 bytes.

Preconditions and refusals (each reported with the reason): the table must be a 2-D floating
parameter of the graph, finite, read by nothing but lookups -- a table tied to an output projection
(a language model's ``lm_head``) is left alone, since quantizing its lookups would keep the float
copy alive and change what the head computes.
"""

from __future__ import annotations

import fnmatch
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.embedding_int8
from tcomp import meta
from tcomp.contract import Contract, Exactness, PassResult
from tcomp.graph import add_buffer, add_node, copy_source_meta, module_path
from tcomp.options import option
from tcomp.quant import dequantize_int8, max_weight_error, quantize_int8
from tcomp.registry import PassContext, register_pass

aten = torch.ops.aten
CONTRACT = Contract(
    Exactness.BOUNDED,
    bound="|dequantized e - e| <= s[v]/2 per table entry (one symmetric int8 scale per row)",
    tolerance=0.15,
    preconditions="finite tables read only by lookups; tolerance is the end-to-end relative-error guard the pipeline checks",
)


@dataclass(frozen=True)
class Int8EmbeddingOptions:
    """Options of ``quantize.int8_embedding``: which tables (fnmatch patterns on the module path)."""

    include: tuple[str, ...] = option(("*",), help="fnmatch patterns on the module path a table must match")
    skip: tuple[str, ...] = option((), help="fnmatch patterns on the module path that stay in full precision")
    min_rows: int = option(
        64, range=(1, None), help="smaller tables stay float (position and token-type tables save little)"
    )


@register_pass("quantize.int8_embedding", CONTRACT, options=Int8EmbeddingOptions, after=("canonicalize",))
def quantize_int8_embedding(gm: fx.GraphModule, opts: Int8EmbeddingOptions, ctx: PassContext) -> PassResult:
    """int8 codes and a per-row scale for the selected embedding tables."""
    result = PassResult(gm)
    lookups: dict[fx.Node, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is aten.embedding.default and isinstance(n.args[0], fx.Node):
            lookups.setdefault(n.args[0], []).append(n)
    for idx, (w_node, nodes) in enumerate(lookups.items()):
        path = module_path(nodes[0]) or nodes[0].name
        reason = _refusal(gm, w_node, nodes, path, opts)
        if reason:
            result.sites.append({"site": path, "status": "skipped", "reason": reason})
            continue
        w = operator.attrgetter(w_node.target)(gm)
        q, s = quantize_int8(w)
        err = max_weight_error(w, dequantize_int8(q, s), s)
        if not err <= 0.5 + 1e-9:
            result.sites.append({"site": path, "status": "skipped", "reason": f"table error {err:.3g} scales > 1/2"})
            continue
        with gm.graph.inserting_before(nodes[0]):  # graph order: the first lookup comes first
            codes = add_buffer(gm, f"_tcomp_emb8_{idx}_codes", q, like=nodes[0])
            scale = add_buffer(gm, f"_tcomp_emb8_{idx}_scale", s, like=nodes[0])
        for node in nodes:
            with gm.graph.inserting_before(node):
                new = add_node(gm.graph, torch.ops.tcomp.embedding_int8.default, (node.args[1], codes, scale, w.dtype))
            copy_source_meta(new, node)
            new.meta[meta.QUANT] = {"format": "emb_int8", "source": path, "max_err": err, "rounds_activations": False}
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
        gm.graph.erase_node(w_node)
        result.sites.append({"site": path, "status": "quantized", "format": "emb_int8", "max_weight_error_in_scales": err,
                             "rows": int(w.shape[0])})  # fmt: skip
        result.rewrites += 1
    gm.graph.lint()
    gm.recompile()
    done = result.rewrites
    result.notes.append(f"emb_int8: quantized {done} embedding tables, skipped {len(result.sites) - done}")
    skipped = [f"{x['site']}: {x['reason']}" for x in result.sites if x["status"] == "skipped"]
    result.notes += [f"skipped {why}" for why in skipped]
    if not done:
        result.reason = "no embedding table quantized -- " + ("; ".join(skipped) or "the graph has no aten.embedding")
    return result


def _refusal(gm: fx.GraphModule, w_node: fx.Node, lookups: list[fx.Node], path: str, opts: Int8EmbeddingOptions):
    """Why the table ``w_node`` stays float, or None."""
    if w_node.op != "get_attr":
        return "the table is not a parameter of the model (computed in forward)"
    w = operator.attrgetter(w_node.target)(gm)
    if not (isinstance(w, torch.Tensor) and w.dim() == 2 and w.is_floating_point()):
        return "the table is not a 2-D floating tensor"
    if len(w_node.users) != len(lookups):
        return "the table is also read by other ops (tied to an output projection such as lm_head)"
    if not torch.isfinite(w).all():
        return "the table has NaN/inf"
    if w.shape[0] < opts.min_rows:
        return f"{w.shape[0]} rows < min_rows={opts.min_rows}"
    if any(fnmatch.fnmatch(path, p) for p in opts.skip):
        return f"matches skip {list(opts.skip)}"
    if not any(fnmatch.fnmatch(path, p) for p in opts.include):
        return f"not in include {list(opts.include)}"
    return None
