"""``tcomp.token_merge``'s cost formula: the similarity matmul FlopCounterMode counts in the
reference plus the documented per-element constants; bytes equal the ``nbytes`` of one call's
inputs (x, k, size, keep when given) and its four outputs; symbolic shapes give O(N^2) FLOPs
(the bipartite similarity) and O(N) bytes."""

from __future__ import annotations

import math

import pytest
import torch

from tcomp.cost import leading_order
from tcomp.dialect import op_def, token_merge
from tests.dialect.costing import counted_flops, io_bytes, static_cost, symbolic_cost


@pytest.mark.parametrize("with_size_keep", [False, True])
def test_cost_matches_counted_flops_and_bytes(with_size_keep):
    g = torch.Generator().manual_seed(0)
    b, n, c, h, d, r, protected = 2, 9, 6, 3, 4, 2, [0]
    x, k = torch.randn(b, n, c, generator=g), torch.randn(b, h, n, d, generator=g)
    size = keep = None
    if with_size_keep:
        size = torch.rand(b, n, generator=g) + 1.0
        keep = torch.ones(b, n, dtype=torch.bool)
        keep[0, -2:] = False
    inputs = [t for t in (x, k, size, keep) if t is not None]

    def fn(*t):
        return token_merge(t[0], t[1], *(t[2:] if with_size_keep else (None, None)), r, protected)

    flops, nbytes = static_cost(fn, inputs)
    matmul, out = counted_flops(op_def(token_merge), x, k, size, keep, r, protected)
    half = (n - len(protected)) // 2  # |A| = |B| = 4
    assert matmul == 2 * b * half * half * d  # the similarity of the split is the only matmul
    assert nbytes == io_bytes(inputs, out)
    per_batch = (
        n * h * d + 3 * n * d + n  # head mean; cosine normalisation
        + half * half + half * math.log2(half)  # argmax per score; sorting A
        + 2 * n * c + (n - r) * c + n + (2 * n if keep is not None else 0)  # weighted scatter, mean, sizes
    )  # fmt: skip
    assert flops == pytest.approx(matmul + b * per_batch, rel=1e-12)


def test_symbolic_shapes():
    x, k = torch.randn(2, 9, 6), torch.randn(2, 3, 9, 4)
    fn = lambda x, k: token_merge(x, k, None, None, 2, [0])  # noqa: E731
    c = symbolic_cost(fn, (x, k), dims={0: 1, 1: 2})
    assert leading_order(c.flops) == "O(N^2)" and leading_order(c.bytes) == "O(N)"
    assert c.evaluate(batch=2, seq=9) == pytest.approx(static_cost(fn, (x, k)), rel=1e-12)
