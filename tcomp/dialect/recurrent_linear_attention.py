"""``tcomp.recurrent_linear_attention``: the cache form of linear attention (decoders that generate).

In a decoder, causal linear attention needs no KV cache: everything a later query reads of the keys
and values so far is the running state ``S = sum_j phi(k_j) v_j^T`` (F x Dv per key head) and its
normaliser ``z = sum_j phi(k_j)`` (F) -- constant memory per token, whatever the sequence length.

``tcomp.recurrent_linear_attention(q, k, v, key_mask, state, norm, fresh) -> (out, state', norm')``
takes the ``N`` new tokens of a step (N = 1 in a decode step, the prompt in prefill):

* ``q``: (B, H, N, F) query features; ``k``: (B, Hk, N, F) key features; ``v``: (B, Hk, N, Dv);
  ``H % Hk == 0`` (GQA/MQA). Features are non-negative (every map tcomp emits is).
* ``key_mask``: (B, N) bool, True = the token is real: it enters the state. A masked token (left
  padding) is seen by its own query only -- the rule of tcomp's cache mask
  (``tcomp.kv_cache.attention_masks``: a query always reads its own slot), so a padding row's output
  is finite and equals what softmax attention gives there, its value.
* ``state``: (B, Hk, F, Dv), ``norm``: (B, Hk, F) -- the sums over the tokens before this step, in
  float32 (float64 for float64 inputs); ``fresh``: a bool tensor of one element, True when the step
  starts a sequence (cache position 0): the incoming state is then read as zeros, whatever it holds.
* Query ``i`` reads the incoming state, the real tokens ``j < i`` of this step and its own token:
  ``out_i = phi(q_i) . (S + sum_j phi(k_j) v_j^T + phi(k_i) v_i^T) / phi(q_i) . (z + ...)``;
  a row whose normaliser is not positive returns zeros, never NaN or inf.
* ``state' = S + sum_{real j} phi(k_j) v_j^T``, ``norm' = z + sum_{real j} phi(k_j)``, in the state's
  dtype: the graph writes them back into its state buffers (``copy_``), as a softmax decoder's
  graph writes new keys into its cache (``index_copy_``).
* ``out``: (B, H, N, Dv), dtype of ``q``; half-precision inputs are computed in float32.

Splitting a sequence into steps does not change the outputs (up to rounding): a prefill of ``n``
tokens followed by decode steps gives what one prefill of the whole sequence gives at each position
(tests/dialect/test_recurrent_linear_attention.py). Produced by ``attention.linear`` on decoder
step graphs (passes/linear_attention_cache.py).
"""

from __future__ import annotations

import sympy
import torch
from torch import Tensor
from torch.fx import Node

from tcomp.cost import Cost, SymbolMap, fake, sym_numel, sym_shape
from tcomp.dialect.base import define
from tcomp.dialect.common import expand_kv
from tcomp.dialect.linear_attention import linear_attention_cost


@torch.library.custom_op("tcomp::recurrent_linear_attention", mutates_args=())
def recurrent_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor, state: Tensor, norm: Tensor, fresh: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference recurrent linear attention (see the module docstring for the contract)."""
    work = torch.float64 if torch.float64 in (q.dtype, state.dtype) else torch.float32
    B, H, N, _ = q.shape
    Hk = k.shape[1]
    n_rep = H // Hk
    real = key_mask.to(torch.bool).reshape(B, N)
    zero = torch.zeros((), dtype=work, device=q.device)
    start = fresh.reshape(-1)[:1].to(torch.bool).reshape(())
    s0 = torch.where(start, zero, state.to(work))  # (B, Hk, F, Dv)
    z0 = torch.where(start, zero, norm.to(work))  # (B, Hk, F)
    qf, kf, vf = q.to(work), k.to(work), v.to(work)
    # masked tokens never reach the state: zeroed with where (NaN there must not leak through 0 * x)
    kin = torch.where(real[:, None, :, None], kf, zero)
    vin = torch.where(real[:, None, :, None], vf, zero)
    new_state = s0 + torch.matmul(kin.transpose(-2, -1), vin)
    new_norm = z0 + kin.sum(-2)
    # each query: the incoming state, the real earlier tokens of this step (masked ones zeroed
    # above) and its own token, whatever its mask
    kx, vx = expand_kv(kf, n_rep), expand_kv(vf, n_rep)
    i = torch.arange(N, device=q.device)
    earlier = torch.matmul(qf, expand_kv(kin, n_rep).transpose(-2, -1))  # (B, H, N, N)
    earlier = torch.where((i[None, :] < i[:, None])[None, None], earlier, zero)
    own = (qf * kx).sum(-1, keepdim=True)  # (B, H, N, 1)
    num = torch.matmul(earlier, expand_kv(vin, n_rep)) + own * vx + torch.matmul(qf, expand_kv(s0, n_rep))
    den = earlier.sum(-1, keepdim=True) + own + torch.matmul(qf, expand_kv(z0[..., None], n_rep))
    ok = den > 0
    out = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), zero)
    return out.to(q.dtype), new_state.to(state.dtype), new_norm.to(norm.dtype)


@recurrent_linear_attention.register_fake
def _recurrent_linear_attention_fake(q, k, v, key_mask, state, norm, fresh):
    return q.new_empty((*q.shape[:-1], v.shape[-1])), torch.empty_like(state), torch.empty_like(norm)


def _recurrent_node_cost(node: Node, symbols: SymbolMap | None) -> Cost | None:
    """The causal linear attention of the step's ``N`` tokens (:func:`linear_attention_cost`, its
    chunked causal form; one token: the readout of the state) plus reading and writing the state:
    ``phi(q) S`` and ``phi(q) . z`` per query (2·F·Dv + 2·F), the update ``S += phi(k)^T v`` per key
    (2·F·Dv + F); bytes: the state and normaliser read and written once."""
    a = RECURRENT_LINEAR_ATTENTION.bind(node)
    q, k, v, s = (fake(a[n]) for n in ("q", "k", "v", "state"))
    if q is None or k is None or v is None or s is None:
        return None
    qs, ks, vs = sym_shape(q, symbols), sym_shape(k, symbols), sym_shape(v, symbols)
    B, H, N, F, Hk, Dv = sym_numel(qs[:-3]), qs[-3], qs[-2], qs[-1], ks[-3], vs[-1]
    inner = linear_attention_cost(B, H, N, N, F, Dv, q.dtype.itemsize, True, Hk=Hk, mask_bytes=B * N)
    B, H, N, F, Hk, Dv = map(sympy.sympify, (B, H, N, F, Hk, Dv))
    flops = B * H * N * (2 * F * Dv + 2 * F) + B * Hk * N * (2 * F * Dv + F)
    nbytes = 2 * B * Hk * F * (Dv + 1) * s.dtype.itemsize
    return Cost(sympy.expand(inner.flops + flops), sympy.expand(inner.bytes + nbytes))


RECURRENT_LINEAR_ATTENTION = define(recurrent_linear_attention, kind="linear_attention", cost=_recurrent_node_cost)


def is_recurrent_linear_attention(node) -> bool:
    """True for an fx node that calls ``tcomp.recurrent_linear_attention``."""
    return RECURRENT_LINEAR_ATTENTION.matches(node)
