"""Small HTML helpers shared by the report's page, plots and graph picture: escaping, number
formatting, a sortable table. Every string a user can influence goes through :func:`esc`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

import torch.fx as fx


def esc(x: Any) -> str:
    """``str(x)`` escaped for HTML text and quoted attribute values (both quote kinds)."""
    return escape(str(x), quote=True)


def fmt(x: Any) -> str:
    """A number for a table cell: 3 significant digits, "–" for a missing value."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3g}" if math.isfinite(x) else str(x)
    return str(x)


def node_count(gm: fx.GraphModule) -> int:
    """Computing nodes of ``gm`` (``call_*``): what "graph nodes before → after" counts."""
    return sum(1 for n in gm.graph.nodes if n.op.startswith("call_"))


def html_table(table_id: str, head: Sequence[str], rows: Iterable[str], empty: str) -> str:
    """A ``table.sortable`` (the page's script sorts it by a click on a column head) of ready-made
    ``<tr>`` rows; without rows, a ``<p class='empty'>`` saying ``empty`` instead."""
    rows = list(rows)
    if not rows:
        return f"<p class='empty' id='{table_id}-empty'>{esc(empty)}</p>"
    ths = "".join(f"<th>{esc(h)}</th>" for h in head)
    return f"<table id='{table_id}' class='sortable'><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
