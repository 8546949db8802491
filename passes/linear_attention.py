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
* ``tolerance``: the contract's threshold on the model's relative output error.

Contract: ``favor`` is BOUNDED (relative error ~ 1/sqrt(m), see ``feature_maps.favor_bound``);
the other maps are EMPIRICAL (measured on real MiniLM by bench/linear_minilm.py). Sites whose
mask or bias couples queries and keys (relative positions, ALiBi, sliding windows) are skipped
with the reason.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx

from tcomp import meta
from tcomp.graph import copy_source_meta, module_path, remove_dead
from tcomp.ops import attention_nodes
from tcomp.passes.feature_maps import (
    FeatureMap,
    NotKernelizable,
    SiteSample,
    analyze,
    capture_sites,
    combine,
    eager,
    favor_bound,
    get_attr,
    graph_call,
    kernelize,
    make_feature_map,
    rel_err,
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
    samples = {}
    if calibration is not None and (feature_map == "hedgehog" or layers == "auto"):
        samples = capture_sites(gm, calibration)
    keep = set(keep or ())
    chosen = [
        s for s in sites if s.layer not in keep and (layers in (None, "auto") or s.layer in set(layers))
    ]
    maps = {}
    for s in chosen:
        qv, kv = s.q.meta["val"], s.k.meta["val"]
        maps[s.node.name] = make_feature_map(
            feature_map, s.scale, int(qv.shape[-1]), int(qv.shape[1]), int(kv.shape[1]),
            num_features=num_features, seed=seed + s.layer, feature_dim=feature_dim,
        )  # fmt: skip
    if feature_map == "hedgehog" and samples:
        fit_all(maps, samples, steps, lr)
        result.notes.append(f"hedgehog maps fit by attention transfer ({steps} steps per layer)")
    elif feature_map == "hedgehog":
        result.notes.append("hedgehog without calibration data: identity-initialised feature maps")
    for s in chosen:
        fmap = maps[s.node.name]
        rec = {"layer": s.layer, "module": module_path(s.node), "feature_map": feature_map}
        if s.node.name in samples:
            rec["calib_error"] = site_error(fmap, samples[s.node.name])
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
    lin.meta[meta.LINEAR_FEATURE_MAP] = {"feature_map": fmap.name, "layer": s.layer}
    copy_source_meta(lin, s.node)
    s.node.replace_all_uses_with(out)
    remove_dead(graph, [s.node])


def _eager_site(fmap: FeatureMap, smp: SiteSample, wq=None, wk=None) -> torch.Tensor:
    km, qm = smp.key_query_masks()
    return kernelize(eager, fmap, smp.q, smp.k, smp.v, km, qm, smp.key_bias(), smp.causal,
                     fmap.q_weight if wq is None else wq, fmap.k_weight if wk is None else wk)  # fmt: skip


def site_error(fmap: FeatureMap, samples: list[SiteSample]) -> float:
    """Mean relative error of the site's linear attention output vs its softmax attention output."""
    with torch.no_grad():
        errs = [rel_err(_eager_site(fmap, smp), smp.attention()) for smp in samples]
    return float(sum(errs) / len(errs))


def _linear_weights(fmap: FeatureMap, smp: SiteSample, wq, wk) -> torch.Tensor:
    """Attention weights (B, H, N, M) of the linear attention (rows sum to 1 or are all zero)."""
    qf = fmap.apply(eager, smp.q, "q", wq)
    kf = fmap.apply(eager, smp.k, "k", wk)
    n_rep = qf.shape[1] // kf.shape[1]
    if n_rep > 1:
        kf = kf.repeat_interleave(n_rep, 1)
    sc = torch.matmul(qf, kf.transpose(-2, -1))
    kb = smp.key_bias()
    if kb is not None:
        top = kb.amax(-1, keepdim=True)
        sc = sc * torch.exp(kb - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    km, qm = smp.key_query_masks()
    if km is not None:
        sc = sc * km * qm
    if smp.causal:
        sc = sc * torch.ones(sc.shape[-2:], dtype=torch.bool).tril()
    return sc / sc.sum(-1, keepdim=True).clamp_min(1e-20)


def fit_hedgehog(fmap: FeatureMap, samples: list[SiteSample], steps: int, lr: float, advance=None) -> float:
    """Attention transfer: fit the per-head q/k maps so the linear attention weights match the
    softmax weights (cross-entropy over the keys, mean over the query rows); returns the final loss."""
    wq = fmap.q_weight.clone().requires_grad_(True)
    wk = fmap.k_weight.clone().requires_grad_(True)
    opt = torch.optim.Adam([wq, wk], lr=lr)
    targets = [smp.softmax() for smp in samples]
    loss = torch.tensor(math.nan)
    for _ in range(steps):
        loss = 0.0
        for smp, target in zip(samples, targets):
            lin = _linear_weights(fmap, smp, wq, wk)
            rows = target.sum(-1) > 0
            ce = -(target * torch.log(lin + 1e-12)).sum(-1)
            loss = loss + ce[rows].mean() / len(samples)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if advance is not None:
            advance()
    fmap.q_weight, fmap.k_weight = wq.detach(), wk.detach()
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


def fit_all(maps: dict[str, FeatureMap], samples: dict[str, list[SiteSample]], steps: int, lr: float) -> None:
    """Fit every site's hedgehog map, layer by layer, behind a rich progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    todo = [(name, fmap) for name, fmap in maps.items() if name in samples]
    with Progress(
        TextColumn("[bold]hedgehog[/bold] {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("attention transfer", total=steps * len(todo))
        for i, (name, fmap) in enumerate(todo):
            bar.update(task, description=f"layer {i + 1}/{len(todo)}")
            with torch.enable_grad():
                loss = fit_hedgehog(fmap, samples[name], steps, lr, lambda: bar.advance(task))
            fmap.notes.append(f"attention-transfer loss {loss:.4f}")
