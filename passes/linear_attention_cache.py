"""``attention.linear`` on a decoder's step graphs: the KV cache becomes the recurrent state.

A cache-form site ``tcomp.cached_attention(q, k_cache, v_cache, ...)`` whose cache is written by
the step (``index_copy_`` of the new keys and values at the cache positions) and whose mask is
tcomp's full causal cache mask (recognised by evaluation, :mod:`tcomp.mask_probe`) becomes
``tcomp.recurrent_linear_attention`` on the features of the *new* queries and keys: the site's
keys and values are no longer stored, only the state ``S = sum phi(k) v^T`` and normaliser
``z = sum phi(k)`` of the layer (buffers ``tcomp_kv_s_{layer}`` / ``tcomp_kv_z_{layer}``, float32,
(B, Hk, F, Dv) and (B, Hk, F)), which the graph writes back in place. Padding tokens (``padding``
0 at their cache position) never enter the state; a step at cache position 0 starts from zeros.
The prefill and decode graphs name the state alike, so they share it as they shared the cache.

What is refused, per site, with the reason: an int8 cache; a cache the step does not write (or
that another site reads); a mask that is not the full causal one (sliding windows, chunked
attention, ALiBi and other biases); hedgehog maps fit on calibration data and ``layers="auto"``
(each graph would be fit on its own: the two graphs' feature maps must be one map).

The contract is the pass's own (EMPIRICAL for elu1/relu/hedgehog, BOUNDED for favor): the model's
logits against the float64 exact model's. A decode graph is checked after the prefix the reference
prompt gave, which the linear graph reads through its own state (``tcomp.decoder.StepReference``
replays the prompt one token at a time): its error is the one generation sees.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from tcomp import kv_cache, meta
from tcomp.contract import PassResult
from tcomp.dialect.cached_attention import CACHED_ATTENTION, is_cached_attention
from tcomp.graph import add_buffer, add_node, copy_source_meta, module_path, val
from tcomp.mask_probe import cache_mask_form
from tcomp.passes.feature_maps import get_attr, graph_call, make_feature_map

aten = torch.ops.aten
RECURRENT = torch.ops.tcomp.recurrent_linear_attention.default


def _written(x) -> tuple[fx.Node, fx.Node] | None:
    """(buffer get_attr, the new tokens) when ``x`` is ``index_copy_(buffer, 2, positions, new)``."""
    while isinstance(x, fx.Node) and x.op == "call_function" and x.target is aten.alias.default:
        x = x.args[0]
    if not (isinstance(x, fx.Node) and x.op == "call_function" and x.target is aten.index_copy_.default):
        return None
    buf, dim, pos, new = x.args[:4]
    if not (isinstance(buf, fx.Node) and buf.op == "get_attr" and meta.KV_CACHE in buf.meta):
        return None
    if dim != 2 or not (isinstance(pos, fx.Node) and pos.meta.get(meta.CACHE_POSITION)):
        return None
    return buf, new


def _chain(buf: fx.Node) -> tuple[list[fx.Node], set[fx.Node]]:
    """(the in-place writes and aliases of ``buf``, in order; every other node that reads it)."""
    writes, readers, stack = [], set(), [buf]
    while stack:
        n = stack.pop()
        for u in n.users:
            if u.op == "call_function" and u.target in (aten.index_copy_.default, aten.alias.default) and u.args[0] is n:
                writes.append(u)
                stack.append(u)
            else:
                readers.add(u)
    return writes, readers


def _placeholder(gm: fx.GraphModule, key: str) -> fx.Node | None:
    return next((n for n in gm.graph.nodes if n.op == "placeholder" and n.meta.get(key)), None)


def linearize_cached(gm: fx.GraphModule, opts, ctx, result: PassResult) -> PassResult:
    """Turn each eligible cache-form site of the step graph ``gm`` into its recurrent linear form
    (see the module docstring); ``result`` collects sites, rewrites and the skipped sites' reasons."""
    sites = [n for n in gm.graph.nodes if is_cached_attention(n)]
    why_all = ""
    if opts.feature_map == "hedgehog" and ctx.calibration is not None:
        why_all = ("hedgehog maps fit on calibration data are not built for decoders yet (the prefill and "
                   "decode graphs would each fit their own map; their shared state needs one)")  # fmt: skip
    elif opts.layers == "auto":
        why_all = "layers='auto' measures sites on calibration data of encoder graphs; on a decoder name the layers"
    elif opts.correction:
        why_all = "the fitted output correction is not built for decoders"
    if why_all:
        result.reason = f"not applicable to this decoder step graph: {why_all}"
        result.notes.append(result.reason)
        return result
    position = _placeholder(gm, meta.CACHE_POSITION)
    padding = _placeholder(gm, meta.STEP_PADDING)
    keep, wanted = set(opts.keep), None if opts.layers is None else set(opts.layers)
    shared: dict[str, fx.Node] = {}
    forms: dict = {}  # (mask, bias) -> cache_mask_form's answer
    for node in sites:
        layer = int(node.meta.get(meta.ATTN_LAYER, -1))
        where = f"site {layer} ({module_path(node) or node.name})"
        if layer in keep or (wanted is not None and layer not in wanted):
            continue
        why = _refusal(gm, node, position, padding, forms)
        if why:
            result.notes.append(f"skipped {where}: {why}")
            continue
        _rewrite(gm, node, opts, ctx, layer, position, padding, shared)
        result.sites.append({"layer": layer, "module": module_path(node), "feature_map": opts.feature_map,
                             "form": "recurrent state"})  # fmt: skip
        result.rewrites += 1
    if result.rewrites:
        result.notes.append(
            f"{result.rewrites} decoder attention site(s) read a recurrent state (tcomp_kv_s_*/z_*) in place of "
            "their KV cache: constant memory per token"
        )
    elif sites and not result.reason:
        result.reason = "no cache-form site could take the recurrent form (reasons above)"
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return result


def _refusal(gm: fx.GraphModule, node: fx.Node, position, padding, forms: dict) -> str:
    a = CACHED_ATTENTION.bind(node)
    if position is None or padding is None:
        return "the graph has no marked cache-position and padding inputs"
    if a["k_scale"] is not None or a["v_scale"] is not None:
        return "it reads an int8 KV cache (a linear decoder keeps a state, not a cache: use kv_cache='model')"
    wk, wv = _written(a["k_cache"]), _written(a["v_cache"])
    if wk is None or wv is None:
        return "its keys or values are not the cache this step writes (index_copy_ at the cache positions)"
    for buf in (wk[0], wv[0]):
        if _chain(buf)[1] - {node}:
            return f"its cache ({buf.target}) is read by another site too"
    key = (a["mask"], a["bias"])
    if key not in forms:  # layers usually share one mask: evaluate it once
        forms[key] = cache_mask_form(gm, a["mask"], a["bias"])
    form = forms[key]
    if form != "causal":
        return form
    return ""


def _rewrite(gm, node, opts, ctx, layer, position, padding, shared) -> None:
    graph = gm.graph
    a = CACHED_ATTENTION.bind(node)
    (kbuf, k_new), (vbuf, v_new) = _written(a["k_cache"]), _written(a["v_cache"])
    cache_layer = kbuf.meta[meta.KV_CACHE]["layer"]
    qv, kv, vv = val(a["q"]), val(k_new), val(v_new)
    fmap = make_feature_map(
        opts.feature_map, float(a["scale"]), int(qv.shape[-1]), int(qv.shape[1]), int(kv.shape[1]),
        num_features=opts.num_features, seed=ctx.seed + layer, feature_dim=opts.feature_dim,
    )  # fmt: skip
    call = graph_call(graph)
    prefix = f"tcomp_{fmap.name}_l{layer}"
    with graph.inserting_before(node):
        if "fresh" not in shared:  # step inputs read once per graph
            real = call(aten.index_select.default, padding, 1, position)
            shared["real"] = call(aten.ne.Scalar, real, 0)
            shared["fresh"] = call(aten.eq.Scalar, call(aten.slice.Tensor, position, 0, 0, 1), 0)
        wq = wk = None
        if fmap.q_weight is not None:
            wq = get_attr(gm, f"{prefix}_q", fmap.q_weight.detach().clone())
            wk = wq if fmap.k_weight is fmap.q_weight else get_attr(gm, f"{prefix}_k", fmap.k_weight.detach().clone())
        qf = fmap.apply(call, a["q"], "q", wq)
        kf = call(aten._to_copy.default, fmap.apply(call, k_new, "k_state", wk), dtype=val(qf).dtype)
        vf = call(aten._to_copy.default, v_new, dtype=val(qf).dtype)
        work = torch.float64 if qv.dtype == torch.float64 else torch.float32
        B, Hk, F, Dv = int(kv.shape[0]), int(kv.shape[1]), int(val(kf).shape[-1]), int(vv.shape[-1])
        sname, zname = kv_cache.state_names(cache_layer)
        dev = getattr(gm, kbuf.target).device  # where the cache it replaces lives
        s = add_buffer(gm, sname, torch.zeros(B, Hk, F, Dv, dtype=work, device=dev), like=a["q"])
        z = add_buffer(gm, zname, torch.zeros(B, Hk, F, dtype=work, device=dev), like=a["q"])
        for n, kind in ((s, "s"), (z, "z")):
            n.meta[meta.KV_CACHE] = {"layer": cache_layer, "kind": kind}
        rec = call(RECURRENT, qf, kf, vf, shared["real"], s, z, shared["fresh"])
        out = add_node(graph, operator.getitem, (rec, 0))
        call(aten.copy_.default, s, add_node(graph, operator.getitem, (rec, 1)))
        call(aten.copy_.default, z, add_node(graph, operator.getitem, (rec, 2)))
        if val(out).dtype != val(node).dtype:
            out = call(aten._to_copy.default, out, dtype=val(node).dtype)
    rec.meta[meta.LINEAR_FEATURE_MAP] = {"feature_map": fmap.name, "layer": layer}
    copy_source_meta(rec, node)
    node.replace_all_uses_with(out)
    graph.erase_node(node)
    for buf in (kbuf, vbuf):  # the cache is no longer written nor read
        for w in reversed(_chain(buf)[0]):
            if not w.users:
                graph.erase_node(w)
        if not buf.users:
            graph.erase_node(buf)
            delattr(gm, buf.target)

