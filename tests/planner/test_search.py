"""The planner's search on numbers alone: budgets are respected, a larger budget never predicts a
smaller saving, a budget nothing fits chooses nothing, and backing off moves the worst site."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from tcomp.planner.search import Measured, back_off, choose, estimate, hull, path

CANDS = ("a", "b", "c", "d")


@st.composite
def tables(draw) -> list[Measured]:
    sites = draw(st.integers(1, 6))
    out = []
    for s in range(sites):
        for c in draw(st.lists(st.sampled_from(CANDS), min_size=1, max_size=4, unique=True)):
            err = draw(st.one_of(st.just(0.0), st.floats(1e-6, 1.0), st.just(math.inf)))
            out.append(Measured(f"s{s}", c, err, draw(st.floats(-1.0, 10.0))))
    return out


budgets = st.floats(1e-6, 2.0)
powers = st.sampled_from([1.0, 2.0])


@given(tables(), budgets, powers)
def test_choice_fits_the_budget(measured, budget, power):
    chosen = choose(path(measured, power), budget, power)
    err, saving = estimate(chosen, measured, power)
    assert err <= budget * (1 + 1e-9)
    assert saving >= 0
    table = {(m.site, m.candidate): m for m in measured}
    assert all(math.isfinite(table[(s, c)].error) and table[(s, c)].saving > 0 for s, c in chosen.items())


@given(tables(), budgets, budgets, powers)
def test_larger_budget_never_saves_less(measured, b1, b2, power):
    small, large = sorted((b1, b2))
    moves = path(measured, power)
    assert estimate(choose(moves, large, power), measured, power)[1] >= estimate(
        choose(moves, small, power), measured, power
    )[1] - 1e-9


@given(tables(), powers)
def test_budget_below_every_error_chooses_nothing(measured, power):
    smallest = min((m.error for m in measured if m.saving > 0), default=math.inf)
    if smallest == 0:
        return  # a free candidate fits any budget (checked by the property above)
    assert choose(path(measured, power), smallest * 0.5, power) == {}


@given(tables(), powers)
def test_hull_is_increasing_and_concave(measured, power):
    for site in {m.site for m in measured}:
        h = hull([m for m in measured if m.site == site], power)
        pts = [(0.0, 0.0)] + [(m.error**power, m.saving) for m in h]
        assert all(b[0] >= a[0] and b[1] > a[1] for a, b in zip(pts, pts[1:]))
        slopes = [(b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] else math.inf for a, b in zip(pts, pts[1:])]
        assert all(x >= y - 1e-9 for x, y in zip(slopes, slopes[1:]))
        # every candidate lies on or under the hull (a mix of hull points saves at least as much)
        for m in measured:
            if m.site == site and m.saving > 0 and math.isfinite(m.error):
                assert m.saving <= _under(pts, m.error**power) + 1e-9


def _under(pts: list[tuple[float, float]], x: float) -> float:
    """The hull's saving at load ``x`` (flat past its last point)."""
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1:
            return y1 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


def test_path_upgrades_a_site_in_hull_order():
    m = [Measured("x", "int8", 0.01, 1.0), Measured("x", "int4", 0.05, 1.5), Measured("y", "int8", 0.02, 1.0)]
    moves = path(m, 1.0)
    assert [(mv.site, mv.candidate, mv.previous) for mv in moves] == [
        ("x", "int8", None), ("y", "int8", None), ("x", "int4", "int8"),
    ]  # fmt: skip
    assert choose(moves, 0.03, 1.0) == {"x": "int8", "y": "int8"}
    assert choose(moves, 0.07, 1.0) == {"x": "int4", "y": "int8"}
    assert back_off({"x": "int4", "y": "int8"}, m, moves) == {"x": "int8", "y": "int8"}  # x's int4 is worst
    assert back_off({"x": "int8", "y": "int8"}, m, moves) == {"x": "int8"}  # y (0.02) is worst: keep


def test_relative_errors_add_in_quadrature():
    m = [Measured("x", "a", 0.03, 1.0), Measured("y", "a", 0.04, 1.0)]
    assert choose(path(m, 2.0), 0.05, 2.0) == {"x": "a", "y": "a"}  # sqrt(0.03² + 0.04²) = 0.05
    assert choose(path(m, 1.0), 0.05, 1.0) == {"x": "a"}  # 0.07 > 0.05 when errors add linearly
