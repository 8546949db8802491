"""The optimization report: :class:`Report` (per pass what changed, under which contract, and the
measured error; the attention sites; the cost), printed as text or JSON (:mod:`.model`), and
``report.html``, one self-contained page (:mod:`.page`) with cost plots (:mod:`.plots`) and a
picture of the rewritten graph (:mod:`.graph`, :mod:`.graph_svg`)."""

from __future__ import annotations

from tcomp.report.graph import Box, Picture, build_picture, rewritten_nodes
from tcomp.report.graph_svg import graph_svg
from tcomp.report.model import Report, site_record
from tcomp.report.page import asset, render_html, render_module
from tcomp.report.plots import SEQS, CostSeries, cost_series, line_plot

__all__ = [
    "SEQS",
    "Box",
    "CostSeries",
    "Picture",
    "Report",
    "asset",
    "build_picture",
    "cost_series",
    "graph_svg",
    "line_plot",
    "render_html",
    "render_module",
    "rewritten_nodes",
    "site_record",
]
