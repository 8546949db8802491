"""``canonicalize``: every attention spelling -> one ``tcomp.attention`` node.

Spellings handled:

* ``aten.scaled_dot_product_attention`` -- bool ``attn_mask`` (mask) or float (bias),
  ``is_causal``, explicit or default scale, GQA through ``enable_gqa``;
* decomposed chains ``matmul|bmm -> (mul|div scale) -> (add bias | masked_fill | where mask, in any
  order, also inside a reshaped view of the scores as Swin does) -> softmax -> (casts, dropout in
  eval) -> matmul|bmm``, with q/k/v reached through any transposes, permutes and expands;
* the same chains with the product spelt ``baddbmm(bias, q, k^T, beta=, alpha=)`` (a bias folded
  into it, as Bloom's ALiBi) or ``einsum`` (``bhqd,bhkd->bhqk``, ``bqhd,bkhd->bhqk``, and the PV
  product likewise), first rewritten to the matmul form (``attention_chain.normalize_products``);
* a constant scale applied to q, to k or to both before the product (through transposes, views and
  head repeats) becomes the op's ``scale`` (``attention_operands.peel_scale``);
* a mask that is the causal triangle -- bool (``tril`` of ones, ``arange[:, None] >= arange[None, :]``,
  a registered buffer sliced to the length), alone or and-ed with a padding mask, or additive (0 /
  -inf) -- becomes ``causal=True`` with no mask tensor kept, recognised by evaluating the mask at
  several sizes (``tcomp.mask_probe.causal_form``); masks read from the inputs' values stay masks.

3-D (``bmm``) sites become ``(1, B*H, N, D)`` so the op always sees four dims.

Guarantee: FP_EQUIVALENT -- the same function in real arithmetic (half-precision scores are
computed in float32, fully masked rows give zeros). Sites the pass cannot prove to be attention
are left alone and listed in the notes with the reason; a softmax that a product of two
activations reaches but no chain the op expresses (soft-capping, ...) is an *unmatched attention
softmax*: listed with the link that breaks the chain (``PassRecord.unmatched``), warned about by the
CLI, and an error under ``optimize(strict=True)``.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from tcomp import meta
from tcomp.contract import FP_EQUIVALENT, PassResult
from tcomp.dialect import attention_nodes, dialect_ops
from tcomp.graph import (
    add_node,
    copy_source_meta,
    dead_code,
    module_path,
    remove_dead,
    shape,
    val,
)
from tcomp.options import NoOptions
from tcomp.passes.attention_chain import (
    SOFTMAX,
    NotAttention,
    NotAttentionSoftmax,
    normalize_products,
    read_chain,
)
from tcomp.passes.attention_operands import peel_scale, take_causal
from tcomp.passes.projections import annotate
from tcomp.registry import PassContext, register_pass
from tcomp.report import site_record

aten = torch.ops.aten
ATTN = torch.ops.tcomp.attention.default
SDPA = aten.scaled_dot_product_attention.default


@register_pass("canonicalize", FP_EQUIVALENT, default=True)
def canonicalize(gm: fx.GraphModule, opts: NoOptions, ctx: PassContext) -> PassResult:
    """Rewrite every attention site to ``tcomp.attention``, and every spelling of a fused dialect op
    that registers canonical forms (``tcomp.rms_norm``, ...) to that op (FP_EQUIVALENT). No options."""
    result = PassResult(gm)
    # metadata assertions left by .to() calls hold by construction and would keep dead chains alive
    for n in [
        n
        for n in gm.graph.nodes
        if n.op == "call_function" and n.target is aten._assert_tensor_metadata.default
    ]:
        gm.graph.erase_node(n)
    dead_code(gm.graph)
    result.notes += normalize_products(gm)  # baddbmm with a folded bias, einsum: the matmul chain
    memo: dict = {}  # which masks are causal, shared by the sites (layers share their masks)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.graph is not gm.graph:
            continue
        try:
            if node.target is SDPA:
                site = _from_sdpa(gm, node, memo)
            elif node.target in SOFTMAX:
                site = _from_chain(gm, node, memo)
            else:
                continue
        except NotAttentionSoftmax as why:
            result.notes.append(f"softmax at {module_path(node) or node.name} is not attention: {why}")
            continue
        except NotAttention as why:  # attention tcomp cannot take: listed, warned about, an error if strict
            where = module_path(node) or node.name
            result.unmatched.append({"module": where, "node": node.name, "why": str(why)})
            result.notes.append(f"unmatched attention softmax at {where}: {why}")
            continue
        result.sites.append(site)
        result.rewrites += 1
    # number the sites in graph order (the order a reader of the model expects)
    for i, n in enumerate(n for n in gm.graph.nodes if n.op == "call_function" and n.target is ATTN):
        n.meta[meta.ATTN_LAYER] = i
        annotate(n)  # q/k/v projections stay recognisable (fused QKV included) for later passes
    result.sites = [site_record(n) for n in attention_nodes(gm)]
    for op in dialect_ops():  # fused ops models spell out (RMSNorm, ...), each op's own rewrites
        for form in op.canonical_forms:
            notes = form(gm)
            result.rewrites += len(notes)
            result.notes += notes
    gm.graph.lint()
    gm.recompile()
    return result


def _arg(node: fx.Node, i: int, name: str, default):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _from_sdpa(gm: fx.GraphModule, node: fx.Node, memo: dict) -> dict:
    q, k, v = node.args[:3]
    attn_mask = _arg(node, 3, "attn_mask", None)
    dropout_p = _arg(node, 4, "dropout_p", 0.0)
    is_causal = _arg(node, 5, "is_causal", False)
    scale = node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None)
    if dropout_p not in (0, 0.0):
        raise NotAttention(f"dropout_p={dropout_p} (capture the model in eval mode)")
    if not isinstance(is_causal, bool):
        raise NotAttention("is_causal is not a constant")
    if scale is None:
        d = shape(q)[-1]
        if not isinstance(d, int):
            raise NotAttention("head dim is symbolic; the default scale 1/sqrt(D) is unknown")
        scale = 1.0 / math.sqrt(d)
    if not isinstance(scale, (int, float)):
        raise NotAttention("scale is not a constant")
    masks, biases = [], []
    if isinstance(attn_mask, fx.Node):
        if val(attn_mask).dtype == torch.bool:
            masks = [attn_mask]
        else:
            biases = [attn_mask]
    sizes = (shape(q)[-2], shape(k)[-2])
    masks, biases, causal = take_causal(gm, masks, biases, sizes, memo)  # a causal mask: the flag
    with gm.graph.inserting_before(node):
        (q, q_scale), (k, k_scale) = peel_scale(q, gm), peel_scale(k, gm)  # a scale on q or k is the op's
        scale = float(scale) * q_scale * k_scale
        if len(shape(q)) == 4:
            k, v = _gqa(k, v)
        bias = _combine(gm.graph, biases, aten.add.Tensor)
        mask = _combine(gm.graph, masks, aten.logical_and.default)
        out = _emit(gm.graph, node, q, k, v, bias, mask, scale, is_causal or causal)
    node.replace_all_uses_with(out)
    remove_dead(gm.graph, [node])
    _relax_views(out)
    return site_record(out)


def _from_chain(gm: fx.GraphModule, softmax: fx.Node, memo: dict) -> dict:
    ch = read_chain(softmax, gm)
    graph = gm.graph
    q, kt = ch.qk.args[:2]
    v = ch.pv.args[1]
    rank = len(shape(ch.qk))
    if rank not in (3, 4) or any(len(shape(x) or ()) != rank for x in (q, kt, v)):
        raise NotAttention(f"q/k/v/scores of rank {rank} with mixed ranks; expected 3-D or 4-D operands")
    masks, biases, causal = take_causal(gm, ch.masks, ch.biases, shape(ch.qk)[-2:], memo)  # causal mask: the flag
    with graph.inserting_before(ch.pv):
        (q, q_scale), (kt, k_scale) = peel_scale(q, gm), peel_scale(kt, gm)  # a scale on q or k is the op's
        k = _untranspose(graph, kt)
        if rank == 4:
            k, v = _gqa(k, v)
        bias = _combine(graph, biases, aten.add.Tensor)
        mask = _combine(graph, masks, aten.logical_and.default)
        if rank == 3:
            q, k, v = (add_node(graph, aten.unsqueeze.default, (x, 0)) for x in (q, k, v))
            bias = _lift(graph, bias)
            mask = _lift(graph, mask)
        attn = out = _emit(graph, ch.softmax, q, k, v, bias, mask, ch.scale * q_scale * k_scale, causal)
        if rank == 3:
            out = add_node(graph, aten.squeeze.dim, (attn, 0))
    pv = ch.pv
    pv.replace_all_uses_with(out)
    remove_dead(graph, [pv])
    _relax_views(out)
    return site_record(attn)


def _noop_slice(n: fx.Node) -> fx.Node:
    """Skip ``slice(t, d, 0, INT_MAX)`` (no-op slices dynamic export leaves around views)."""
    while (
        n.op == "call_function"
        and n.target is aten.slice.Tensor
        and tuple(n.args[2:4]) == (0, 2**63 - 1)
        and n.args[4:] in ((), (1,))
    ):
        n = n.args[0]
    return n


def _unrepeat(x: fx.Node) -> tuple[fx.Node, int]:
    """``(t, n)`` when ``x`` repeats each kv head of ``t`` ``n`` times (head h reads h // n):
    ``repeat_interleave(t, n, dim=1)`` or HF's ``reshape(expand(unsqueeze(t, 2)), ...)``."""
    x = _noop_slice(x)
    if x.op != "call_function":
        return x, 1
    if (
        x.target is aten.repeat_interleave.self_int
        and len(x.args) > 2
        and x.args[2] in (1, -3)
        and isinstance(x.args[1], int)
    ):
        return x.args[0], x.args[1]
    if x.target is aten.reshape.default:
        ex = _noop_slice(x.args[0])
        if ex.op == "call_function" and ex.target is aten.expand.default and isinstance(ex.args[1][2], int):
            un = _noop_slice(ex.args[0])
            if un.op == "call_function" and un.target is aten.unsqueeze.default and un.args[1] == 2:
                t, n = un.args[0], ex.args[1][2]
                if len(shape(t)) == 4 and str(shape(t)[1] * n) == str(shape(x)[1]):
                    return t, n
    return x, 1


def _gqa(k: fx.Node, v: fx.Node) -> tuple[fx.Node, fx.Node]:
    """Hand the op the un-repeated k/v when both repeat their heads the same way (GQA/MQA)."""
    (k0, nk), (v0, nv) = _unrepeat(k), _unrepeat(v)
    return (k0, v0) if nk == nv > 1 else (k, v)


_LAYOUT = {
    aten.permute.default,
    aten.transpose.int,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.expand.default,
}
_VIEWS = {aten.view.default, aten._unsafe_view.default}


def _relax_views(out: fx.Node, depth: int = 4) -> None:
    """The captured graph may ``view`` the attention output in a way that only its original
    strides allowed (SDPA's output layout differs across torch versions and devices). Downstream
    views become reshapes: the same values, a copy only where a view is impossible."""
    for user in list(out.users):
        if user.op != "call_function":
            continue
        if user.target in _VIEWS:
            user.target = aten.reshape.default
        if depth > 0 and user.target in _LAYOUT | {aten.reshape.default}:
            _relax_views(user, depth - 1)


def _emit(graph, origin, q, k, v, bias, mask, scale, causal) -> fx.Node:
    out = add_node(graph, ATTN, (q, k, v, bias, mask, float(scale), bool(causal)))
    copy_source_meta(out, origin)
    out.meta[meta.ATTN_SPELLING] = "sdpa" if origin.target is SDPA else "decomposed"
    out.meta[meta.ATTN_SOURCE] = module_path(origin)
    return out


def _untranspose(graph: fx.Graph, kt: fx.Node) -> fx.Node:
    """k (…, M, D) from the matmul's right operand k^T (…, D, M)."""
    n = len(shape(kt))
    if kt.op == "call_function" and kt.target is aten.transpose.int:
        dims = {d % n for d in kt.args[1:3]}
        if dims == {n - 2, n - 1}:
            return kt.args[0]
    if kt.op == "call_function" and kt.target is aten.permute.default:
        perm = [d % n for d in kt.args[1]]
        if perm[:-2] == list(range(n - 2)) and perm[-2:] == [n - 1, n - 2]:
            return kt.args[0]
    return add_node(graph, aten.transpose.int, (kt, -2, -1))


def _combine(graph: fx.Graph, nodes: list, op) -> fx.Node | None:
    if not nodes:
        return None
    acc = nodes[0]
    for n in nodes[1:]:
        acc = add_node(graph, op, (acc, n))
    return acc


def _lift(graph: fx.Graph, t: fx.Node | None) -> fx.Node | None:
    if t is None or len(shape(t)) < 3:
        return t  # broadcasts from the right either way
    return add_node(graph, aten.unsqueeze.default, (t, 0))
