"""``tcomp.linear_attention``'s cost formula: FLOPs equal the count of the algorithm the kernels run
(two phases non-causal, chunked prefix sums causal), implemented here independently of the op and
checked against it in float64; bytes equal the ``nbytes`` of one call's inputs and output; symbolic
shapes give a cost linear in N."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from tcomp.cost import leading_order
from tcomp.dialect import linear_attention, op_def
from tcomp.dialect.linear_attention import LINEAR_ATTENTION_CHUNK
from tests.dialect.costing import io_bytes, static_cost, symbolic_cost

F64 = torch.float64


def _features(*shape: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(*shape, generator=g, dtype=F64) + 0.1  # non-negative, as every feature map


def _two_phase(q, k, v, key_mask):
    """Non-causal, as the kernel: the state per key head, the readout per query head; returns
    (output, FLOPs outside the matmuls: z's sums and the division)."""
    b, h, n, f = q.shape
    hk, m, dv = k.shape[1], k.shape[2], v.shape[-1]
    if key_mask is not None:
        k = torch.where(key_mask[:, None, :, None], k, torch.zeros((), dtype=k.dtype))
    s = k.transpose(-2, -1) @ v  # (B, Hk, F, Dv)
    z = k.sum(-2)[..., None]  # (B, Hk, F, 1)
    qg = q.reshape(b, hk, (h // hk) * n, f)  # query heads of one key head stacked along the rows
    num, den = (qg @ s).reshape(b, h, n, dv), (qg @ z).reshape(b, h, n, 1)
    return num / den, b * hk * m * f + b * h * n * dv


def _chunked(q, k, v, chunk):
    """Causal, as the kernel: chunks of ``chunk`` rows with the running state (kv, z); returns
    (output, FLOPs outside the matmuls: row sums, the two additions, the division, z's sums)."""
    b, h, n, f = q.shape
    dv = v.shape[-1]
    s = torch.zeros(b * h, f, dv, dtype=q.dtype)
    z = torch.zeros(b, h, f, 1, dtype=q.dtype)
    tri = torch.ones(chunk, chunk, dtype=torch.bool).tril()
    outs, extra = [], 0
    for lo in range(0, n, chunk):
        qc, kc, vc = q[:, :, lo : lo + chunk], k[:, :, lo : lo + chunk], v[:, :, lo : lo + chunk]
        c = qc.shape[2]
        a = torch.where(tri[:c, :c], qc @ kc.transpose(-2, -1), torch.zeros((), dtype=q.dtype))
        num = a @ vc + qc @ s.view(b, h, f, dv)
        den = a.sum(-1, keepdim=True) + qc @ z
        outs.append(num / den)
        s = torch.baddbmm(s, kc.transpose(-2, -1).reshape(b * h, f, c), vc.reshape(b * h, c, dv))
        z = z + kc.sum(-2)[..., None]
        extra += b * h * (c * c + c * dv + c + c * dv + c * f)
    return torch.cat(outs, dim=2), extra


def test_noncausal_cost_counts_the_two_phase_algorithm():
    g = torch.Generator().manual_seed(0)
    b, h, hk, n, m, f, dv = 2, 4, 2, 6, 9, 5, 3
    q, k, v = (
        _features(b, h, n, f, g=g),
        _features(b, hk, m, f, g=g),
        torch.randn(b, hk, m, dv, generator=g, dtype=F64),
    )
    key_mask = torch.rand(b, m, generator=g) > 0.3
    key_mask[:, 0] = True
    with FlopCounterMode(display=False) as counter:
        got, extra = _two_phase(q, k, v, key_mask)
    want = op_def(linear_attention).reference(q, k, v, key_mask, False)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    flops, nbytes = static_cost(lambda *t: linear_attention(*t, False), (q, k, v, key_mask))
    assert flops == counter.get_total_flops() + extra
    assert nbytes == io_bytes((q, k, v, key_mask), want)


def test_causal_cost_counts_the_chunked_prefix_sum_algorithm():
    g = torch.Generator().manual_seed(1)
    b, h, n, f, dv, c = 1, 2, 2 * LINEAR_ATTENTION_CHUNK, 4, 3, LINEAR_ATTENTION_CHUNK
    q, k, v = (
        _features(b, h, n, f, g=g),
        _features(b, h, n, f, g=g),
        torch.randn(b, h, n, dv, generator=g, dtype=F64),
    )
    with FlopCounterMode(display=False) as counter:
        got, extra = _chunked(q, k, v, c)
    want = op_def(linear_attention).reference(q, k, v, None, True)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    flops, nbytes = static_cost(lambda *t: linear_attention(*t, None, True), (q, k, v))
    assert flops == counter.get_total_flops() + extra
    assert nbytes == io_bytes((q, k, v), want)


def test_symbolic_shapes_give_a_cost_linear_in_n():
    b, h, n, f, dv = 2, 2, 8, 4, 4
    q, k, v = torch.rand(b, h, n, f), torch.rand(b, h, n, f), torch.randn(b, h, n, dv)
    for causal in (False, True):
        fn = lambda *t, c=causal: linear_attention(*t, None, c)  # noqa: E731
        c = symbolic_cost(fn, (q, k, v), dims={0: 2, 1: 2, 2: 2})
        assert leading_order(c.flops) == "O(N)" and leading_order(c.bytes) == "O(N)"
        assert c.evaluate(batch=b, seq=n) == static_cost(fn, (q, k, v))
