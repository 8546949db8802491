"""The picture of the rewritten graph in ``report.html``: which boxes in which bands (this module),
drawn as SVG by :mod:`tcomp.report.graph_svg`.

Real models have hundreds of nodes, so nodes are collapsed by where they came from in the user's
model (:func:`tcomp.graph.module_path`): one horizontal *band* per numbered block
(``encoder.layer.3``) and per run of nodes between blocks (named by their modules, e.g.
``embeddings``); a band is a contiguous run of graph order, so edges between bands only go forward.
Inside a band, one box per submodule, as deep as fits :data:`MAX_COLS` columns (runs of one
submodule are merged while the boxes stay acyclic). Weights and size arithmetic are not drawn.
Attention sites, inputs and the output always get their own box. Boxes are laid out left to right
by topological generation (networkx), so parallel branches (q, k, v projections) sit above each
other. Graphs of at most :data:`DETAIL_NODES` nodes are drawn node by node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx

from tcomp import meta
from tcomp.dialect import is_attention
from tcomp.graph import module_path

MAX_COLS = 10  # columns of boxes per band before submodules are collapsed further (then wrapped)
DETAIL_NODES = 40  # graphs with at most this many drawn nodes get one box per node


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


def node_path(n: fx.Node) -> str:
    """The module path ``n`` came from in the user's model, "" at the top level."""
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
    paths = {n: node_path(n) for n in nodes}
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
