"""The quantized linears' cost formula: 2·M·K·N FLOPs (what FlopCounterMode counts in each
reference) plus the stated per-element constants of the format; bytes equal the ``nbytes`` of one
call's real inputs (packed weights at their packed size, scales, zero points, bias) and output;
symbolic shapes give a cost linear in N; the packed formats move fewer bytes than a float linear."""

from __future__ import annotations

import pytest
import torch

from tcomp import quant
from tcomp.cost import leading_order, linear_cost
from tcomp.dialect import (
    fp8_linear,
    linear_int4w,
    linear_int8w,
    linear_w1,
    linear_w1a1,
    linear_w8a8,
    op_def,
    qlinear_cost,
)
from tests.dialect.costing import counted_flops, io_bytes, static_cost, symbolic_cost

# FLOPs besides the matmul, written out per format: (per weight element, per element of x, per output)
EXTRA = {
    "int8w": (1, 0, 0),  # dequantize q·s
    "int4w": (2, 0, 0),  # dequantize (q - z)·s
    "w8a8": (0, 3, 2),  # quantize x: abs-max, divide, round; rescale by sx·sw
    "w1": (1, 0, 0),  # sign·alpha
    "w1a1": (0, 4, 3),  # x - tau, sign, |d| and its sum; beta·alpha·dot + shift
    "fp8": (0, 3, 2),  # quantize x: abs-max, divide, cast; rescale by sx·sw
}


def _case(fmt: str, k: int, n: int, g: torch.Generator, granularity: str = "row"):
    """(op, weight arguments between x and bias) of a random (n, k) weight in format ``fmt``."""
    w = torch.randn(n, k, generator=g)
    if fmt in ("int8w", "w8a8"):
        return (linear_int8w if fmt == "int8w" else linear_w8a8), list(quant.quantize_int8(w))
    if fmt == "int4w":
        return linear_int4w, [*quant.quantize_int4(w, 32), 32]
    if fmt == "w1":
        return linear_w1, [*quant.binarize(w), k]
    if fmt == "w1a1":
        packed, alpha = quant.binarize(w)
        return linear_w1a1, [packed, alpha, torch.randn(k, generator=g), torch.randn(n, generator=g), k]
    q, s = quant.quantize_fp8(w, granularity)
    return fp8_linear, [q, s, granularity]


CASES = [
    ("int8w", 40),
    ("int4w", 64),
    ("w8a8", 40),
    ("w1", 20),
    ("w1a1", 20),
    ("fp8", 40),
    ("fp8-tensor", 40),
]


@pytest.mark.parametrize("fmt,k", CASES)
@pytest.mark.parametrize("has_bias", [False, True])
def test_cost_matches_counted_flops_and_packed_bytes(fmt, k, has_bias):
    g = torch.Generator().manual_seed(0)
    fmt, _, gran = fmt.partition("-")
    b, t, n = 2, 3, 24
    op, wargs = _case(fmt, k, n, g, gran or "row")
    x = torch.randn(b, t, k, generator=g)
    bias = torch.randn(n, generator=g) if has_bias else None
    tensors = [x, *(a for a in wargs if isinstance(a, torch.Tensor)), *([bias] if has_bias else [])]
    consts = [a for a in wargs if not isinstance(a, torch.Tensor)]

    def fn(x, *rest):
        ws = list(rest[: len(tensors) - 1 - has_bias])
        args = [ws.pop(0) if isinstance(a, torch.Tensor) else a for a in wargs]
        return op(x, *args, rest[-1] if has_bias else None)

    flops, nbytes = static_cost(fn, tensors)
    matmul, out = counted_flops(op_def(op), x, *wargs, bias)
    m = b * t
    assert matmul == 2 * m * k * n
    pw, px, po = EXTRA[fmt]
    assert flops == matmul + pw * k * n + px * m * k + po * m * n + (m * n if has_bias else 0)
    assert nbytes == io_bytes((*tensors,), out), (fmt, consts)


def test_packed_formats_move_fewer_bytes():
    m, k, n = 1, 4096, 4096  # a decode step: the weight dominates
    fp16 = linear_cost(m, k, n, 2, has_bias=False).evaluate()[1]
    got = {
        f: qlinear_cost(f, m, k, n, 2, scale_bytes=4, group=128 if f == "int4w" else None).evaluate()[1]
        for f in ("int8w", "int4w", "w1", "fp8")
    }
    assert got["w1"] < got["int4w"] < got["int8w"] < fp16 / 1.9
    assert got["fp8"] == got["int8w"]
    assert got["int4w"] < fp16 / 3.5 and got["w1"] < fp16 / 14


@pytest.mark.parametrize("fmt,k", CASES[:-1])
def test_symbolic_shapes(fmt, k):
    g = torch.Generator().manual_seed(1)
    op, wargs = _case(fmt, k, 16, g)
    ws = [a for a in wargs if isinstance(a, torch.Tensor)]

    def fn(x, *rest):
        it = iter(rest)
        return op(x, *[next(it) if isinstance(a, torch.Tensor) else a for a in wargs], None)

    x = torch.randn(2, 8, k)
    c = symbolic_cost(fn, (x, *ws), dims={0: 1})
    assert leading_order(c.flops) == "O(N)" and leading_order(c.bytes) == "O(N)"
    assert c.evaluate(batch=2, seq=8) == static_cost(fn, (x, *ws))
