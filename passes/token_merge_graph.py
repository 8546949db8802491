"""Graph reading and re-shaping for ``tokens.merge``.

* :func:`merge_point` -- where a block's residual stream runs between attention and MLP: from a
  ``tcomp.attention`` node through head merging and the output projection to the residual add;
  pre-LN blocks (``x + attn(ln(x))``) merge the add, post-LN blocks (``ln(x + attn(x))``) its
  LayerNorm. :func:`block_output` finds the end of the block (after the MLP's residual add).
* :func:`padding_keep` -- the key-padding mask behind an attention mask or bias: the (B, N)
  integer/bool input it is computed from, when it is computed from nothing else.
* :func:`reshape_tokens` -- after merging, the token axis is shorter: every later node gets its
  fake value recomputed, and view/reshape/expand sizes that spell the old token count say ``-1``.
"""

from __future__ import annotations

import operator

import sympy
import torch
import torch.fx as fx
from torch._guards import detect_fake_mode
from torch.utils import _pytree as pytree

from tcomp import meta
from tcomp.graph import module_path, shape, val

aten = torch.ops.aten
LAYER_NORMS = {aten.layer_norm.default, aten.rms_norm.default}
_LAYOUT = {
    aten.transpose.int,
    aten.permute.default,
    aten.reshape.default,
    aten.view.default,
    aten._unsafe_view.default,
    aten.contiguous.default,
    aten.clone.default,
    aten.flatten.using_ints,
}
_PASS = {
    aten.dropout.default,
    aten.clone.default,
    aten.contiguous.default,
    aten.to.dtype,
    aten._to_copy.default,
}
_SIZED = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


class NotABlock(Exception):
    """The attention site is not in an encoder block the pass can merge in (the reason)."""


def _only_user(n: fx.Node) -> fx.Node | None:
    return next(iter(n.users)) if len(n.users) == 1 else None


def _norm_of(add: fx.Node) -> fx.Node | None:
    """The LayerNorm output ``add`` alone feeds (``native_layer_norm``'s getitem 0 in AOT graphs)."""
    ln = _only_user(add)
    if ln is not None and ln.target is aten.native_layer_norm.default:
        outs = [u for u in ln.users if u.target is operator.getitem and u.args[1] == 0]
        ln = outs[0] if len(outs) == 1 else None
    elif ln is not None and ln.target not in LAYER_NORMS:
        ln = None
    return ln


def merge_point(attn: fx.Node) -> fx.Node:
    """The residual stream between the attention and the MLP of ``attn``'s block."""
    n = attn
    while (u := _only_user(n)) is not None and u.op == "call_function" and u.target in _LAYOUT:
        n = u
    proj = _only_user(n)
    if proj is None or proj.target is not aten.linear.default:
        raise NotABlock("the attention output does not feed one output projection (aten.linear)")
    n = proj
    while (u := _only_user(n)) is not None and u.target in _PASS:
        n = u
    add = _only_user(n)
    if add is None or add.target is not aten.add.Tensor or n not in add.args:
        raise NotABlock("the output projection does not feed a residual add")
    ln = _norm_of(add)
    if ln is not None and len(ln.users) >= 2:
        return ln  # post-LN (BERT)
    if len(add.users) >= 2:
        return add  # pre-LN (ViT)
    raise NotABlock("the residual add is not followed by an MLP branch and a second residual add")


def _descends(n: fx.Node, root: fx.Node, limit: int = 64) -> bool:
    seen, stack = set(), [n]
    while stack and len(seen) < limit:
        x = stack.pop()
        if x is root:
            return True
        if x in seen or x.op != "call_function":
            continue
        seen.add(x)
        stack.extend(x.all_input_nodes)
    return False


def block_output(point: fx.Node) -> fx.Node:
    """The block's output: the MLP residual add of ``point`` (or the LayerNorm after it)."""
    for u in point.users:
        if u.target is aten.add.Tensor and point in u.args:
            other = u.args[1] if u.args[0] is point else u.args[0]
            if isinstance(other, fx.Node) and _descends(other, point):
                ln = _norm_of(u)
                return ln if ln is not None else u
    raise NotABlock("no MLP residual add after the merge point")


def _ancestors(n: fx.Node) -> set[fx.Node]:
    """Nodes ``n`` reads values from (sizes read by ``sym_size`` are not values)."""
    seen, stack = set(), [n]
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        if x.target is not aten.sym_size.int:
            stack.extend(x.all_input_nodes)
    return seen


def _same(a, b) -> bool:
    ea = a.node.expr if isinstance(a, torch.SymInt) else sympy.Integer(a)
    eb = b.node.expr if isinstance(b, torch.SymInt) else sympy.Integer(b)
    return sympy.expand(ea - eb) == 0


def padding_keep(attn: fx.Node, tokens: tuple) -> fx.Node | None:
    """The (B, N) input a site's mask/bias is computed from when it is a pure key-padding mask;
    None when the site has no mask or bias. Raises :class:`NotABlock` for any other bias."""
    extra = [a for a in attn.args[3:5] if isinstance(a, fx.Node)]
    if not extra or attn.args[6]:
        if attn.args[6]:
            raise NotABlock("causal attention: token merging is for encoders")
        return None
    found = set()
    for a in extra:
        for x in _ancestors(a):
            v = val(x)
            if x.op == "placeholder":
                ok = isinstance(v, torch.Tensor) and not v.is_floating_point() and v.dim() == 2
                if not (ok and _same(v.shape[1], tokens[1])):
                    raise NotABlock(
                        f"the attention mask/bias depends on input {x.name}, not a (B, N) padding mask"
                    )
                found.add(x)
            elif x.op == "get_attr" and isinstance(v, torch.Tensor) and v.is_floating_point():
                raise NotABlock(f"the attention bias reads parameter {x.target}: not a padding mask")
    if len(found) != 1:
        raise NotABlock("the attention mask/bias is not computed from one (B, N) padding mask input")
    return found.pop()


def _resolve_sizes(node: fx.Node, old_in, new_in, old_out, sizes: list) -> list:
    """New size list for a view/reshape whose input lost tokens on one axis."""
    changed = [i for i, (a, b) in enumerate(zip(old_in, new_in)) if str(a) != str(b)]
    if len(changed) != 1 or len(old_in) != len(new_in):
        raise NotABlock(
            f"{node.name}: input shape {tuple(old_in)} -> {tuple(new_in)} changed on several axes"
        )
    a = changed[0]

    def prod(s):
        out = 1
        for d in s:
            out = out * d
        return out

    start, end = prod(old_in[:a]), prod(old_in[: a + 1])
    rules = (  # the axis itself, then the token axis flattened with earlier or with later axes
        lambda b: _same(prod(old_out[:b]), start) and _same(old_out[b], old_in[a]),
        lambda b: _same(prod(old_out[: b + 1]), end) and not _same(old_out[b], 1),
        lambda b: _same(prod(old_out[:b]), start) and not _same(old_out[b], 1),
    )
    target = next((b for rule in rules for b in range(len(old_out)) if rule(b)), None)
    if target is None:
        raise NotABlock(f"{node.name}: cannot find the token axis of {tuple(old_in)} in {tuple(old_out)}")
    out = []
    for i, s in enumerate(sizes):
        if i == target:
            out.append(-1)
        elif isinstance(s, int) and s == -1:
            if not isinstance(old_out[i], int):
                raise NotABlock(f"{node.name}: a second inferred (-1) size is not static")
            out.append(old_out[i])
        else:
            out.append(s)
    return out


def reshape_tokens(gm: fx.GraphModule, first: fx.Node, old_vals: dict) -> None:
    """Recompute fake values from ``first`` on; fix sizes spelled for the old token count."""
    nodes = list(gm.graph.nodes)
    mode = detect_fake_mode([v for v in (val(n) for n in nodes) if isinstance(v, torch.Tensor)])
    for node in nodes[nodes.index(first) :]:
        if node.op != "call_function":
            continue
        if node.target in _SIZED or node.target is aten.expand.default:
            src = node.args[0]
            old_in, new_in = old_vals.get(src), val(src)
            if (
                old_in is not None
                and shape(src) is not None
                and tuple(map(str, old_in.shape)) != tuple(map(str, new_in.shape))
            ):
                if node.target is aten.expand.default:
                    off = len(node.args[1]) - new_in.dim()
                    sizes = list(node.args[1])
                    for i, (a, b) in enumerate(zip(old_in.shape, new_in.shape)):
                        if str(a) != str(b):
                            sizes[i + off] = -1
                else:
                    sizes = _resolve_sizes(
                        node, old_in.shape, new_in.shape, old_vals[node].shape, list(node.args[1])
                    )
                node.args = (node.args[0], sizes, *node.args[2:])
        fake_args, fake_kwargs = pytree.tree_map(
            val, (node.args, node.kwargs), is_leaf=lambda x: isinstance(x, fx.Node)
        )
        try:
            with mode:
                if node.target is operator.getitem:
                    node.meta[meta.VAL] = fake_args[0][fake_args[1]]
                else:
                    node.meta[meta.VAL] = node.target(*fake_args, **fake_kwargs)
        except Exception as exc:  # noqa: BLE001 - turned into the reason the pass gives up
            where = module_path(node) or node.name
            raise NotABlock(
                f"after merging, {node.name} ({where}) no longer fits the shorter token axis: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
