"""The cost section of ``report.html``: total cost of the graph before and after the passes by
sequence length, from :mod:`tcomp.cost`'s sympy expressions, drawn as hand-written SVG polylines (no
plotting dependency, deterministic bytes, a ``<title>`` tooltip per point)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from tcomp import meta
from tcomp.report.markup import esc, html_table

SEQS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)  # sequence lengths of the cost plot


@dataclass
class CostSeries:
    """Total cost of one graph by sequence length (batch 1): rows of :func:`tcomp.cost.cost_table`."""

    label: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    problem: str = ""  # why there are no rows
    fixed: bool = False  # the graph's sequence length is fixed: one row, no curve

    def values(self, key: str, kind: str = "all") -> list[float]:
        return [r[key] for r in self.rows if r["kind"] == kind]


def cost_series(gm: fx.GraphModule | None, label: str, target: Any, seqs: Sequence[int] = SEQS) -> CostSeries:
    """Evaluate the sympy cost of every costed node of ``gm`` at ``seqs`` (batch 1)."""
    from tcomp.cost import SEQ, all_input_symbols, cost_table, graph_cost

    if gm is None:
        return CostSeries(label, problem=f"the {label} graph is not available")
    sites = graph_cost(gm, all_input_symbols(gm))
    if not sites:
        return CostSeries(label, problem="no node of this graph has a cost formula")
    fixed = all(SEQ not in s.cost.free_symbols for s in sites)
    try:
        return CostSeries(
            label, cost_table(sites, target, seqs=seqs[:1] if fixed else seqs, batch=1), fixed=fixed
        )
    except ValueError as exc:
        return CostSeries(label, problem=str(exc))


_METRICS = (("gflops", "GFLOPs"), ("mb", "MB moved"), ("roofline_us", "roofline time on target (µs)"))


def cost_section(report: Any, before: Any, after: Any, target: Any, seqs: Sequence[int]) -> str:
    """The ``<section id='cost'>`` of the page: what is missing, the change at the longest length,
    a plot per metric (or the fixed size), the cost table and the symbolic totals."""
    series = [cost_series(before, "before", target, seqs), cost_series(after, "after", target, seqs)]
    drawn = [s for s in series if s.rows]
    parts = ["<section id='cost'><h2>Cost before / after by sequence length</h2>"]
    parts.append(
        "<p class='muted'>From tcomp.cost's symbolic FLOPs and bytes of every attention, linear and "
        "matmul node, evaluated at batch 1; bytes are compulsory traffic of one kernel per node; "
        "roofline time = Σ max(FLOPs / peak, bytes / bandwidth) on the target.</p>"
    )
    for s in series:
        if s.problem:
            parts.append(f"<p class='empty'>cost {esc(s.label)}: {esc(s.problem)}</p>")
    lowered = _uncosted_sites(after)
    if lowered:
        parts.append(
            f"<p class='warn'>{lowered} attention sites run on backend kernels that tcomp.cost has no "
            "formula for; the 'after' curve leaves them out.</p>"
        )
    if len(drawn) == 2:
        parts.append(_change_line(*drawn))
    if any(s.fixed for s in drawn):
        parts.append("<p class='muted'>The model fixes its sequence length: cost at that size only.</p>")
    elif drawn:
        xs = [r["seq"] for r in drawn[0].rows if r["kind"] == "all"]
        parts.append("<div class='plots'>")
        for key, title in _METRICS:
            parts.append(line_plot(title, xs, [(s.label, s.values(key)) for s in drawn]))
        parts.append("</div>")
    if drawn:
        parts.append(_cost_table(drawn))
    if report.cost_symbolic:
        parts.append(
            "<details><summary>symbolic totals of the final graph (B batch, N sequence)</summary><ul>"
        )
        parts += [f"<li><b>{esc(k)}</b>: <code>{esc(v)}</code></li>" for k, v in report.cost_symbolic.items()]
        parts.append("</ul></details>")
    parts.append("</section>")
    return "".join(parts)


def _change_line(before: CostSeries, after: CostSeries) -> str:
    """After vs before at the longest sequence length, one ratio per metric."""
    where = "At the model's fixed size" if before.fixed else f"At N = {before.values('seq')[-1]}"
    ratios = []
    for key, title in _METRICS:
        b, a = before.values(key)[-1], after.values(key)[-1]
        ratios.append(f"{title.split(' (')[0]} {b:.4g} → {a:.4g} (×{a / b:.3g})" if b else f"{title}: –")
    return f"<p id='cost-change'>{where}: " + "; ".join(esc(r) for r in ratios) + ".</p>"


def _uncosted_sites(gm: fx.GraphModule | None) -> int:
    from tcomp.cost import site_kind

    if gm is None:
        return 0
    return sum(1 for n in gm.graph.nodes if meta.ATTN_LAYER in n.meta and site_kind(n) is None)


def _cost_table(series: Sequence[CostSeries]) -> str:
    head = ["graph", "kind", "seq", "GFLOPs", "MB", "roofline µs"]
    rows = [
        f"<tr data-graph='{esc(s.label)}' data-kind='{esc(r['kind'])}'><td>{esc(s.label)}</td><td>{esc(r['kind'])}</td>"
        f"<td class='num'>{r['seq']}</td><td class='num'>{r['gflops']:.4g}</td>"
        f"<td class='num'>{r['mb']:.4g}</td><td class='num'>{r['roofline_us']:.4g}</td></tr>"
        for s in series
        for r in s.rows
    ]
    return "<details><summary>cost table</summary>" + html_table("cost-table", head, rows, "") + "</details>"


_SERIES_STYLE = {"before": ("#8d8d8d", "6 4"), "after": ("#1565c0", "")}


def line_plot(title: str, xs: Sequence[float], series: Sequence[tuple[str, Sequence[float]]]) -> str:
    """A small SVG line chart, log-log (log2 x ticks at the data, decade y ticks), one polyline per
    series with a ``<title>`` on every point. Non-positive values fall back to a linear y axis."""
    w, h, left, right, top, bottom = 360, 240, 58, 12, 28, 38
    ys_all = [y for _, ys in series for y in ys]
    log_y = all(y > 0 for y in ys_all)
    lo, hi = (min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0)
    if log_y:
        lo, hi = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        hi = hi if hi > lo else lo + 1
    else:
        lo, hi = min(lo, 0.0), (hi if hi > min(lo, 0.0) else min(lo, 0.0) + 1.0)
    x0, x1 = math.log2(min(xs)), math.log2(max(xs))

    def px(x: float) -> float:
        return left + (0.5 if x1 == x0 else (math.log2(x) - x0) / (x1 - x0)) * (w - left - right)

    def py(y: float) -> float:
        t = (math.log10(y) - lo) / (hi - lo) if log_y else (y - lo) / (hi - lo)
        return h - bottom - t * (h - top - bottom)

    out = [
        f"<svg class='plot' width='{w}' height='{h}' viewBox='0 0 {w} {h}' role='img' "
        f"data-title='{esc(title)}'><title>{esc(title)}</title>",
        f"<text x='{w / 2}' y='16' class='ptitle' text-anchor='middle'>{esc(title)}</text>",
        f"<rect x='{left}' y='{top}' width='{w - left - right}' height='{h - top - bottom}' class='frame'/>",
    ]
    yticks = [10.0**e for e in range(lo, hi + 1)] if log_y else [lo + (hi - lo) * i / 4 for i in range(5)]
    for y in yticks:
        out.append(f"<line x1='{left}' x2='{w - right}' y1='{py(y):.1f}' y2='{py(y):.1f}' class='grid'/>")
        out.append(f"<text x='{left - 4}' y='{py(y) + 3:.1f}' class='tick' text-anchor='end'>{y:.3g}</text>")
    for x in xs:
        out.append(
            f"<text x='{px(x):.1f}' y='{h - bottom + 13}' class='tick' text-anchor='middle'>{x}</text>"
        )
    out.append(f"<text x='{w / 2}' y='{h - 6}' class='tick' text-anchor='middle'>sequence length</text>")
    for i, (label, ys) in enumerate(series):
        color, dash = _SERIES_STYLE.get(label, ("#6a1b9a", ""))
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        out.append(
            f"<polyline class='series' data-series='{esc(label)}' points='{pts}' fill='none' "
            f"stroke='{color}' stroke-width='2' stroke-dasharray='{dash}'/>"
        )
        for x, y in zip(xs, ys):
            out.append(
                f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='3' fill='{color}'>"
                f"<title>{esc(label)}, seq {x}: {y:.4g}</title></circle>"
            )
        ly = top + 12 + 14 * i
        out.append(
            f"<line x1='{left + 8}' x2='{left + 28}' y1='{ly}' y2='{ly}' stroke='{color}' stroke-width='2' "
            f"stroke-dasharray='{dash}'/><text x='{left + 32}' y='{ly + 4}' class='tick'>{esc(label)}</text>"
        )
    out.append("</svg>")
    return "".join(out)
