"""report.html's planner section (``optimize(max_error=...)``): the estimated Pareto front -- the
search path, error against predicted saving -- with the budget and each end-to-end check drawn on
it, and the chosen candidate per site."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tcomp.report.markup import esc, fmt


def planner_section(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    gain = "speed-up (predicted)" if p["objective"] == "latency" else "weight bytes saved (predicted)"
    base = p["baseline"] or 1.0
    front = [(0.0, 0.0)] + [(m["load"] ** (1 / _power(p)), _gain(m["saving"], base, p)) for m in p["path"]]
    checks = [(v["held_back_error"], v.get("speedup", v.get("saving", 0.0))) for v in p["verifications"]]
    svg = scatter(f"plan under max_error={p['max_error']} ({p['metric']})", front, checks, p["max_error"],
                  f"estimated error ({p['metric']})", gain)  # fmt: skip
    measured = {(m["site"], m["candidate"]): m for m in p["measured"]}
    rows = "".join(
        f"<tr><td>{esc(site)}</td><td>{esc(cand)}</td><td>{fmt(measured[(site, cand)]['error'])}</td>"
        f"<td>{fmt(measured[(site, cand)]['saving'])}</td></tr>"
        for site, cand in p["chosen"].items()
    )
    reason = f"<p class='bad'>{esc(p['reason'])}</p>" if p.get("reason") else ""
    return (
        "<section id='planner'><h2>Plan under an error budget</h2>"
        f"<p class='muted'>calibration split {esc(p['split'])}; the line is the search path (each site's best "
        "next candidate by saving per unit of error); dots are the whole plans run on the held-back split.</p>"
        f"{svg}{reason}<table><thead><tr><th>site</th><th>chosen</th><th>error alone</th><th>saving</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def _power(p: dict[str, Any]) -> float:
    return 2.0 if p["metric"] == "rel" else 1.0


def _gain(saving: float, base: float, p: dict[str, Any]) -> float:
    """A path point's saving as the verifications state it: speed-up (latency) or fraction saved."""
    if p["objective"] == "latency":
        return base / (base - saving) if base > saving else float("inf")
    return saving / base


def scatter(title: str, line: Sequence[tuple[float, float]], dots: Sequence[tuple[float, float]], budget: float,
            xlabel: str, ylabel: str) -> str:  # fmt: skip
    """An SVG with one polyline (``line``), dots and a vertical budget line; linear axes from 0."""
    w, h, left, right, top, bottom = 420, 260, 58, 12, 28, 40
    pts = [(x, y) for x, y in [*line, *dots] if y != float("inf")]
    xmax = max([budget, *(x for x, _ in pts)]) * 1.05 or 1.0
    ymin = min(0.0, *(y for _, y in pts))
    ymax = max([1e-12, *(y for _, y in pts)]) * 1.05

    def px(x: float) -> float:
        return left + min(x, xmax) / xmax * (w - left - right)

    def py(y: float) -> float:
        return h - bottom - (y - ymin) / (ymax - ymin) * (h - top - bottom)

    out = [
        f"<svg class='plot' width='{w}' height='{h}' viewBox='0 0 {w} {h}' role='img' data-title='{esc(title)}'>"
        f"<title>{esc(title)}</title><text x='{w / 2}' y='16' class='ptitle' text-anchor='middle'>{esc(title)}</text>",
        f"<rect x='{left}' y='{top}' width='{w - left - right}' height='{h - top - bottom}' class='frame'/>",
    ]
    for i in range(5):
        x, y = xmax * i / 4, ymin + (ymax - ymin) * i / 4
        out.append(f"<text x='{px(x):.1f}' y='{h - bottom + 13}' class='tick' text-anchor='middle'>{x:.2g}</text>")
        out.append(f"<text x='{left - 4}' y='{py(y) + 3:.1f}' class='tick' text-anchor='end'>{y:.3g}</text>")
    out.append(f"<text x='{w / 2}' y='{h - 6}' class='tick' text-anchor='middle'>{esc(xlabel)}</text>")
    out.append(f"<text x='12' y='{top - 8}' class='tick'>{esc(ylabel)}</text>")
    out.append(f"<line class='budget' x1='{px(budget):.1f}' x2='{px(budget):.1f}' y1='{top}' y2='{h - bottom}' "
               "stroke='#c62828' stroke-dasharray='4 3'/>")  # fmt: skip
    path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in line if y != float("inf"))
    out.append(f"<polyline class='series' data-series='path' points='{path}' fill='none' stroke='#1565c0' "
               "stroke-width='2'/>")  # fmt: skip
    for x, y in dots:
        if y != float("inf"):
            out.append(f"<circle class='check' cx='{px(x):.1f}' cy='{py(y):.1f}' r='4' fill='#2e7d32'>"
                       f"<title>checked: error {x:.4g}, gain {y:.4g}</title></circle>")  # fmt: skip
    out.append("</svg>")
    return "".join(out)
