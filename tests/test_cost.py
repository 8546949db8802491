"""Symbolic cost model: formulas, node costs on exported graphs, tables."""

from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import tcomp.dialect  # noqa: F401  (registers torch.ops.tcomp.attention)
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


# -- kernelized attention with RPE by FFT ----------------------------------------------------------


def test_rpe_attention_cost_is_n_log_n_in_the_sequence():
    from tcomp.cost import leading_order, rpe_attention_cost

    c = rpe_attention_cost(BATCH, 8, SEQ, 64, 64, 2)
    # leading term: the rfft/irfft of F*(Dv+1) channels of length 2N, 2 * 2.5 * 2N log2(2N) each
    lead = sympy.limit(c.flops / (SEQ * sympy.log(SEQ)), SEQ, sympy.oo)
    assert sympy.simplify(lead - BATCH * 8 * 64 * 65 * 10 / sympy.log(2) - 8 * 5 / sympy.log(2)) == 0
    assert sympy.limit(c.flops / SEQ**2, SEQ, sympy.oo) == 0
    assert leading_order(c.flops) == "O(N log N)" and leading_order(c.bytes) == "O(N)"
    soft = attention_cost(BATCH, 8, SEQ, SEQ, 64, 64, 2, has_bias=True)
    assert leading_order(soft.flops) == "O(N^2)" and leading_order(SEQ**3 + SEQ) == "O(N^3)"
    ratio = {n: soft.evaluate(batch=1, seq=n)[0] / c.evaluate(batch=1, seq=n)[0] for n in (16384, 65536)}
    assert 4 < ratio[16384] < 10 and ratio[65536] > 3.5 * ratio[16384]  # the gap grows ~ N / log N


def test_rpe_site_goes_from_quadratic_to_n_log_n():
    import tcomp.passes  # noqa: F401 - registers the passes
    from tcomp.capture import capture
    from tcomp.cost import all_input_symbols, site_orders
    from tcomp.models.gpt import GPT, GPTConfig
    from tcomp.pipeline import run_pipeline

    torch.manual_seed(0)
    gm = capture(
        GPT(GPTConfig(position="alibi", depth=2, heads=4, dim=32)).eval(), (torch.randint(0, 256, (2, 9)),)
    ).gm
    before = site_orders(run_pipeline(gm, ["canonicalize"]).gm)
    res = run_pipeline(gm, ["canonicalize", "attention.linear", "attention.rpe_fft"])
    after = site_orders(res.gm)
    assert before == {i: {"kind": "attention", "flops": "O(N^2)"} for i in (0, 1)}
    assert after == {i: {"kind": "rpe_attention", "flops": "O(N log N)"} for i in (0, 1)}
    sites = [s for s in graph_cost(res.gm, all_input_symbols(res.gm)) if s.kind == "rpe_attention"]
    assert len(sites) == 2 and sites[0].cost.free_symbols == {BATCH, SEQ}
