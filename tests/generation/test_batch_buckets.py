"""Decode graphs per batch bucket (``tcomp.optimize(..., batch_buckets=[...])``): a step of b rows runs
the smallest bucket >= b over the first rows of the one cache (not the max_batch graph padded with
copies of row 0); tokens equal the decoder without buckets and HF eager, saved buckets reload over
one cache, and refusals are clear."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp import kv_cache
from tcomp.errors import InputError

from .decoders import VOCAB, make

pytestmark = pytest.mark.hf
MAX_LEN = 32


def _ids(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, 9), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_each_batch_runs_its_bucket_and_generates_as_without_buckets(family):
    model = make(family)
    ids = _ids(4)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, batch_buckets=[2, 1])
    plain = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, verify=False)
    dec = fast.tcomp_decoder
    assert sorted(dec.bucket_reports) == [1, 2]
    for report in dec.bucket_reports.values():  # each bucket graph ran the plan, verified
        assert report.passes[0].name == "canonicalize" and report.passes[0].status == "applied"
        assert report.base_error is not None and len(report.sites) == dec.n_layers
    # one cache: every bucket's KV buffers are views of the first rows of the decoder's
    cache = {n: t for n, t in dec.prefill_module.named_buffers() if kv_cache.is_buffer_name(n)}
    for b, m in dec.decode_buckets.items():
        for name, t in m.named_buffers():
            if kv_cache.is_buffer_name(name):
                assert t.shape[0] == int(b) and t.data_ptr() == cache[name].data_ptr(), (b, name)
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    for b, graph in ((1, "decode[b=1]"), (2, "decode[b=2]"), (3, "decode"), (4, "decode")):
        x = ids[:b]
        out = tcomp.generate(fast, x, max_new_tokens=8)
        assert dec.last_graph == graph, (b, dec.last_graph)
        assert torch.equal(out, tcomp.generate(plain, x, max_new_tokens=8)), (family, b)
        assert torch.equal(out, model.generate(x, **kw)), (family, b)


def test_a_left_padded_row_in_a_bucket():
    model = make("mistral")
    ids = _ids(4, seed=3)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, batch_buckets=[2], verify=False)
    x, mask = ids[:2].clone(), torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    kw = dict(attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(fast.generate(x, **kw), model.generate(x, **kw))
    assert fast.tcomp_decoder.last_graph == "decode[b=2]"


def test_bucket_arguments_are_checked(tmp_path):
    model = make("gpt2")
    ids = _ids(4)
    for bad in ([4], [0], [5], [1.5]):
        with pytest.raises(InputError, match=r"batch_buckets=.*from 1 to 3, below the max_batch=4"):
            tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, batch_buckets=bad, verify=False)
    with pytest.raises(InputError, match="batch_buckets are a decoder's options"):
        tcomp.optimize(model, {"input_ids": ids}, decoder=False, batch_buckets=[1], verify=False)


def test_saved_buckets_reload_over_one_cache_and_generate_the_same(tmp_path):
    model = make("llama")
    ids = _ids(4, seed=5)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, batch_buckets=[1, 2], verify=False)
    fast.save(str(tmp_path / "lm"))
    loaded = tcomp.load(str(tmp_path / "lm"))
    assert sorted(int(b) for b in loaded.decode_buckets) == [1, 2] and sorted(loaded.bucket_reports) == [1, 2]
    cache = {n: t for n, t in loaded.prefill_module.named_buffers() if kv_cache.is_buffer_name(n)}
    for b, m in loaded.decode_buckets.items():  # still one cache: views of its first rows
        for name, t in m.named_buffers():
            if kv_cache.is_buffer_name(name):
                assert t.shape[0] == int(b) and t.data_ptr() == cache[name].data_ptr(), (b, name)
    for b, graph in ((1, "decode[b=1]"), (2, "decode[b=2]"), (4, "decode")):
        out = tcomp.generate(loaded, ids[:b], max_new_tokens=6)
        assert loaded.last_graph == graph, (b, loaded.last_graph)
        assert torch.equal(out, tcomp.generate(fast, ids[:b], max_new_tokens=6)), b
