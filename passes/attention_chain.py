"""Reading a decomposed attention chain ``matmul -> scale -> bias/mask -> softmax -> matmul``.

Helper of ``canonicalize``: from a softmax node it finds the QK and PV matmuls and classifies
every op between QK and the softmax as a scale, an additive bias, a boolean mask, a cast or a
change of view ("frame"). It builds nothing itself except the bias/mask nodes brought back into
the QK frame; the pass assembles the ``tcomp.attention`` node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from tcomp.graph import add_node, shape

aten = torch.ops.aten

SOFTMAX = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}
MATMUL = {aten.matmul.default, aten.bmm.default}
CASTS = {aten.to.dtype, aten._to_copy.default, aten.to.dtype_layout, aten.type_as.default, aten.to.device}
P_PASSTHROUGH = (
    CASTS
    | {aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default}
    | {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
)
VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
MASK_FLOOR = -1e4  # a fill value at or below this removes the key from the softmax (fp16 min is -65504)


class NotAttention(Exception):
    """The chain around a softmax is not an attention site tcomp can canonicalize; the message
    says why (it goes into the pass report)."""


class NotAttentionSoftmax(NotAttention):
    """The softmax is not attention at all: no product of two activations feeds it (a classifier's
    or a router's softmax). Not listed among the unmatched attention sites."""


@dataclass
class Chain:
    qk: fx.Node  # the q @ k^T matmul
    pv: fx.Node  # the probs @ v matmul
    softmax: fx.Node
    scale: float = 1.0
    biases: list[fx.Node] = field(default_factory=list)  # additive, in the QK frame
    masks: list[fx.Node] = field(default_factory=list)  # bool keep-masks, in the QK frame


def _is_dropout_noop(n: fx.Node) -> bool:
    if n.target is not aten.dropout.default:
        return False
    p = n.args[1] if len(n.args) > 1 else n.kwargs.get("p", 0.5)
    train = n.args[2] if len(n.args) > 2 else n.kwargs.get("train", True)
    return (not train) or p == 0


def _softmax_last_dim(n: fx.Node) -> bool:
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    s = shape(n)
    return s is not None and isinstance(dim, int) and dim in (-1, len(s) - 1)


def find_pv(softmax: fx.Node) -> fx.Node:
    """Follow the probabilities through casts and no-op dropout to the PV matmul."""
    node = softmax
    while True:
        users = [u for u in node.users if u.target is not aten._assert_tensor_metadata.default]
        if len(users) != 1:
            raise NotAttention(
                "the attention probabilities are used outside the attention (e.g. output_attentions=True)"
                if len(users) > 1
                else "softmax output is unused"
            )
        (u,) = users
        if (
            u.op == "call_function"
            and (u.target in P_PASSTHROUGH or _is_dropout_noop(u))
            and u.args[0] is node
        ):
            node = u
            continue
        if u.op == "call_function" and u.target in MATMUL and u.args[0] is node:
            return u
        if u.op == "call_function" and u.target is aten.dropout.default:
            raise NotAttention("attention dropout is active (the model was captured in training mode)")
        raise NotAttention(f"softmax feeds {u.target} rather than a matmul with the values")


def constant_value(n: Any, gm: fx.GraphModule) -> float | None:
    """The scalar value of a number or a constant scalar node (full / scalar_tensor / 1-element attr)."""
    if isinstance(n, (int, float)) and not isinstance(n, bool):
        return float(n)
    if not isinstance(n, fx.Node):
        return None
    if n.op == "call_function" and n.target in (aten.full.default, aten.full_like.default):
        return constant_value(n.args[1], gm)
    if n.op == "call_function" and n.target is aten.scalar_tensor.default:
        return constant_value(n.args[0], gm)
    if n.op == "call_function" and n.target in CASTS | {
        aten.lift_fresh_copy.default,
        aten.detach.default,
        aten.detach_.default,
        aten.clone.default,
    }:
        return constant_value(n.args[0], gm)
    if n.op == "get_attr":
        obj = gm
        for part in str(n.target).split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.Tensor) and obj.numel() == 1:
            return float(obj.item())
    return None


_CHAIN_OPS = (
    CASTS
    | VIEWS
    | {
        aten.mul.Tensor,
        aten.mul.Scalar,
        aten.div.Tensor,
        aten.div.Scalar,
        aten.add.Tensor,
        aten.add.Scalar,
        aten.sub.Tensor,
        aten.masked_fill.Scalar,
        aten.masked_fill.Tensor,
        aten.where.self,
        aten.where.ScalarOther,
    }
)


def _trace_back(x: Any, depth: int = 0) -> list[fx.Node] | None:
    """Nodes from the QK matmul (first) to ``x`` (last), following only chain ops; None if ``x``
    is not reached from a matmul that way."""
    if not isinstance(x, fx.Node) or x.op != "call_function" or depth > 16:
        return None
    if x.target in MATMUL:
        return [x]
    if x.target not in _CHAIN_OPS:
        return None
    for cand in _score_operands(x):
        path = _trace_back(cand, depth + 1)
        if path is not None:
            return path + [x]
    return None


def _score_operands(x: fx.Node) -> list[Any]:
    t = x.target
    if t in (aten.where.self, aten.where.ScalarOther):
        return [a for a in x.args[1:3]]
    if t in (aten.add.Tensor, aten.mul.Tensor):
        return list(x.args[:2])
    return [x.args[0]]


def read_chain(softmax: fx.Node, gm: fx.GraphModule) -> Chain:
    """:func:`_read_chain`; a softmax it refuses that no product of two activations reaches is
    refused as :class:`NotAttentionSoftmax` (a classifier's, a router's), not as unmatched attention."""
    try:
        return _read_chain(softmax, gm)
    except NotAttentionSoftmax:
        raise
    except NotAttention:
        if _product_path(softmax.args[0]) is None:
            raise NotAttentionSoftmax("no product of two activations feeds it (not an attention softmax)") from None
        raise


def _read_chain(softmax: fx.Node, gm: fx.GraphModule) -> Chain:
    """Classify the ops between the QK matmul and ``softmax``; build bias/mask nodes that live in
    the QK frame (inserted before the PV matmul). Raises ``NotAttention`` with the reason."""
    if not _softmax_last_dim(softmax):
        raise NotAttention("softmax is not over the last dimension")
    pv = find_pv(softmax)
    path = _trace_back(softmax.args[0])
    if path is None:
        raise _why_unreached(softmax.args[0])
    qk = path[0]
    chain = Chain(qk=qk, pv=pv, softmax=softmax)
    graph = gm.graph
    frames: list[tuple[list, list, list]] = []  # (enter view sizes, biases, masks) of open frames
    biases, masks = chain.biases, chain.masks
    prev = qk
    with graph.inserting_before(pv):
        for node in path[1:]:
            t = node.target
            other = [a for a in node.args if a is not prev]
            if t in CASTS:
                pass
            elif t in VIEWS:
                sizes = list(node.args[1])
                if frames and _same_shape(shape(node), shape(qk)):
                    enter, inner_b, inner_m = frames.pop()
                    outer_b, outer_m = (
                        (frames[-1][1], frames[-1][2]) if frames else (chain.biases, chain.masks)
                    )
                    for b in inner_b:
                        outer_b.append(_to_frame(graph, b, enter, sizes))
                    for m in inner_m:
                        outer_m.append(_to_frame(graph, m, enter, sizes))
                    biases, masks = outer_b, outer_m
                else:
                    frames.append((sizes, [], []))
                    biases, masks = frames[-1][1], frames[-1][2]
            elif t in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar):
                c = constant_value(other[0] if other else node.args[1], gm)
                if c is None or c == 0 or not math.isfinite(c):
                    raise NotAttention(f"scores are scaled by a non-constant ({node.name})")
                factor = c if t in (aten.mul.Tensor, aten.mul.Scalar) else 1.0 / c
                chain.scale *= factor
                _scale_all(graph, chain, frames, factor)
            elif t in (aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor):
                if node.kwargs.get("alpha", 1) != 1:
                    raise NotAttention(f"add with alpha at {node.name}")
                if t is aten.sub.Tensor and node.args[0] is not prev:
                    raise NotAttention(f"scores are subtracted from something at {node.name}")
                b = other[0] if other else None
                if isinstance(b, fx.Node):
                    biases.append(add_node(graph, aten.neg.default, (b,)) if t is aten.sub.Tensor else b)
                elif constant_value(b, gm) is None:
                    raise NotAttention(f"unrecognised addend at {node.name}")
                # a constant added to every score does not change the softmax
            elif t in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
                fill = constant_value(node.args[2], gm)
                if fill is None or fill > MASK_FLOOR:
                    raise NotAttention(f"masked_fill with a value that does not remove keys at {node.name}")
                masks.append(negate(graph, node.args[1]))
            elif t in (aten.where.self, aten.where.ScalarOther):
                cond, a, b = node.args[:3]
                fill = constant_value(b if a is prev else a, gm)
                if fill is None or fill > MASK_FLOOR:
                    raise NotAttention(f"where() with a value that does not remove keys at {node.name}")
                masks.append(cond if a is prev else negate(graph, cond))
            else:  # pragma: no cover - _trace_back admits only the ops above
                raise NotAttention(f"unexpected op {t} in the score chain")
            prev = node
    if not _same_shape(shape(pv.args[0]), shape(qk)):
        raise NotAttention("the probabilities reach the PV matmul in another shape than q @ k^T")
    if frames:
        # the softmax was taken in a reshaped view (e.g. bmm scores viewed as (B, H, N, M)):
        # bring what was added there back to the QK frame
        with graph.inserting_before(pv):
            qk_sizes = [
                s if isinstance(s, int) else add_node(graph, aten.sym_size.int, (qk, d))
                for d, s in enumerate(_ints(shape(qk)))
            ]
            while frames:
                enter, inner_b, inner_m = frames.pop()
                outer_b, outer_m = (frames[-1][1], frames[-1][2]) if frames else (chain.biases, chain.masks)
                outer_b.extend(_to_frame(graph, b, enter, qk_sizes) for b in inner_b)
                outer_m.extend(_to_frame(graph, m, enter, qk_sizes) for m in inner_m)
    return chain


def _ints(sizes: tuple) -> list:
    """Static sizes as ints; symbolic ones left as SymInt (the caller reads them from the graph)."""
    out = []
    for s in sizes:
        expr = s.node.expr if isinstance(s, torch.SymInt) else s
        out.append(int(expr) if getattr(expr, "is_number", isinstance(expr, int)) else s)
    return out


def negate(graph: fx.Graph, m: fx.Node) -> fx.Node:
    """``~m`` for a bool mask, reusing the input of a ``not`` instead of stacking two."""
    if m.op == "call_function" and m.target in (aten.bitwise_not.default, aten.logical_not.default):
        return m.args[0]
    return add_node(graph, aten.logical_not.default, (m,))


def _same_shape(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None or len(a) != len(b):
        return False
    return all(str(x) == str(y) for x, y in zip(a, b))


def _scale_all(graph: fx.Graph, chain: Chain, frames: list, factor: float) -> None:
    """A scale applied after a bias was added scales that bias too."""
    groups = [chain.biases] + [f[1] for f in frames]
    for group in groups:
        for i, b in enumerate(group):
            group[i] = add_node(graph, aten.mul.Tensor, (b, factor))


def _to_frame(graph: fx.Graph, t: fx.Node, enter_sizes: list, exit_sizes: list) -> fx.Node:
    """Bring a bias/mask added in a reshaped view of the scores back to the QK frame."""
    full = add_node(graph, aten.expand.default, (t, enter_sizes))
    return add_node(graph, aten.reshape.default, (full, exit_sizes))


# -- why a softmax was not matched -----------------------------------------------------------------

_PRODUCTS = MATMUL | {aten.mm.default, aten.baddbmm.default, aten.addbmm.default, aten.einsum.default}
_WHAT = {
    aten.tanh.default: "tanh (logit soft-capping)",
    aten.baddbmm.default: "baddbmm (a bias folded into the product)",
    aten.addbmm.default: "addbmm (a bias folded into the product)",
    aten.einsum.default: "einsum",
    aten.mm.default: "mm on flattened heads",
}


def _from_input(x: fx.Node, limit: int = 400) -> bool:
    """Whether ``x`` depends on a graph input (an activation), not on weights and constants only."""
    seen, stack = set(), [x]
    while stack and len(seen) < limit:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return True
        stack.extend(n.all_input_nodes)
    return False


def _elementwise(target: Any) -> bool:
    """Ops the scores of attention may pass through on their way to the softmax: the chain's own
    ops and any pointwise op (a soft-cap's tanh, a clamp, ...); not a linear layer or a reduction."""
    return target in _CHAIN_OPS or torch.Tag.pointwise in getattr(target, "tags", ())


def _product_path(x: Any, depth: int = 0) -> list[fx.Node] | None:
    """Like ``_trace_back`` through any elementwise op: the path from a product of two activations
    to ``x``."""
    if not isinstance(x, fx.Node) or x.op != "call_function" or depth > 12:
        return None
    if x.target in _PRODUCTS:
        operands = [a for a in x.all_input_nodes]
        if len(operands) >= 2 and sum(_from_input(a) for a in operands[-2:]) == 2:
            return [x]
        return None
    if not _elementwise(x.target):
        return None
    for cand in x.all_input_nodes:
        path = _product_path(cand, depth + 1)
        if path is not None:
            return path + [x]
    return None


def _why_unreached(scores: Any) -> NotAttention:
    """The error for a softmax no chain of scale/bias/mask ops connects to a q @ k^T matmul: which
    link breaks the chain when a product of two activations does reach it, else "not attention"."""
    path = _product_path(scores)
    if path is None:
        return NotAttentionSoftmax("no product of two activations feeds it (not an attention softmax)")
    links = [n for n in path if n.target not in _CHAIN_OPS and n.target not in MATMUL]
    names = list(dict.fromkeys(_WHAT.get(n.target, str(getattr(n.target, "__name__", n.target))) for n in links))
    return NotAttention(
        f"q @ k^T reaches the softmax through {', '.join(names) or 'ops'}, which tcomp.attention does not express"
    )


# -- products spelled other ways: baddbmm with a folded bias, einsum ---------------------------------

_NEAR = 8  # how many elementwise ops may lie between a product and its softmax


def _reaches_softmax(n: fx.Node, depth: int = 0) -> bool:
    if depth > _NEAR:
        return False
    for u in n.users:
        if u.op == "call_function" and (u.target in SOFTMAX or (_elementwise(u.target) and _reaches_softmax(u, depth + 1))):
            return True
    return False


def _from_softmax(x: Any, depth: int = 0) -> bool:
    if not isinstance(x, fx.Node) or x.op != "call_function" or depth > 3:
        return False
    return x.target in SOFTMAX or (x.target in P_PASSTHROUGH | VIEWS and _from_softmax(x.args[0], depth + 1))


def _einsum_as_matmul(call, eq: str, a: fx.Node, b: fx.Node):
    """``einsum(eq, a, b)`` as permutes around one ``matmul`` when ``eq`` is a batched product with
    one contracted label and one free label per operand (``bhqd,bhkd->bhqk``, ``bqhd,bkhd->bhqk``,
    ``bhqk,bhkd->bhqd``, ...); None for any other equation."""
    eq = eq.replace(" ", "")
    if "->" not in eq or "." in eq:
        return None
    lhs, out = eq.split("->")
    parts = lhs.split(",")
    if len(parts) != 2:
        return None
    sa, sb = parts
    if len(set(sa)) != len(sa) or len(set(sb)) != len(sb) or len(set(out)) != len(out):
        return None
    shared = [c for c in sa if c in sb]
    contract = [c for c in shared if c not in out]
    batch = [c for c in out if c in sa and c in sb]
    free_a = [c for c in sa if c not in sb]
    free_b = [c for c in sb if c not in sa]
    if len(contract) != 1 or len(free_a) != 1 or len(free_b) != 1 or sorted(out) != sorted(batch + free_a + free_b):
        return None
    if set(shared) != set(batch) | set(contract):
        return None
    want_a, want_b = batch + free_a + contract, batch + contract + free_b
    pa = call(aten.permute.default, a, [sa.index(c) for c in want_a]) if list(sa) != want_a else a
    pb = call(aten.permute.default, b, [sb.index(c) for c in want_b]) if list(sb) != want_b else b
    prod = call(aten.matmul.default, pa, pb)
    have = batch + free_a + free_b
    return call(aten.permute.default, prod, [have.index(c) for c in out]) if have != list(out) else prod


def normalize_products(gm: fx.GraphModule) -> list[str]:
    """Rewrite the products of attention spelled other ways into the ``matmul`` chain the reader
    knows (FP-equivalent): ``baddbmm(bias, q, k^T, beta, alpha)`` feeding a softmax becomes
    ``bmm(q, k^T) * alpha + beta * bias`` (ALiBi folded into the product, as Bloom writes it); an
    ``einsum`` of two operands that feeds a softmax or reads one becomes permutes around a
    ``matmul``. Returns a note per rewrite."""
    graph, notes = gm.graph, []

    def call(op, *args):
        return add_node(graph, op, args)

    for n in list(graph.nodes):
        if n.op != "call_function":
            continue
        if n.target is aten.baddbmm.default and _reaches_softmax(n):
            bias, b1, b2 = n.args[:3]
            beta, alpha = n.kwargs.get("beta", 1), n.kwargs.get("alpha", 1)
            if not all(isinstance(c, (int, float)) for c in (beta, alpha)):
                continue
            with graph.inserting_before(n):
                out = call(aten.bmm.default, b1, b2)
                if alpha != 1:
                    out = call(aten.mul.Tensor, out, alpha)
                if beta != 0:
                    out = call(aten.add.Tensor, out, bias if beta == 1 else call(aten.mul.Tensor, bias, beta))
            notes.append(f"baddbmm at {n.name}: bmm * alpha + beta * bias (a bias folded into the attention product)")
        elif n.target is aten.einsum.default and len(n.args) == 2 and len(n.args[1]) == 2:
            a, b = n.args[1]
            if not (_reaches_softmax(n) or _from_softmax(a) or _from_softmax(b)):
                continue
            with graph.inserting_before(n):
                out = _einsum_as_matmul(call, n.args[0], a, b)
            if out is None:
                continue
            notes.append(f"einsum {n.args[0]!r} at {n.name}: permutes around a matmul")
        else:
            continue
        out.meta.update({k: v for k, v in n.meta.items() if k != "val"})
        n.replace_all_uses_with(out)
        graph.erase_node(n)
    return notes
