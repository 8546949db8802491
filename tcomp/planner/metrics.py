"""What the planner's budget is measured in: a metric over a split of the calibration data.

Every metric is an *error* (0 = the exact model's outputs, larger = worse), computed in float64
against the exact (canonicalized) graph's outputs on the same inputs:

* ``"rel"``: the largest relative error ``||out - ref|| / ||ref||`` over the split's batches
  (tcomp.verify.rel_error; all float outputs, or the pooled vectors when ``pool`` is given).
* ``"cos"``: one minus the mean cosine similarity of the pooled vectors, row by row.
* ``"neighbours"``: the fraction of rows whose nearest neighbour (cosine, among all rows of the
  split) changes -- what a retrieval user reads.
* a callable ``metric(out, ref) -> float`` per batch (out and ref as the model returns them), averaged.

``pool`` names the vector a row is compared by: ``"mean"`` (mean over the sequence of the first
float output with three dims, masked by the batch's ``attention_mask`` when it has one), ``"cls"``
(its first position), ``"none"`` (all float outputs, flattened per row) or a callable
``pool(out, kwargs) -> (rows, dim)``.

``COMPOSE`` says how per-site errors are added up to estimate a plan's: relative errors of
independent perturbations add in quadrature (power 2); ``1 - cos`` grows with the square of a
perturbation, so it and the others add linearly (power 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from tcomp.errors import InputError
from tcomp.verify import float_leaves, rel_error

METRICS = ("rel", "cos", "neighbours")
POOLS = ("mean", "cls", "none")
COMPOSE = {"rel": 2.0, "cos": 1.0, "neighbours": 1.0}  # error ** power adds up across sites

Metric = str | Callable[[Any, Any], float]
Pool = str | Callable[[Any, dict], torch.Tensor]


def check(metric: Metric, pool: Pool | None) -> None:
    """Clear errors for a metric or pool the planner does not know."""
    if not callable(metric) and metric not in METRICS:
        raise InputError(f"metric={metric!r}: use one of {list(METRICS)} or a callable metric(out, ref) -> float")
    if pool is not None and not callable(pool) and pool not in POOLS:
        raise InputError(f"pool={pool!r}: use one of {list(POOLS)} or a callable pool(out, kwargs) -> (rows, dim)")


def power(metric: Metric) -> float:
    return COMPOSE.get(metric, 1.0) if isinstance(metric, str) else 1.0


def pooled(out: Any, kwargs: dict, pool: Pool) -> torch.Tensor:
    """The (rows, dim) float64 vectors ``pool`` names for one batch's output."""
    if callable(pool):
        v = pool(out, kwargs)
        if not isinstance(v, torch.Tensor) or v.dim() != 2:
            raise InputError(f"pool(out, kwargs) must return a (rows, dim) tensor, got {type(v).__name__}"
                             f"{'' if not isinstance(v, torch.Tensor) else f' of shape {tuple(v.shape)}'}")  # fmt: skip
        return v.detach().to(torch.float64).cpu()
    leaves = float_leaves(out)
    if not leaves:
        raise InputError("the model returns no floating-point tensor to measure the error on")
    if pool == "none":
        rows = leaves[0].shape[0] if leaves[0].dim() else 1
        return torch.cat([x.detach().reshape(rows, -1).to(torch.float64).cpu() for x in leaves], dim=1)
    seq = next((x for x in leaves if x.dim() == 3), None)
    if seq is None:
        raise InputError(
            f"pool={pool!r} needs an output of shape (batch, sequence, dim); the model returns "
            f"{[tuple(x.shape) for x in leaves]}: pass pool='none' or a callable"
        )
    h = seq.detach().to(torch.float64).cpu()
    if pool == "cls":
        return h[:, 0]
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.shape == h.shape[:2]:
        w = mask.detach().to(torch.float64).cpu().unsqueeze(-1)
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)
    return h.mean(1)


def _nearest(v: torch.Tensor) -> torch.Tensor:
    u = torch.nn.functional.normalize(v, dim=1)
    sim = u @ u.T
    sim.fill_diagonal_(-math.inf)
    return sim.argmax(1)


def error(
    metric: Metric, outs: Sequence[Any], refs: Sequence[Any], kwargs: Sequence[dict], pool: Pool | None
) -> float:
    """The metric's error of ``outs`` against ``refs`` over one split (one entry per batch)."""
    if any(not torch.isfinite(x).all() for o in outs for x in float_leaves(o)):
        return math.inf  # NaN never passes
    if callable(metric):
        values = [float(metric(o, r)) for o, r in zip(outs, refs)]
        return sum(values) / len(values) if all(math.isfinite(v) for v in values) else math.inf
    if metric == "rel" and pool in (None, "none"):
        return max(rel_error(o, r) for o, r in zip(outs, refs))
    p = pool or "mean"
    a = torch.cat([pooled(o, k, p) for o, k in zip(outs, kwargs)])
    b = torch.cat([pooled(r, k, p) for r, k in zip(refs, kwargs)])
    if a.shape != b.shape:
        return math.inf
    if metric == "rel":
        return float((a - b).norm() / b.norm().clamp_min(1e-300))
    if metric == "cos":
        return float(1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1).mean())
    if a.shape[0] < 3:
        raise InputError(f"metric='neighbours' needs at least 3 rows in each calibration split, got {a.shape[0]}")
    return float((_nearest(a) != _nearest(b)).double().mean())
