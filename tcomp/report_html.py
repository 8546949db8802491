"""``report.html``: one self-contained page (inline CSS, JS and SVG; nothing fetched) per artifact.

It shows the per-pass table (contract, exactness, rewrites, measured error against the bound, roll
backs with their reason), the attention sites, the cost of the graph before and after the passes by
sequence length (from :mod:`tcomp.cost`'s sympy expressions, drawn as hand-written SVG polylines:
no plotting dependency, deterministic bytes, a ``<title>`` tooltip per point) and a picture of the
rewritten graph with attention sites and rewritten regions highlighted.

The picture. Real models have hundreds of nodes, so nodes are collapsed by where they came from in
the user's model (:func:`tcomp.graph.module_path`): one horizontal *band* per numbered block
(``encoder.layer.3``) and per run of nodes between blocks (named by their modules, e.g.
``embeddings``); a band is a contiguous run of graph order, so edges between bands only go forward.
Inside a band, one box per submodule, as deep as fits :data:`MAX_COLS` columns (runs of one
submodule are merged while the boxes stay acyclic). Weights and size arithmetic are not drawn. Attention sites, inputs and the output always
get their own box. Boxes are laid out left to right by topological generation (networkx), so
parallel branches (q, k, v projections) sit above each other. Every box has a ``<title>`` tooltip
listing the fx nodes it holds. Graphs of at most :data:`DETAIL_NODES` nodes are drawn node by node.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

import networkx as nx
import torch
import torch.fx as fx

from tcomp import meta
from tcomp.dialect import is_attention
from tcomp.graph import module_path, shape

SEQS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)  # sequence lengths of the cost plot
MAX_COLS = 10  # columns of boxes per band before submodules are collapsed further (then wrapped)
DETAIL_NODES = 40  # graphs with at most this many drawn nodes get one box per node
BOX_W, BOX_H, COL_W, ROW_H, BAND_LABEL_W, BAND_GAP = 114, 34, 124, 44, 104, 16
L1, L2 = 16, 19  # characters that fit a box's first (10.5 px) and second (9.5 px) line


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3g}" if math.isfinite(x) else str(x)
    return str(x)


# -- the page ------------------------------------------------------------------------------------


def render_module(om: Any) -> str:
    """``report.html`` of an ``OptimizedModule``: its report, its graph and the captured graph."""
    return render_html(
        om.report,
        graph_after=getattr(om, "graph_module", None),
        graph_before=getattr(om, "graph_before", None),
        target=getattr(om, "target", None),
    )


def render_html(
    report: Any,
    graph_after: fx.GraphModule | None = None,
    graph_before: fx.GraphModule | None = None,
    target: Any = None,
    seqs: Sequence[int] = SEQS,
) -> str:
    """The whole page as one string. ``report`` is a :class:`tcomp.report.Report`; the graphs are
    optional (without them the cost plot and the picture say what is missing)."""
    target = target if target is not None else report.target
    sections = [
        _summary(report, graph_after, graph_before),
        _passes_section(report.passes),
        _sites_section(report.sites),
        _cost_section(report, graph_before, graph_after, target, seqs),
        _graph_section(graph_after, graph_before),
    ]
    if report.notes:
        sections.append(
            "<section id='notes'><h2>Notes</h2><ul>"
            + "".join(f"<li>{_e(n)}</li>" for n in report.notes)
            + "</ul></section>"
        )
    title = f"tcomp report: {report.model} → {report.target}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p id='js-summary' class='muted'></p></header>"
        + "\n".join(sections)
        + f"<script>{_JS}</script></body></html>\n"
    )


def _summary(report: Any, after: fx.GraphModule | None, before: fx.GraphModule | None) -> str:
    by_status = Counter(r.status for r in report.passes)
    cards = [
        ("passes applied", by_status.get("applied", 0)),
        ("rolled back", by_status.get("rolled_back", 0)),
        ("skipped", by_status.get("skipped", 0)),
        ("attention sites", len(report.sites)),
        ("error vs float64, original", _fmt(report.base_error)),
        ("error vs float64, optimized", _fmt(report.final_error)),
    ]
    if before is not None and after is not None:
        cards.append(("graph nodes before → after", f"{_count(before)} → {_count(after)}"))
    dims = ", ".join(f"{k}: {v}" for k, v in (report.dynamic_dims or {}).items())
    return (
        "<section id='summary'><div class='cards'>"
        + "".join(
            f"<div class='card{' bad' if k == 'rolled back' and v else ''}'><b>{_e(v)}</b>"
            f"<span>{_e(k)}</span></div>"
            for k, v in cards
        )
        + "</div>"
        + (f"<p class='muted'>input dims: {_e(dims)}</p>" if dims else "")
        + "</section>"
    )


def _count(gm: fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op.startswith("call_"))


def _table(table_id: str, head: Sequence[str], rows: Iterable[str], empty: str) -> str:
    rows = list(rows)
    if not rows:
        return f"<p class='empty' id='{table_id}-empty'>{_e(empty)}</p>"
    ths = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table id='{table_id}' class='sortable'><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _passes_section(records: Sequence[Any]) -> str:
    rows = []
    for i, r in enumerate(records):
        notes = "".join(f"<li>{_e(n)}</li>" for n in r.notes)
        why = _e(r.reason) + (
            f"<details><summary>{len(r.notes)} notes</summary><ul>{notes}</ul></details>" if notes else ""
        )
        rows.append(
            f"<tr class='status-{_e(r.status)}' data-pass='{_e(r.name)}'><td>{i + 1}</td>"
            f"<td class='name'>{_e(r.name)}</td><td>{_e(r.contract)}</td><td>{_e(r.exactness)}</td>"
            f"<td><span class='badge {_e(r.status)}'>{_e(r.status.replace('_', ' '))}</span></td>"
            f"<td class='num'>{r.rewrites}</td>{_error_cells(r)}"
            f"<td class='num'>{r.seconds:.2f}</td><td class='why'>{why}</td></tr>"
        )
    return (
        "<section id='passes'><h2>Passes</h2>"
        "<p class='muted'>Each pass is checked against its contract on float64 references: measured "
        "max relative error after the pass and the bound it must stay within (EXACT: bitwise equal). "
        "A pass that breaks its contract, or raises, is rolled back.</p>"
        + _table(
            "pass-table",
            (
                "#",
                "pass",
                "contract",
                "exactness",
                "status",
                "rewrites",
                "measured error",
                "bound",
                "error / bound",
                "seconds",
                "reason / notes",
            ),
            rows,
            "no passes ran",
        )  # fmt: skip
        + "</section>"
    )


def _error_cells(r: Any) -> str:
    err, tol = r.error, r.tolerance
    if err is None:
        return "<td class='num'>not measured</td><td class='num'>" + _fmt(tol) + "</td><td></td>"
    ok = isinstance(err, float) and math.isfinite(err) and tol is not None and err <= tol
    if tol == 0.0:
        meter = "bitwise equal" if ok else "differs"
    elif tol:
        frac = min(err / tol, 1.0) if math.isfinite(err) else 1.0
        meter = (
            f"<svg class='meter' width='90' height='10' role='img'><title>{_fmt(err)} of {_fmt(tol)}</title>"
            f"<rect width='90' height='10' fill='#eee'/><rect width='{90 * frac:.1f}' height='10' "
            f"fill='{'#2e7d32' if ok else '#c62828'}'/></svg> {err / tol:.2g}"
        )
    else:
        meter = ""
    return (
        f"<td class='num {'ok' if ok else 'over'}'>{_fmt(err)}</td><td class='num'>{_fmt(tol)}</td>"
        f"<td>{meter}</td>"
    )


_SITE_COLS = ("#", "module", "spelling", "q shape", "k shape", "bias", "mask", "causal", "scale",
              "projections", "runs on", "source")  # fmt: skip


def _sites_section(sites: Sequence[dict[str, Any]]) -> str:
    rows = []
    for s in sites:
        cells = [
            s.get("layer"),
            s.get("module", ""),
            s.get("spelling", ""),
            "×".join(s.get("q", [])),
            "×".join(s.get("k", [])),
            "yes" if s.get("bias") else "–",
            "yes" if s.get("mask") else "–",
            "yes" if s.get("causal") else "–",
            f"{s.get('scale', 0):.4g}",
            s.get("projections", ""),
            s.get("runs_on", ""),
            _source(s.get("source", "")),
        ]
        rows.append(
            f"<tr data-node='{_e(s.get('node', ''))}'>"
            + "".join(f"<td>{_e(c)}</td>" for c in cells)
            + "</tr>"
        )
    return (
        f"<section id='sites'><h2>Attention sites ({len(sites)})</h2>"
        + _table("site-table", _SITE_COLS, rows, "no attention site in this graph")
        + "</section>"
    )


def _source(line: str) -> str:
    """``File "/x/y/bert.py", line 83, in forward`` -> ``bert.py:83 (forward)``."""
    m = re.match(r'File "(?:.*/)?([^/"]+)", line (\d+), in (\S+)', line)
    return f"{m[1]}:{m[2]} ({m[3]})" if m else line


# -- cost by sequence length ---------------------------------------------------------------------


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


def _cost_section(report: Any, before: Any, after: Any, target: Any, seqs: Sequence[int]) -> str:
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
            parts.append(f"<p class='empty'>cost {_e(s.label)}: {_e(s.problem)}</p>")
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
        parts += [f"<li><b>{_e(k)}</b>: <code>{_e(v)}</code></li>" for k, v in report.cost_symbolic.items()]
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
    return f"<p id='cost-change'>{where}: " + "; ".join(_e(r) for r in ratios) + ".</p>"


def _uncosted_sites(gm: fx.GraphModule | None) -> int:
    from tcomp.cost import site_kind

    if gm is None:
        return 0
    return sum(1 for n in gm.graph.nodes if meta.ATTN_LAYER in n.meta and site_kind(n) is None)


def _cost_table(series: Sequence[CostSeries]) -> str:
    head = ["graph", "kind", "seq", "GFLOPs", "MB", "roofline µs"]
    rows = [
        f"<tr data-graph='{_e(s.label)}' data-kind='{_e(r['kind'])}'><td>{_e(s.label)}</td><td>{_e(r['kind'])}</td>"
        f"<td class='num'>{r['seq']}</td><td class='num'>{r['gflops']:.4g}</td>"
        f"<td class='num'>{r['mb']:.4g}</td><td class='num'>{r['roofline_us']:.4g}</td></tr>"
        for s in series
        for r in s.rows
    ]
    return "<details><summary>cost table</summary>" + _table("cost-table", head, rows, "") + "</details>"


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
        f"data-title='{_e(title)}'><title>{_e(title)}</title>",
        f"<text x='{w / 2}' y='16' class='ptitle' text-anchor='middle'>{_e(title)}</text>",
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
            f"<polyline class='series' data-series='{_e(label)}' points='{pts}' fill='none' "
            f"stroke='{color}' stroke-width='2' stroke-dasharray='{dash}'/>"
        )
        for x, y in zip(xs, ys):
            out.append(
                f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='3' fill='{color}'>"
                f"<title>{_e(label)}, seq {x}: {y:.4g}</title></circle>"
            )
        ly = top + 12 + 14 * i
        out.append(
            f"<line x1='{left + 8}' x2='{left + 28}' y1='{ly}' y2='{ly}' stroke='{color}' stroke-width='2' "
            f"stroke-dasharray='{dash}'/><text x='{left + 32}' y='{ly + 4}' class='tick'>{_e(label)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


# -- the graph picture ---------------------------------------------------------------------------


@dataclass
class Box:
    """One box of the picture: fx nodes of one submodule (or one node) in one band."""

    band: int
    key: str
    nodes: list[fx.Node]
    kind: str = "ops"  # "attention" | "input" | "output" | "ops"
    rewritten: list[fx.Node] = field(default_factory=list)
    gen: int = 0
    row: int = 0


@dataclass
class Picture:
    bands: list[str]  # band titles
    boxes: list[Box]
    edges: set[tuple[int, int]]  # box index -> box index
    collapsed: bool
    rewritten: int = 0  # rewritten nodes (new after the passes, or marked REWRITTEN_BY)
    removed: int = 0  # nodes of the graph before that are gone after
    prefix: str = ""  # module path every drawn node lies under (left out of band titles)


def _signature(n: fx.Node) -> tuple[str, str, str]:
    return (n.op, n.name, str(n.target))


def rewritten_nodes(after: fx.GraphModule, before: fx.GraphModule | None) -> list[fx.Node]:
    """Nodes a pass made: marked with ``REWRITTEN_BY``, or (name, target) absent from ``before``."""
    old = {_signature(n) for n in before.graph.nodes} if before is not None else None
    return [
        n
        for n in after.graph.nodes
        if n.op.startswith("call_")
        and (meta.REWRITTEN_BY in n.meta or (old is not None and _signature(n) not in old))
    ]


def _drawn(n: fx.Node) -> bool:
    """Not drawn: weights (``get_attr``), export's input guard module, and size computations
    (``sym_size`` and arithmetic on sizes), which would tie every view to the inputs."""
    if n.op == "get_attr" or (n.op == "call_module" and str(n.target).startswith("_guards")):
        return False
    v = n.meta.get(meta.VAL)
    return not (n.op == "call_function" and v is not None and not isinstance(v, (torch.Tensor, tuple, list)))


def _path(n: fx.Node) -> str:
    p = module_path(n)
    return "" if p.startswith("_") else p  # export's "_empty_nn_module_stack..." placeholder name


def _band_key(rel: str) -> str:
    """The numbered block a module path lies in (``encoder.layer.3``), "" outside any."""
    parts = rel.split(".") if rel else []
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return ""


def _band_title(key: str, members: Sequence[fx.Node], rel: dict[fx.Node, str]) -> str:
    """A numbered block is named by its path; a run outside the blocks by its modules."""
    if key:
        return key
    names = list(dict.fromkeys(rel[n].split(".")[0] for n in members if rel[n]))
    return ", ".join(names[:3]) + (", …" if len(names) > 3 else "") if names else "(model)"


def _is_site(n: fx.Node) -> bool:
    return is_attention(n) or (n.op == "call_function" and meta.ATTN_LAYER in n.meta)


def build_picture(after: fx.GraphModule, before: fx.GraphModule | None = None) -> Picture:
    """Bands and boxes of the picture of ``after`` (see the module docstring)."""
    nodes = [n for n in after.graph.nodes if _drawn(n)]
    paths = {n: _path(n) for n in nodes}
    common = _common_prefix([p for p in paths.values() if p])
    rel = {
        n: p[len(common) :].lstrip(".") if common and p.startswith(common) else p for n, p in paths.items()
    }
    rewritten = rewritten_nodes(after, before)
    removed = 0
    if before is not None:
        new = {_signature(n) for n in after.graph.nodes}
        removed = sum(1 for n in before.graph.nodes if n.op.startswith("call_") and _signature(n) not in new)
    detail = len(nodes) <= DETAIL_NODES
    keys: list[str] = []
    band_nodes: list[list[fx.Node]] = []
    for n in nodes:  # contiguous runs of graph order: edges between bands only go forward
        key = _band_key(rel[n])
        if not keys or keys[-1] != key:
            keys.append(key)
            band_nodes.append([])
        band_nodes[-1].append(n)
    bands = [_band_title(k, members, rel) for k, members in zip(keys, band_nodes)]
    boxes: list[Box] = []
    for bi, members in enumerate(band_nodes):
        boxes += _band_boxes(bi, members, rel, keys[bi], detail)
    owner = {n: i for i, b in enumerate(boxes) for n in b.nodes}
    edges = {
        (owner[a], owner[n]) for n in nodes for a in n.all_input_nodes if a in owner and owner[a] != owner[n]
    }
    marked = set(rewritten)
    for b in boxes:
        b.rewritten = [n for n in b.nodes if n in marked]
    _place(boxes, edges)
    return Picture(bands, boxes, edges, not detail, len(rewritten), removed, common)


def _common_prefix(paths: Sequence[str]) -> str:
    if not paths:
        return ""
    split = [p.split(".") for p in paths]
    out = []
    for parts in zip(*split):
        if len(set(parts)) != 1 or parts[0].isdigit():
            break
        out.append(parts[0])
    return ".".join(out)


def _box_key(n: fx.Node, rel: str, band: str, depth: int | None) -> tuple[str, str]:
    """(kind, key) of the box ``n`` goes into; depth None = one box per node."""
    if n.op == "placeholder":
        return "input", f"input {n.name}"
    if n.op == "output":
        return "output", "output"
    if _is_site(n):
        return "attention", f"attention #{n.meta.get(meta.ATTN_LAYER, n.name)}"
    if depth is None:
        return "ops", n.name
    sub = rel[len(band) :].lstrip(".") if band and rel.startswith(band) else rel
    parts = sub.split(".") if sub else []
    return "ops", ".".join(parts[:depth]) or "·"


def _band_boxes(bi: int, members: list[fx.Node], rel: dict, band: str, detail: bool) -> list[Box]:
    max_depth = max((len(rel[n].split(".")) for n in members if rel[n]), default=1)
    depths: list[int | None] = [None] if detail else list(range(max_depth, -1, -1))
    boxes: list[Box] = []
    for depth in depths:
        boxes = _merge_runs(bi, members, lambda n, d=depth: _box_key(n, rel[n], band, d))
        if _generations(boxes) <= MAX_COLS:
            break
    return boxes


def _merge_runs(bi: int, members: list[fx.Node], key_of) -> list[Box]:
    """Contiguous runs of equal keys, then runs with a key seen before merged into the earlier box
    where that keeps the boxes acyclic (a residual ``add`` before and after an MLP stays apart)."""
    boxes: list[Box] = []
    for n in members:
        kind, key = key_of(n)
        if boxes and boxes[-1].key == key and kind == "ops":
            boxes[-1].nodes.append(n)
        else:
            boxes.append(Box(bi, key, [n], kind))
    merged: list[Box] = []
    for b in boxes:
        target = next((m for m in merged if m.key == b.key and m.kind == "ops" == b.kind), None)
        if target is not None:
            target.nodes += b.nodes
            if _acyclic(merged):
                continue
            del target.nodes[-len(b.nodes) :]
        merged.append(b)
    return merged


def _box_graph(boxes: Sequence[Box]) -> nx.DiGraph:
    owner = {n: i for i, b in enumerate(boxes) for n in b.nodes}
    g = nx.DiGraph()
    g.add_nodes_from(range(len(boxes)))
    for i, b in enumerate(boxes):
        for n in b.nodes:
            for a in n.all_input_nodes:
                j = owner.get(a)
                if j is not None and j != i:
                    g.add_edge(j, i)
    return g


def _acyclic(boxes: Sequence[Box]) -> bool:
    return nx.is_directed_acyclic_graph(_box_graph(boxes))


def _generations(boxes: Sequence[Box]) -> int:
    return sum(1 for _ in nx.topological_generations(_box_graph(boxes))) if boxes else 0


def _place(boxes: list[Box], edges: set[tuple[int, int]]) -> None:
    """Generation (column) and row of every box, band by band."""
    by_band: dict[int, list[int]] = {}
    for i, b in enumerate(boxes):
        by_band.setdefault(b.band, []).append(i)
    for idx in by_band.values():
        g = nx.DiGraph()
        g.add_nodes_from(idx)
        g.add_edges_from((a, b) for a, b in edges if a in g and b in g)
        for gen, layer in enumerate(nx.topological_generations(g)):
            for row, i in enumerate(sorted(layer)):
                boxes[i].gen, boxes[i].row = gen, row


_PRIORITY = ("attention", "scaled_dot_product_attention", "linear", "addmm", "matmul", "bmm", "mm",
             "layer_norm", "softmax", "gelu", "silu", "embedding")  # fmt: skip


def _op_name(n: fx.Node) -> str:
    if n.op in ("placeholder", "output"):
        return n.op
    t = n.target
    name = getattr(t, "__name__", None) or str(t)
    return re.sub(r"\.(default|Tensor|Scalar|int|dtype\w*)$", "", name).split("::")[-1]


def _ops_label(nodes: Sequence[fx.Node]) -> str:
    c = Counter(_op_name(n) for n in nodes)
    names = sorted(c, key=lambda k: (_PRIORITY.index(k) if k in _PRIORITY else len(_PRIORITY), -c[k], k))
    text = ", ".join(f"{k}×{c[k]}" if c[k] > 1 else k for k in names[:2])
    return text + (f" +{len(names) - 2}" if len(names) > 2 else "")


def _short(text: str, n: int = 19, keep_end: bool = True) -> str:
    if len(text) <= n:
        return text
    return "…" + text[-(n - 1) :] if keep_end else text[: n - 1] + "…"


def _labels(b: Box) -> tuple[str, str]:
    """The two text lines of a box (what it is, then which ops it holds), cut to fit the box."""
    if b.kind in ("input", "output"):
        return b.kind, _short(b.nodes[0].name if b.kind == "input" else "", L2, keep_end=False)
    if b.kind == "attention":
        n = b.nodes[0]
        args = n.args if is_attention(n) else ()
        facts = [w for w, on in zip(("bias", "mask", "causal"), (3, 4, 6)) if len(args) > on and args[on]]
        return _short(b.key, L1), _short(", ".join(facts) or _op_name(n), L2, keep_end=False)
    mark = f" ✎{len(b.rewritten)}" if b.rewritten else ""
    if len(b.nodes) == 1 and b.key == b.nodes[0].name:  # node by node
        first, second = b.key, _op_name(b.nodes[0])
    elif b.key == "·":  # ops of the band's own module, outside its submodules
        return _short(_ops_label(b.nodes), L1 - len(mark), keep_end=False) + mark, ""
    else:
        first, second = b.key, _ops_label(b.nodes)
    return _short(first, L1 - len(mark)) + mark, _short(second, L2, keep_end=False)


def _tooltip(box: Box) -> str:
    paths = sorted({_path(n) for n in box.nodes} - {""})
    where = paths[0] if len(paths) == 1 else f"{len(paths)} modules" if paths else "top level"
    lines = [f"{box.key} in {where}" if box.kind == "attention" else where, f"{len(box.nodes)} nodes"]
    for n in box.nodes[:24]:
        s = shape(n)
        dims = "×".join(map(str, s)) if s is not None else ""
        by = n.meta.get(meta.REWRITTEN_BY)
        mark = f"  [rewritten by {by}]" if by else ("  [new]" if n in box.rewritten else "")
        lines.append(f"  {n.name} = {_op_name(n)} {dims}{mark}")
    if len(box.nodes) > 24:
        lines.append(f"  … {len(box.nodes) - 24} more")
    return "\n".join(lines)


def _band_label(title: str) -> str:
    """The band's title in up to three lines: ``encoder.`` (muted) above ``layer.3``, or one
    module per line."""
    head = ""
    if ", " in title:
        lines = title.split(", ")[:3]
    elif len(title) > 12 and title.count(".") >= 2:
        head, mid, tail = title.rsplit(".", 2)
        lines = [head + ".", f"{mid}.{tail}"]
    else:
        lines = [title]
    return "".join(
        f"<tspan x='10' dy='{-6 * (len(lines) - 1) if i == 0 else 13}'"
        + (" class='bandhead'" if head and i == 0 else "")
        + f">{_e(_short(line, 14))}</tspan>"
        for i, line in enumerate(lines)
    )


def _layout(pic: Picture) -> tuple[list[tuple[int, int]], list[int], list[int], int, int]:
    """Top-left corner of every box, top and height of every band, width and height of the
    picture. A band of more than :data:`MAX_COLS` generations wraps onto further rows."""
    n = len(pic.bands)
    rows, wraps, cols = [1] * n, [1] * n, 1
    for b in pic.boxes:
        wrap, col = divmod(b.gen, MAX_COLS)
        rows[b.band], wraps[b.band], cols = (
            max(rows[b.band], b.row + 1),
            max(wraps[b.band], wrap + 1),
            max(cols, col + 1),
        )
    heights = [w * r * ROW_H for w, r in zip(wraps, rows)]
    tops, y = [], 10
    for h in heights:
        tops.append(y)
        y += h + BAND_GAP
    pos = []
    for b in pic.boxes:
        wrap, col = divmod(b.gen, MAX_COLS)
        pos.append((BAND_LABEL_W + col * COL_W, tops[b.band] + (wrap * rows[b.band] + b.row) * ROW_H))
    return pos, tops, heights, BAND_LABEL_W + cols * COL_W + 6, y + 10


def graph_svg(pic: Picture) -> str:
    """The picture as one ``<svg>``: bands top to bottom, boxes by generation left to right."""
    pos, tops, heights, width, height = _layout(pic)
    out = [
        f"<svg id='graph-svg' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' role='img'><title>rewritten graph</title>"
        "<defs><marker id='arrow' viewBox='0 0 8 8' refX='8' refY='4' markerWidth='6' markerHeight='6' "
        "orient='auto-start-reverse'><path d='M0,0 L8,4 L0,8 z' fill='#9aa'/></marker></defs>"
    ]
    for bi, title in enumerate(pic.bands):
        y = tops[bi]
        out.append(
            f"<g class='band' data-band='{_e(title)}'><rect x='2' y='{y - 5}' width='{width - 4}' "
            f"height='{heights[bi] + 6}' rx='6' class='bandbg {'odd' if bi % 2 else ''}'/>"
            f"<text x='10' y='{y + BOX_H / 2 + 4}' class='bandtitle'><title>{_e(title)}</title>"
            f"{_band_label(title)}</text></g>"
        )
    for a, b in sorted(pic.edges):
        (xa, ya), (xb, yb) = pos[a], pos[b]
        if pic.boxes[a].band == pic.boxes[b].band and xb > xa:
            x1, y1, x2, y2 = xa + BOX_W, ya + BOX_H / 2, xb, yb + BOX_H / 2
            d = f"M{x1},{y1} C{x1 + 14},{y1} {x2 - 14},{y2} {x2},{y2}"
            cls = "edge"
        else:  # to a later band (or a wrapped row): leave from the bottom, enter from the top
            x1, y1, x2, y2 = xa + BOX_W / 2, ya + BOX_H, xb + BOX_W / 2, yb
            d = f"M{x1},{y1} C{x1},{y1 + 24} {x2},{y2 - 24} {x2},{y2}"
            cls = "edge far"
        out.append(f"<path class='{cls}' d='{d}' marker-end='url(#arrow)'/>")
    for i, b in enumerate(pic.boxes):
        x, y = pos[i]
        cls = ["gnode", b.kind] + (["rewritten"] if b.rewritten else [])
        line1, line2 = _labels(b)
        out.append(
            f"<g class='{' '.join(cls)}' data-box='{i}' data-nodes='{len(b.nodes)}' "
            f"data-rewritten='{len(b.rewritten)}' data-key='{_e(b.key)}' tabindex='0'>"
            f"<title>{_e(_tooltip(b))}</title>"
            f"<rect x='{x}' y='{y}' width='{BOX_W}' height='{BOX_H}' rx='5'/>"
            f"<text x='{x + 6}' y='{y + 14}' class='l1'>{_e(line1)}</text>"
            f"<text x='{x + 6}' y='{y + 27}' class='l2'>{_e(line2)}</text></g>"
        )
    out.append("</svg>")
    return "".join(out)


def _graph_section(after: fx.GraphModule | None, before: fx.GraphModule | None) -> str:
    head = "<section id='graph'><h2>Graph after the passes</h2>"
    if after is None:
        return head + "<p class='empty'>no graph available</p></section>"
    pic = build_picture(after, before)
    n_sites = sum(1 for b in pic.boxes if b.kind == "attention")
    how = (
        f"collapsed by module path into {len(pic.boxes)} boxes in {len(pic.bands)} bands"
        if pic.collapsed
        else f"one box per node ({len(pic.boxes)} boxes)"
    )
    diff = (
        f"{pic.rewritten} nodes new or rewritten by the passes, {pic.removed} nodes of the captured graph removed"
        if before is not None
        else f"{pic.rewritten} nodes marked as rewritten (the captured graph is not available to compare)"
    )
    legend = (
        "<div class='legend'><span class='sw attention'></span>attention site "
        "<span class='sw rewritten'></span>holds rewritten nodes (✎ count) "
        "<span class='sw io'></span>input / output <span class='sw ops'></span>unchanged ops</div>"
    )
    return (
        head + f"<p class='muted' id='graph-facts' data-sites='{n_sites}' data-rewritten='{pic.rewritten}'>"
        f"{_count(after)} nodes (weights not drawn), {how}"
        + (f" (module paths below <code>{_e(pic.prefix)}</code>)" if pic.prefix else "")
        + f"; {n_sites} attention sites; {_e(diff)}. "
        "Hover a box for the fx nodes it holds; click it to pin the list below.</p>"
        + legend
        + "<label class='muted'><input type='checkbox' id='focus'> dim everything but attention and "
        "rewritten boxes</label>"
        + f"<div class='graphwrap'>{graph_svg(pic)}</div><pre id='node-detail' class='muted'></pre></section>"
    )


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0 24px 40px;color:#1d2329}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #dde;padding-bottom:3px}
.muted{color:#5a6570;font-size:13px}.empty{color:#777;font-style:italic}.warn{color:#a14b00}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:10px}
.card{border:1px solid #d6dde4;border-radius:8px;padding:8px 14px;min-width:120px;background:#f8fafc}
.card b{display:block;font-size:18px}.card span{font-size:12px;color:#5a6570}.card.bad{border-color:#c62828;background:#fff1f0}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border-bottom:1px solid #e3e8ee;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f1f4f8;cursor:pointer;user-select:none;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.over{color:#c62828;font-weight:600}td.name{font-weight:600;font-family:ui-monospace,'DejaVu Sans Mono',monospace}
tr.status-rolled_back{background:#fff1f0}tr.status-skipped{color:#6b7680}td.why{max-width:420px}
.badge{border-radius:9px;padding:1px 8px;font-size:12px;white-space:nowrap}.badge.applied{background:#e3f4e4;color:#1b5e20}
.badge.rolled_back{background:#fcdcdc;color:#b71c1c}.badge.skipped{background:#eceff1;color:#455a64}
.meter{vertical-align:middle}code{font-size:12px;word-break:break-all}
.plots{display:flex;flex-wrap:wrap;gap:14px}.plot{background:#fff;border:1px solid #e3e8ee;border-radius:6px}
.plot .frame{fill:none;stroke:#c9d1d9}.plot .grid{stroke:#eef1f4}.plot .tick{font-size:10px;fill:#5a6570}.plot .ptitle{font-size:12px;font-weight:600}
.graphwrap{overflow:auto;max-height:1400px;border:1px solid #e3e8ee;border-radius:6px;margin-top:6px}
#graph-svg{max-width:100%;height:auto;display:block}#graph-svg text{font-family:'DejaVu Sans',sans-serif}.bandbg{fill:#f9fafb}.bandbg.odd{fill:#f1f4f7}
.bandtitle{font-size:11px;font-weight:600;fill:#37474f}.bandhead{font-weight:400;font-size:10px;fill:#78868f}
.edge{fill:none;stroke:#9aa;stroke-width:1.1}.edge.far{stroke:#c3cad1;stroke-width:.9}
.gnode rect{fill:#fff;stroke:#90a4ae;stroke-width:1}.gnode .l1{font-size:10.5px;fill:#1d2329}.gnode .l2{font-size:9.5px;fill:#5a6570}
.gnode.input rect,.gnode.output rect{fill:#e8eaf6;stroke:#5c6bc0}
.gnode.rewritten rect{fill:#fff3e0;stroke:#ef6c00;stroke-width:2;stroke-dasharray:5 2}
.gnode.attention rect{fill:#ffebee;stroke:#c62828;stroke-width:2.5;stroke-dasharray:none}.gnode.attention .l1{font-weight:700;fill:#b71c1c}
.gnode{cursor:pointer}.gnode:hover rect,.gnode.pinned rect{stroke:#000;stroke-width:2.5}
svg.focus .gnode:not(.attention):not(.rewritten){opacity:.25}svg.focus .edge{opacity:.3}
.legend{font-size:12px;margin:4px 0}.sw{display:inline-block;width:14px;height:10px;border:2px solid;margin:0 4px 0 12px;vertical-align:middle}
.sw.attention{background:#ffebee;border-color:#c62828}.sw.rewritten{background:#fff3e0;border-color:#ef6c00;border-style:dashed}
.sw.io{background:#e8eaf6;border-color:#5c6bc0}.sw.ops{background:#fff;border-color:#90a4ae;border-width:1px}
#node-detail{white-space:pre-wrap;font-size:12px}
"""

_JS = """
(function(){
  function cellValue(td){var t=td.textContent.trim();var v=parseFloat(t);return isNaN(v)||!/^[-+0-9.]/.test(t)?t.toLowerCase():v;}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
        var dir=th.dataset.dir==='asc'?-1:1;th.dataset.dir=dir>0?'asc':'desc';
        rows.sort(function(a,b){var x=cellValue(a.cells[col]),y=cellValue(b.cells[col]);
          if(typeof x!==typeof y){x=String(x);y=String(y);}return x<y?-dir:x>y?dir:0;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  var svg=document.getElementById('graph-svg'),detail=document.getElementById('node-detail');
  var boxes=svg?svg.querySelectorAll('g.gnode'):[];
  boxes.forEach(function(g){g.addEventListener('click',function(){
    boxes.forEach(function(o){o.classList.remove('pinned');});g.classList.add('pinned');
    detail.textContent=g.querySelector('title').textContent;});});
  var focus=document.getElementById('focus');
  if(focus&&svg){focus.addEventListener('change',function(){svg.classList.toggle('focus',focus.checked);});}
  var passes=document.querySelectorAll('#pass-table tbody tr').length;
  var back=document.querySelectorAll('#pass-table tr.status-rolled_back').length;
  var att=svg?svg.querySelectorAll('g.gnode.attention').length:0;
  var rew=svg?svg.querySelectorAll('g.gnode.rewritten').length:0;
  var s=document.getElementById('js-summary');
  s.textContent=passes+' passes ('+back+' rolled back), '+att+' attention sites highlighted, '+rew+
    ' boxes with rewritten nodes, '+boxes.length+' boxes drawn';
  s.dataset.passes=passes;s.dataset.attention=att;s.dataset.boxes=boxes.length;
  document.documentElement.dataset.rendered='1';
})();
"""
