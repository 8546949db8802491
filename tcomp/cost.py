"""Symbolic cost model: FLOPs and bytes per graph node as sympy expressions of batch and sequence.

Shapes come from ``node.meta[VAL]`` (FakeTensors whose sizes may be ``torch.SymInt``). Symbolic
sizes become sympy expressions in the shape environment's symbols (``s0``, ``s77``, ...);
pass ``symbols`` (see :func:`input_symbols`) to rename them to :data:`BATCH` and :data:`SEQ`.

Every ``tcomp.*`` dialect op carries its own formula (``OpDef.cost``, next to the op in
``tcomp/dialect/<family>.py``, where each formula's docstring states its per-element constants);
the ATen ops (linear, addmm, matmul, bmm, mm, SDPA) have theirs here. :func:`node_cost` asks the
op first, then this table.

Conventions (every formula):

* A multiply-add is 2 FLOPs. Bytes are the compulsory traffic of a fused kernel: every input read
  once from memory, every output written once (no intermediate round trips, caches ignored), each
  tensor at its real element size (packed low-bit weights at their packed size).
* Attention counts ``2·N·M·D`` (``Q Kᵀ``) + ``2·N·M·Dv`` (``P V``) + :data:`SOFTMAX_FLOPS` per score
  (+1 per score for an additive bias), per batch and query head. Causal attention counts half of
  the scores (``N·M/2``), the FlashAttention benchmark convention; for ``N = M`` the exact number of
  kept scores is ``N(N+1)/2``, so the convention leaves out the ``N/2`` diagonal scores.
* Kernelized attention with a relative-position term (``tcomp.rpe_linear_attention``) counts the
  FFT convolution of the P = F·(Dv+1) channels ``φ(k_j)[v_j, 1]ᵀ`` along a circulant of length
  L = 2N (the op pads to the next power of two >= 2N-1; 2N is its smooth stand-in): a real FFT and
  its inverse at :data:`RFFT_FLOPS`·L·log2(L) each, one complex multiply per frequency, the outer
  products and the final contraction with φ(q): ``O(N log N · F · Dv)`` per batch and head.
* Linear attention, token merging, the fused epilogues, RMSNorm and the quantized linears: see
  their formulas (``linear_attention_cost``, ``token_merge_cost``, ``bias_gelu_cost``,
  ``skip_layer_norm_cost``, ``qlinear_cost`` in ``tcomp.dialect``; ``rms_norm_cost`` in
  ``tcomp.dialect.norm``).
* The roofline time of a node is ``max(flops / peak, bytes / bandwidth)``; the time of a graph
  is the sum over nodes (each node is its own kernel).

``attention_cost`` and ``rpe_attention_cost`` live with their ops (``tcomp.dialect.attention``,
``tcomp.dialect.rpe``) and are re-exported here (loaded on first use: the dialect imports this
module for :class:`Cost`, so this module imports the dialect only lazily).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args

import sympy
import torch
from torch.fx import GraphModule, Node

from tcomp.graph import arg
from tcomp.meta import VAL
from tcomp.targets import DtypeKey, Target, get_target

BATCH = sympy.Symbol("B", positive=True, integer=True)
SEQ = sympy.Symbol("N", positive=True, integer=True)

SOFTMAX_FLOPS = 5  # per score: scale, max, subtract, exp, sum (the final divide is per output row)

# per point and log2 level of a real FFT (5·L·log2 L for a complex one, halved)
RFFT_FLOPS = sympy.Rational(5, 2)

SymLike = Union[int, sympy.Expr]
# Site kinds in table order. ATen nodes are "attention" (SDPA), "linear" or "matmul"; a dialect
# node's kind is its OpDef's (a kind missing here still gets its rows, after these).
SiteKind = Literal[
    "attention", "rpe_attention", "linear_attention", "token_merge", "linear", "qlinear", "matmul", "fused",
    "embedding",
]
KINDS: tuple[SiteKind, ...] = get_args(SiteKind)
SymbolMap = Mapping[Union[sympy.Symbol, str], SymLike]


def _s(x: SymLike | float) -> sympy.Expr:
    return sympy.sympify(x)


@dataclass
class Cost:
    """FLOPs and bytes moved, as sympy expressions."""

    flops: sympy.Expr
    bytes: sympy.Expr

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __radd__(self, other: Any) -> Cost:  # lets sum() start from 0
        if other == 0:
            return self
        return NotImplemented

    @property
    def free_symbols(self) -> set[sympy.Symbol]:
        return set(self.flops.free_symbols) | set(self.bytes.free_symbols)

    def subs(self, **values: SymLike) -> Cost:
        """Substitute symbols given by name (``B=2``, ``N=SEQ``, ``s77=...``)."""
        mapping = _by_name(self.free_symbols, values)
        return Cost(_s(self.flops).subs(mapping), _s(self.bytes).subs(mapping))

    def evaluate(
        self, batch: int | None = None, seq: int | None = None, **values: int
    ) -> tuple[float, float]:
        """``(flops, bytes)`` as floats, with :data:`BATCH` = ``batch``, :data:`SEQ` = ``seq`` and
        other symbols given by name. Raises ValueError if a symbol is left without a value."""
        if batch is not None:
            values[BATCH.name] = batch
        if seq is not None:
            values[SEQ.name] = seq
        c = self.subs(**values)
        left = c.free_symbols
        if left:
            raise ValueError(
                f"cost still depends on {sorted(map(str, left))}; give them values, or map shape "
                f"symbols to B/N with graph_cost(gm, symbols=input_symbols(gm))"
            )
        return float(c.flops), float(c.bytes)

    def roofline_time(self, target: str | Target, dtype: DtypeKey) -> sympy.Expr:
        """Seconds on ``target`` in ``dtype``: ``max(flops / peak, bytes / bandwidth)``."""
        t = get_target(target)
        return sympy.Max(self.flops / _s(t.flops_per_s(dtype)), self.bytes / _s(t.bytes_per_s()))


def _by_name(free: Iterable[sympy.Symbol], values: Mapping[Any, SymLike]) -> dict[sympy.Symbol, sympy.Expr]:
    """Match ``values`` (keyed by symbol or name) to the symbols in ``free`` by name.

    Matching by name matters: shape-environment symbols carry assumptions (integer, positive), and
    sympy treats ``Symbol("s0")`` and ``Symbol("s0", integer=True)`` as different symbols.
    """
    named = {str(k): _s(v) for k, v in values.items()}
    return {sym: named[sym.name] for sym in free if sym.name in named}


# -- formulas ------------------------------------------------------------------------------------


ORDERS = [("N^3", SEQ**3), ("N^2 log N", SEQ**2 * sympy.log(SEQ)), ("N^2", SEQ**2),
          ("N log N", SEQ * sympy.log(SEQ)), ("N", SEQ), ("log N", sympy.log(SEQ)), ("1", sympy.S.One)]  # fmt: skip


def leading_order(expr: SymLike, var: sympy.Symbol = SEQ) -> str:
    """The growth of ``expr`` in ``var`` (matched by name) as ``var`` → ∞, as "O(N^2)",
    "O(N log N)", ...; other symbols are held fixed (set to 1)."""
    e = _s(expr)
    e = e.subs({sym: (SEQ if sym.name == var.name else 1) for sym in e.free_symbols})
    for name, term in ORDERS:
        lim = sympy.limit(e / term, SEQ, sympy.oo)
        if lim == sympy.oo:
            return f"O(> {name})"
        if lim != 0:
            return f"O({name})"
    return "O(1)"


def linear_cost(
    rows: SymLike, in_features: SymLike, out_features: SymLike, elem_bytes: int, has_bias: bool
) -> Cost:
    """``y = x Wᵀ (+ b)`` for ``rows`` input rows: ``2·rows·in·out`` FLOPs (+``rows·out`` for the
    bias); bytes = x, W, b read once and y written once."""
    r, i, o = map(_s, (rows, in_features, out_features))
    flops = 2 * r * i * o + (r * o if has_bias else 0)
    nbytes = (r * i + i * o + (o if has_bias else 0) + r * o) * elem_bytes
    return Cost(sympy.expand(flops), sympy.expand(nbytes))


def matmul_cost(a_numel: SymLike, b_numel: SymLike, out_numel: SymLike, k: SymLike, elem_bytes: int) -> Cost:
    """A (batched) matmul with contraction size ``k``: ``2·out·k`` FLOPs; both operands read once,
    the output written once."""
    a, b, out, k = map(_s, (a_numel, b_numel, out_numel, k))
    return Cost(sympy.expand(2 * out * k), sympy.expand((a + b + out) * elem_bytes))


# -- SymInt → sympy ------------------------------------------------------------------------------

_EXACT_DIVS: tuple[type, ...] = ()
try:  # torch's integer-division sympy functions (FloorDiv(a, b) prints as a//b)
    from torch.utils._sympy.functions import CleanDiv, FloorDiv, IntTrueDiv

    _EXACT_DIVS = (FloorDiv, CleanDiv, IntTrueDiv)
except ImportError:  # pragma: no cover - older torch
    pass


def to_sympy(
    size: int | torch.SymInt, symbols: SymbolMap | None = None, exact_division: bool = True
) -> sympy.Expr:
    """A tensor size as a sympy expression.

    Concrete sizes become integers. Symbolic ones are read from ``s.node.expr``, never with
    ``int(s)``: that would install a guard and specialize the symbol in the shared shape
    environment (every shape of the graph would then show the example value). With
    ``exact_division``, torch's ``FloorDiv(a, b)`` is rewritten to ``a/b``: exact whenever ``b``
    divides ``a``, which views and reshapes require, and it keeps costs polynomial
    (``s27//(s27//4)`` becomes ``4``). ``symbols`` renames shape symbols (matched by name).
    """
    if isinstance(size, int):
        return sympy.Integer(size)
    if not isinstance(size, torch.SymInt):
        raise TypeError(f"expected an int or torch.SymInt size, got {type(size).__name__}")
    expr = size.node.expr
    if expr.is_number:
        return sympy.Integer(int(expr))
    if exact_division:
        for div in _EXACT_DIVS:
            expr = expr.replace(div, lambda a, b: a / b)
    if symbols:
        expr = expr.subs(_by_name(expr.free_symbols, symbols))
    return expr


def sym_shape(t: Any, symbols: SymbolMap | None = None) -> list[sympy.Expr]:
    """The sizes of tensor ``t`` (a FakeTensor) as sympy expressions (see :func:`to_sympy`)."""
    return [to_sympy(s, symbols) for s in t.shape]


def sym_numel(shape: Sequence[sympy.Expr]) -> sympy.Expr:
    """The product of ``shape`` (1 for a scalar)."""
    return sympy.Mul(*shape) if shape else sympy.Integer(1)


def fake(x: Any) -> Any:
    """The FakeTensor behind an fx argument (None when the argument is not a tensor node)."""
    v = x.meta.get(VAL) if isinstance(x, Node) else None
    return v if isinstance(v, torch.Tensor) else None


def tensor_bytes(t: torch.Tensor | None, symbols: SymbolMap | None = None) -> sympy.Expr:
    """Bytes of tensor ``t`` (numel times its element size); 0 for None (an absent optional input)."""
    if t is None:
        return sympy.Integer(0)
    return sym_numel(sym_shape(t, symbols)) * t.dtype.itemsize


def _itemsize(t: torch.Tensor) -> int:
    return t.dtype.itemsize


# -- nodes and graphs ----------------------------------------------------------------------------

_SDPA = torch.ops.aten.scaled_dot_product_attention.default


def _op_def(node: Node) -> Any:
    """The dialect OpDef of ``node`` (None for other nodes); imports the dialect on first use."""
    import tcomp.dialect  # noqa: F401 - registers every op with its formula
    from tcomp.dialect.base import op_def

    return op_def(node)


def _sdpa_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    from tcomp.dialect.attention import attention_tensors_cost

    q, k, v = (fake(a) for a in node.args[:3])
    if q is None or k is None or v is None:
        return None
    m = fake(arg(node, 3, "attn_mask"))
    bias, mask = (None, m) if m is not None and m.dtype == torch.bool else (m, None)
    return attention_tensors_cost(q, k, v, bias, mask, bool(arg(node, 5, "is_causal", False)), symbols)


def _linear_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    x, w = fake(node.args[0]), fake(node.args[1])
    if x is None or w is None:
        return None
    xs, ws = sym_shape(x, symbols), sym_shape(w, symbols)
    has_bias = fake(arg(node, 2, "bias")) is not None
    return linear_cost(sym_numel(xs[:-1]), ws[-1], ws[0], _itemsize(x), has_bias)


def _addmm_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    x, w = fake(node.args[1]), fake(node.args[2])  # addmm(bias, x, w): x (r, i) @ w (i, o) + bias
    if x is None or w is None:
        return None
    xs, ws = sym_shape(x, symbols), sym_shape(w, symbols)
    return linear_cost(xs[0], xs[1], ws[1], _itemsize(x), has_bias=True)


def _matmul_node_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    a, b, out = fake(node.args[0]), fake(node.args[1]), fake(node)
    if a is None or b is None or out is None:
        return None
    as_, bs, os_ = sym_shape(a, symbols), sym_shape(b, symbols), sym_shape(out, symbols)
    return matmul_cost(sym_numel(as_), sym_numel(bs), sym_numel(os_), as_[-1], _itemsize(a))


CostFormula = Callable[[Node, Union[SymbolMap, None]], Union[Cost, None]]

def _embedding_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    """``aten.embedding(weight, ids)``: no FLOPs; the ids and one weight row per id read, the rows written."""
    w, ids = fake(node.args[0]), fake(node.args[1])
    if w is None or ids is None:
        return None
    n, row = sym_numel(sym_shape(ids, symbols)), w.shape[1] * w.dtype.itemsize
    return Cost(sympy.S.Zero, sympy.expand(n * ids.dtype.itemsize + 2 * n * row))


# The ATen ops with a formula: target -> (site kind, cost function). Dialect ops carry their own.
ATEN_COSTS: dict[Any, tuple[SiteKind, CostFormula]] = {
    _SDPA: ("attention", _sdpa_cost),
    torch.ops.aten.linear.default: ("linear", _linear_cost),
    torch.ops.aten.addmm.default: ("linear", _addmm_cost),
    torch.ops.aten.matmul.default: ("matmul", _matmul_node_cost),
    torch.ops.aten.bmm.default: ("matmul", _matmul_node_cost),
    torch.ops.aten.mm.default: ("matmul", _matmul_node_cost),
    torch.ops.aten.embedding.default: ("embedding", _embedding_cost),
}


def _formula(node: Node) -> tuple[SiteKind, CostFormula] | None:
    """``(site kind, cost function)`` of ``node``: its OpDef's for a dialect op, :data:`ATEN_COSTS`'
    otherwise; None when no formula applies."""
    if node.op != "call_function":
        return None
    d = _op_def(node)
    if d is not None:
        return d.kind, d.cost
    return ATEN_COSTS.get(node.target)


def site_kind(node: Node) -> SiteKind | None:
    """Which kind of site ``node`` is in cost tables (its OpDef's kind for a dialect op, the
    ATen table's otherwise), or None when no formula applies."""
    f = _formula(node)
    return None if f is None else f[0]


def node_cost(node: Node, symbols: SymbolMap | None = None) -> Cost | None:
    """The Cost of one fx node, or None when no formula applies (or shapes are unknown).

    A ``tcomp.*`` node is costed by its op's own formula (``OpDef.cost``, every dialect op has
    one); ``aten.scaled_dot_product_attention``, ``aten.linear``, ``aten.addmm`` (a linear after
    decomposition), ``aten.matmul``, ``aten.bmm`` and ``aten.mm`` by :data:`ATEN_COSTS`.
    ``symbols`` maps shape symbols (by symbol or name, e.g. ``{"s77": BATCH}``) to expressions.
    """
    f = _formula(node)
    return None if f is None else f[1](node, symbols)


def _present_kinds(sites: Iterable[SiteCost]) -> list[str]:
    """The kinds of ``sites`` in :data:`KINDS` order, unknown kinds after them (sorted)."""
    seen = {s.kind for s in sites}
    return [k for k in KINDS if k in seen] + sorted(seen - set(KINDS))


def _kind_totals(sites: Sequence[SiteCost]) -> dict[str, Cost]:
    """The summed cost of ``sites`` per site kind, kinds in :func:`_present_kinds` order."""
    return {kind: total_cost(s for s in sites if s.kind == kind) for kind in _present_kinds(sites)}


@dataclass
class SiteCost:
    """The cost of one node of a graph."""

    name: str
    kind: SiteKind
    cost: Cost
    dtype: torch.dtype | None = None

    @staticmethod
    def total(sites: Iterable[SiteCost], kind: SiteKind | None = None) -> Cost:
        """Sum of the costs of ``sites`` (only those of ``kind`` when given)."""
        return sum(
            (s.cost for s in sites if kind is None or s.kind == kind), Cost(sympy.S.Zero, sympy.S.Zero)
        )


def total_cost(sites: Iterable[SiteCost], kind: SiteKind | None = None) -> Cost:
    """Sum of the costs of ``sites`` (only those of ``kind`` when given)."""
    return SiteCost.total(sites, kind)


def graph_cost(gm: GraphModule, symbols: SymbolMap | None = None) -> list[SiteCost]:
    """The cost of every costed node of ``gm``, in graph order."""
    sites = []
    for node in gm.graph.nodes:
        f = _formula(node)
        c = None if f is None else f[1](node, symbols)
        if c is not None:
            v = fake(node.args[0]) if node.args else None
            if not (isinstance(v, torch.Tensor) and v.is_floating_point()):  # e.g. token ids first: the output's
                v = fake(node)
            sites.append(SiteCost(node.name, f[0], c, v.dtype if isinstance(v, torch.Tensor) else None))
    return sites


def input_symbols(
    gm: GraphModule, dims: Mapping[int, sympy.Symbol] | None = None, input: str | int | None = None
) -> dict[sympy.Symbol, sympy.Symbol]:
    """Map the shape symbols of one graph input to named symbols (default ``{0: BATCH, 1: SEQ}``).

    ``input`` is a placeholder name or an index among placeholders; by default the first
    placeholder with a symbolic size. Dims whose size is not a plain symbol are skipped.
    """
    dims = {0: BATCH, 1: SEQ} if dims is None else dims
    ph = [n for n in gm.graph.nodes if n.op == "placeholder" and fake(n) is not None]
    if isinstance(input, str):
        ph = [n for n in ph if n.name == input]
    elif isinstance(input, int):
        ph = ph[input : input + 1]
    else:
        ph = [n for n in ph if any(not to_sympy(s).is_number for s in fake(n).shape)][:1]
    if not ph:
        raise ValueError(
            f"no graph input {input!r} with a symbolic size; was the graph exported with dynamic shapes?"
        )
    shape = fake(ph[0]).shape
    out: dict[sympy.Symbol, sympy.Symbol] = {}
    for d, sym in dims.items():
        e = to_sympy(shape[d])
        if isinstance(e, sympy.Symbol):
            out[e] = sym
    return out


def cost_table(
    costs: Sequence[SiteCost],
    target: str | Target,
    seqs: Sequence[int] = (128, 512, 2048, 8192),
    batch: int = 1,
    dtype: DtypeKey | None = None,
) -> list[dict[str, Any]]:
    """Numeric rows, one per (site kind, sequence length) plus an ``"all"`` kind: ``gflops``,
    ``mb`` (10⁶ bytes) and ``roofline_us`` (sum of per-site roofline times). Each site is timed in
    its own dtype unless ``dtype`` is given. Costs must depend on :data:`BATCH`/:data:`SEQ` only."""
    t = get_target(target)
    kinds = _present_kinds(costs)
    rows = []
    for n in seqs:
        acc = {k: [0.0, 0.0, 0.0] for k in [*kinds, "all"]}
        for s in costs:
            f, b = s.cost.evaluate(batch=batch, seq=n)
            dt = dtype if dtype is not None else (s.dtype if s.dtype is not None else "fp32")
            sec = max(f / t.flops_per_s(dt), b / t.bytes_per_s())
            for k in (s.kind, "all"):
                acc[k][0] += f
                acc[k][1] += b
                acc[k][2] += sec
        for k, (f, b, sec) in acc.items():
            rows.append({"kind": k, "seq": n, "batch": batch, "gflops": f / 1e9, "mb": b / 1e6,
                         "roofline_us": sec * 1e6})  # fmt: skip
    return rows


def all_input_symbols(gm: GraphModule) -> dict[sympy.Symbol, sympy.Symbol]:
    """Map dim 0 of every input to :data:`BATCH` and dim 1 to :data:`SEQ` where they are plain
    symbols (inputs such as ``input_ids`` and ``attention_mask`` may carry separate symbols)."""
    out: dict[sympy.Symbol, sympy.Symbol] = {}
    for n in gm.graph.nodes:
        v = fake(n) if n.op == "placeholder" else None
        if not isinstance(v, torch.Tensor):
            continue
        for d, sym in ((0, BATCH), (1, SEQ))[: v.dim()]:
            e = to_sympy(v.shape[d])
            if isinstance(e, sympy.Symbol) and e not in out:
                out[e] = sym
    return out


def _readable(e: sympy.Expr) -> sympy.Expr:
    """Simplified for printing; sums with logarithms stay expanded (simplify folds them into one log)."""
    return e if e.has(sympy.log) else sympy.simplify(e)


def cost_summary(
    gm: GraphModule, target: str | Target, seqs: Sequence[int] = (128, 512, 2048), batch: int = 1
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows of :func:`cost_table` for a captured graph plus the symbolic totals per site kind
    (FLOPs and bytes as text, in B and N). Sequence lengths only vary where N is symbolic."""
    sites = graph_cost(gm, all_input_symbols(gm))
    symbolic = {
        kind: f"flops = {_readable(c.flops)}; bytes = {_readable(c.bytes)}"
        for kind, c in _kind_totals(sites).items()
    }
    free = set().union(*(s.cost.free_symbols for s in sites)) if sites else set()
    if free - {BATCH, SEQ}:
        return [], symbolic  # sizes the model fixed in ways the table cannot vary
    if SEQ not in free:
        seqs = seqs[:1]
    return cost_table(sites, target, seqs=seqs, batch=batch), symbolic


def site_orders(gm: GraphModule) -> dict[int, dict[str, str]]:
    """Per attention site (canonicalize's index, kept by the attention rewrites): the kind of the
    node now computing it and the growth of its FLOPs in the sequence length, e.g.
    ``{0: {"kind": "rpe_attention", "flops": "O(N log N)"}}``."""
    from tcomp import meta

    symbols = all_input_symbols(gm)
    out: dict[int, dict[str, str]] = {}
    for node in gm.graph.nodes:
        layer = node.meta.get(meta.ATTN_LAYER)
        if layer is None:
            layer = (node.meta.get(meta.LINEAR_FEATURE_MAP) or {}).get("layer")
        c = node_cost(node, symbols) if layer is not None else None
        if c is not None:
            out[int(layer)] = {"kind": str(site_kind(node)), "flops": leading_order(c.flops)}
    return out


def kind_orders(gm: GraphModule) -> dict[str, dict[str, str]]:
    """Per site kind of ``gm``: the growth in the sequence length of the kind's total FLOPs and
    bytes, e.g. ``{"linear_attention": {"flops": "O(N)", "bytes": "O(N)"}}`` (kinds in table order)."""
    totals = _kind_totals(graph_cost(gm, all_input_symbols(gm)))
    return {k: {"flops": leading_order(c.flops), "bytes": leading_order(c.bytes)} for k, c in totals.items()}


def __getattr__(name: str) -> Any:
    """``attention_cost`` and ``rpe_attention_cost``: the formulas of their dialect ops, loaded on
    first use (a module-level import would be a cycle: the dialect imports :class:`Cost` from here)."""
    if name == "attention_cost":
        from tcomp.dialect.attention import attention_cost

        return attention_cost
    if name == "rpe_attention_cost":
        from tcomp.dialect.rpe import rpe_attention_cost

        return rpe_attention_cost
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
