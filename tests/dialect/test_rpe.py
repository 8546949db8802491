"""``tcomp.rpe_linear_attention``'s cost on a node: the FFT formula (``rpe_attention_cost``, its
growth is tested in tests/test_cost.py) and bytes equal to the ``nbytes`` of one call's inputs
(the key mask included) and output."""

from __future__ import annotations

import torch

from tcomp.cost import leading_order, rpe_attention_cost
from tcomp.dialect import rpe_linear_attention
from tests.dialect.costing import io_bytes, static_cost, symbolic_cost


def test_node_cost_is_the_fft_formula_and_counts_every_byte():
    g = torch.Generator().manual_seed(0)
    b, h, hk, n, f, dv = 2, 4, 2, 7, 5, 3
    q, k = torch.rand(b, h, n, f, generator=g), torch.rand(b, hk, n, f, generator=g)
    v, coeffs = torch.randn(b, hk, n, dv, generator=g), torch.randn(h, 2 * n - 1, generator=g)
    key_mask = torch.rand(b, n, generator=g) > 0.3
    for causal in (False, True):
        flops, nbytes = static_cost(
            lambda *t, c=causal: rpe_linear_attention(*t, c), (q, k, v, coeffs, key_mask)
        )
        assert flops == rpe_attention_cost(b, h, n, f, dv, 4, Hk=hk).evaluate()[0]
        assert nbytes == io_bytes(
            (q, k, v, coeffs, key_mask), rpe_linear_attention(q, k, v, coeffs, key_mask, causal)
        )


def test_symbolic_shapes_n_log_n():
    q, k, v = torch.rand(2, 2, 8, 4), torch.rand(2, 2, 8, 4), torch.randn(2, 2, 8, 4)
    c = symbolic_cost(
        lambda q, k, v: rpe_linear_attention(q, k, v, torch.zeros(2, 2 * q.shape[2] - 1), None, False),
        (q, k, v),
        dims={0: 2, 1: 2, 2: 2},
    )
    assert leading_order(c.flops) == "O(N log N)" and leading_order(c.bytes) == "O(N)"
