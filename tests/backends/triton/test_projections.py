"""Few-row linears that share their input (q/k/v, gate/up of a decode step) joined into one linear
over concatenated weights: found, sliced back, the strided slices read in place by the fused
elementwise kernel, and FP_EQUIVALENT to float64; many-row (or dynamic) linears stay apart."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp.backends.triton import gemm  # noqa: E402
from tcomp.backends.triton.fusion import run_fused  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
aten = torch.ops.aten


class Block(torch.nn.Module):
    """q/k/v (GQA-shaped) and a gated MLP reading the same normalised input."""

    def __init__(self, c: int, bias: bool):
        super().__init__()
        self.q = torch.nn.Linear(c, c, bias=bias)
        self.k = torch.nn.Linear(c, c // 4, bias=bias)
        self.v = torch.nn.Linear(c, c // 4, bias=bias)
        self.gate = torch.nn.Linear(c, 2 * c, bias=bias)
        self.up = torch.nn.Linear(c, 2 * c, bias=bias)
        self.down = torch.nn.Linear(2 * c, c, bias=bias)

    def forward(self, x):
        b, n, c = x.shape
        q = self.q(x).view(b, n, 4, c // 4)
        k, v = self.k(x).view(b, n, 1, c // 4), self.v(x)
        att = (q * k).sum(-1, keepdim=True) * v.view(b, n, 1, c // 4)
        return self.down(F.silu(self.gate(x)) * self.up(x)) + att.reshape(b, n, c)


def _linears(gm):
    """Linear launches: aten's, or the GEMM launcher (a decode step's linears choose cuBLAS or a tile there)."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (aten.linear.default, gemm.linear)]


@settings(max_examples=6, deadline=None)
@given(
    rows=st.sampled_from([1, 3, 16]), bias=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float16]),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_decode_rows_join_projections(rows, bias, dtype, seed):
    torch.manual_seed(seed)
    model = Block(32, bias).eval().to(DEVICE, dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(rows, 1, 32, device=DEVICE, dtype=dtype)
    fast = tcomp.optimize(model, (x,), target="h200", dynamic=False)
    rec = fast.report["fuse.triton.projections"]
    assert rec.status == "applied" and rec.rewrites == 4, (rec.reason, rec.notes)  # q,k,v,gate,up -> 1
    assert rec.error <= rec.tolerance
    assert len(_linears(fast.graph_module)) == 2  # the joined one and down
    assert all(n.target is gemm.linear for n in _linears(fast.graph_module))  # cuBLAS or a skinny tile, by timing
    assert any("MiB of new memory" in n for n in rec.notes)  # the cost is said
    names = {n for n, _ in fast.graph_module.named_buffers()} | {n for n, _ in fast.graph_module.named_parameters()}
    assert not any(n.endswith(("q.weight", "gate.weight")) for n in names)  # the separate weights went
    if rows > 1:  # the gate/up halves are strided row views: read in place, not copied
        (ew,) = [n for n in fast.graph_module.graph.nodes if n.target is run_fused and "silu" in n.args[0]]
        assert '"rows"' in ew.args[0]
    x2 = torch.randn_like(x)
    with torch.no_grad():
        got = fast(x2)
    ref = model.double()(x2.double())
    assert not got.isnan().any()
    err = ((got.double() - ref).norm() / ref.norm()).item()
    assert err < (1e-5 if dtype == torch.float32 else 5e-3), err
    assert all(torch.equal(before[k].double(), v) for k, v in model.state_dict().items())  # not mutated


def test_prefill_rows_stay_apart():
    model = Block(32, False).eval().to(DEVICE)
    fast = tcomp.optimize(model, (torch.randn(2, 24, 32, device=DEVICE),), target="h200", dynamic=False)
    assert fast.report["fuse.triton.projections"].rewrites == 0
    assert len(_linears(fast.graph_module)) == 6
