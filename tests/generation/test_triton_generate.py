"""Generation through the Triton backend (the interpreter on CPU): the decode step's fusions --
joined q/k/v and gate/up projections, the rotary kernel (partial rotary too), add+RMSNorm and SiLU*up
groups, the split-KV decode kernel -- keep greedy decoding equal to Hugging Face eager's, with logits
close at every step."""

from __future__ import annotations

import os

import pytest
import torch

import tcomp
from tcomp.verify import rel_error

from .decoders import VOCAB, make

pytest.importorskip("triton")
from tcomp.backends.triton import TRITON  # noqa: E402
from tcomp.backends.triton.rotary import rotary, rotary_to_cache  # noqa: E402

pytestmark = [
    pytest.mark.hf,
    pytest.mark.skipif(
        not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1", reason="no GPU, no interpreter"
    ),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NEW = 6


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gemma3", "gpt_neox", "stablelm"])
def test_triton_decode_step_generates_as_hf_eager(family):
    model = make(family).to(DEVICE)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (2, 7), generator=gen).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[-1, :2] = 0  # a left-padded row
    fast = tcomp.optimize(model, {"input_ids": ids}, target="h100", max_len=16, max_batch=2)
    dec = fast.tcomp_decoder
    steps = {p.name: p for p in dec.decode_report.passes}
    # Phi-3 and GPT-NeoX write q/k/v (and gate/up) as one projection each already: nothing left to join
    joins = () if family in ("phi3", "gpt_neox") else ("fuse.triton.projections",)
    for name in (*joins, "fuse.triton.rotary", "fuse.triton.elementwise"):
        assert steps[name].status == "applied" and steps[name].error <= steps[name].tolerance, (name, steps[name])
    # every layer's rotated keys and its values go to the cache in the launch that rotates the queries:
    # no index_copy_ and no other rotary launch left
    calls = [n.target for n in dec.decode_module.graph.nodes if n.op == "call_function"]
    assert calls.count(rotary_to_cache) == dec.n_layers, family
    assert torch.ops.aten.index_copy_.default not in calls and rotary not in calls, family
    kw = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_logits=True,
              return_dict_in_generate=True, attention_mask=mask)  # fmt: skip
    ref = model.generate(ids, **kw)
    out = fast.generate(ids, **kw)
    assert torch.equal(out.sequences, ref.sequences), family
    for step, (a, b) in enumerate(zip(out.logits, ref.logits)):
        assert not a.isnan().any() and rel_error(a, b) < 1e-4, (family, step, rel_error(a, b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_prefill_and_decode_replay_as_cuda_graphs_gpu():
    """On a GPU target both graphs replay as CUDA graphs; prompts of 9 and 13 tokens share the
    16-token prefill bucket; tokens equal those of the same decoder run without graphs."""
    model = make("llama").cuda()
    gen = torch.Generator().manual_seed(5)
    fast = tcomp.optimize(model, {"input_ids": torch.randint(1, VOCAB, (2, 9), generator=gen).cuda()},
                          target="h100", max_len=40, max_batch=2)  # fmt: skip
    plain = tcomp.optimize(model, {"input_ids": torch.randint(1, VOCAB, (2, 9), generator=gen).cuda()},
                           target="h100", max_len=40, max_batch=2, cudagraphs=False)  # fmt: skip
    for n in (9, 13, 9, 13):
        ids = torch.randint(1, VOCAB, (2, n), generator=gen).cuda()
        assert torch.equal(tcomp.generate(fast, ids, max_new_tokens=6), tcomp.generate(plain, ids, max_new_tokens=6))
    dec = fast.tcomp_decoder
    assert dec.cudagraphs == "on" and len(dec._prefill_runner.graphs) == 1, dec.cudagraphs


def test_int8_cache_through_triton_reads_codes_in_the_decode_kernel():
    """With kv_cache="int8" the decode step's cache-form attention runs on the split-KV kernel over
    the codes and scales (the prefill dequantizes for the flash kernel); tokens equal the eager int8
    decoder's."""
    model = make("llama").to(DEVICE)
    ids = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    fast = tcomp.optimize(model, {"input_ids": ids}, target="h100", max_len=16, max_batch=2, kv_cache="int8")
    eager = tcomp.optimize(model, {"input_ids": ids}, target="h100", backend="eager", max_len=16, max_batch=2,
                           kv_cache="int8", verify=False)  # fmt: skip
    dec = fast.tcomp_decoder
    low = {p.name: p for p in dec.decode_report.passes}["lower.triton"]
    assert low.status == "applied" and not any("stays eager" in note and "cached_attention" in note for note in low.notes)
    sources = TRITON.kernel_sources(dec.decode_module)
    assert any(name.startswith("tcomp_decode_attn_") and "q" in name.split("_")[-1] for name in sources), sorted(sources)
    assert torch.equal(tcomp.generate(fast, ids, max_new_tokens=NEW), tcomp.generate(eager, ids, max_new_tokens=NEW))


def test_a_batch_bucket_lowers_like_the_main_decode_graph():
    """batch_buckets through Triton: the bucket's decode graph runs the same backend steps (joined
    projections, RoPE + cache writes, fused groups) and a one-row batch generates HF eager's tokens
    through it."""
    model = make("qwen2").to(DEVICE)
    ids = torch.randint(1, VOCAB, (3, 7), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    fast = tcomp.optimize(model, {"input_ids": ids}, target="h100", max_len=16, batch_buckets=[1])
    dec = fast.tcomp_decoder
    steps = {p.name: p.status for p in dec.bucket_reports[1].passes}
    for name in ("lower.triton", "fuse.triton.projections", "fuse.triton.rotary", "fuse.triton.elementwise"):
        assert steps[name] == "applied", (name, steps)
    calls = [n.target for n in dec.decode_buckets["1"].graph.nodes if n.op == "call_function"]
    assert calls.count(rotary_to_cache) == dec.n_layers
    kw = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    assert torch.equal(fast.generate(ids[:1], **kw), model.generate(ids[:1], **kw))
    assert dec.last_graph == "decode[b=1]"


def test_triton_linear_decoder_steps_equal_one_prefill():
    """attention.linear's recurrent state through the Triton backend: the lowered graphs keep the
    state op, and prefill + one-token steps give the logits of one prefill of the whole sequence."""
    from .test_linear_decoder import _steps_vs_prefill

    model = make("llama").to(DEVICE)
    ids = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    fast = tcomp.optimize(model, {"input_ids": ids}, target="h100", passes=["canonicalize", "attention.linear"],
                          max_len=16, max_batch=2)  # fmt: skip
    dec = fast.tcomp_decoder
    steps = {p.name: p for p in dec.decode_report.passes}
    assert steps["attention.linear"].rewrites == dec.n_layers and steps["lower.triton"].status == "applied"
    assert dec.recurrent
    seq = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    mask = torch.ones_like(seq)
    mask[0, :3] = 0
    assert _steps_vs_prefill(dec, seq, mask, 5) < 1e-4
