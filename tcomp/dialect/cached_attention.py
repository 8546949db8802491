"""``tcomp.cached_attention``: the cache form of softmax attention (decoders that generate).

``tcomp.cached_attention(q, k_cache, v_cache, bias, mask, scale, kv_len)`` is ``tcomp.attention``
whose keys and values are a static KV cache of ``M`` slots of which only the first ``kv_len`` hold
tokens:

* ``q``: (B, H, N, D) -- the N new tokens (N = 1 in a decode step, the prompt in prefill);
  ``k_cache``: (B, Hk, M, D); ``v_cache``: (B, Hk, M, Dv), ``H % Hk == 0`` (GQA/MQA as in
  ``tcomp.attention``).
* ``kv_len``: int tensor of shape (B,) or (1,) (broadcast over the batch): row ``b`` reads keys
  ``0 .. kv_len[b] - 1``; the slots from ``kv_len[b]`` on are never read (they may hold anything,
  NaN included). A kernel's work is therefore O(kv_len), not O(M).
* ``bias`` / ``mask``: as in ``tcomp.attention``, broadcastable to (B, H, N, M) over the *whole*
  cache (the mask a decoder builds from cache positions and padding); only the first ``kv_len``
  key columns are read.
* ``scale``: multiplies ``q @ k^T``. There is no ``causal`` flag: causality over cache positions is
  in the mask (a query at cache position ``p`` attends keys ``<= p``).
* ``k_scale`` / ``v_scale`` (an int8 cache, tcomp/kv_cache.py): (B, Hk, M, 1) float scales; the
  caches then hold int8 codes and are read as ``(code * scale)`` in float32 rounded to q's dtype.
* A query row with every readable key masked out returns zeros (never NaN).
* Output: (B, H, N, Dv), dtype of ``q``; half-precision inputs are computed in float32.

Canonical form (applied by ``canonicalize``): a ``tcomp.attention`` whose keys and values are the KV
cache buffers of a decoder graph (``get_attr`` nodes marked ``meta.KV_CACHE``, possibly through the
in-place ``index_copy_`` that writes the new tokens) becomes ``tcomp.cached_attention`` with
``kv_len = cache_position[-1] + 1`` read from the graph's cache-position placeholder
(``meta.CACHE_POSITION``); keys and values read through the int8 cache's dequantization
(``(code.to(f32) * scale).to(dtype)`` of the two buffers) become the codes with ``k_scale`` /
``v_scale``. This is exact: tcomp's decoder capture builds masks that exclude every
slot past the last cache position, so the columns it stops reading had weight exactly zero.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.fx import Node

from tcomp import meta
from tcomp.cost import Cost, SymbolMap, fake
from tcomp.dialect.attention import ATTENTION, attention, attention_tensors_cost
from tcomp.dialect.base import define
from tcomp.kv_cache import dequantize_rows

aten = torch.ops.aten


@torch.library.custom_op("tcomp::cached_attention", mutates_args=())
def cached_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    scale: float,
    kv_len: Tensor,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
) -> Tensor:
    """Reference cache-form attention (see the module docstring for the contract)."""
    if k_scale is not None:  # an int8 cache: codes times their row's scale, as the model read it
        k_cache = dequantize_rows(k_cache, k_scale, q.dtype)
    if v_scale is not None:
        v_cache = dequantize_rows(v_cache, v_scale, q.dtype)
    B, M = q.shape[0], k_cache.shape[-2]
    lens = kv_len.reshape(-1).to(torch.int64).expand(B) if kv_len.numel() == 1 else kv_len.reshape(B)
    readable = torch.arange(M, device=q.device)[None, :] < lens.to(q.device)[:, None]  # (B, M)
    keep = readable[:, None, None, :]
    if mask is not None:
        keep = keep & mask
    # unread slots may hold anything: zero them so NaN/inf there cannot leak through 0 * x
    k = torch.where(readable[:, None, :, None], k_cache, torch.zeros((), dtype=k_cache.dtype))
    v = torch.where(readable[:, None, :, None], v_cache, torch.zeros((), dtype=v_cache.dtype))
    if bias is not None:
        bias = torch.where(keep, bias, torch.zeros((), dtype=bias.dtype))
    return attention(q, k, v, bias, keep, scale, False)


@cached_attention.register_fake
def _cached_attention_fake(q, k_cache, v_cache, bias, mask, scale, kv_len, k_scale=None, v_scale=None):
    return q.new_empty((*q.shape[:-1], v_cache.shape[-1]))


def _cached_attention_node_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    """Attention over the whole cache (``M`` slots): an upper bound, reached when the cache is full;
    the kv_len actually read is known only at run time."""
    a = CACHED_ATTENTION.bind(node)
    q, k, v, bias, mask = (fake(a[n]) for n in ("q", "k_cache", "v_cache", "bias", "mask"))
    if q is None or k is None or v is None:
        return None
    return attention_tensors_cost(q, k, v, bias, mask, False, symbols)


def _cache_buffer(x) -> Node | None:
    """The KV-cache ``get_attr`` node ``x`` reads, directly or through the in-place write of new tokens."""
    while isinstance(x, Node) and x.op == "call_function" and x.target in (
        aten.index_copy_.default,
        aten.alias.default,
    ):
        x = x.args[0]
    if isinstance(x, Node) and x.op == "get_attr" and meta.KV_CACHE in x.meta:
        return x
    return None


def _is_to(x, dtype=None) -> bool:
    return (
        isinstance(x, Node) and x.op == "call_function" and x.target is aten.to.dtype and len(x.args) == 2
        and not x.kwargs and (dtype is None or x.args[1] == dtype)
    )  # fmt: skip


def _dequantized(x) -> tuple[Node, Node] | None:
    """(codes, scales) when ``x`` is an int8 cache read as ``(codes.to(f32) * scales).to(dtype)``
    (both through their in-place writes), else None."""
    if _is_to(x):
        x = x.args[0]
    if not (isinstance(x, Node) and x.op == "call_function" and x.target is aten.mul.Tensor and len(x.args) == 2):
        return None
    codes, scales = x.args
    if not _is_to(codes, torch.float32):
        return None
    cb, sb = _cache_buffer(codes.args[0]), _cache_buffer(scales)
    if cb is None or sb is None or cb.meta[meta.KV_CACHE]["kind"] not in ("k", "v"):
        return None
    if sb.meta[meta.KV_CACHE]["kind"] != cb.meta[meta.KV_CACHE]["kind"] + "s":
        return None
    return codes.args[0], scales


def _kv_len(graph, position: Node, cache: dict) -> Node:
    """``cache_position[-1:] + 1`` (shape (1,)), built once per graph right after the placeholders."""
    if "node" not in cache:
        last_placeholder = [n for n in graph.nodes if n.op == "placeholder"][-1]
        with graph.inserting_after(last_placeholder):
            tail = graph.call_function(aten.slice.Tensor, (position, 0, -1, None))
        with graph.inserting_after(tail):
            cache["node"] = graph.call_function(aten.add.Tensor, (tail, 1))
        pv = position.meta.get(meta.VAL)
        if pv is not None:
            tail.meta[meta.VAL] = pv[-1:]
            cache["node"].meta[meta.VAL] = pv[-1:] + 1
    return cache["node"]


def _from_attention(gm) -> list[str]:
    """``tcomp.attention`` over KV-cache buffers -> ``tcomp.cached_attention`` (see the docstring)."""
    graph = gm.graph
    positions = [n for n in graph.nodes if n.op == "placeholder" and n.meta.get(meta.CACHE_POSITION)]
    if not positions:
        return []
    notes: list[str] = []
    built: dict = {}
    for node in list(graph.nodes):
        if not ATTENTION.matches(node):
            continue
        a = ATTENTION.bind(node)
        kb, vb = _cache_buffer(a["k"]), _cache_buffer(a["v"])
        k, v, scales = a["k"], a["v"], ()
        if kb is None or vb is None:  # an int8 cache: the codes and their scales
            dk, dv = _dequantized(a["k"]), _dequantized(a["v"])
            if dk is None or dv is None:
                continue
            (k, ks), (v, vs) = dk, dv
            kb, scales = _cache_buffer(k), (ks, vs)
        if a["causal"]:
            continue
        kv_len = _kv_len(graph, positions[0], built)
        with graph.inserting_before(node):
            new = graph.call_function(
                CACHED_ATTENTION.op, (a["q"], k, v, a["bias"], a["mask"], a["scale"], kv_len, *scales)
            )
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        notes.append(f"attention site {node.meta.get(meta.ATTN_LAYER, node.name)} reads the {'int8 ' if scales else ''}KV cache of layer {kb.meta[meta.KV_CACHE]['layer']}: cache form, kv_len = cache_position[-1] + 1")
    return notes


CACHED_ATTENTION = define(
    cached_attention, kind="attention", cost=_cached_attention_node_cost, canonical_forms=(_from_attention,)
)


def is_cached_attention(node) -> bool:
    """True for an fx node that calls ``tcomp.cached_attention``."""
    return CACHED_ATTENTION.matches(node)


def cached_attention_refusal(gm, rewrite: str) -> str:
    """Why an attention-rewriting pass leaves a decoder step graph's attention alone ("" when the
    graph has no ``tcomp.cached_attention`` site): said in the pass's report instead of a silent
    "nothing to rewrite". ``rewrite`` names what the pass would build, e.g. "linear attention"."""
    n = sum(is_cached_attention(node) for node in gm.graph.nodes)
    if not n:
        return ""
    return (
        f"not applicable: {n} attention site(s) of a decoder step graph read the KV cache "
        f"(tcomp.cached_attention); {rewrite} over a cache is not built, so these layers stay softmax "
        "(attention.linear does rewrite a decoder: its layers keep a recurrent state). Optimize the "
        "model with decoder=False to rewrite its single forward pass"
    )
