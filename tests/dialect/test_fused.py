"""The fused epilogues' cost formulas: the stated per-element constants counted explicitly, bytes
equal the ``nbytes`` of one call's inputs and output."""

from __future__ import annotations

import pytest
import torch

from tcomp.dialect import bias_gelu, skip_layer_norm
from tcomp.dialect.fused import GELU_FLOPS, LAYER_NORM_ELEMENT_FLOPS, LAYER_NORM_ROW_FLOPS
from tests.dialect.costing import io_bytes, static_cost, symbolic_cost


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bias_gelu(dtype):
    x, bias = torch.randn(2, 5, 12, dtype=dtype), torch.randn(12, dtype=dtype)
    flops, nbytes = static_cost(lambda x, b: bias_gelu(x, b, "tanh"), (x, bias))
    assert GELU_FLOPS == 8  # tanh form: x^3 (2), fma (2), scale, tanh, 1 + t, 0.5·x·(...)
    assert flops == x.numel() * (1 + 8)  # the bias add and the GELU per element
    assert nbytes == io_bytes((x, bias), bias_gelu(x.float(), bias.float(), "tanh").to(dtype))


@pytest.mark.parametrize("has_bias,has_residual_bias", [(True, False), (False, True), (True, True)])
def test_skip_layer_norm(has_bias, has_residual_bias):
    b, t, c = 2, 5, 12
    x, skip, w = torch.randn(b, t, c), torch.randn(b, t, c), torch.randn(c)
    bias = torch.randn(c) if has_bias else None
    rbias = torch.randn(c) if has_residual_bias else None
    tensors = [x, skip, w, *(p for p in (bias, rbias) if p is not None)]

    def fn(x, skip, w, *rest):
        it = iter(rest)
        return skip_layer_norm(
            x, skip, w, next(it) if has_bias else None, next(it) if has_residual_bias else None, 1e-5
        )

    flops, nbytes = static_cost(fn, tensors)
    assert (LAYER_NORM_ELEMENT_FLOPS, LAYER_NORM_ROW_FLOPS) == (6, 4)
    # per element: skip add, residual bias add, LayerNorm's sum, subtract, square and sum, 1/std, weight,
    # bias; per row: two divisions by C, + eps, rsqrt
    per_element = 1 + int(has_residual_bias) + 6 + int(has_bias)
    assert flops == b * t * c * per_element + b * t * 4
    assert nbytes == io_bytes(tensors, skip_layer_norm(x, skip, w, bias, rbias, 1e-5))


def test_symbolic_shapes():
    x, bias = torch.randn(2, 6, 12), torch.randn(12)
    fn = lambda x, b: bias_gelu(x, b, "none")  # noqa: E731
    c = symbolic_cost(fn, (x, bias), dims={0: 1})
    assert c.evaluate(batch=2, seq=6) == static_cost(fn, (x, bias))
    x, skip, w = torch.randn(2, 6, 12), torch.randn(2, 6, 12), torch.randn(12)
    fn = lambda x, s, w: skip_layer_norm(x, s, w, None, None, 1e-5)  # noqa: E731
    c = symbolic_cost(fn, (x, skip, w), dims={0: 1, 1: 1})
    assert c.evaluate(batch=2, seq=6) == static_cost(fn, (x, skip, w))
