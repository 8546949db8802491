"""``attention.rpe_fft``: softmax attention sites with a relative-position bias -> kernelized
attention with RPE, ``tcomp.rpe_linear_attention`` (Luo et al. 2021), O(n log n) by FFT.

``attention.linear`` skips sites whose bias couples queries and keys; this pass takes exactly those
whose bias ``passes/rpe_detect.py`` proves to depend only on ``j - i`` (ALiBi, T5 buckets, learned
offset tables), so the two compose: ``["canonicalize", "attention.linear", "attention.rpe_fft"]``.
Each site gets the same feature map as ``attention.linear`` (options: :class:`RpeFftOptions`, the
feature-map options of ``attention.linear``; hedgehog is identity-initialised here, no attention
transfer; FAVOR+ features from the run's seed) and the weights ``c_{j-i} = exp(b_{j-i} - max b)``. The 2n-1 log-weights per head are
computed from the bias's producer with its query dim, then its key dim, cut to the first index
(``passes/rpe_coeffs.py``): T5 buckets of each offset then the table lookup, ALiBi slope * offset,
a gather from a learned offset table -- O(n) memory, valid at every length, checked equal bit for
bit to the bias's first column and row at every length the bias was proven Toeplitz at. A Toeplitz
bias with no such form (e.g. a learned (H, n, n) parameter) is read off the n x n tensor as before,
and the site's record and a note say so. Key-padding and query masks fold in as in
``attention.linear`` (a key-padding mask written into the bias as ``masked_fill(b, ~keep, -inf)``
is peeled off first); masks coupling queries and keys are skipped.

Contract: as a rewrite of softmax attention it is EMPIRICAL (metric: the model's relative output
error vs float64, tolerance as ``attention.linear``'s map); the op it emits is FP_EQUIVALENT to the
quadratic kernelized-attention-with-RPE reference (tests/passes/test_rpe_fft_op.py).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.fx as fx

from tcomp import meta
from tcomp.contract import Contract, Exactness, PassResult
from tcomp.dialect import attention_nodes
from tcomp.dialect.cached_attention import cached_attention_refusal
from tcomp.graph import add_node, copy_source_meta, module_path, remove_dead, shape
from tcomp.options import option
from tcomp.passes.feature_maps import (
    LINEAR,
    NotKernelizable,
    analyze,
    combine,
    get_attr,
    graph_call,
    kernelize,
    make_feature_map,
)
from tcomp.passes.linear_attention import TOLERANCE, KernelOptions
from tcomp.passes.rpe_coeffs import Restrictor, coefficients, drop_unobserved_inplace
from tcomp.passes.rpe_detect import NotRelative, evaluate, relative_bias, sequence_symbol, toeplitz_coeffs
from tcomp.passes.rpe_masks import peel_masks
from tcomp.registry import PassContext, register_pass

aten = torch.ops.aten
RPE = torch.ops.tcomp.rpe_linear_attention.default
FROM_FAMILY = "from the bias family, O(n)"  # how the coefficients are computed when no n x n tensor is read


@dataclass(frozen=True)
class RpeFftOptions(KernelOptions):
    """Options of ``attention.rpe_fft``: the feature map, as ``attention.linear``'s."""

    tolerance: float | None = option(
        None, gt=0.0, help="the contract's threshold on the model's relative output error (default: per map, "
        "elu1/relu/favor 0.6, hedgehog 0.5; EMPIRICAL for every map here)",
    )  # fmt: skip


def contract(opts: RpeFftOptions) -> Contract:
    fm, tol = opts.feature_map, opts.tolerance
    return Contract(
        Exactness.EMPIRICAL,
        metric=f"relative L2 error of the model outputs vs float64 with {fm} features and FFT relative-position weights",
        tolerance=tol if tol is not None else TOLERANCE.get(fm, 0.6),
        preconditions="bias depends only on j - i (checked per site); key-only/query-only masks",
    )


@register_pass("attention.rpe_fft", contract, options=RpeFftOptions, after=("canonicalize",))
def rpe_fft(gm: fx.GraphModule, opts: RpeFftOptions, ctx: PassContext) -> PassResult:
    """Rewrite softmax sites with a relative-position bias to FFT kernelized attention (EMPIRICAL)."""
    result = PassResult(gm)
    refusal = cached_attention_refusal(gm, "FFT relative-position attention")
    if refusal:
        result.reason = refusal
        result.notes.append(refusal)
        return result
    restrictors: dict[str, Restrictor] = {}  # per sequence length symbol; shared producers cut once
    for node in attention_nodes(gm):
        where = f"site {node.meta.get(meta.ATTN_LAYER)} ({module_path(node)})"
        bias = node.args[3]
        if bias is None:
            continue  # attention.linear's business
        bias, mask = peel_masks(gm, node, bias, node.args[4])
        try:
            rel = relative_bias(gm, bias)
            shim = types.SimpleNamespace(args=(*node.args[:3], None, mask, *node.args[5:7]), meta=node.meta)
            site = analyze(shim)
        except (NotRelative, NotKernelizable) as why:
            _skip(result, gm, node, mask, f"skipped {where}: {why}")
            continue
        seq = sequence_symbol(bias)
        restrictor = restrictors.setdefault(str(seq), Restrictor(gm.graph, seq))
        qv, kv = site.q.meta["val"], site.k.meta["val"]
        heads = int(qv.shape[1])
        if rel.heads not in (1, heads):
            _skip(result, gm, node, mask, f"skipped {where}: bias has {rel.heads} heads, the site {heads}")
            continue
        fmap = make_feature_map(
            opts.feature_map, site.scale, int(qv.shape[-1]), heads, int(kv.shape[1]),
            num_features=opts.num_features, seed=ctx.seed + site.layer,
        )  # fmt: skip
        with gm.graph.inserting_before(node):
            coeffs, how = _coeffs(gm, restrictor, bias, rel, heads)
        _rewrite(gm, node, site, fmap, coeffs)
        result.sites.append(
            {"layer": site.layer, "module": module_path(node), "feature_map": opts.feature_map,
             "rpe_family": rel.family, "rpe_checked_lengths": rel.lengths, "rpe_coefficients": how}
        )  # fmt: skip
        if how != FROM_FAMILY:
            result.notes.append(f"{where}: relative-position coefficients {how}")
        result.rewrites += 1
    drop_unobserved_inplace(gm.graph)
    gm.graph.lint()
    gm.recompile()
    return result


def _skip(result: PassResult, gm: fx.GraphModule, node: fx.Node, mask, note: str) -> None:
    result.notes.append(note)
    if mask is not node.args[4]:
        remove_dead(gm.graph, [mask])  # the key mask peeled off the bias is not needed after all


def _coeffs(gm: fx.GraphModule, restrictor: Restrictor, bias: fx.Node, rel, heads: int):
    """(H, 2n-1) float32 log-weights of the Toeplitz bias, computed from the bias's producer in O(n)
    (``rpe_coeffs``), checked equal bit for bit to the Toeplitz coefficients of the bias itself at
    every length ``rel`` was proven at. Returns the node and how it was obtained."""
    graph = gm.graph
    got = coefficients(graph, bias, restrictor)
    seq = sequence_symbol(bias)
    try:
        for n in rel.lengths:
            want = toeplitz_coeffs(evaluate(gm, bias, seq, n).double()).float()
            have = evaluate(gm, got.node, seq, n)
            if not torch.equal(have.expand_as(want) if have.shape[0] == 1 else have, want):
                raise NotRelative(f"the O(n) coefficients differ from the bias's at n = {n}")
        how = (
            FROM_FAMILY
            if not got.quadratic
            else (f"read off the n x n tensor {got.quadratic[0].name} (no O(n) form found)")
        )
    except NotRelative as why:  # keep the proven route: the bias's first row and column
        remove_dead(graph, [got.node])
        restrictor.memo = {k: v for k, v in restrictor.memo.items() if not getattr(v, "_erased", False)}
        got = coefficients(graph, bias, Restrictor(graph, seq, stop_all=True))
        how = f"read off the n x n bias ({why})"
    c = got.node
    if shape(c)[0] == 1 and heads > 1:
        c = add_node(graph, aten.expand.default, (c, [heads, -1]))
    return c, how


def _rewrite(gm: fx.GraphModule, node: fx.Node, site, fmap, coeffs: fx.Node) -> None:
    graph = gm.graph
    with graph.inserting_before(node):
        call = graph_call(graph)
        wq = wk = None
        if fmap.q_weight is not None:
            prefix = f"tcomp_rpe_{fmap.name}_l{site.layer}"
            wq = get_attr(gm, f"{prefix}_q", fmap.q_weight.detach().clone())
            wk = (
                wq
                if fmap.k_weight is fmap.q_weight
                else get_attr(gm, f"{prefix}_k", fmap.k_weight.detach().clone())
            )

        def rpe_call(op, *args, **kwargs):  # kernelize's linear attention, with the RPE weights
            if op is LINEAR:
                qf, kf, v, key_mask, causal = args
                return call(RPE, qf, kf, v, coeffs, key_mask, causal)
            return call(op, *args, **kwargs)

        out = kernelize(
            rpe_call, fmap, site.q, site.k, site.v, combine(call, site.key_masks),
            combine(call, site.query_masks), None, site.causal, wq, wk,
        )  # fmt: skip
    op = out if out.target is RPE else out.args[0]
    op.meta[meta.LINEAR_FEATURE_MAP] = {"feature_map": fmap.name, "layer": site.layer}
    copy_source_meta(op, node)
    node.replace_all_uses_with(out)
    remove_dead(graph, [node])
