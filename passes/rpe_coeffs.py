"""The 2n-1 relative-position coefficients of a Toeplitz bias, computed in O(n) from the bias's own
producer instead of from the (…, H, n, n) bias itself.

For a bias proven Toeplitz (``passes/rpe_detect.py``), the coefficients are its first column
(offsets ``0, -1, ..., -(n-1)``) and its first row (offsets ``0..n-1``). ``restrict(node, dim)``
rebuilds the producer of ``node`` with output dim ``dim`` cut to its first index, pushing the cut up
through the graph: through pointwise ops (each broadcast input is cut where it has that dim),
``unsqueeze``, ``permute``, ``embedding`` and ``x[idx]`` (the cut lands on the indices), full slices and
``expand``. It stops at the position vectors (``arange``), so a T5 bucketed bias becomes "bucket of
each offset, then a table lookup", ALiBi ``slope * offset``, a learned 1-D offset table a gather of
2n-1 entries, each still a function of the runtime length. Every rule is an identity of slicing, so
the result is exactly the bias's first row/column. Where an op has no rule the cut is applied to
that op's output; if that output is quadratic (e.g. a learned (H, n, n) bias that happens to be
Toeplitz), ``Coefficients.quadratic`` says so and the n x n tensor stays in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from tcomp.graph import add_node, shape

aten = torch.ops.aten
END = 2**63 - 1

# ops with no pointwise tag that still act elementwise on their tensor inputs (or only read shapes)
_UNARY = {
    aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default, aten.clone.default,
    aten.contiguous.default, aten.alias.default, aten.detach.default, aten.zeros_like.default,
    aten.ones_like.default, aten.full_like.default, aten.empty_like.default,
    aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.where.self, aten.where.ScalarOther,
    aten.where.ScalarSelf, aten.type_as.default, aten.lift_fresh_copy.default,
}  # fmt: skip


def _pointwise(n: fx.Node) -> bool:
    t = n.target
    return t in _UNARY or (isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags)


def out_of_place(op):
    """``aten.add_.Tensor`` -> ``aten.add.Tensor`` (the copy must not mutate what it reads)."""
    if isinstance(op, torch._ops.OpOverload) and torch.Tag.inplace in op.tags:
        return getattr(getattr(aten, op._schema.name.split("::")[1].rstrip("_")), op._overloadname)
    return op


def _fresh(x) -> bool:
    """``x`` is a new tensor made by an op (not an input, a weight, a view or an alias of one)."""
    t = getattr(x, "target", None)
    return (
        isinstance(x, fx.Node) and x.op == "call_function" and isinstance(t, torch._ops.OpOverload)
        and not any(r.alias_info is not None for r in t._schema.returns)
    )  # fmt: skip


def drop_unobserved_inplace(graph: fx.Graph) -> int:
    """Erase in-place ops nobody reads whose mutated input is an intermediate nobody else reads
    (e.g. T5's ``buckets += ...`` on the n x n bias that a rewrite left dead), then what they leave
    dead. Returns how many were erased."""
    from tcomp.graph import remove_dead

    count = 0
    for n in reversed(list(graph.nodes)):
        t = n.target
        if (
            n.op == "call_function" and not n.users and isinstance(t, torch._ops.OpOverload)
            and torch.Tag.inplace in t.tags and _fresh(n.args[0]) and set(n.args[0].users) == {n}
        ):  # fmt: skip
            inputs = list(n.all_input_nodes)
            graph.erase_node(n)
            remove_dead(graph, inputs)
            count += 1
    return count


def _static_one(d) -> bool:
    return isinstance(d, int) and d == 1


@dataclass
class Restrictor:
    """Rebuilds producers with one output dim cut to index 0 (inserted at the graph's insertion
    point; memoised, so a bias shared by several sites is cut once)."""

    graph: fx.Graph
    seq: object  # the sequence length: a sympy symbol (dynamic) or an int
    stop_all: bool = False  # cut every node where it stands (the bias's own first row/column)
    memo: dict = field(default_factory=dict)
    leaves: list[fx.Node] = field(default_factory=list)  # nodes cut where they stand

    def __call__(self, node: fx.Node, dim: int) -> fx.Node:
        s = shape(node)
        if s is None:
            return node
        dim = dim - len(s) if dim >= 0 else dim
        if -dim > len(s) or _static_one(s[dim]):
            return node  # the dim is absent or already of size 1: broadcasting does the rest
        key = (node, dim)
        if key not in self.memo:
            self.memo[key] = self._rule(node, dim, len(s))
        return self.memo[key]

    def _call(self, op, *args, **kwargs) -> fx.Node:
        return add_node(self.graph, op, args, kwargs)

    def _rule(self, n: fx.Node, d: int, rank: int) -> fx.Node:
        p = d + rank  # positive index of the cut dim
        t = n.target
        if self.stop_all or n.op != "call_function":
            return self._leaf(n, d)
        if _pointwise(n):
            t = out_of_place(t)
            args = tuple(self(a, d) if isinstance(a, fx.Node) else a for a in n.args)
            kw = {k: self(a, d) if isinstance(a, fx.Node) else a for k, a in n.kwargs.items()}
            return self._call(t, *args, **kw)
        if t is aten.unsqueeze.default:
            x, k = n.args
            k = k if k >= 0 else k + rank
            if k == p:
                return n
            xp = p if p < k else p - 1
            return self._call(t, self(x, xp - (rank - 1)), k)
        if t is aten.permute.default:
            x, perm = n.args
            return self._call(t, self(x, perm[p] % rank - rank), perm)
        if t is aten.embedding.default and p < rank - 1:
            weight, idx, *rest = n.args
            return self._call(t, weight, self(idx, d + 1), *rest)
        if t is aten.index.Tensor and len(n.args[1]) == 1 and isinstance(n.args[1][0], fx.Node):
            x, (idx,) = n.args  # x[idx]: idx's dims, then x's trailing dims
            r = len(shape(idx))
            if p < r:
                return self._call(t, x, [self(idx, p - r)])
        if t is aten.slice.Tensor:
            x, sdim, start, end, step = (list(n.args) + [0, None, END, 1][len(n.args) - 1 :])[:5]
            sdim = sdim % rank
            if sdim != p:
                return self._call(t, self(x, d), *n.args[1:])
            if start in (0, None) and step == 1:  # x[0:end][0:1] == x[0:1] (end > 0 for a non-empty dim)
                return self(x, d)
        if t is aten.expand.default:
            x, sizes = n.args[:2]
            sizes = list(sizes)
            sizes[p] = 1
            return self._call(t, self(x, d), sizes)
        return self._leaf(n, d)

    def _leaf(self, n: fx.Node, d: int) -> fx.Node:
        self.leaves.append(n)
        return self._call(aten.slice.Tensor, n, d, 0, 1)

    def quadratic(self, node: fx.Node) -> bool:
        """True when ``node``'s output has two dims of the sequence length (O(n^2) memory)."""
        return sum(str(getattr(x, "node", x).expr if isinstance(x, torch.SymInt) else x) == str(self.seq)
                   for x in (shape(node) or ())) >= 2  # fmt: skip


@dataclass
class Coefficients:
    node: fx.Node  # (H', 2n-1) float32: offsets -(n-1)..n-1
    quadratic: list[fx.Node]  # nodes of the model read at O(n^2) size (empty: O(n) throughout)


def coefficients(graph: fx.Graph, bias: fx.Node, restrictor: Restrictor) -> Coefficients:
    """Nodes (at the insertion point) computing the (H', 2n-1) float32 log-weights of a Toeplitz
    (…, H'|1, n, n) bias from its producer: first column reversed, then the first row after its
    first entry. Leading (batch) dims are read at index 0 (the bias is equal across them)."""
    call = restrictor._call
    start = len(restrictor.leaves)
    row = call(aten.select.int, restrictor(bias, -2), -2, 0)  # (…, H', n): offsets 0..n-1
    col = call(aten.select.int, restrictor(bias, -1), -1, 0)  # (…, H', n): offsets 0..-(n-1)
    parts = []
    for t in (col, row):
        t = call(aten._to_copy.default, t, dtype=torch.float32)
        while len(shape(t)) > 2:
            t = call(aten.select.int, t, 0, 0)
        if len(shape(t)) == 1:
            t = call(aten.unsqueeze.default, t, 0)
        parts.append(t)
    col, row = parts
    c = call(
        aten.cat.default, [call(aten.flip.default, col, [-1]), call(aten.slice.Tensor, row, -1, 1, END)], -1
    )
    quad = [n for n in restrictor.leaves[start:] if restrictor.quadratic(n)]
    return Coefficients(c, quad)
