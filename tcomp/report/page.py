"""``report.html``: one self-contained page (inline CSS, JS and SVG; nothing fetched) per artifact.

It shows the per-pass table (contract, exactness, rewrites, measured error against the bound, roll
backs with their reason), the attention sites, the cost of the graph before and after the passes by
sequence length (:mod:`tcomp.report.plots`) and a picture of the rewritten graph with attention
sites and rewritten regions highlighted (:mod:`tcomp.report.graph`, :mod:`tcomp.report.graph_svg`).
The stylesheet and the script are files of the package (``tcomp/report/assets/``), read through
:mod:`importlib.resources` (so they are found in a wheel or a zip too) and inlined into the page.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import torch.fx as fx

from tcomp.report.graph_svg import graph_section
from tcomp.report.markup import esc, fmt, html_table, node_count
from tcomp.report.planner_plot import planner_section
from tcomp.report.plots import SEQS, cost_section

ASSETS = ("report.css", "report.js")  # files of tcomp/report/assets/ inlined into every page


@cache
def asset(name: str) -> str:
    """The text of ``tcomp/report/assets/<name>``, found through :mod:`importlib.resources` (never a
    path relative to the source tree), so an installed wheel or a zipped package finds it too."""
    if name not in ASSETS:
        raise KeyError(f"{name!r} is not a report asset; the assets are {', '.join(ASSETS)}")
    return resources.files("tcomp.report.assets").joinpath(name).read_text(encoding="utf-8")


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
        cost_section(report, graph_before, graph_after, target, seqs),
        graph_section(graph_after, graph_before),
    ]
    if getattr(report, "planner", None):
        sections.insert(2, planner_section(report.planner))
    if report.notes:
        sections.append(
            "<section id='notes'><h2>Notes</h2><ul>"
            + "".join(f"<li>{esc(n)}</li>" for n in report.notes)
            + "</ul></section>"
        )
    title = f"tcomp report: {report.model} → {report.target}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)}</title><style>\n{asset('report.css')}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p id='js-summary' class='muted'></p></header>"
        + "\n".join(sections)
        + f"<script>\n{asset('report.js')}</script></body></html>\n"
    )


def _summary(report: Any, after: fx.GraphModule | None, before: fx.GraphModule | None) -> str:
    by_status = Counter(r.status for r in report.passes)
    cards = [
        ("passes applied", by_status.get("applied", 0)),
        ("rolled back", by_status.get("rolled_back", 0)),
        ("skipped", by_status.get("skipped", 0)),
        ("attention sites", len(report.sites)),
        ("error vs float64, original", fmt(report.base_error)),
        ("error vs float64, optimized", fmt(report.final_error)),
    ]
    if before is not None and after is not None:
        cards.append(("graph nodes before → after", f"{node_count(before)} → {node_count(after)}"))
    dims = ", ".join(f"{k}: {v}" for k, v in (report.dynamic_dims or {}).items())
    return (
        "<section id='summary'><div class='cards'>"
        + "".join(
            f"<div class='card{' bad' if k == 'rolled back' and v else ''}'><b>{esc(v)}</b>"
            f"<span>{esc(k)}</span></div>"
            for k, v in cards
        )
        + "</div>"
        + (f"<p class='muted'>input dims: {esc(dims)}</p>" if dims else "")
        + "</section>"
    )


def _passes_section(records: Sequence[Any]) -> str:
    rows = []
    for i, r in enumerate(records):
        notes = "".join(f"<li>{esc(n)}</li>" for n in r.notes)
        why = esc(r.reason) + (
            f"<details><summary>{len(r.notes)} notes</summary><ul>{notes}</ul></details>" if notes else ""
        )
        rows.append(
            f"<tr class='status-{esc(r.status)}' data-pass='{esc(r.name)}'><td>{i + 1}</td>"
            f"<td class='name'>{esc(r.name)}</td><td>{esc(r.contract)}</td><td>{esc(r.exactness)}</td>"
            f"<td><span class='badge {esc(r.status)}'>{esc(r.status.replace('_', ' '))}</span></td>"
            f"<td class='num'>{r.rewrites}</td>{_error_cells(r)}"
            f"<td class='num'>{r.seconds:.2f}</td><td class='why'>{why}</td></tr>"
        )
    return (
        "<section id='passes'><h2>Passes</h2>"
        "<p class='muted'>Each pass is checked against its contract on float64 references: measured "
        "max relative error after the pass and the bound it must stay within (EXACT: bitwise equal). "
        "A pass that breaks its contract, or raises, is rolled back.</p>"
        + html_table(
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
        return "<td class='num'>not measured</td><td class='num'>" + fmt(tol) + "</td><td></td>"
    ok = isinstance(err, float) and math.isfinite(err) and tol is not None and err <= tol
    if tol == 0.0:
        meter = "bitwise equal" if ok else "differs"
    elif tol:
        frac = min(err / tol, 1.0) if math.isfinite(err) else 1.0
        meter = (
            f"<svg class='meter' width='90' height='10' role='img'><title>{fmt(err)} of {fmt(tol)}</title>"
            f"<rect width='90' height='10' fill='#eee'/><rect width='{90 * frac:.1f}' height='10' "
            f"fill='{'#2e7d32' if ok else '#c62828'}'/></svg> {err / tol:.2g}"
        )
    else:
        meter = ""
    return (
        f"<td class='num {'ok' if ok else 'over'}'>{fmt(err)}</td><td class='num'>{fmt(tol)}</td>"
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
            f"<tr data-node='{esc(s.get('node', ''))}'>"
            + "".join(f"<td>{esc(c)}</td>" for c in cells)
            + "</tr>"
        )
    return (
        f"<section id='sites'><h2>Attention sites ({len(sites)})</h2>"
        + html_table("site-table", _SITE_COLS, rows, "no attention site in this graph")
        + "</section>"
    )


def _source(line: str) -> str:
    """``File "/x/y/bert.py", line 83, in forward`` -> ``bert.py:83 (forward)``."""
    m = re.match(r'File "(?:.*/)?([^/"]+)", line (\d+), in (\S+)', line)
    return f"{m[1]}:{m[2]} ({m[3]})" if m else line
