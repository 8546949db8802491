"""Generation through tcomp on Hugging Face causal LMs: greedy decoding equals HF eager's token for
token, logits agree at every step, and the user's model is left as it was."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp.verify import rel_error

from .decoders import FAMILIES, VOCAB, make

pytestmark = pytest.mark.hf
NEW = 32


def _prompt(seed: int, batch: int = 2, n: int = 12, pad: int = 4):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, n), generator=gen)
    mask = torch.ones_like(ids)
    if pad:
        mask[-1, :pad] = 0  # the last row is left-padded
    return ids, mask


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_generation_equals_hf_eager(family):
    model = make(family)
    ids, mask = _prompt(1)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=64)
    assert isinstance(fast.tcomp_decoder, tcomp.OptimizedDecoder)
    for p in (fast.tcomp_decoder.report.passes + fast.tcomp_decoder.decode_report.passes):
        assert p.status == "applied", (p.name, p.reason if hasattr(p, "reason") else p)
    for m in (mask, None):  # with and without left padding
        kw = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, output_logits=True,
                  return_dict_in_generate=True)  # fmt: skip
        if m is not None:
            kw["attention_mask"] = m
        ref = model.generate(ids, **kw)
        out = fast.generate(ids, **kw)
        assert torch.equal(out.sequences, ref.sequences), family
        assert len(out.logits) == NEW
        for step, (a, b) in enumerate(zip(out.logits, ref.logits)):
            assert rel_error(a, b) < 1e-5, (family, step, rel_error(a, b))
        mine = tcomp.generate(fast, ids, attention_mask=m, max_new_tokens=NEW)
        assert torch.equal(mine, ref.sequences), family


def test_decode_graph_reads_the_cache_through_the_cache_form():
    fast = tcomp.optimize(make("llama"), {"input_ids": _prompt(2)[0]}, max_len=64)
    graphs = (fast.tcomp_decoder.prefill_module, fast.tcomp_decoder.decode_module)
    for gm in graphs:
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        assert targets.count(torch.ops.tcomp.cached_attention.default) == 2
        assert torch.ops.tcomp.attention.default not in targets
    # one cache, shared by both graphs; weights are held once
    pre, dec = graphs
    assert pre.get_buffer("tcomp_kv_k_0") is dec.get_buffer("tcomp_kv_k_0")
    assert dict(pre.named_parameters())["model.model.embed_tokens.weight"] is dict(dec.named_parameters())[
        "model.model.embed_tokens.weight"
    ]


def test_user_model_unchanged_and_optimize_twice():
    model = make("qwen2")
    ids, mask = _prompt(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    a = tcomp.optimize(model, {"input_ids": ids}, max_len=32, verify=False)
    b = tcomp.optimize(model, {"input_ids": ids}, max_len=32, verify=False)
    for fast in (a, b, a):  # interleaved: each owns its cache
        out = fast.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert torch.equal(out, ref)
    again = model.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(again, ref)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model).__name__ == "Qwen2ForCausalLM" and not hasattr(model, "tcomp_decoder")


def test_forward_without_cache_is_the_models_forward():
    model = make("gpt2")
    ids, mask = _prompt(4)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=32, verify=False)
    ref = model(ids, attention_mask=mask).logits
    out = fast(ids, attention_mask=mask).logits
    real = mask.bool()
    assert rel_error(out[real], ref[real]) < 1e-5


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = make("llama")
    ids, _ = _prompt(5, pad=0)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=48, verify=False)
    a = tcomp.generate(fast, ids, max_new_tokens=16, do_sample=True, temperature=0.8, top_p=0.9, seed=7)
    b = tcomp.generate(fast, ids, max_new_tokens=16, do_sample=True, temperature=0.8, top_p=0.9, seed=7)
    assert torch.equal(a, b)
    greedy = tcomp.generate(fast, ids, max_new_tokens=16)
    assert torch.equal(tcomp.generate(fast, ids, max_new_tokens=16, do_sample=True, top_k=1, seed=3), greedy)
    # eos stops a row and pads it afterwards
    eos = int(greedy[0, ids.shape[1] + 2])
    out = tcomp.generate(fast, ids, max_new_tokens=16, eos_token_id=eos, pad_token_id=0)
    row = out[0, ids.shape[1] :].tolist()
    first = row.index(eos)
    assert all(t == 0 for t in row[first + 1 :])


def test_limits_are_clear_errors():
    model = make("llama")
    ids, _ = _prompt(6, pad=0)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=20, verify=False)
    with pytest.raises(tcomp.InputError, match=r"max_len=\d+"):
        tcomp.generate(fast, ids, max_new_tokens=16)
    with pytest.raises(tcomp.InputError, match="max_batch=3"):
        tcomp.generate(fast, torch.cat([ids, ids[:1]]), max_new_tokens=2)
    with pytest.raises(tcomp.InputError, match="decoder=False"):
        tcomp.optimize(torch.nn.Linear(4, 4), (torch.randn(2, 4),), decoder=True)
    with pytest.raises(tcomp.InputError, match="optimized by tcomp.optimize"):
        tcomp.generate(model, ids)
    # a smaller batch than the cache's runs in the same graphs
    one = tcomp.generate(fast, ids[:1], max_new_tokens=4)
    assert torch.equal(one, tcomp.generate(fast, ids, max_new_tokens=4)[:1])


def test_decoder_false_compiles_the_forward_only():
    model = make("llama")
    ids, _ = _prompt(7, pad=0)
    fast = tcomp.optimize(model, {"input_ids": ids}, decoder=False)
    assert isinstance(fast, tcomp.OptimizedModule)
    assert rel_error(fast(input_ids=ids).logits, model(ids).logits) < 1e-5


def test_batch_one_generates_like_hf_eager():
    # a one-row example used to be captured as a view, and export's guard on its _base failed on
    # every real input ('NoneType' object has no attribute 'size')
    model = make("llama")
    ids, _ = _prompt(8, batch=1, pad=0)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=32, verify=False)
    ref = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(tcomp.generate(fast, ids, max_new_tokens=8), ref)
    assert torch.equal(fast.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False), ref)


@pytest.mark.parametrize("family", ["llama", "gpt2", "falcon"])
def test_beam_search_equals_hf_eager(family):
    """Beam search reorders the cache rows between steps (Cache.reorder_cache): tcomp moves every
    cache row (keys, values, padding) and the beams equal HF eager's, with a left-padded row."""
    model = make(family)
    ids, mask = _prompt(7)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=40, max_batch=6, verify=False)
    kw = dict(attention_mask=mask, max_new_tokens=8, min_new_tokens=8, num_beams=3, do_sample=False)
    assert torch.equal(fast.generate(ids, **kw), model.generate(ids, **kw)), family
    with pytest.raises(tcomp.InputError, match=r"batch 8 is above the 6 rows"):
        fast.generate(ids, **dict(kw, num_beams=4))


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_prompt_lookup_and_assisted_decoding_equal_greedy(family, monkeypatch):
    """Draft tokens (n-grams of the prompt, or an assistant model's) are checked in one multi-token
    step and the rejected ones cropped from the cache state (Cache.crop): the tokens equal plain
    greedy decoding's. A repetitive prompt so that drafts are accepted and rejected."""
    model = make(family)
    ids = torch.randint(1, 20, (1, 12), generator=torch.Generator().manual_seed(0))
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=48, verify=False)
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    greedy = model.generate(ids, **kw)
    from tcomp.hf_face import _state_class

    cls, crops = _state_class(), []
    real_crop = cls.crop
    monkeypatch.setattr(cls, "crop", lambda self, n: crops.append(n) or real_crop(self, n))
    assert torch.equal(fast.generate(ids, prompt_lookup_num_tokens=3, **kw), greedy), family
    assert any(n < 0 for n in crops), crops  # some drafts were rejected and cropped
    assert torch.equal(fast.generate(ids, assistant_model=make(family, seed=9), **kw), greedy), family
    with pytest.raises(tcomp.InputError, match="assistant_early_exit"):
        fast.generate(ids, assistant_early_exit=1, **kw)


def test_float64_reference_of_a_mixture_of_experts_runs_without_touching_the_model():
    """grouped_mm has no float64 kernel: the reference copy runs the experts as a loop (the same
    arithmetic) and agrees with the model; the user's model keeps its own implementation."""
    from tcomp.verify import reference_model

    model = make("mixtral")
    impl = model.config._experts_implementation
    ref = reference_model(model)
    assert ref.config._experts_implementation == "eager" and model.config._experts_implementation == impl
    ids, _ = _prompt(4)
    with torch.no_grad():
        assert rel_error(model(ids).logits, ref(ids).logits) < 1e-5
