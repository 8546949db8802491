"""``tokens.merge``: token merging (ToMe, Bolya et al. 2023) as a graph rewrite of encoder models.

In each chosen block, between attention and MLP, ``tcomp.token_merge`` pairs tokens by bipartite
soft matching on the attention keys (cosine similarity of the keys averaged over heads) and merges
the ``r`` most similar pairs by size-weighted average, tracking how many original tokens each one
stands for. Every later attention becomes *proportional*: ``log(size)`` is added to the logits of
each key (an additive (B, 1, 1, N) bias of ``tcomp.attention``), so a merged token weighs what its
originals weighed together. Shapes stay static: ``r`` per block is fixed when the pass runs
(:mod:`tcomp.passes.token_merge_schedule`).

Options: :class:`TokenMergeOptions` (the schedule, protected tokens, outputs, tolerance).

* Protected tokens (``protected``: CLS by default) are never merged and never merged into;
  they move to the front in the order given, so ``x[:, 0]`` stays the CLS token.
* Padding: when a site's mask/bias is computed from a (B, N) padding-mask input, merging knows which
  tokens are padding: padding only merges with padding (first: it is free), real tokens only with
  real tokens, merged padding stays masked in every later attention.
* Outputs (``outputs``): ``"unmerge"`` restores the original token count after the last
  block (each original token takes the value of the token it was merged into, through a source map
  composed of each step's ``assign``), so output shapes never change; CLS pooling reads the CLS
  token's own value and mean pooling over the original tokens equals the size-weighted mean over
  merged ones (exactly). ``"merged"`` leaves the final norm/pooling/head on the merged tokens (no
  gather) and is refused when an output would change shape; ``aten.mean`` over the token axis
  becomes the size-weighted mean there.
* ``tolerance``: the EMPIRICAL contract's threshold on the relative error of the graph's outputs;
  token-level outputs carry much more error than a pooled embedding does.

Not applicable (skipped with the reason) to decoders: a graph with a KV cache (a decoder's prefill
or decode step, ``meta.KV_CACHE`` / ``meta.CACHE_POSITION``) or causal attention.

Contract: EMPIRICAL. ``r = 0`` everywhere rewrites nothing (EXACT, the identity). Merging exact
duplicate tokens with proportional attention is lossless (FP_EQUIVALENT; the property test in
tests/passes/test_token_merge.py). Precondition: at run time every block still has the tokens its
``r`` needs (``N_l >= 2 r_l + protected``; the schedule is resolved on the example inputs' length).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from tcomp import meta
from tcomp.contract import Contract, Exactness, PassResult
from tcomp.dialect import attention_nodes
from tcomp.dialect.cached_attention import is_cached_attention
from tcomp.errors import PassError
from tcomp.graph import add_node, dead_code, module_path, shape, val
from tcomp.options import option
from tcomp.passes.token_merge_graph import (
    NotABlock,
    block_output,
    merge_point,
    padding_keep,
    reshape_tokens,
)
from tcomp.passes.token_merge_schedule import resolve
from tcomp.registry import PassContext, register_pass

aten = torch.ops.aten
TOKEN_MERGE = torch.ops.tcomp.token_merge.default


@dataclass(frozen=True)
class TokenMergeOptions:
    """Options of ``tokens.merge``: give exactly one of ``r`` and ``keep`` (the schedule,
    :mod:`tcomp.passes.token_merge_schedule`)."""

    r: int | tuple[int, ...] | None = option(
        None, range=(0, None), help="tokens removed per block: one int for every block, or one per attention site"
    )
    inflect: float = option(
        0.0, range=(-1.0, 1.0), help="with an int r, a linear ramp of the same total: < 0 merges more early"
    )
    keep: float | None = option(
        None, gt=0.0, range=(None, 1.0), help="instead of r: fraction of the unprotected tokens left at the end"
    )
    protected: tuple[int, ...] = option((0,), range=(0, None), help="token positions never merged (CLS)")
    prop_attn: bool = option(True, help="proportional attention: log(size) added to each key's logits")
    outputs: str = option(
        "unmerge", choices=("unmerge", "merged"), help="'unmerge' restores the token count after the last "
        "block; 'merged' leaves the head on the merged tokens (refused if an output changes shape)",
    )  # fmt: skip
    tolerance: float = option(
        0.35, gt=0.0, help="the contract's threshold on the relative error of the graph's outputs"
    )

    def check(self, ctx: PassContext) -> None:
        if (self.r is None) == (self.keep is None):
            raise ValueError("give exactly one of r= (int or per-layer list) and keep= (fraction)")


def contract(opts: TokenMergeOptions) -> Contract:
    """EMPIRICAL with ``opts.tolerance`` as the threshold on the relative output error. The
    error is measured on the graph's outputs: for token-level outputs (an encoder's hidden states,
    unmerged) it is far larger than for a pooled embedding of the same run (real MiniLM, r = 1:
    0.52 on the hidden states at cosine 0.94 of the mean-pooled embedding), so a user who pools
    sets a tolerance for what they read."""
    return Contract(
        Exactness.EMPIRICAL,
        metric="relative error of the outputs vs the unmerged float64 reference",
        tolerance=opts.tolerance,
        preconditions="encoder blocks (attention -> residual -> MLP), key-padding masks only, "
        "run-time sequence length >= the example's",
    )


def _hint(d) -> int:
    if isinstance(d, int):
        return d
    return int(d.node.hint if d.node.hint is not None else d.node.shape_env.size_hint(d.node.expr))


@register_pass("tokens.merge", contract, options=TokenMergeOptions, after=("canonicalize",))
def token_merge(gm: fx.GraphModule, opts: TokenMergeOptions, ctx: PassContext) -> PassResult:
    """Merge similar tokens between attention and MLP of encoder blocks (EMPIRICAL; r = 0: EXACT)."""
    prop_attn, outputs = opts.prop_attn, opts.outputs
    result = PassResult(gm)
    sites = attention_nodes(gm)
    why = _not_an_encoder(gm, sites)
    if why:
        result.reason = f"not applicable: {why}"
        result.notes.append(result.reason)
        return result
    if not sites:
        result.notes.append("no tcomp.attention sites (run canonicalize first)")
        return result
    points: list[fx.Node | None] = []
    for attn in sites:
        try:
            points.append(merge_point(attn))
        except NotABlock as why:
            points.append(None)
            result.notes.append(f"site {_where(attn)}: no merging ({why})")
    first_ok = next((p for p in points if p is not None), None)
    if first_ok is None:
        return result
    tokens = shape(first_ok)[:2]
    protected = list(opts.protected)
    schedule = resolve(len(sites), _hint(tokens[1]), len(protected), r=opts.r, inflect=opts.inflect, keep=opts.keep)
    schedule = [ri if p is not None else 0 for ri, p in zip(schedule, points)]
    if not any(schedule):
        result.notes.append("r = 0 at every site: graph unchanged")
        return result
    first = next(i for i, ri in enumerate(schedule) if ri)
    try:
        if points[-1] is None:
            raise NotABlock("the last attention site is not in a block, so there is no place to unmerge")
        end = block_output(points[-1])
        pad = None
        for i in range(first, len(sites)):
            found = padding_keep(sites[i], tokens)
            pad = pad if found is None else found
    except NotABlock as why:
        result.notes.append(f"not merged: {why}")
        return result
    old_vals = {n: val(n) for n in gm.graph.nodes}
    first_node = _rewrite(gm, sites, points, schedule, end, pad, protected, prop_attn, outputs)
    try:
        reshape_tokens(gm, first_node, old_vals)
        if outputs == "merged":
            _check_outputs(gm, old_vals)
    except NotABlock as why:
        raise PassError(f"tokens.merge: {why}; try outputs='unmerge' or fewer merged layers") from why
    dead_code(gm.graph)
    gm.graph.lint()
    gm.recompile()
    n = _hint(tokens[1])
    for i, (attn, ri) in enumerate(zip(sites, schedule)):
        result.sites.append({"site": i, "source": attn.meta.get(meta.ATTN_SOURCE, ""), "tokens": n, "r": ri})
        n -= ri
    result.rewrites = sum(1 for ri in schedule if ri)
    result.notes.append(
        f"schedule r={schedule} on {_hint(tokens[1])} example tokens: {n} left after the last block; "
        f"protected {protected}; padding {'from input ' + pad.name if pad is not None else 'none'}; "
        f"proportional attention {'on' if prop_attn else 'off'}; outputs {outputs}"
    )
    return result


def _not_an_encoder(gm: fx.GraphModule, sites: list[fx.Node]) -> str:
    """Why the graph is not an encoder token merging may rewrite ("" when it may be one): a
    decoder's step graph (KV cache, cache positions) or causal attention."""
    for n in gm.graph.nodes:
        cached = n.op == "get_attr" and meta.KV_CACHE in n.meta
        if cached or n.meta.get(meta.CACHE_POSITION) or is_cached_attention(n):
            return (
                "a decoder step graph (KV cache): merged tokens would leave the cache slots later tokens "
                "read, and a decode step has a single token; token merging is for encoders"
            )
    causal = [s for s in sites if s.args[6]]
    if causal:
        return (
            f"causal attention at {_where(causal[0])}: a merged token would mix a token with later ones; "
            "token merging is for encoders"
        )
    return ""


def _where(n: fx.Node) -> str:
    return n.meta.get(meta.ATTN_SOURCE) or module_path(n) or n.name


def _after(n: fx.Node):
    return n.graph.inserting_before(n.next)


def _rewrite(gm, sites, points, schedule, end, pad, protected, prop_attn, outputs) -> fx.Node:
    """Insert the merges, the proportional/padding attention arguments and the unmerge; returns
    the first inserted node (shapes from there on are recomputed by the caller)."""
    graph = gm.graph
    keep = None
    if pad is not None:
        with _after(pad):
            keep = add_node(graph, aten.ne.Scalar, (pad, 0))
    size = src_map = bias = mask = first_node = None
    prot = list(protected)
    for attn, point, ri in zip(sites, points, schedule):
        if first_node is not None:
            q, k, v, _b, _m, scale, causal = attn.args[:7]
            attn.args = (q, k, v, bias, mask, scale, causal)
        if not ri:
            continue
        with _after(point):
            merged = add_node(graph, TOKEN_MERGE, (point, attn.args[1], size, keep, ri, prot))
            x, size, new_keep, assign = (add_node(graph, operator.getitem, (merged, j)) for j in range(4))
            keep = new_keep if pad is not None else None
            src_map = (
                assign if src_map is None else add_node(graph, aten.gather.default, (assign, 1, src_map))
            )
            bias = _per_key(graph, add_node(graph, aten.log.default, (size,))) if prop_attn else None
            mask = _per_key(graph, keep) if keep is not None else None
        point.replace_all_uses_with(x, delete_user_cb=lambda u, m=merged: u is not m)
        first_node = first_node or merged
        prot = list(range(len(protected)))
    if outputs == "unmerge":
        with _after(end):
            idx = add_node(graph, aten.unsqueeze.default, (src_map, -1))
            idx = add_node(graph, aten.expand.default, (idx, [-1, -1, shape(end)[-1]]))
            full = add_node(graph, aten.gather.default, (end, 1, idx))
        end.replace_all_uses_with(full, delete_user_cb=lambda u: u is not full)
    else:
        _weighted_means(gm, size)
    return first_node


def _per_key(graph: fx.Graph, t: fx.Node) -> fx.Node:
    """(B, N) -> (B, 1, 1, N): one value per key, broadcast over heads and queries."""
    return add_node(graph, aten.unsqueeze.default, (add_node(graph, aten.unsqueeze.default, (t, 1)), 1))


def _weighted_means(gm: fx.GraphModule, size: fx.Node) -> None:
    """``outputs="merged"``: means over the token axis of merged tokens become size-weighted."""
    graph = gm.graph
    nodes = list(graph.nodes)
    for n in nodes[nodes.index(size) :]:
        if n.op != "call_function" or n.target is not aten.mean.dim:
            continue
        x, dims = n.args[0], n.args[1]
        rank = len(shape(x) or ())
        if rank != 3 or [d % rank for d in dims] != [1]:
            continue
        keepdim = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
        call = graph.call_function  # fake values come later, from reshape_tokens
        with graph.inserting_before(n):
            total = call(aten.sum.dim_IntList, (size, [1], True))
            w = call(aten.unsqueeze.default, (call(aten.div.Tensor, (size, total)), -1))
            xw = call(aten.mul.Tensor, (x, call(aten.to.dtype, (w, val(x).dtype))))
            out = call(aten.sum.dim_IntList, (xw, [1], keepdim))
        n.replace_all_uses_with(out)
        graph.erase_node(n)


def _check_outputs(gm: fx.GraphModule, old_vals: dict) -> None:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    for leaf in torch.utils._pytree.tree_leaves(out.args[0]):
        if isinstance(leaf, fx.Node) and isinstance(val(leaf), torch.Tensor):
            before, after = old_vals.get(leaf), val(leaf)
            if before is not None and tuple(map(str, before.shape)) != tuple(map(str, after.shape)):
                raise NotABlock(
                    f"output {leaf.name} is token-level ({tuple(before.shape)} -> {tuple(after.shape)})"
                )
