"""The planner's search: per-site choices under an additive error budget (numbers only, no graphs).

Each site (a linear layer, an attention block) has options: keep (error 0, saving 0) and the
candidates measured there alone, each with an error and a predicted saving. Errors are added up as
``error ** power`` (see tcomp.planner.metrics.COMPOSE), so a budget ``b`` is a load of ``b ** power``.

For each site only the upper concave hull of (load, saving) matters: a candidate with more load
and less saving than another is never worth taking, and one below the hull's chord is beaten by a
mix of its neighbours. Walking every site's hull segments in order of saving per unit of load
(largest first) gives one path of moves -- the greedy solution for every budget at once, and the
estimated Pareto front. A budget takes the longest prefix of the path whose load fits, so a larger
budget never gives a smaller predicted saving.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    """One candidate at one site, measured alone: its error (the metric's) and predicted saving."""

    site: str
    candidate: str
    error: float
    saving: float


@dataclass(frozen=True)
class Move:
    """One step of the path: ``site`` goes from ``previous`` (None: keep) to ``candidate``;
    ``load`` and ``saving`` are the plan's totals after the move."""

    site: str
    candidate: str
    previous: str | None
    ratio: float
    load: float
    saving: float


def hull(options: Iterable[Measured], power: float) -> list[Measured]:
    """The site's candidates on the upper concave hull of (error ** power, saving) from keep at (0, 0),
    by increasing load; candidates that save nothing, or whose error is not finite, are dropped."""
    pts = sorted(
        (m for m in options if m.saving > 0 and math.isfinite(m.error) and m.error >= 0),
        key=lambda m: (m.error**power, -m.saving),
    )
    out: list[Measured] = []
    for m in pts:
        if out and m.saving <= out[-1].saving:
            continue  # more load for no more saving
        while out:
            x0, y0 = (out[-2].error**power, out[-2].saving) if len(out) > 1 else (0.0, 0.0)
            x1, y1, x2, y2 = out[-1].error**power, out[-1].saving, m.error**power, m.saving
            if (y1 - y0) * (x2 - x0) > (y2 - y0) * (x1 - x0):  # out[-1] above the chord: keep it
                break
            out.pop()
        out.append(m)
    return out


def path(measured: Iterable[Measured], power: float) -> list[Move]:
    """Every site's hull segments, merged by saving per unit of load (ties: site order, then load)."""
    by_site: dict[str, list[Measured]] = {}
    for m in measured:
        by_site.setdefault(m.site, []).append(m)
    segments = []
    for order, (site, opts) in enumerate(by_site.items()):
        prev: Measured | None = None
        for i, m in enumerate(hull(opts, power)):
            dl = m.error**power - (prev.error**power if prev else 0.0)
            ds = m.saving - (prev.saving if prev else 0.0)
            ratio = math.inf if dl <= 0 else ds / dl
            segments.append((-ratio, order, i, site, m, prev))
            prev = m
    segments.sort(key=lambda s: s[:3])
    moves, load, saving, current = [], 0.0, 0.0, {}
    for neg_ratio, _o, _i, site, m, prev in segments:
        old = current.get(site)
        load += m.error**power - (old.error**power if old else 0.0)
        saving += m.saving - (old.saving if old else 0.0)
        current[site] = m
        moves.append(Move(site, m.candidate, prev.candidate if prev else None, -neg_ratio, load, saving))
    return moves


def choose(moves: list[Move], budget: float, power: float) -> dict[str, str]:
    """site -> candidate: the longest prefix of ``moves`` whose load fits ``budget ** power``."""
    limit = budget**power * (1 + 1e-12)
    chosen: dict[str, str] = {}
    for mv in moves:
        if mv.load > limit:
            break
        chosen[mv.site] = mv.candidate
    return chosen


def estimate(chosen: Mapping[str, str], measured: Iterable[Measured], power: float) -> tuple[float, float]:
    """(estimated error, predicted saving) of a choice from the per-site measurements."""
    table = {(m.site, m.candidate): m for m in measured}
    picked = [table[(s, c)] for s, c in chosen.items()]
    load = sum(m.error**power for m in picked)
    return load ** (1 / power), sum(m.saving for m in picked)


def back_off(chosen: dict[str, str], measured: Iterable[Measured], moves: list[Move]) -> dict[str, str]:
    """The choice with its worst site (largest error measured alone) moved one step back along its
    hull (to the candidate it replaced on the path, or keep)."""
    table = {(m.site, m.candidate): m for m in measured}
    worst = max(chosen, key=lambda s: (table[(s, chosen[s])].error, s))
    prev = next((mv.previous for mv in moves if mv.site == worst and mv.candidate == chosen[worst]), None)
    out = dict(chosen)
    if prev is None:
        del out[worst]
    else:
        out[worst] = prev
    return out
