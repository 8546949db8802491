"""The graph picture of ``report.html`` as one ``<svg>``: bands top to bottom, boxes by topological
generation left to right, attention sites and rewritten boxes highlighted, a ``<title>`` tooltip on
every box listing the fx nodes it holds (the boxes come from :func:`tcomp.report.graph.build_picture`)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import torch.fx as fx

from tcomp import meta
from tcomp.dialect import is_attention
from tcomp.graph import shape
from tcomp.report.graph import MAX_COLS, Box, Picture, build_picture, node_path
from tcomp.report.markup import esc, node_count

BOX_W, BOX_H, COL_W, ROW_H, BAND_LABEL_W, BAND_GAP = 114, 34, 124, 44, 104, 16
L1, L2 = 16, 19  # characters that fit a box's first (10.5 px) and second (9.5 px) line


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
    paths = sorted({node_path(n) for n in box.nodes} - {""})
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
        + f">{esc(_short(line, 14))}</tspan>"
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
            f"<g class='band' data-band='{esc(title)}'><rect x='2' y='{y - 5}' width='{width - 4}' "
            f"height='{heights[bi] + 6}' rx='6' class='bandbg {'odd' if bi % 2 else ''}'/>"
            f"<text x='10' y='{y + BOX_H / 2 + 4}' class='bandtitle'><title>{esc(title)}</title>"
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
            f"data-rewritten='{len(b.rewritten)}' data-key='{esc(b.key)}' tabindex='0'>"
            f"<title>{esc(_tooltip(b))}</title>"
            f"<rect x='{x}' y='{y}' width='{BOX_W}' height='{BOX_H}' rx='5'/>"
            f"<text x='{x + 6}' y='{y + 14}' class='l1'>{esc(line1)}</text>"
            f"<text x='{x + 6}' y='{y + 27}' class='l2'>{esc(line2)}</text></g>"
        )
    out.append("</svg>")
    return "".join(out)


def graph_section(after: fx.GraphModule | None, before: fx.GraphModule | None) -> str:
    """The ``<section id='graph'>`` of the page: facts, legend, focus toggle and the picture."""
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
        f"{node_count(after)} nodes (weights not drawn), {how}"
        + (f" (module paths below <code>{esc(pic.prefix)}</code>)" if pic.prefix else "")
        + f"; {n_sites} attention sites; {esc(diff)}. "
        "Hover a box for the fx nodes it holds; click it to pin the list below.</p>"
        + legend
        + "<label class='muted'><input type='checkbox' id='focus'> dim everything but attention and "
        "rewritten boxes</label>"
        + f"<div class='graphwrap'>{graph_svg(pic)}</div><pre id='node-detail' class='muted'></pre></section>"
    )
