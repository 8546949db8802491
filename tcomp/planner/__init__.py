"""``optimize(max_error=...)``: choose passes and knobs per site under an error budget.

1. Capture and canonicalize once; run the exact graph on the calibration data, split into a fit
   part and a held-back part (the last quarter of the batches, or of the rows of a single batch).
2. Measure every candidate (tcomp.planner.candidates) alone at every site it applies to: its
   error on the fit split in the user's metric (tcomp.planner.metrics) and its predicted saving
   (roofline time on the target from the cost model at the calibration shapes, or bytes of weights).
3. Search (tcomp.planner.search): the greedy path by saving per unit of error, cut at the budget.
4. Verify the whole plan end to end on both splits; while the held-back error exceeds the budget,
   move the worst site one step back and verify again. A budget nothing meets gives the exact plan
   with the reason.

The result is a list of ``(pass, options)`` steps that ``passes=`` accepts again, and a record
(:class:`Search`) of every measurement, the path (the estimated Pareto front) and each verification.
Everything is deterministic under ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from tcomp.calibration import batches
from tcomp.errors import InputError
from tcomp.planner import metrics
from tcomp.planner.candidates import MENU, Candidate, menu, site_key
from tcomp.planner.search import Measured, Move, back_off, choose, estimate, path
from tcomp.targets import Target

OBJECTIVES = ("latency", "memory")
HOLD_BACK = 0.25


@dataclass
class Search:
    """What the planner measured and chose (``to_dict`` goes into the report)."""

    max_error: float
    metric: str
    objective: str
    split: dict[str, Any]
    baseline: float  # the exact graph's predicted latency (s) or weight bytes
    measured: list[Measured] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    verifications: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    reason: str = ""
    calibration: Any = field(default=None, repr=False)  # the fit split, as passes= runs calibrate on it

    @property
    def final(self) -> dict[str, Any] | None:
        return self.verifications[-1] if self.verifications else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_error": self.max_error, "metric": self.metric, "objective": self.objective, "split": self.split,
            "baseline": self.baseline, "chosen": self.chosen,
            "passes": [{"pass": p, "options": o} for p, o in self.steps],
            "measured": [vars(m) for m in self.measured], "path": [vars(m) for m in self.moves],
            "verifications": self.verifications, "reason": self.reason,
        }  # fmt: skip


def split(calibration: Any) -> tuple[list[tuple[tuple, dict]], list[tuple[tuple, dict]], dict[str, Any]]:
    """(fit batches, held-back batches, a description): the last quarter of the batches, or of the
    rows of a single batch (every tensor whose first dim is the batch's rows is cut)."""
    if calibration is None:
        raise InputError("max_error= needs calibration= (model inputs to measure the error on, "
                         "e.g. a list of tokenized batches); the planner holds back a quarter of it")  # fmt: skip
    data = batches(calibration)
    if len(data) >= 2:
        k = max(1, round(len(data) * HOLD_BACK))
        return data[:-k], data[-k:], {"by": "batches", "fit": len(data) - k, "held_back": k}
    args, kwargs = data[0]
    first = next((x for x in [*args, *kwargs.values()] if isinstance(x, torch.Tensor) and x.dim() >= 1), None)
    rows = int(first.shape[0]) if first is not None else 0
    if rows < 2:
        raise InputError(
            f"calibration is one batch of {rows} row(s): give at least 2 batches, or one batch of 2+ rows, so that "
            "the planner can hold some back to check the plan on"
        )
    k = max(1, round(rows * HOLD_BACK))

    def cut(sl: slice):
        f = lambda x: x[sl] if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == rows else x  # noqa: E731
        return tuple(f(a) for a in args), {n: f(v) for n, v in kwargs.items()}

    return [cut(slice(0, rows - k))], [cut(slice(rows - k, rows))], {"by": "rows", "fit": rows - k, "held_back": k}


def fit_calibration(fit: list[tuple[tuple, dict]]) -> list[Any]:
    """The fit split as ``calibration=`` takes it (keyword batches as dicts, positional as tuples)."""
    return [k if k else a for a, k in fit]


def check_budget(max_error: Any) -> None:
    if isinstance(max_error, bool) or not isinstance(max_error, (int, float)) or not math.isfinite(max_error) \
            or max_error <= 0:  # fmt: skip
        raise InputError(f"max_error={max_error!r}: give a budget > 0 in the metric's units (e.g. 0.02)")


def check_options(metric: Any, pool: Any, objective: str) -> None:
    metrics.check(metric, pool)
    if objective not in OBJECTIVES:
        raise InputError(f"objective={objective!r}: use one of {list(OBJECTIVES)}")


def check(max_error: Any, metric: Any, pool: Any, objective: str) -> None:
    """Every planner argument, before any work."""
    check_budget(max_error)
    check_options(metric, pool, objective)


class _Graphs:
    """The exact graph, its outputs on both splits, and runs of rewritten copies of it."""

    def __init__(self, gm: fx.GraphModule, fit, held, calibration, seed, target, objective, metric, pool):
        self.gm, self.fit, self.held, self.calibration, self.seed = gm, fit, held, calibration, seed
        self.target, self.objective, self.metric, self.pool = target, objective, metric, pool
        self.ref_fit, self.ref_held = self.references(gm, fit, 0), self.references(gm, held, len(fit))
        self.shape = _shape(fit[0])
        self.baseline = self.predicted(gm)

    @staticmethod
    def outputs(gm: fx.GraphModule, data) -> list[Any]:
        with torch.no_grad():
            return [gm(*a, **k) for a, k in data]

    @staticmethod
    def references(gm: fx.GraphModule, data, first: int) -> list[Any]:
        """The exact graph's outputs; a batch it cannot run is the user's to fix."""
        out = []
        for i, (a, k) in enumerate(data, start=first):
            try:
                with torch.no_grad():
                    out.append(gm(*a, **k))
            except Exception as exc:  # noqa: BLE001 - named and re-raised as the user's error
                names = [*(f"args[{j}]" for j in range(len(a))), *k]
                shapes = {n: tuple(v.shape) for n, v in zip(names, [*a, *k.values()]) if isinstance(v, torch.Tensor)}
                raise InputError(
                    f"calibration batch {i} does not fit the model ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                    f"its tensors {shapes}: give batches shaped like the example inputs"
                ) from exc
        return out

    def error(self, gm: fx.GraphModule, held: bool = False) -> float:
        data, refs = (self.held, self.ref_held) if held else (self.fit, self.ref_fit)
        try:
            outs = self.outputs(gm, data)
        except Exception:  # noqa: BLE001 - a candidate that cannot run is never chosen
            return math.inf
        return metrics.error(self.metric, outs, refs, [k for _a, k in data], self.pool)

    def rewrite(self, steps: Sequence[tuple[str, dict]]) -> tuple[fx.GraphModule, list]:
        from tcomp.pipeline import run_pipeline

        specs = [(n, {**o, "calibration": self.calibration, "seed": self.seed}) for n, o in steps]
        res = run_pipeline(self.gm, specs)
        return res.gm, res.records

    def predicted(self, gm: fx.GraphModule) -> float:
        """Roofline seconds at the calibration's first batch shape, or bytes of weights."""
        if self.objective == "memory":
            return float(sum(_bytes(t) for t in _attrs(gm)))
        from tcomp.cost import all_input_symbols, graph_cost

        total = 0.0
        for s in graph_cost(gm, all_input_symbols(gm)):
            f, b = s.cost.evaluate(batch=self.shape[0], seq=self.shape[1])
            total += max(f / self.target.flops_per_s(s.dtype or torch.float32), b / self.target.bytes_per_s())
        return total


def _shape(batch: tuple[tuple, dict]) -> tuple[int, int]:
    args, kwargs = batch
    t = next((x for x in [*args, *kwargs.values()] if isinstance(x, torch.Tensor) and x.dim() >= 2), None)
    return (int(t.shape[0]), int(t.shape[1])) if t is not None else (1, 1)


def _attrs(gm: fx.GraphModule) -> list[torch.Tensor]:
    import operator

    seen, out = set(), []
    for n in gm.graph.nodes:
        if n.op == "get_attr" and n.target not in seen:
            seen.add(n.target)
            v = operator.attrgetter(n.target)(gm)
            if isinstance(v, torch.Tensor):
                out.append(v)
    return out


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _sites(g: _Graphs, cand: Candidate) -> list[str]:
    """The sites ``cand`` applies to in the exact graph."""
    if cand.kind == "attention":
        from tcomp import meta
        from tcomp.dialect import is_attention

        return [site_key("attention", n.meta.get(meta.ATTN_LAYER)) for n in g.gm.graph.nodes if is_attention(n)]
    _gm, records = g.rewrite([cand.all_sites()])
    rec = records[-1]
    return [site_key(cand.kind, s["site"]) for s in rec.sites if s.get("status") == "quantized"]


def search_plan(gm: fx.GraphModule, calibration: Any, target: Target, *, max_error: float, **options: Any) -> Search:
    """Choose per-site candidates for the canonicalized graph ``gm`` (see the module docstring);
    ``options`` are :class:`Planner`'s (metric, pool, objective, candidates, seed, progress)."""
    check_budget(max_error)
    return Planner(gm, calibration, target, **options).plan(max_error)


class Planner:
    """The measurements (every candidate alone at every site), made once; :meth:`plan` cuts the path
    at a budget and checks the plan end to end -- many budgets share one set of measurements."""

    def __init__(
        self,
        gm: fx.GraphModule,
        calibration: Any,
        target: Target,
        *,
        metric: metrics.Metric = "rel",
        pool: metrics.Pool | None = None,
        objective: str = "latency",
        candidates: Sequence[str] | None = None,
        seed: int = 0,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        from tcomp.registry import registered_passes

        check_options(metric, pool, objective)
        self.cands = menu(candidates, target, list(registered_passes()))
        fit, held, self.split = split(calibration)
        self.g = _Graphs(gm, fit, held, fit_calibration(fit), seed, target, objective, metric, pool)
        self.metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "callable")
        self.power, self.objective = metrics.power(metric), objective
        tick = progress or (lambda *_: None)
        work = [(c, s) for c in self.cands for s in _sites(self.g, c)]
        self.measured: list[Measured] = []
        for i, (cand, site) in enumerate(work):
            tick(f"{cand.name} at {site}", i, len(work))
            new, records = self.g.rewrite([cand.step([site])])
            if records[-1].rewrites:
                self.measured.append(Measured(site, cand.name, self.g.error(new), self.g.baseline - self.g.predicted(new)))
        tick("measured", len(work), len(work))
        self.moves = path(self.measured, self.power)

    def plan(self, max_error: float) -> Search:
        """The longest prefix of the path within ``max_error``, backed off until it holds on both splits."""
        check_budget(max_error)
        g = self.g
        out = Search(max_error, self.metric_name, self.objective, self.split, g.baseline, list(self.measured),
                     list(self.moves), calibration=g.calibration)  # fmt: skip
        chosen = choose(self.moves, max_error, self.power)
        while chosen:
            steps = _steps(chosen, self.cands)
            new, records = g.rewrite(steps)
            est, _saving = estimate(chosen, self.measured, self.power)
            ver = {"chosen": dict(chosen), "estimated_error": est, "fit_error": g.error(new),
                   "held_back_error": g.error(new, held=True), "predicted": g.predicted(new),
                   "not_applied": [r.name for r in records if r.status != "applied"]}  # fmt: skip
            ver["speedup" if self.objective == "latency" else "saving"] = _gain(g.baseline, ver["predicted"], self.objective)
            out.verifications.append(ver)
            if ver["held_back_error"] <= max_error and ver["fit_error"] <= max_error and not ver["not_applied"]:
                out.chosen, out.steps = chosen, steps
                return out
            chosen = back_off(chosen, self.measured, self.moves)
        best = min((m.error for m in self.measured), default=None)
        out.reason = (
            "no candidate applies to this model" if best is None else
            f"no plan meets max_error={max_error}: the smallest error of any single candidate is {best:.4g} "
            f"({self.metric_name}); the exact model is returned"
        )  # fmt: skip
        return out


def _gain(base: float, new: float, objective: str) -> float:
    if objective == "latency":
        return base / new if new > 0 else math.inf
    return 1.0 - new / base if base > 0 else 0.0


def _steps(chosen: dict[str, str], cands: list[Candidate]) -> list[tuple[str, dict[str, Any]]]:
    """One step per candidate, over the sites it was chosen for."""
    out = []
    for c in cands:
        sites = [s for s, name in chosen.items() if name == c.name]
        if sites:
            out.append(c.step(sites))
    return out


__all__ = ["MENU", "OBJECTIVES", "Planner", "Search", "search_plan", "split"]
