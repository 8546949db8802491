"""canonicalize: every attention spelling becomes exactly one tcomp.attention per site, and the
rewritten graph stays within the FP_EQUIVALENT contract of the float64 reference."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

import tcomp
from tcomp.capture import capture
from tcomp.dialect import attention_nodes
from tcomp.pipeline import run_pipeline
from tcomp.verify import Reference
from tests.attention_zoo import MASKS, SPELLINGS, AttnSpec, build, inputs

aten = torch.ops.aten


def _canonicalize(model, args):
    cap = capture(model, args)
    ref = Reference.build(model, args, {}, samples=2)
    res = run_pipeline(cap.gm, ["canonicalize"], reference=ref)
    return cap, res, ref


def _leftover_attention_ops(gm):
    return [
        n
        for n in gm.graph.nodes
        if n.op == "call_function"
        and n.target in (aten.softmax.int, aten._softmax.default, aten.scaled_dot_product_attention.default)
    ]


@st.composite
def specs(draw):
    spelling = draw(st.sampled_from(SPELLINGS))
    heads = draw(st.sampled_from([1, 2, 3, 4]))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, heads) if heads % h == 0]))
    return AttnSpec(
        spelling=spelling,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=draw(st.sampled_from([4, 8, 16])),
        mask=draw(st.sampled_from(MASKS)),
        bias=draw(st.booleans()),
        causal=draw(st.booleans()),
    )


@given(
    spec=specs(),
    seq=st.sampled_from([1, 2, 3, 5, 8, 13]),
    batch=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**16),
)
def test_every_spelling_becomes_one_attention_per_layer(spec, seq, batch, seed):
    model = build(spec, layers=2, seed=seed)
    args = inputs(spec, batch, seq, padded=spec.mask is not None, seed=seed)
    cap, res, ref = _canonicalize(model, args)
    rec = res.records[0]
    assert rec.status == "applied", rec
    assert rec.rewrites == 2
    assert len(attention_nodes(res.gm)) == 2
    assert not _leftover_attention_ops(res.gm)
    assert rec.error <= ref.fp_tolerance(), (rec.error, ref.base_error)
    # the optimized graph also runs on a fresh draw and agrees with the model
    fresh = inputs(spec, batch, seq, padded=spec.mask is not None, seed=seed + 1)
    with torch.no_grad():
        want, got = model(*fresh), res.gm(*fresh)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_structure_sdpa_with_mask_before_after():
    spec = AttnSpec(spelling="sdpa", mask="bool")
    model = build(spec, layers=1)
    args = inputs(spec, 2, 6, padded=True)
    cap, res, _ = _canonicalize(model, args)
    before = [n.target for n in cap.gm.graph.nodes if n.op == "call_function"]
    assert before.count(aten.scaled_dot_product_attention.default) == 1
    (attn,) = attention_nodes(res.gm)
    q, k, v, bias, mask, scale, causal = attn.args
    assert bias is None and mask is not None and causal is False
    assert abs(scale - 8**-0.5) < 1e-12
    assert res.records[0].sites[0]["spelling"] == "sdpa"
    assert res.records[0].sites[0]["module"] == "blocks.0"


def test_structure_decomposed_chain_collapses():
    spec = AttnSpec(spelling="matmul_div", mask="masked_fill_min", bias=True)
    model = build(spec, layers=1)
    cap, res, _ = _canonicalize(model, inputs(spec, 2, 7, padded=True))
    ops_after = {n.target for n in res.gm.graph.nodes if n.op == "call_function"}
    assert aten.softmax.int not in ops_after and aten.masked_fill.Scalar not in ops_after
    assert aten.matmul.default not in ops_after  # both matmuls of the chain are gone
    (attn,) = attention_nodes(res.gm)
    assert attn.args[3] is not None and attn.args[4] is not None  # bias and mask kept apart


def test_causal_sdpa_keeps_the_flag():
    spec = AttnSpec(spelling="sdpa", causal=True)
    model = build(spec, layers=1)
    _, res, _ = _canonicalize(model, inputs(spec, 2, 5, padded=False))
    (attn,) = attention_nodes(res.gm)
    assert attn.args[6] is True and attn.args[4] is None


def test_gqa_sdpa_keeps_fewer_kv_heads():
    spec = AttnSpec(spelling="sdpa", heads=4, kv_heads=2)
    model = build(spec, layers=1)
    _, res, _ = _canonicalize(model, inputs(spec, 2, 5, padded=False))
    (attn,) = attention_nodes(res.gm)
    assert attn.args[0].meta["val"].shape[1] == 4 and attn.args[1].meta["val"].shape[1] == 2


def test_probabilities_used_elsewhere_are_left_alone():
    class Probe(torch.nn.Module):
        def forward(self, q, k, v):
            p = (q @ k.transpose(-1, -2)).softmax(-1)
            return p @ v, p

    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    cap = capture(Probe(), (q, k, v))
    res = run_pipeline(cap.gm, ["canonicalize"])
    assert res.records[0].status == "skipped"
    assert "outside the attention" in res.records[0].notes[0]


def test_transformer_encoder_and_mha():
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).eval()
    x = torch.randn(2, 7, 32)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    fast = tcomp.optimize(enc, (x,), example_kwargs={"src_key_padding_mask": pad})
    assert len(attention_nodes(fast.graph_module)) == 3
    assert fast.report["canonicalize"].status == "applied"
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()  # need_weights=True path (bmm)

    class W(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = mha

        def forward(self, x):
            return self.m(x, x, x)[0]

    fast = tcomp.optimize(W(), (x,))
    assert len(attention_nodes(fast.graph_module)) == 1
    assert fast.report["canonicalize"].status == "applied"


def test_repeated_kv_heads_become_gqa():
    spec = AttnSpec(spelling="matmul_mul", heads=4, kv_heads=2)  # repeat_interleave spelling
    model = build(spec, layers=1)
    _, res, ref = _canonicalize(model, inputs(spec, 2, 5, padded=False))
    (attn,) = attention_nodes(res.gm)
    assert attn.args[1].meta["val"].shape[1] == 2 and attn.args[2].meta["val"].shape[1] == 2
    assert not [n for n in res.gm.graph.nodes if n.target is aten.repeat_interleave.self_int]
    assert res.records[0].error <= ref.fp_tolerance()
