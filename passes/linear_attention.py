"""``attention.linear``: softmax attention sites -> ``tcomp.linear_attention`` with a feature map.

Options (``("attention.linear", {...})``):

* ``feature_map``: ``"elu1"`` (default), ``"relu"``, ``"favor"``, ``"hedgehog"`` (passes/feature_maps.py).
* ``num_features`` / ``seed``: FAVOR+ random features (default 256, seed 0); ``feature_dim``:
  outputs of each hedgehog linear map (default: the head dim; features are twice that).
* ``layers``: None (every site), a list of site indices to convert, or ``"auto"``: convert the
  sites whose measured attention-output error on the calibration data is at most ``max_error``
  (default 0.35); ``keep``: site indices that stay softmax (the hybrid MASFormer/LoLCATs use).
* ``calibration``: model inputs (``tcomp.optimize(..., calibration=batches)`` hands them over).
  Hedgehog maps are fit on them by attention transfer, layer by layer (``steps``, ``lr``), with a
  progress bar; without calibration hedgehog keeps its identity initialisation.
* Attention-transfer options (passes/attention_transfer.py): ``loss`` -- ``"attention"`` (KL
  between softmax and linear attention rows, the Hedgehog loss), ``"output"`` (relative squared
  error of the attention output) or ``"both"``; ``sequential``: fit layer l on the inputs that the
  already-linearized layers 0..l-1 produce (targets: the original model's outputs), so that errors
  do not compound unseen; ``correction``: also fit a per-head affine correction of each site's
  output in closed form (ridge ``ridge`` towards the identity) -- weights beyond the feature maps;
  ``holdout``: fraction of the calibration sentences kept out of the fit to choose the best step.
* ``tolerance``: the contract's threshold on the model's relative output error.

Contract: ``favor`` is BOUNDED (relative error ~ 1/sqrt(m), see ``feature_maps.favor_bound``);
the other maps are EMPIRICAL (measured on real MiniLM by bench/linear_minilm.py). Sites whose
mask or bias couples queries and keys (relative positions, ALiBi, sliding windows) are skipped
with the reason.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
import torch.fx as fx

from tcomp import meta
from tcomp.dialect import attention_nodes
from tcomp.graph import copy_source_meta, module_path, remove_dead, val
from tcomp.passes.attention_transfer import fit_correction, fit_hedgehog, site_error
from tcomp.passes.feature_maps import (
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
from tcomp.pipeline import Contract, Exactness, PassResult, register_pass

# default thresholds on the model's relative output error vs float64 (EMPIRICAL maps); chosen from
# the MiniLM measurements in bench/results/linear-minilm-cpu.json
TOLERANCE = {"elu1": 0.6, "relu": 0.6, "hedgehog": 0.5}


def contract_for(options: dict) -> Contract:
    fm = options.get("feature_map", "elu1")
    tol = options.get("tolerance")
    if fm == "favor":
        m = int(options.get("num_features", 256))
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


@register_pass("attention.linear", contract_for({}), after=("canonicalize",), contract_for=contract_for)
def linear_attention(
    gm: fx.GraphModule,
    feature_map: str = "elu1",
    layers: Any = None,
    keep: Any = (),
    num_features: int = 256,
    seed: int = 0,
    calibration: Any = None,
    steps: int = 300,
    lr: float = 0.01,
    max_error: float = 0.35,
    tolerance: float | None = None,
    feature_dim: int | None = None,
    loss: str = "attention",
    sequential: bool = False,
    correction: bool = False,
    ridge: float = 0.1,
    holdout: float = 0.0,
) -> PassResult:
    """Rewrite softmax attention to linear attention with a feature map (favor BOUNDED, else EMPIRICAL)."""
    result = PassResult(gm)
    sites = []
    for node in attention_nodes(gm):
        try:
            sites.append(analyze(node))
        except NotKernelizable as why:
            result.notes.append(f"skipped site {node.meta.get(meta.ATTN_LAYER)} ({module_path(node)}): {why}")
    if layers == "auto" and calibration is None:
        raise ValueError(
            "layers='auto' measures each layer's error on calibration data: pass calibration=batches"
        )
    fit = feature_map == "hedgehog" and calibration is not None
    samples = capture_sites(gm, calibration) if calibration is not None and (fit or layers == "auto") else {}
    keep = set(keep or ())
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
                num_features=num_features, seed=seed + s.layer, feature_dim=feature_dim,
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
                    fmap, smp, steps, lr, lambda: advance(None, 1), loss=loss, targets=targets, holdout=holdout
                )
                if correction:
                    fit_correction(fmap, smp, targets, ridge)
            if smp is not None:
                rec["calib_error"] = site_error(fmap, smp)
                if layers == "auto" and rec["calib_error"] > max_error:
                    result.notes.append(
                        f"kept softmax at site {s.layer}: measured error {rec['calib_error']:.3f} > max_error {max_error}"
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
