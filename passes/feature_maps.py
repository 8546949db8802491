"""Feature maps for kernelized attention, and what the linear and softmax-free passes share:
the analysis of an attention site (which masks and biases can be kernelized), the emission of the
kernelized site, and calibration (capturing every site's inputs on calibration batches).

A feature map ``phi`` turns softmax attention ``softmax(s q k^T)`` into ``phi(q) phi(k)^T``
normalised per row. Every map is written once, against a ``call(op, *args)`` function: eagerly
``call`` runs the ATen op (calibration, per-layer error), in a graph it inserts the node
(``tcomp.graph.add_node``) -- the same arithmetic either way. Maps:

* ``elu1``: ``elu(x) + 1`` (Katharopoulos et al. 2020); ``relu``: ``relu(x)``.
* ``favor``: FAVOR+ positive orthogonal random features (Choromanski et al. 2021),
  ``exp(w_i . x' - |x'|^2 / 2) / sqrt(m)`` with ``x' = sqrt(s) x``, ``m`` features in orthogonal
  blocks drawn from an explicit seed, computed in float32; an unbiased estimate of ``exp(s q.k)``.
* ``hedgehog``: ``[softmax(x W_h), softmax(-x W_h)]`` with a learned ``W_h`` per head (Zhang et al.
  2024), separate for queries and keys, initialised to the identity and fit by attention transfer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from tcomp.calibration import record_inputs
from tcomp.graph import add_node, shape, val

aten = torch.ops.aten
ATTN = torch.ops.tcomp.attention.default
LINEAR = torch.ops.tcomp.linear_attention.default
FEATURE_MAPS = ("elu1", "relu", "favor", "hedgehog")
Call = Callable[..., Any]


def eager(op, *args, **kwargs):
    return op(*args, **kwargs)


# -- feature maps ----------------------------------------------------------------------------------


def favor_matrix(d: int, m: int, seed: int) -> Tensor:
    """(d, m) float32 projection of FAVOR+: ``ceil(m/d)`` blocks of ``d`` orthogonal directions
    (QR of a Gaussian matrix), each column rescaled to the norm of a Gaussian vector."""
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(-(-m // d)):
        g = torch.randn(d, d, generator=gen, dtype=torch.float64)
        qm, r = torch.linalg.qr(g)
        blocks.append(qm * torch.sign(torch.diagonal(r)))  # sign fix: Haar-distributed directions
    w = torch.cat(blocks, dim=1)[:, :m]
    norms = torch.randn(d, m, generator=gen, dtype=torch.float64).norm(dim=0)
    return (w * norms).to(torch.float32)


def favor_bound(m: int, radius: float = 1.0) -> float:
    """Relative error bound of one FAVOR+ site with ``m`` features when ``|sqrt(s) q|, |sqrt(s) k|
    <= radius``: each kernel estimate has relative standard deviation at most
    ``sqrt(exp(4 R^2) / m)`` (Choromanski et al. 2021, Lemma 2), and the output, a ratio of two such
    sums, about twice that."""
    return 2.0 * math.exp(2.0 * radius**2) / math.sqrt(m)


@dataclass
class FeatureMap:
    """One feature map with its tensors (``q``/``k`` weights; empty for elu1/relu)."""

    name: str
    scale: float
    q_weight: Tensor | None = None
    k_weight: Tensor | None = None
    notes: list[str] = field(default_factory=list)
    out_weight: Tensor | None = None  # (H, D, D) per-head output correction (attention transfer)
    out_bias: Tensor | None = None  # (H, 1, D)

    @staticmethod
    def correct(call: Call, out, weight=None, bias=None):
        """``out @ weight + bias`` per head (the fitted output correction); ``out`` when none."""
        if weight is None:
            return out
        return call(aten.add.Tensor, call(aten.matmul.default, out, weight), bias)

    def apply(self, call: Call, x, role: str, weight=None):
        """``phi(x)`` for ``role`` "q" or "k" ("k_state": keys of a recurrent state, see favor);
        ``weight`` is this role's tensor (or graph node)."""
        if self.name == "elu1":
            return call(aten.add.Tensor, call(aten.elu.default, x), 1.0)
        if self.name == "relu":
            return call(aten.relu.default, x)
        if self.name == "favor":
            x32 = call(aten._to_copy.default, x, dtype=torch.float32)
            xs = call(aten.mul.Tensor, x32, math.sqrt(self.scale))
            proj = call(aten.matmul.default, xs, weight)
            half_sq = call(
                aten.mul.Tensor, call(aten.sum.dim_IntList, call(aten.mul.Tensor, xs, xs), [-1], True), 0.5
            )
            expo = call(aten.sub.Tensor, proj, half_sq)
            if role != "k_state":
                # a per-row (queries) or per-head (keys) constant cancels in the normalisation; not
                # for keys summed into a recurrent state across steps ("k_state"): there each step's
                # constant would weigh its keys differently (w.x' - |x'|^2/2 <= |w|^2/2: no overflow)
                stab = call(aten.amax.default, proj, [-1] if role == "q" else [-2, -1], True)
                expo = call(aten.sub.Tensor, expo, stab)
            m = self.q_weight.shape[-1]
            return call(aten.mul.Tensor, call(aten.exp.default, expo), 1.0 / math.sqrt(m))
        if self.name == "hedgehog":
            y = call(aten.matmul.default, x, weight)
            pos = call(aten._softmax.default, y, -1, False)
            neg = call(aten._softmax.default, call(aten.neg.default, y), -1, False)
            return call(aten.cat.default, [pos, neg], -1)
        raise ValueError(f"unknown feature map {self.name!r}")


def make_feature_map(name: str, scale: float, head_dim: int, heads: int, kv_heads: int, *,
                     num_features: int = 256, seed: int = 0, feature_dim: int | None = None) -> FeatureMap:  # fmt: skip
    if name not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {name!r}")
    if name == "favor":
        w = favor_matrix(head_dim, num_features, seed)
        return FeatureMap(name, scale, w, w)
    if name == "hedgehog":
        # identity on the first head_dim outputs (softmax of +-sqrt(s) x), small random extra ones
        fd = feature_dim or head_dim
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(head_dim, fd, generator=gen) / math.sqrt(head_dim)
        n = min(head_dim, fd)
        w[:n, :n] = torch.eye(n)
        w[:, n:] *= 0.1
        w = w * math.sqrt(scale)
        return FeatureMap(name, scale, w.repeat(heads, 1, 1), w.repeat(kv_heads, 1, 1))
    return FeatureMap(name, scale)


# -- sites -----------------------------------------------------------------------------------------


class NotKernelizable(Exception):
    """The site's masks or biases cannot be written as per-key and per-query factors."""


@dataclass
class Site:
    """An attention node's operands, with its mask split into key and query factors."""

    node: fx.Node
    q: fx.Node
    k: fx.Node
    v: fx.Node
    key_masks: list[fx.Node]  # bool, last-but-one dim 1: depend on the key only
    query_masks: list[fx.Node]  # bool, last dim 1: depend on the query only
    key_bias: fx.Node | None  # float, last-but-one dim 1
    scale: float
    causal: bool

    @property
    def layer(self) -> int:
        from tcomp import meta

        return int(self.node.meta.get(meta.ATTN_LAYER, -1))


_PASS_THROUGH = {aten.expand.default, aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default,
                 aten.clone.default, aten.contiguous.default}  # fmt: skip
_AND = {aten.__and__.Tensor, aten.logical_and.default, aten.bitwise_and.Tensor, aten.mul.Tensor}


def _factors(n: Any) -> list[fx.Node]:
    """The operands of a bool mask built as an AND of broadcast tensors (expands and casts skipped)."""
    if not isinstance(n, fx.Node):
        raise NotKernelizable("mask is not a tensor")
    if n.op == "call_function" and n.target in _AND and all(isinstance(a, fx.Node) for a in n.args[:2]):
        return _factors(n.args[0]) + _factors(n.args[1])
    if n.op == "call_function" and n.target in _PASS_THROUGH and val(n.args[0]).dtype == torch.bool:
        return _factors(n.args[0])
    return [n]


def analyze(node: fx.Node) -> Site:
    """Split the site's mask into key and query factors; raise ``NotKernelizable`` with the reason
    when a mask or bias couples queries and keys (relative positions, ALiBi, windows)."""
    q, k, v, bias, mask, scale, causal = node.args[:7]
    if len(shape(q) or ()) != 4:
        raise NotKernelizable("q is not 4-D")
    heads, kv_heads = shape(q)[1], shape(k)[1]
    key_masks, query_masks = [], []
    for f in _factors(mask) if mask is not None else []:
        s = shape(f) or ()
        if len(s) == 1 or (len(s) >= 2 and s[-2] == 1):
            key_masks.append(f)
        elif len(s) == 0 or s[-1] == 1:
            query_masks.append(f)
        else:
            raise NotKernelizable(
                f"the mask couples queries and keys (factor {f.name} of shape {tuple(s)}); "
                "only key-padding and query masks can be kernelized"
            )
    key_bias = None
    if bias is not None:
        s = shape(bias) or ()
        if len(s) >= 2 and s[-2] == 1:
            key_bias = bias
        else:
            raise NotKernelizable(
                f"additive bias of shape {tuple(s)} varies with the query position (relative positions, "
                "ALiBi): it cannot be kernelized"
            )
    for f in key_masks + ([key_bias] if key_bias is not None else []):
        s = shape(f)
        if len(s) >= 3 and s[-3] != 1 and heads != kv_heads:
            raise NotKernelizable("a per-head key mask/bias with grouped kv heads")
    return Site(node, q, k, v, key_masks, query_masks, key_bias, float(scale), bool(causal))


def _to4(call: Call, t):
    """Prefix size-1 dims until ``t`` is 4-D (masks and biases broadcast from the right)."""
    r = t.dim() if isinstance(t, Tensor) else len(shape(t))
    for _ in range(4 - r):
        t = call(aten.unsqueeze.default, t, 0)
    return t


def _shape(t) -> tuple:
    return tuple(t.shape) if isinstance(t, Tensor) else shape(t)


def kernelize(call: Call, fmap: FeatureMap, q, k, v, key_mask, query_mask, key_bias, causal: bool,
              q_weight=None, k_weight=None):  # fmt: skip
    """The linear attention of one site: features, key/query masks folded in, the dialect op,
    the output cast back to the value dtype. ``key_mask`` (…, 1, M) / ``query_mask`` (…, N, 1) are
    bool or None; ``key_bias`` (…, 1, M) is float or None (folded into the key features as
    ``exp(b_j - max b)``: exact for the exponential kernel, a key weighting for the others)."""
    qf = fmap.apply(call, q, "q", q_weight)
    kf = fmap.apply(call, k, "k", k_weight)
    if key_bias is not None:
        b = call(aten._to_copy.default, _to4(call, key_bias), dtype=torch.float32)
        top = call(aten.amax.default, b, [-1], True)
        top = call(aten.where.ScalarOther, call(aten.isfinite.default, top), top, 0.0)
        w = call(aten.exp.default, call(aten.sub.Tensor, b, top))
        kf = call(aten.mul.Tensor, kf, call(aten.transpose.int, w, -2, -1))
    op_mask = None
    if key_mask is not None:
        km = _to4(call, key_mask)
        if _shape(km)[1] == 1:
            op_mask = call(aten.squeeze.dims, km, [1, 2])
        else:
            kf = call(aten.where.ScalarOther, call(aten.transpose.int, km, -2, -1), kf, 0.0)
    if query_mask is not None:
        qf = call(aten.where.ScalarOther, query_mask, qf, 0.0)
    kf = call(aten._to_copy.default, kf, dtype=val_dtype(qf))
    vv = call(aten._to_copy.default, v, dtype=val_dtype(qf))
    out = call(LINEAR, qf, kf, vv, op_mask, causal)
    if val_dtype(v) != val_dtype(qf):
        out = call(aten._to_copy.default, out, dtype=val_dtype(v))
    return out


def val_dtype(t) -> torch.dtype:
    return t.dtype if isinstance(t, Tensor) else val(t).dtype


def combine(call: Call, nodes: list, op=aten.logical_and.default):
    if not nodes:
        return None
    acc = nodes[0]
    for n in nodes[1:]:
        acc = call(op, acc, n)
    return acc


def graph_call(graph: fx.Graph) -> Call:
    def call(op, *args, **kwargs):
        return add_node(graph, op, args, kwargs)

    return call


def get_attr(gm: fx.GraphModule, name: str, tensor: Tensor) -> fx.Node:
    """Register ``tensor`` as a buffer of ``gm`` (a free name derived from ``name``) and return a
    ``get_attr`` node for it, with its value recorded for shape propagation."""
    from torch._guards import detect_fake_mode

    base, i = name, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    gm.register_buffer(name, tensor)
    node = gm.graph.get_attr(name)
    mode = detect_fake_mode([val(n) for n in gm.graph.nodes if n.op == "placeholder"])
    node.meta["val"] = mode.from_tensor(tensor) if mode is not None else tensor
    return node


# -- calibration -----------------------------------------------------------------------------------


@dataclass
class SiteSample:
    """Inputs of one attention site on one calibration batch (float32, CPU)."""

    q: Tensor
    k: Tensor
    v: Tensor
    bias: Tensor | None
    mask: Tensor | None
    scale: float
    causal: bool

    def key_query_masks(self) -> tuple[Tensor | None, Tensor | None]:
        """The realised mask's key (…, 1, M) and query (…, N, 1) factors (exact for a mask that
        ``analyze`` proved to be such a product)."""
        if self.mask is None:
            return None, None
        m = self.mask.to(torch.bool)
        return m.any(-2, keepdim=True), m.any(-1, keepdim=True)

    def key_bias(self) -> Tensor | None:
        return None if self.bias is None else self.bias[..., :1, :]

    def softmax(self) -> Tensor:
        """Softmax attention weights (B, H, N, M) in float32, fully masked rows all zero."""
        n_rep = self.q.shape[1] // self.k.shape[1]
        k = self.k.repeat_interleave(n_rep, 1) if n_rep > 1 else self.k
        s = torch.matmul(self.q, k.transpose(-2, -1)) * self.scale
        if self.bias is not None:
            s = s + self.bias
        keep = torch.ones_like(s, dtype=torch.bool)
        if self.mask is not None:
            keep = keep & self.mask
        if self.causal:
            keep = keep & torch.ones(s.shape[-2:], dtype=torch.bool).tril()
        s = s.masked_fill(~keep, float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)
        return p

    def attention(self) -> Tensor:
        return torch.ops.tcomp.attention(
            self.q, self.k, self.v, self.bias, self.mask, self.scale, self.causal
        )


def capture_sites(gm: fx.GraphModule, calibration: Any) -> dict[str, list[SiteSample]]:
    """Run ``gm`` on every calibration batch and record each ``tcomp.attention`` node's inputs
    (keyed by node name); ``gm`` itself is not changed (``tcomp.calibration.record_inputs``)."""
    rec: dict[str, list[SiteSample]] = {}

    def observe(name: str, args: tuple) -> None:
        q, k, v, bias, mask, scale, causal = args
        f32 = [None if t is None else t.detach().float().cpu() for t in (q, k, v, bias)]
        m = None if mask is None else mask.detach().cpu()
        rec.setdefault(name, []).append(SiteSample(*f32[:4], m, float(scale), bool(causal)))

    sites = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is ATTN]
    record_inputs(gm, sites, calibration, observe)
    return rec


def rel_err(out: Tensor, ref: Tensor) -> float:
    ref64 = ref.double()
    return float((out.double() - ref64).norm() / ref64.norm().clamp_min(1e-30))
