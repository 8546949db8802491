"""``attention.linear`` on a decoder: each layer's KV cache becomes a recurrent state (constant
memory per token) and the decoder generates through it.

The recurrent form is checked against the parallel one: the logits of a prefill followed by decode
steps, each reading the state the last one wrote, equal the logits a single prefill of the whole
sequence gives at the same positions (with and without left padding, and through the padded
prefill buckets); Hugging Face's greedy ``generate()`` equals greedy decoding by whole-sequence
prefills. Sites whose mask is not the full causal one (sliding windows) keep their softmax and
cache, with the reason; what a state cannot do (drop tokens, step back) is refused."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp import kv_cache
from tcomp.errors import InputError, PassError
from tcomp.optimize_decoder import _check_one_cache
from tcomp.verify import rel_error

from .decoders import VOCAB, make

pytestmark = pytest.mark.hf
MAX_LEN = 40


def _ids(seed: int, batch: int = 2, n: int = 9) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def _linear(model, feature_map="elu1", **kw):
    """attention.linear on ``model``; a pass that finds nothing to rewrite is the tests' subject, so
    it is not an error here (``on_failure="skip"``) unless a test asks."""
    opts = {"feature_map": feature_map, **kw.pop("opts", {})}
    kw.setdefault("on_failure", "skip")
    return tcomp.optimize(
        model, {"input_ids": _ids(0)}, target="cpu", passes=["canonicalize", ("attention.linear", opts)],
        max_len=MAX_LEN, **kw,
    )  # fmt: skip


def _record(fast, graph="decode"):
    rep = fast.tcomp_decoder.report if graph == "prefill" else fast.tcomp_decoder.decode_report
    return next(r for r in rep.passes if r.name == "attention.linear")


def _cache_names(dec) -> set[str]:
    return {n for n, _ in dec.decode_module.named_buffers() if kv_cache.is_buffer_name(n)}


def _steps_vs_prefill(dec, ids, mask, cut):
    """Max relative error between the logits of prefill(ids[:, :cut]) + one-token steps and those of
    one prefill of all of ``ids``, at every position from ``cut - 1`` on."""
    whole = dec.step(ids, mask, start=0).clone()
    got = [dec.step(ids[:, :cut], None if mask is None else mask[:, :cut], start=0)[:, -1:].clone()]
    for t in range(cut, ids.shape[1]):
        got.append(dec.step(ids[:, t : t + 1], None if mask is None else mask[:, : t + 1]).clone())
    return rel_error(torch.cat(got, 1), whole[:, cut - 1 :])


@pytest.mark.parametrize("family", ["llama", "llama-eager", "qwen2", "phi3", "gpt2", "falcon"])
def test_cache_becomes_state_and_steps_equal_one_prefill(family):
    """HF's SDPA path gives attention a bool mask, its eager path an additive one: both are read as
    the causal cache mask."""
    name, _, impl = family.partition("-")
    model = make(name, **({"attn_implementation": impl} if impl else {}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = _linear(model, verify=True)
    layers = model.config.num_hidden_layers
    for graph in ("prefill", "decode"):
        rec = _record(fast, graph)
        assert rec.status == "applied" and rec.rewrites == layers, (graph, rec.status, rec.reason, rec.notes)
        assert rec.error is not None and rec.error <= rec.tolerance
    dec = fast.tcomp_decoder
    assert dec.recurrent
    names = _cache_names(dec)
    assert names == {n for i in range(layers) for n in kv_cache.state_names(i)}, names  # no KV cache left
    ids = _ids(3, n=14)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # row 0 left-padded
    for m in (None, mask):
        assert _steps_vs_prefill(dec, ids, m, cut=6) < 1e-5
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model untouched


def test_state_memory_does_not_grow_with_max_len():
    model = make("llama")
    sizes = []
    for max_len in (24, 96):
        fast = tcomp.optimize(model, {"input_ids": _ids(0)}, target="cpu", passes=["canonicalize", "attention.linear"],
                              max_len=max_len, verify=False)  # fmt: skip
        dec = fast.tcomp_decoder
        sizes.append(sum(t.numel() * t.element_size() for n, t in dec.decode_module.named_buffers()
                         if kv_cache.is_buffer_name(n)))  # fmt: skip
    assert sizes[0] == sizes[1] > 0


def test_greedy_generate_equals_greedy_by_whole_prefills():
    model = make("llama", seed=1)
    fast = _linear(model, verify=False)
    dec = fast.tcomp_decoder
    ids = _ids(5, n=7)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    out = fast.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    seq, m = ids, mask
    for _ in range(10):
        nxt = dec.step(seq, m, start=0)[:, -1].argmax(-1, keepdim=True)
        seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
    assert torch.equal(out, seq)
    assert torch.equal(tcomp.generate(fast, ids, attention_mask=mask, max_new_tokens=10), seq)


def test_padded_prefill_buckets_keep_pads_out_of_the_state():
    """With CUDA-graph runners (run directly on the CPU) prompts are right-padded to a bucket length;
    the pads must not reach the state: the logits equal those of the unbucketed decoder."""
    model = make("llama")
    plain = _linear(model, verify=False).tcomp_decoder
    bucketed = _linear(model, verify=False, cudagraphs=True).tcomp_decoder
    ids = _ids(7, n=5)
    a = torch.cat([plain.step(ids, start=0), plain.step(ids[:, :1])], 1)
    b = torch.cat([bucketed.step(ids, start=0), bucketed.step(ids[:, :1])], 1)
    assert bucketed.padding.all()  # the pads' padding restored for the slots that follow
    assert rel_error(b, a) < 1e-5


def test_sliding_window_sites_keep_softmax_with_the_reason():
    fast = _linear(make("mistral"), verify=False)
    rec = _record(fast)
    assert rec.rewrites == 0 and "sliding window" in " ".join(rec.notes), rec.notes
    assert not fast.tcomp_decoder.recurrent
    # Gemma 3 mixes full and sliding layers: the full ones take the state, the sliding ones keep a cache
    model = make("gemma3", layer_types=["sliding_attention", "full_attention"])
    fast = _linear(model, verify=False)
    dec = fast.tcomp_decoder
    types = model.config.layer_types
    assert _record(fast).rewrites == types.count("full_attention") >= 1
    names = _cache_names(dec)
    for i, t in enumerate(types):
        want = kv_cache.state_names(i) if t == "full_attention" else kv_cache.buffer_names(i)
        assert set(want) <= names, (i, t, names)
    ids = _ids(2, n=12)
    assert _steps_vs_prefill(dec, ids, None, cut=5) < 1e-5


def test_what_a_state_cannot_do_is_refused():
    model = make("llama")
    fast = _linear(model, verify=False)
    dec = fast.tcomp_decoder
    ids = _ids(4)
    dec.step(ids, start=0)
    with pytest.raises(InputError, match="recurrent state"):
        dec.step(ids[:, :1], start=3)
    with pytest.raises(InputError, match="cannot forget"):
        fast.generate(ids, max_new_tokens=4, do_sample=False, prompt_lookup_num_tokens=2)
    int8 = _linear(model, verify=False, kv_cache="int8")
    assert _record(int8).rewrites == 0 and "int8" in " ".join(_record(int8).notes)


def test_graphs_with_different_caches_are_an_error():
    class Fake(torch.nn.Module):
        def __init__(self, names):
            super().__init__()
            for n in names:
                self.register_buffer(n, torch.zeros(1))

    class Rep:
        passes = []

    same = Fake(["tcomp_kv_s_0", "tcomp_kv_z_0"])
    _check_one_cache({"prefill": same, "decode": Fake(["tcomp_kv_s_0", "tcomp_kv_z_0"])}, [Rep(), Rep()])
    with pytest.raises(PassError, match="different caches"):
        _check_one_cache({"prefill": same, "decode": Fake(["tcomp_kv_k_0", "tcomp_kv_v_0"])}, [Rep(), Rep()])


def test_saved_linear_decoder_reloads_and_generates_the_same(tmp_path):
    fast = _linear(make("qwen2"), verify=False)
    ids = _ids(9)
    want = tcomp.generate(fast, ids, max_new_tokens=6)
    fast.save(str(tmp_path / "art"))
    loaded = tcomp.load(str(tmp_path / "art"))
    assert torch.equal(tcomp.generate(loaded, ids, max_new_tokens=6), want)
