"""canonicalize on Hugging Face architectures, in both attention implementations: exactly one
tcomp.attention per attention layer, the FP_EQUIVALENT contract held against float64, and the
optimized module right at other batch sizes and sequence lengths."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import tcomp  # noqa: E402
from tcomp.dialect import attention_nodes  # noqa: E402
from tests.hf_zoo import ARCHS, IMPLS, VOCAB, make  # noqa: E402

aten = torch.ops.aten
LEFTOVER = (aten.softmax.int, aten._softmax.default, aten.scaled_dot_product_attention.default)


def _other_size_inputs(case, batch=3, seq=7, seed=123):
    g = torch.Generator().manual_seed(seed)
    kw = dict(case.kwargs)
    if "pixel_values" in kw:
        px = kw["pixel_values"]
        kw["pixel_values"] = torch.randn((batch, *px.shape[1:]), generator=g)
        return kw
    kw["input_ids"] = torch.randint(2, VOCAB, (batch, seq), generator=g)
    if "attention_mask" in kw:
        m = torch.ones(batch, seq, dtype=kw["attention_mask"].dtype)
        if case.arch in ("gpt2", "llama"):
            m[1, :2] = 0  # left padding, as the decoders' example inputs
        else:
            m[1, -2:] = 0
        kw["attention_mask"] = m
    return kw


def _hidden(out):
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


@pytest.mark.hf
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("arch", ARCHS)
def test_one_attention_per_layer_and_equivalent(arch, impl):
    case = make(arch, impl)
    fast = tcomp.optimize(case.model, case.kwargs)
    rec = fast.report["canonicalize"]
    assert rec.status == "applied", (rec.reason, rec.notes)
    assert len(attention_nodes(fast.graph_module)) == case.n_attention_layers
    # the other rewrites are RMSNorms (Llama's LlamaRMSNorm, T5's T5LayerNorm) -> tcomp.rms_norm
    norms = sum(type(m).__name__ in ("LlamaRMSNorm", "T5LayerNorm") for m in case.model.modules())
    assert sum("rms_norm at" in n for n in rec.notes) == norms
    assert rec.rewrites == case.n_attention_layers + norms
    left = [n for n in fast.graph_module.graph.nodes if n.op == "call_function" and n.target in LEFTOVER]
    assert not left, left
    assert rec.error <= rec.tolerance
    assert len(fast.report.sites) == case.n_attention_layers
    # output structure preserved (ModelOutput) and right at another batch / sequence length
    kw = _other_size_inputs(case)
    with torch.no_grad():
        want, got = case.model(**kw), fast(**kw)
    assert type(got) is type(want)
    w, g = _hidden(want), _hidden(got)
    if "attention_mask" in kw and case.arch in ("gpt2", "llama"):
        keep = kw["attention_mask"].bool()
        w, g = w[keep], g[keep]
    err = ((g.double() - w.double()).norm() / w.double().norm()).item()
    assert err < 1e-5, err


@pytest.mark.hf
def test_user_model_untouched():
    case = make("bert", "sdpa")
    before = {k: v.clone() for k, v in case.model.state_dict().items()}
    training = case.model.training
    tcomp.optimize(case.model, case.kwargs)
    after = case.model.state_dict()
    assert training == case.model.training
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.hf
@pytest.mark.parametrize("impl", IMPLS)
def test_llama_repeat_kv_becomes_gqa(impl):
    case = make("llama", impl)
    fast = tcomp.optimize(case.model, case.kwargs)
    for n in attention_nodes(fast.graph_module):
        q, k, v = (a.meta["val"] for a in n.args[:3])
        assert q.shape[1] == 4 and k.shape[1] == 2 and v.shape[1] == 2


@pytest.mark.hf
@pytest.mark.parametrize(
    ("arch", "expected"), [("gpt2", "qkv"), ("bert", "q + k + v"), ("llama", "q + k + v")]
)
def test_projections_stay_recognisable(arch, expected):
    case = make(arch, "sdpa")
    fast = tcomp.optimize(case.model, case.kwargs, verify=False)
    assert {s["projections"] for s in fast.report.sites} == {expected}


@pytest.mark.hf
def test_decoder_cache_is_disabled_on_the_copy():
    case = make("gpt2", "sdpa", pad=False)
    kw = {"input_ids": case.kwargs["input_ids"]}  # no use_cache=False from the user
    case.model.config.use_cache = True  # as a pretrained decoder ships
    fast = tcomp.optimize(case.model, kw)
    assert case.model.config.use_cache is True  # the user's model keeps its setting
    assert len(attention_nodes(fast.graph_module)) == case.n_attention_layers
    out = fast(**kw)
    assert getattr(out, "past_key_values", None) is None
