"""``attention.softmax_free``: SOFT (Lu et al. 2021) -- a Gaussian kernel with a Nyström low-rank
approximation -- for pretrained softmax attention, through ``tcomp.linear_attention``.

With ``x' = sqrt(s) x``, softmax attention is exactly a row-normalised Gaussian kernel with key
weights: ``exp(s q.k) = G(q', k') exp(|q'|^2/2) exp(|k'|^2/2)``, ``G(x, y) = exp(-|x - y|^2 / 2)``;
the query factor cancels in the row normalisation. ``G`` is approximated with ``m`` landmarks
``L`` per head: ``G(Q, K) ~ G(Q, L) G(L, L)^+ G(L, K)``, the Moore–Penrose inverse computed by
Newton–Schulz iteration with a convergence check (a site whose iteration does not converge is
skipped and the residual reported). The site becomes ``linear_attention(G(Q, L) G(L, L)^+,
G(K, L) * w_k, v)`` with ``w_k = exp(|k'|^2/2 - max)``; features may be negative, the op's
normaliser guard returns zeros for rows whose normaliser is not positive.

Options: :class:`SoftmaxFreeOptions`. Landmarks (k-means of the calibration queries and keys of
each head) and the kernel scale are chosen on ``calibration`` data, which the pass requires. Contract: EMPIRICAL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import Tensor

from tcomp import meta
from tcomp.contract import Contract, Exactness, PassResult
from tcomp.dialect import attention_nodes
from tcomp.dialect.cached_attention import cached_attention_refusal
from tcomp.graph import copy_source_meta, module_path, remove_dead
from tcomp.options import option
from tcomp.passes.feature_maps import (
    NotKernelizable,
    SiteSample,
    analyze,
    capture_sites,
    combine,
    eager,
    get_attr,
    graph_call,
    rel_err,
)
from tcomp.registry import PassContext, register_pass

aten = torch.ops.aten
LINEAR = torch.ops.tcomp.linear_attention.default


@dataclass(frozen=True)
class SoftmaxFreeOptions:
    """Options of ``attention.softmax_free`` (landmarks come from the run's calibration batches)."""

    landmarks: int = option(32, range=(1, None), help="Nyström landmarks m per head")
    normalize: str = option(
        "row", choices=("row", "symmetric"), help="'row', or 'symmetric': keys also divided by the square "
        "root of their column sums (SOFT++), then rows normalised",
    )  # fmt: skip
    tied: bool = option(
        False, help="use the queries as keys in the kernel (SOFT's tied q/k; changes a pretrained model)"
    )
    scales: tuple[float, ...] = option(
        (0.7, 0.85, 1.0), gt=0.0, help="kernel-bandwidth multipliers tried on the calibration data (best kept)"
    )
    newton_iters: int = option(100, range=(1, None), help="most Newton–Schulz iterations of the pseudo-inverse")
    newton_tol: float = option(1e-6, gt=0.0, help="residual |A X A - A| / |A| the iteration must reach")
    layers: tuple[int, ...] | None = option(None, help="site indices to convert (None: all)")
    keep: tuple[int, ...] = option((), help="site indices that stay softmax")
    tolerance: float = option(0.6, gt=0.0, help="the contract's threshold on the model's relative output error")


def contract(opts: SoftmaxFreeOptions) -> Contract:
    return Contract(
        Exactness.EMPIRICAL,
        metric="relative L2 error of the model outputs vs float64 (SOFT, Nyström landmarks)",
        tolerance=opts.tolerance,
    )


def newton_pinv(a: Tensor, iters: int = 100, tol: float = 1e-7) -> tuple[Tensor, float, int]:
    """Moore–Penrose inverse of each (m, m) matrix of ``a`` by Newton–Schulz iteration in float64:
    ``X0 = A^T / (|A|_1 |A|_inf)``, ``X <- X (2I - A X)``. Stops when the residual
    ``|A X A - A| / |A|`` (worst over the batch) falls below ``tol``; returns (X, residual, iterations)."""
    a = a.double()
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    norm1 = a.abs().sum(-2).amax(-1)[..., None, None]
    norminf = a.abs().sum(-1).amax(-1)[..., None, None]
    x = a.transpose(-2, -1) / (norm1 * norminf)
    res = math.inf
    for i in range(1, iters + 1):
        x = x @ (2 * eye - a @ x)
        res = float(((a @ x @ a - a).flatten(-2).norm(dim=-1) / a.flatten(-2).norm(dim=-1)).max())
        if res < tol:
            return x, res, i
    return x, res, iters


def kmeans(x: Tensor, m: int, iters: int = 15, seed: int = 0) -> Tensor:
    """(H, m, D) centroids of the points (H, P, D) by Lloyd's algorithm (k-means++-free: random init)."""
    gen = torch.Generator().manual_seed(seed)
    h, p, _ = x.shape
    idx = torch.stack([torch.randperm(p, generator=gen)[:m] for _ in range(h)])
    c = torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1])).clone()
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(-1)  # (H, P)
        onehot = torch.nn.functional.one_hot(assign, m).to(x.dtype)  # (H, P, m)
        count = onehot.sum(1)[..., None]
        c = torch.where(count > 0, onehot.transpose(1, 2) @ x / count.clamp_min(1), c)
    return c


def _gauss(call, x, lm, lm_sq):
    """``G(x, L)`` (…, m) for x (B, H, N, D) scaled, landmarks (H, m, D) and their squared norms (H, 1, m)."""
    xx = call(aten.sum.dim_IntList, call(aten.mul.Tensor, x, x), [-1], True)
    xl = call(aten.matmul.default, x, call(aten.transpose.int, lm, -2, -1))
    d2 = call(aten.add.Tensor, call(aten.sub.Tensor, xx, call(aten.mul.Tensor, xl, 2.0)), lm_sq)
    return call(aten.exp.default, call(aten.mul.Tensor, d2, -0.5))


def soft_site(call, q, k, v, key_mask, query_mask, causal, scale, lm, lm_sq, pinv, normalize, tied):
    """The SOFT attention of one site (eager or in a graph, like ``feature_maps.kernelize``)."""
    qs = call(aten.mul.Tensor, call(aten._to_copy.default, q, dtype=torch.float32), math.sqrt(scale))
    ks = (
        qs
        if tied
        else call(aten.mul.Tensor, call(aten._to_copy.default, k, dtype=torch.float32), math.sqrt(scale))
    )
    qf = call(aten.matmul.default, _gauss(call, qs, lm, lm_sq), pinv)
    kf = _gauss(call, ks, lm, lm_sq)
    half = call(aten.mul.Tensor, call(aten.sum.dim_IntList, call(aten.mul.Tensor, ks, ks), [-1], True), 0.5)
    top = call(aten.amax.default, half, [-2, -1], True)
    kf = call(aten.mul.Tensor, kf, call(aten.exp.default, call(aten.sub.Tensor, half, top)))
    if key_mask is not None:
        kf = call(aten.where.ScalarOther, call(aten.transpose.int, key_mask, -2, -1), kf, 0.0)
    if query_mask is not None:
        qf = call(aten.where.ScalarOther, query_mask, qf, 0.0)
    if normalize == "symmetric":
        qsum = call(aten.sum.dim_IntList, qf, [-2], True)  # (B, H, 1, m)
        col = call(aten.matmul.default, kf, call(aten.transpose.int, qsum, -2, -1))  # (B, H, M, 1)
        col = call(aten.clamp_min.default, col, 1e-20)
        kf = call(aten.mul.Tensor, kf, call(aten.rsqrt.default, col))
    out = call(LINEAR, qf, kf, call(aten._to_copy.default, v, dtype=torch.float32), None, causal)
    return call(aten._to_copy.default, out, dtype=v.dtype if isinstance(v, Tensor) else v.meta["val"].dtype)


@register_pass("attention.softmax_free", contract, options=SoftmaxFreeOptions, after=("canonicalize",))
def softmax_free(gm: fx.GraphModule, opts: SoftmaxFreeOptions, ctx: PassContext) -> PassResult:
    """Rewrite softmax attention to SOFT (Gaussian kernel, Nyström landmarks) via linear attention (EMPIRICAL)."""
    calibration, layers, normalize, tied = ctx.calibration, opts.layers, opts.normalize, opts.tied
    result = PassResult(gm)
    refusal = cached_attention_refusal(gm, "softmax-free attention")
    if refusal:
        result.reason = refusal
        result.notes.append(refusal)
        return result
    if calibration is None:
        result.notes.append(
            "attention.softmax_free needs calibration data to place its landmarks: nothing done"
        )
        return result
    samples = capture_sites(gm, calibration)
    keep = set(opts.keep)
    for node in attention_nodes(gm):
        layer = node.meta.get(meta.ATTN_LAYER)
        if layer in keep or (layers is not None and layer not in set(layers)):
            continue
        try:
            site = analyze(node)
            if site.key_bias is not None:
                raise NotKernelizable("additive key bias (not supported by the Gaussian-kernel rewrite)")
            if node.args[0].meta["val"].shape[1] != node.args[1].meta["val"].shape[1]:
                raise NotKernelizable("grouped kv heads (landmarks are per query head)")
            fit = _fit(samples[node.name], opts.landmarks, opts.scales, normalize, tied, opts.newton_iters, opts.newton_tol)
        except NotKernelizable as why:
            result.notes.append(f"skipped site {layer} ({module_path(node)}): {why}")
            continue
        _rewrite(gm, site, fit, normalize, tied)
        result.sites.append(
            {
                "layer": layer,
                "module": module_path(node),
                **{k: fit[k] for k in ("scale", "calib_error", "newton_residual", "newton_iters")},
            }
        )
        result.rewrites += 1
    gm.graph.lint()
    gm.recompile()
    return result


def _points(smp: SiteSample, scale: float) -> Tensor:
    """(H, P, D) scaled queries and kept keys of one calibration batch."""
    km, _ = smp.key_query_masks()
    q = smp.q * math.sqrt(scale)
    k = smp.k.repeat_interleave(q.shape[1] // smp.k.shape[1], 1) * math.sqrt(scale)
    keep = (
        km.expand(k.shape[0], 1, 1, k.shape[2])[:, 0, 0]
        if km is not None
        else torch.ones(k.shape[0], k.shape[2], dtype=torch.bool)
    )
    qs = q.permute(1, 0, 2, 3).reshape(q.shape[1], -1, q.shape[-1])
    ks = k.permute(1, 0, 2, 3)[:, keep]
    return torch.cat([qs, ks], 1)


def _fit(samples, m, scales, normalize, tied, iters, tol) -> dict:
    best = None
    for c in scales:
        s = samples[0].scale * c
        pts = torch.cat([_points(smp, s) for smp in samples], 1)
        lm = kmeans(pts, min(m, pts.shape[1]))
        a = torch.exp(-0.5 * torch.cdist(lm.double(), lm.double()) ** 2)
        pinv, res, n_it = newton_pinv(a, iters, tol)
        if res > tol:
            raise NotKernelizable(
                f"Newton–Schulz pseudo-inverse did not converge (residual {res:.2e} > {tol:g} after {n_it} "
                "iterations): fewer landmarks or a larger newton_iters"
            )
        fit = {"scale": s, "lm": lm.float(), "lm_sq": (lm * lm).sum(-1)[:, None, :].float(), "pinv": pinv.float(),
               "newton_residual": res, "newton_iters": n_it}  # fmt: skip
        errs = []
        with torch.no_grad():
            for smp in samples:
                km, qm = smp.key_query_masks()
                out = soft_site(eager, smp.q, smp.k, smp.v, km, qm, smp.causal, s, fit["lm"], fit["lm_sq"],
                                fit["pinv"], normalize, tied)  # fmt: skip
                errs.append(rel_err(out, smp.attention()))
        fit["calib_error"] = sum(errs) / len(errs)
        if best is None or fit["calib_error"] < best["calib_error"]:
            best = fit
    return best


def _rewrite(gm: fx.GraphModule, site, fit: dict, normalize: str, tied: bool) -> None:
    graph = gm.graph
    prefix = f"tcomp_soft_l{site.layer}"
    with graph.inserting_before(site.node):
        call = graph_call(graph)
        lm = get_attr(gm, f"{prefix}_landmarks", fit["lm"])
        lm_sq = get_attr(gm, f"{prefix}_landmarks_sq", fit["lm_sq"])
        pinv = get_attr(gm, f"{prefix}_pinv", fit["pinv"])
        km = combine(call, site.key_masks)
        qm = combine(call, site.query_masks)
        out = soft_site(
            call, site.q, site.k, site.v, km, qm, site.causal, fit["scale"], lm, lm_sq, pinv, normalize, tied
        )
    lin = out.args[0]
    lin.meta[meta.SOFT_LANDMARKS] = {
        "landmarks": int(fit["lm"].shape[1]),
        "newton_residual": fit["newton_residual"],
    }
    copy_source_meta(lin, site.node)
    site.node.replace_all_uses_with(out)
    remove_dead(graph, [site.node])
