"""passes/rpe_coeffs.py through attention.rpe_fft: the rewritten graph computes the 2n-1 coefficients
from the bias family in O(n) (no node with an n x n output is left), still matches the float64
quadratic kernelized-RPE forward, and runs at other sequence lengths; a Toeplitz bias with no O(n)
form keeps the n x n read with a note."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import tcomp.passes  # noqa: F401 - registers the passes
from tcomp.capture import capture
from tcomp.dialect import attention_nodes, is_rpe_linear_attention
from tcomp.pipeline import run_pipeline
from tests.passes.test_rpe_fft_pass import PIPE, AlibiEncoder, _gpt, kernel_rpe_forward


def quadratic_nodes(gm: torch.fx.GraphModule, seq) -> list[str]:
    """Nodes whose output has two dims equal to the sequence length (n x n, B x H x n x n, ...)."""
    out = []
    for n in gm.graph.nodes:
        v = n.meta.get("val")
        if isinstance(v, torch.Tensor) and sum(str(d) == str(seq) for d in v.shape) >= 2:
            out.append(f"{n.name} {tuple(v.shape)}")
    return out


def _seq(gm: torch.fx.GraphModule, name: str = "input_ids"):
    """The (symbolic) sequence length: dim 1 of the model input ``name``."""
    return next(n for n in gm.graph.nodes if n.name == name).meta["val"].shape[1]


@pytest.mark.parametrize("position", ["t5", "alibi"])
def test_gpt_coefficients_are_computed_in_linear_memory(position):
    model = _gpt(position)
    gm = capture(model, (torch.randint(0, 256, (2, 9)),)).gm
    seq = _seq(gm)
    assert quadratic_nodes(gm, seq)  # the captured model does build the (1, H, n, n) bias
    res = run_pipeline(gm, PIPE)
    rec = res.records[-1]
    assert rec.rewrites == 2 and all(s["rpe_coefficients"] == "from the bias family, O(n)" for s in rec.sites)
    assert quadratic_nodes(res.gm, seq) == []
    ops = [n for n in res.gm.graph.nodes if is_rpe_linear_attention(n)]
    assert [tuple(map(str, n.args[3].meta["val"].shape)) for n in ops] == [("4", f"2*{seq} - 1")] * 2
    ref = _gpt(position)
    for b, n in [(1, 24), (2, 5)]:  # lengths other than the example one
        ids = torch.randint(0, 256, (b, n), generator=torch.Generator().manual_seed(n))
        want = kernel_rpe_forward(ref, ids)
        assert (res.gm(ids).double() - want).norm() <= 1e-4 * want.norm()


def test_symmetric_alibi_with_padding_mask_in_linear_memory():
    torch.manual_seed(1)
    model = AlibiEncoder().eval()
    x, pad = torch.randn(2, 7, 16), torch.ones(2, 7, dtype=torch.bool)
    gm = capture(model, (x, pad)).gm
    seq = _seq(gm, "x")
    res = run_pipeline(gm, PIPE)
    assert res.records[-1].rewrites == 1 and quadratic_nodes(res.gm, seq) == []


class OffsetTable(torch.nn.Module):
    """Self-attention with a learned 1-D per-offset bias table, gathered as ``table[j - i + L - 1]``;
    ``toeplitz_param=True`` instead adds a learned (H, n, n) Toeplitz parameter of a fixed n."""

    def __init__(self, dim=16, heads=2, max_len=32, toeplitz_param=False, n=6):
        super().__init__()
        self.heads, self.max_len = heads, max_len
        self.qkv, self.o = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.table = torch.nn.Parameter(torch.randn(2 * max_len - 1, heads) * 0.7)
        if toeplitz_param:
            pos = torch.arange(n)
            self.full = torch.nn.Parameter(
                self.table.data[pos[None, :] - pos[:, None] + max_len - 1].permute(2, 0, 1)
            )
        else:
            self.full = None

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if self.full is not None:
            bias = self.full
        else:
            pos = torch.arange(n, device=x.device)
            bias = self.table[pos[None, :] - pos[:, None] + self.max_len - 1].permute(2, 0, 1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.o(y.transpose(1, 2).reshape(b, n, d))

    def reference(self, x):
        """float64 quadratic kernelized attention with weights exp(table[j - i]) (elu + 1 features)."""
        m = self.double()
        b, n, d = x.shape
        q, k, v = m.qkv(x.double()).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        pos = torch.arange(n)
        c = torch.exp(m.table[pos[None, :] - pos[:, None] + self.max_len - 1].permute(2, 0, 1))
        w = ((F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)) * c
        return m.o(((w / w.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(b, n, d))


def test_learned_offset_table_gather_in_linear_memory():
    torch.manual_seed(2)
    model = OffsetTable().eval()
    x = torch.randn(2, 6, 16)
    gm = capture(model, (x,)).gm
    seq = _seq(gm, "x")
    res = run_pipeline(gm, PIPE)
    rec = res.records[-1]
    assert rec.rewrites == 1 and rec.sites[0]["rpe_coefficients"] == "from the bias family, O(n)"
    assert quadratic_nodes(res.gm, seq) == []
    for n in (6, 11):
        xn = torch.randn(2, n, 16, generator=torch.Generator().manual_seed(n))
        want = model.reference(xn)
        assert (res.gm(xn).double() - want).norm() <= 1e-5 * want.norm()


def test_toeplitz_parameter_keeps_the_quadratic_read_and_says_so():
    torch.manual_seed(3)
    model = OffsetTable(toeplitz_param=True, n=6).eval()
    x = torch.randn(2, 6, 16)
    res = run_pipeline(capture(model, (x,)).gm, PIPE)
    rec = res.records[-1]
    assert rec.rewrites == 1 and not attention_nodes(res.gm)
    assert rec.sites[0]["rpe_coefficients"].startswith("read off the n x n tensor")
    assert any("read off the n x n" in note for note in rec.notes)
    want = model.reference(x)
    assert (res.gm(x).double() - want).norm() <= 1e-5 * want.norm()


def test_only_unobservable_inplace_ops_are_dropped():
    from tcomp.passes.rpe_coeffs import drop_unobserved_inplace

    aten = torch.ops.aten
    g = torch.fx.Graph()
    x = g.placeholder("x")
    fresh = g.call_function(aten.mul.Tensor, (x, 2.0))
    g.call_function(aten.add_.Tensor, (fresh, 1.0))  # mutates a temporary nobody reads: dead
    view = g.call_function(aten.view.default, (x, [-1]))
    g.call_function(aten.mul_.Tensor, (view, 3.0))  # mutates the input through a view: kept
    g.output(x)
    gm = torch.fx.GraphModule(torch.nn.Module(), g)
    assert drop_unobserved_inplace(gm.graph) == 1
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [
        aten.view.default,
        aten.mul_.Tensor,
    ]
    gm.recompile()
    t = torch.ones(2, 2)
    gm(t)
    assert torch.equal(t, torch.full((2, 2), 3.0))
