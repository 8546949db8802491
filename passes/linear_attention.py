"""``attention.linear``: softmax attention sites -> ``tcomp.linear_attention`` with a feature map.

Options: :class:`LinearAttentionOptions` (feature map, which sites, attention transfer). Hedgehog
maps are fit on the run's calibration batches (``tcomp.optimize(..., calibration=batches)``) by
attention transfer, layer by layer (passes/attention_transfer.py), with a progress bar; without
calibration hedgehog keeps its identity initialisation. FAVOR+ features are drawn from the run's
seed (plus the site index).

Contract: ``favor`` is BOUNDED (relative error ~ 1/sqrt(m), see ``feature_maps.favor_bound``);
the other maps are EMPIRICAL (measured on real MiniLM by bench/linear_minilm.py). Sites whose
mask or bias couples queries and keys (relative positions, ALiBi, sliding windows) are skipped
with the reason. On a decoder's step graphs the sites keep a recurrent state in place of their KV
cache (passes/linear_attention_cache.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx

from tcomp import meta
from tcomp.contract import Contract, Exactness, PassResult
from tcomp.dialect import attention_nodes
from tcomp.dialect.cached_attention import is_cached_attention
from tcomp.graph import copy_source_meta, module_path, remove_dead, val
from tcomp.options import option
from tcomp.passes.attention_transfer import fit_correction, fit_hedgehog, site_error
from tcomp.passes.feature_maps import (
    FEATURE_MAPS,
    FeatureMap,
    NotKernelizable,
    analyze,
    capture_sites,
    combine,
    favor_bound,
    get_attr,
    graph_call,
    kernelize,
    make_feature_map,
)
from tcomp.passes.linear_attention_cache import linearize_cached
from tcomp.registry import PassContext, register_pass

# default thresholds on the model's relative output error vs float64 (EMPIRICAL maps); chosen from
# the MiniLM measurements in bench/results/linear-minilm-cpu.json
TOLERANCE = {"elu1": 0.6, "relu": 0.6, "hedgehog": 0.5}


@dataclass(frozen=True)
class KernelOptions:
    """The feature map of a kernelized rewrite (shared with ``attention.rpe_fft``)."""

    feature_map: str = option("elu1", choices=FEATURE_MAPS, help="phi of phi(q) phi(k)^T (passes/feature_maps.py)")
    num_features: int = option(256, range=(1, None), help="FAVOR+ random features m (error ~ 1/sqrt(m))")
    tolerance: float | None = option(
        None, gt=0.0, help="the contract's threshold on the model's relative output error (default: per map, "
        "elu1/relu 0.6, hedgehog 0.5, favor min(1, its bound))",
    )  # fmt: skip


@dataclass(frozen=True)
class LinearAttentionOptions(KernelOptions):
    """Options of ``attention.linear``."""

    layers: tuple[int, ...] | Literal["auto"] | None = option(
        None, help="site indices to convert (None: all); 'auto': those whose error on the calibration "
        "data is at most max_error",
    )  # fmt: skip
    keep: tuple[int, ...] = option((), help="site indices that stay softmax (hybrid models)")
    max_error: float = option(0.35, range=(0.0, None), help="layers='auto': largest measured attention-output error")
    feature_dim: int | None = option(
        None, range=(1, None), help="outputs of each hedgehog linear map (default: the head dim)"
    )
    steps: int = option(300, range=(0, None), help="attention-transfer steps per layer (hedgehog)")
    lr: float = option(0.01, gt=0.0, help="attention-transfer learning rate")
    loss: str = option(
        "attention", choices=("attention", "output", "both"), help="attention transfer's loss: KL between "
        "softmax and linear attention rows (Hedgehog), relative squared error of the output, or both",
    )  # fmt: skip
    sequential: bool = option(
        False, help="fit layer l on the inputs the already-linearized layers produce (targets: the original's)"
    )
    correction: bool = option(
        False, help="also fit a per-head affine correction of each site's output in closed form"
    )
    ridge: float = option(0.1, range=(0.0, None), help="correction: ridge towards the identity")
    holdout: float = option(
        0.0, range=(0.0, None), lt=1.0, help="fraction of calibration sentences kept out of the fit to pick the best step"
    )

    def check(self, ctx: PassContext) -> None:
        if self.layers == "auto" and ctx.calibration is None:
            raise ValueError(
                "layers='auto' measures each layer's error on calibration data: pass calibration=batches"
            )


def contract(opts: KernelOptions) -> Contract:
    fm, tol = opts.feature_map, opts.tolerance
    if fm == "favor":
        m = opts.num_features
        return Contract(
            Exactness.BOUNDED,
            bound=f"site rel. error <= 2 exp(2 R^2) / sqrt(m) = {favor_bound(m):.3g} at R = 1, m = {m}",
            tolerance=tol if tol is not None else min(1.0, favor_bound(m)),
            preconditions="|sqrt(scale) q|, |sqrt(scale) k| <= R; key-only masks/biases",
        )
    return Contract(
        Exactness.EMPIRICAL,
        metric=f"relative L2 error of the model outputs vs float64 with {fm} features",
        tolerance=tol if tol is not None else TOLERANCE.get(fm, 0.6),
    )


@register_pass("attention.linear", contract, options=LinearAttentionOptions, after=("canonicalize",))
def linear_attention(gm: fx.GraphModule, opts: LinearAttentionOptions, ctx: PassContext) -> PassResult:
    """Rewrite softmax attention to linear attention with a feature map (favor BOUNDED, else EMPIRICAL)."""
    feature_map, layers, calibration, steps, loss = opts.feature_map, opts.layers, ctx.calibration, opts.steps, opts.loss
    sequential, correction, holdout = opts.sequential, opts.correction, opts.holdout
    result = PassResult(gm)
    if any(is_cached_attention(n) for n in gm.graph.nodes):  # a decoder step graph: the recurrent form
        return linearize_cached(gm, opts, ctx, result)
    sites = []
    for node in attention_nodes(gm):
        try:
            sites.append(analyze(node))
        except NotKernelizable as why:
            result.notes.append(f"skipped site {node.meta.get(meta.ATTN_LAYER)} ({module_path(node)}): {why}")
    fit = feature_map == "hedgehog" and calibration is not None
    samples = capture_sites(gm, calibration) if calibration is not None and (fit or layers == "auto") else {}
    keep = set(opts.keep)
    chosen = [
        s for s in sites if s.layer not in keep and (layers in (None, "auto") or s.layer in set(layers))
    ]
    if fit:
        result.notes.append(
            f"hedgehog maps fit by attention transfer ({steps} steps per layer, {loss} loss"
            + (", sequential: inputs from the already-linearized layers" if sequential else "")
            + (", per-head output correction fitted" if correction else "")
            + (f", best step on {holdout:.0%} held-out calibration sentences" if holdout else "") + ")"
        )  # fmt: skip
    elif feature_map == "hedgehog":
        result.notes.append("hedgehog without calibration data: identity-initialised feature maps")
    with _progress(len(chosen) * steps if fit else 0) as advance:
        for i, s in enumerate(chosen):
            qv, kv = s.q.meta["val"], s.k.meta["val"]
            fmap = make_feature_map(
                feature_map, s.scale, int(qv.shape[-1]), int(qv.shape[1]), int(kv.shape[1]),
                num_features=opts.num_features, seed=ctx.seed + s.layer, feature_dim=opts.feature_dim,
            )  # fmt: skip
            rec = {"layer": s.layer, "module": module_path(s.node), "feature_map": feature_map}
            smp, targets = samples.get(s.node.name), None
            if smp is not None and fit and sequential and result.rewrites:
                # this layer's inputs as the linearized model computes them; the original outputs as targets
                targets = [x.attention() for x in smp]
                smp = capture_sites(gm, calibration)[s.node.name]
            if smp is not None and fit:
                advance(f"layer {i + 1}/{len(chosen)}", 0)
                fit_hedgehog(
                    fmap, smp, steps, opts.lr, lambda: advance(None, 1), loss=loss, targets=targets, holdout=holdout
                )
                if correction:
                    fit_correction(fmap, smp, targets, opts.ridge)
            if smp is not None:
                rec["calib_error"] = site_error(fmap, smp)
                if layers == "auto" and rec["calib_error"] > opts.max_error:
                    result.notes.append(
                        f"kept softmax at site {s.layer}: measured error {rec['calib_error']:.3f} > max_error {opts.max_error}"
                    )
                    continue
            _rewrite(gm, s, fmap)
            result.sites.append(rec)
            result.rewrites += 1
    gm.graph.lint()
    gm.recompile()
    return result


@contextmanager
def _progress(total: int):
    """A rich progress bar over the attention-transfer steps; ``advance(description, steps)``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if not total:
        yield lambda *_: None
        return
    with Progress(
        TextColumn("[bold]hedgehog[/bold] {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("attention transfer", total=total)

        def advance(description, steps):
            if description is not None:
                bar.update(task, description=description)
            bar.advance(task, steps)

        yield advance


def _rewrite(gm: fx.GraphModule, s, fmap: FeatureMap) -> None:
    graph = gm.graph
    prefix = f"tcomp_{fmap.name}_l{s.layer}"
    with graph.inserting_before(s.node):
        wq = wk = None
        if fmap.q_weight is not None:
            wq = get_attr(gm, f"{prefix}_q", fmap.q_weight.detach().clone())
            wk = (
                wq
                if fmap.k_weight is fmap.q_weight
                else get_attr(gm, f"{prefix}_k", fmap.k_weight.detach().clone())
            )
        call = graph_call(graph)
        out = kernelize(
            call, fmap, s.q, s.k, s.v, combine(call, s.key_masks), combine(call, s.query_masks),
            s.key_bias, s.causal, wq, wk,
        )  # fmt: skip
        lin = out if out.target is torch.ops.tcomp.linear_attention.default else out.args[0]
        if fmap.out_weight is not None:
            dt = val(out).dtype
            cw = get_attr(gm, f"{prefix}_out_w", fmap.out_weight.detach().to(dt))
            cb = get_attr(gm, f"{prefix}_out_b", fmap.out_bias.detach().to(dt))
            out = fmap.correct(call, out, cw, cb)
    lin.meta[meta.LINEAR_FEATURE_MAP] = {"feature_map": fmap.name, "layer": s.layer}
    copy_source_meta(lin, s.node)
    s.node.replace_all_uses_with(out)
    remove_dead(graph, [s.node])
