"""Symbolic cost model: formulas, node costs on exported graphs, tables."""

from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import tcomp.ops  # noqa: F401  (registers torch.ops.tcomp.attention)
from tcomp.cost import (
    BATCH,
    SEQ,
    SOFTMAX_FLOPS,
    Cost,
    SiteCost,
    attention_cost,
    cost_table,
    graph_cost,
    input_symbols,
    linear_cost,
    node_cost,
    to_sympy,
)
from tcomp.targets import get_target

C, HEADS = 32, 4


class TinyBlock(nn.Module):
    """qkv projection, SDPA, output projection: enough for every costed node kind."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)
        self.out = nn.Linear(C, C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class TcompAttn(nn.Module):
    def forward(self, q, k, v, bias):
        return torch.ops.tcomp.attention(q, k, v, bias, None, 0.5, False)


@pytest.fixture(scope="module")
def exported():
    x = torch.randn(2, 16, C)
    ep = torch.export.export(TinyBlock(), (x,), strict=False, dynamic_shapes=({0: Dim.AUTO, 1: Dim.AUTO},))
    return ep.module()


def test_attention_flops_formula():
    B, H, N, M, D = 2, 4, 8, 8, 16
    c = attention_cost(B, H, N, M, D, D, elem_bytes=2)
    assert c.flops == 2 * B * H * N * M * D * 2 + SOFTMAX_FLOPS * B * H * N * M
    assert c.bytes == 4 * B * H * N * D * 2  # q, k, v, out once each


def test_causal_is_cheaper_and_half_the_scores():
    dense = attention_cost(2, 4, 8, 8, 16, 16, 2)
    causal = attention_cost(2, 4, 8, 8, 16, 16, 2, causal=True)
    assert causal.flops < dense.flops
    assert causal.flops == dense.flops / 2
    assert causal.bytes == dense.bytes


def test_bias_mask_and_gqa_bytes():
    base = attention_cost(1, 8, 16, 16, 64, 64, 2)
    biased = attention_cost(1, 8, 16, 16, 64, 64, 2, has_bias=True, bias_numel=16 * 16)
    assert biased.bytes - base.bytes == 16 * 16 * 2
    assert biased.flops - base.flops == 8 * 16 * 16
    masked = attention_cost(1, 8, 16, 16, 64, 64, 2, has_mask=True)
    assert masked.bytes - base.bytes == 8 * 16 * 16  # 1 byte per bool
    gqa = attention_cost(1, 8, 16, 16, 64, 64, 2, Hk=2)
    assert base.bytes - gqa.bytes == 2 * (8 - 2) * 16 * 64 * 2
    assert gqa.flops == base.flops


def test_linear_cost_formula():
    c = linear_cost(10, 32, 64, 4, has_bias=True)
    assert c.flops == 2 * 10 * 32 * 64 + 10 * 64
    assert c.bytes == (10 * 32 + 32 * 64 + 64 + 10 * 64) * 4


def test_cost_add_subs_evaluate_roofline():
    a = attention_cost(BATCH, 4, SEQ, SEQ, 16, 16, 2)
    b = linear_cost(BATCH * SEQ, 64, 64, 2, False)
    total = sum([a, b])
    assert isinstance(total, Cost)
    assert sympy.expand(total.flops - a.flops - b.flops) == 0
    assert total.subs(B=2).free_symbols == {SEQ}
    f, by = total.evaluate(batch=2, seq=8)
    fa, _ = attention_cost(2, 4, 8, 8, 16, 16, 2).evaluate()
    fb, _ = linear_cost(16, 64, 64, 2, False).evaluate()
    assert f == fa + fb and by > 0
    with pytest.raises(ValueError, match="N"):
        total.evaluate(batch=2)
    t = a.roofline_time("h200", torch.bfloat16)
    sec = float(t.subs({BATCH: 1, SEQ: 4096}))
    fl, byt = a.evaluate(batch=1, seq=4096)
    assert sec == pytest.approx(max(fl / 780e12, byt / 4.2e12))


def test_exported_graph_costs_are_symbolic(exported):
    gm = exported
    syms = input_symbols(gm)
    assert set(syms.values()) == {BATCH, SEQ}
    sites = graph_cost(gm, syms)
    assert [s.kind for s in sites] == ["linear", "attention", "linear"]
    qkv, attn, out = sites
    assert qkv.dtype == torch.float32

    # linear: linear in rows = B*N (degree 1 in each, and in the product)
    for expr in (qkv.cost.flops, qkv.cost.bytes):
        assert sympy.degree(expr, BATCH) == 1 and sympy.degree(expr, SEQ) == 1
    rows = sympy.Symbol("R")
    assert sympy.degree(qkv.cost.flops.subs(BATCH, rows / SEQ), SEQ) == 0
    assert sympy.expand(qkv.cost.flops - linear_cost(BATCH * SEQ, C, 3 * C, 4, True).flops) == 0

    # attention: quadratic in N, linear in B
    assert sympy.degree(attn.cost.flops, SEQ) == 2
    assert sympy.degree(attn.cost.flops, BATCH) == 1
    assert sympy.degree(attn.cost.bytes, SEQ) == 1  # fused: no N x N matrix in memory

    for b, n in ((1, 128), (3, 77)):
        assert (
            attn.cost.evaluate(batch=b, seq=n)
            == attention_cost(b, HEADS, n, n, C // HEADS, C // HEADS, 4, causal=True).evaluate()
        )
        assert out.cost.evaluate(batch=b, seq=n) == linear_cost(b * n, C, C, 4, False).evaluate()


def test_node_cost_without_mapping_keeps_shape_symbols(exported):
    attn = next(
        n for n in exported.graph.nodes if n.target is torch.ops.aten.scaled_dot_product_attention.default
    )
    c = node_cost(attn)
    names = {s.name for s in c.free_symbols}
    assert len(names) == 2 and all(n.startswith("s") for n in names)
    # mapping by name works too (shape symbols carry integer/positive assumptions)
    by_name = node_cost(attn, {n: 7 for n in names})
    assert by_name.free_symbols == set()
    # reading the graph never specialized the shape env
    x = next(n for n in exported.graph.nodes if n.op == "placeholder")
    assert not to_sympy(x.meta["val"].shape[0]).is_number


def test_node_cost_none_for_other_nodes(exported):
    assert all(
        node_cost(n) is None
        for n in exported.graph.nodes
        if n.op != "call_function" or "linear" not in str(n.target) and "attention" not in str(n.target)
    )


def test_tcomp_attention_node_with_bias_and_gqa():
    q, k, v = torch.randn(2, 4, 8, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 32)
    bias = torch.randn(4, 8, 8)
    gm = torch.export.export(TcompAttn(), (q, k, v, bias), strict=False).module()
    (site,) = graph_cost(gm)
    assert site.kind == "attention"
    want = attention_cost(2, 4, 8, 8, 16, 32, 4, has_bias=True, bias_numel=4 * 8 * 8, Hk=2)
    assert site.cost.evaluate() == want.evaluate()


def test_matmul_and_floordiv_reshape():
    class Win(nn.Module):
        def forward(self, x):
            b, n, c = x.shape
            y = x.reshape(b, n // 4, 4, c)
            return torch.matmul(y, y.transpose(-1, -2))

    x = torch.randn(2, 16, 8)
    gm = torch.export.export(Win(), (x,), strict=False, dynamic_shapes=({0: Dim.AUTO, 1: Dim.AUTO},)).module()
    (site,) = graph_cost(gm, input_symbols(gm))
    assert site.kind == "matmul"
    # s//(s//4) is rewritten to exactly 4: the cost is a polynomial, linear in N
    assert sympy.degree(site.cost.flops, SEQ) == 1
    f, b = site.cost.evaluate(batch=2, seq=16)
    assert f == 2 * (2 * 4 * 4 * 4) * 8
    assert b == (2 * 16 * 8 * 2 + 2 * 4 * 4 * 4) * 4


def test_cost_table(exported):
    sites = graph_cost(exported, input_symbols(exported))
    rows = cost_table(sites, "a100", seqs=(128, 512), batch=2)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"attention", "linear", "all"}
    by = {(r["kind"], r["seq"]): r for r in rows}
    for n in (128, 512):
        assert by[("all", n)]["gflops"] == pytest.approx(
            by[("attention", n)]["gflops"] + by[("linear", n)]["gflops"]
        )
        assert by[("all", n)]["roofline_us"] > 0
    f, _ = SiteCost.total(sites, "attention").evaluate(batch=2, seq=512)
    assert by[("attention", 512)]["gflops"] == pytest.approx(f / 1e9)
    # attention grows ~quadratically, linear layers ~linearly
    assert by[("attention", 512)]["gflops"] / by[("attention", 128)]["gflops"] > 10
    assert by[("linear", 512)]["gflops"] / by[("linear", 128)]["gflops"] == pytest.approx(4)
    with pytest.raises(ValueError, match="input_symbols"):
        cost_table(graph_cost(exported), get_target("cpu"))
