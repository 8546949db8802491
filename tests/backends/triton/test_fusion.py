"""Fusion of elementwise chains (optionally ending in LayerNorm) into generated Triton kernels:
groups are found, run_fused nodes replace them, and the result stays FP_EQUIVALENT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp.backends.triton.fusion import run_fused  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPS = ["add_bias", "mul_scalar", "gelu", "relu", "silu", "sigmoid", "residual", "sub_row", "div_scalar"]


class Chain(torch.nn.Module):
    def __init__(self, ops: list[str], layer_norm: bool, c: int):
        super().__init__()
        self.ops, self.ln_on = ops, layer_norm
        self.w = torch.nn.Parameter(torch.randn(c, c) / c**0.5)  # a matmul, not a linear: a linear's
        # epilogue would go to the fused GEMM (tests/backends/triton/test_gemm.py), not to these groups
        self.bias = torch.nn.Parameter(torch.randn(c))
        self.ln = torch.nn.LayerNorm(c)

    def forward(self, x):
        h = x @ self.w
        for op in self.ops:
            h = {
                "add_bias": lambda t: t + self.bias,
                "mul_scalar": lambda t: t * 1.7,
                "gelu": F.gelu,
                "relu": F.relu,
                "silu": F.silu,
                "sigmoid": torch.sigmoid,
                "residual": lambda t: t + x,
                "sub_row": lambda t: t - self.bias,
                "div_scalar": lambda t: t / 3.0,
            }[op](h)
        return self.ln(h) if self.ln_on else h


def _fused_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is run_fused]


@given(
    ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=5), layer_norm=st.booleans(),
    c=st.sampled_from([8, 24, 64]), n=st.integers(2, 9), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_random_chains_fuse_and_stay_equivalent(ops, layer_norm, c, n, seed):
    if len(ops) + layer_norm < 2:
        ops = ops + ["gelu"]
    torch.manual_seed(seed)
    model = Chain(ops, layer_norm, c).eval().to(DEVICE)
    x = torch.randn(2, n, c, device=DEVICE)
    fast = tcomp.optimize(model, (x,), target="h200")
    rec = fast.report["fuse.triton.elementwise"]
    assert rec.status == "applied", (rec.reason, rec.notes)
    assert len(_fused_nodes(fast.graph_module)) == 1
    assert rec.error <= rec.tolerance
    y = torch.randn(3, n + 2, c, device=DEVICE)
    with torch.no_grad():
        assert torch.allclose(fast(y), model(y), rtol=1e-4, atol=1e-4)


def test_residual_layer_norm_group_structure():
    torch.manual_seed(0)
    model = Chain(["add_bias", "gelu", "residual"], True, 32).eval().to(DEVICE)
    fast = tcomp.optimize(model, (torch.randn(2, 5, 32, device=DEVICE),), target="h200")
    (node,) = _fused_nodes(fast.graph_module)
    desc = node.args[0]
    assert '"ln"' in desc and "gelu" in desc and "add.Tensor" in desc
    ops = {str(n.target) for n in fast.graph_module.graph.nodes if n.op == "call_function"}
    assert "aten.layer_norm.default" not in ops and "aten.gelu.default" not in ops
    assert "aten.matmul.default" in ops  # matmuls are not part of elementwise fusion


def test_unsupported_broadcast_stays_eager():
    class Bcast(torch.nn.Module):
        def forward(self, x, y):
            return F.gelu(x + y) * 2.0  # y broadcasts over the batch dim: not a row vector

    x, y = torch.randn(2, 4, 8, device=DEVICE), torch.randn(1, 4, 8, device=DEVICE)
    fast = tcomp.optimize(Bcast(), (x, y), target="h200")
    assert not _fused_nodes(fast.graph_module)
    assert any("stays eager" in n for n in fast.report["fuse.triton.elementwise"].notes)
    assert torch.allclose(fast(x, y), Bcast()(x, y))


class PreLN(torch.nn.Module):
    """``h = x + a; y = ln(h)`` with ``h`` used again after the LayerNorm (pre-LN residual stream)."""

    def __init__(self, c: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(c, c) / c**0.5)
        self.ln = torch.nn.LayerNorm(c)

    def forward(self, x, a):
        h = x + a
        y = self.ln(h)
        return h + y @ self.w


@given(c=st.sampled_from([8, 48, 96]), n=st.integers(2, 9), seed=st.integers(0, 2**16))
def test_residual_used_after_layer_norm_is_a_second_output(c, n, seed):
    torch.manual_seed(seed)
    model = PreLN(c).eval().to(DEVICE)
    x, a = torch.randn(2, n, c, device=DEVICE), torch.randn(2, n, c, device=DEVICE)
    fast = tcomp.optimize(model, (x, a), target="h200")
    rec = fast.report["fuse.triton.elementwise"]
    assert rec.status == "applied" and rec.error <= rec.tolerance, (rec.reason, rec.notes)
    (node,) = _fused_nodes(fast.graph_module)
    assert '"extra"' in node.args[0] and len(node.users) == 2  # two getitems: LN output and the sum
    ops = {str(n.target) for n in fast.graph_module.graph.nodes if n.op == "call_function"}
    assert "aten.layer_norm.default" not in ops
    y, b = torch.randn(3, n + 1, c, device=DEVICE), torch.randn(3, n + 1, c, device=DEVICE)
    with torch.no_grad():
        assert torch.allclose(fast(y, b), model(y, b), rtol=1e-4, atol=1e-4)


def test_user_between_sum_and_layer_norm_keeps_the_sum_out_of_the_group():
    class Between(PreLN):
        def forward(self, x, a):
            h = x + a
            z = h @ self.w  # uses h before the LayerNorm: the sum cannot be an output stored after it
            return self.ln(h) + z

    model = Between(16).eval().to(DEVICE)
    x, a = torch.randn(2, 5, 16, device=DEVICE), torch.randn(2, 5, 16, device=DEVICE)
    fast = tcomp.optimize(model, (x, a), target="h200")
    assert all('"extra"' not in n.args[0] for n in _fused_nodes(fast.graph_module))
    with torch.no_grad():
        assert torch.allclose(fast(x, a), model(x, a), rtol=1e-4, atol=1e-4)


class PreRMS(torch.nn.Module):
    """A pre-norm decoder block's residual stream: ``h = x + o_proj(a); y = rms(h); h + down(y)``."""

    def __init__(self, c: int, weighted: bool):
        super().__init__()
        self.o = torch.nn.Linear(c, c, bias=False)
        self.down = torch.nn.Linear(c, c, bias=False)
        self.norm = torch.nn.RMSNorm(c, eps=1e-6, elementwise_affine=weighted)
        if weighted:
            torch.nn.init.normal_(self.norm.weight, 1.0, 0.2)

    def forward(self, x, a):
        h = x + self.o(a)
        return h + self.down(self.norm(h))


@given(
    c=st.sampled_from([8, 48, 96]), rows=st.sampled_from([1, 3, 16]), weighted=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_residual_add_and_rms_norm_are_one_kernel_at_decode_rows(c, rows, weighted, dtype, seed):
    """At a decode step's few rows the residual add stays out of the GEMM and joins the RMSNorm
    after it: one kernel stores the sum and the normalised row, FP_EQUIVALENT to float64."""
    torch.manual_seed(seed)
    model = PreRMS(c, weighted).eval().to(DEVICE, dtype)
    x, a = (torch.randn(rows, 1, c, device=DEVICE, dtype=dtype) for _ in range(2))
    fast = tcomp.optimize(model, (x, a), target="h200", dynamic=False)  # static rows, as a decode graph's
    rec = fast.report["fuse.triton.elementwise"]
    assert rec.status == "applied" and rec.error <= rec.tolerance, (rec.reason, rec.notes)
    groups = [n for n in _fused_nodes(fast.graph_module) if '["rms"' in n.args[0]]
    assert len(groups) == 1 and '"extra"' in groups[0].args[0]  # the sum is the second output
    ops = {str(n.target) for n in fast.graph_module.graph.nodes if n.op == "call_function"}
    assert not any("rms_norm" in o and "fused" not in o for o in ops), ops
    ref = model.double()(x.double(), a.double())
    with torch.no_grad():
        out = fast(x, a)
    assert not out.isnan().any()
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < (1e-5 if dtype == torch.float32 else 5e-3), err
