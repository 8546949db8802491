"""tcomp.generate's options at their edges: the cache it needs, eos and pad from the model's
generation config, the random generator without a seed, and top_k / top_p limits."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp.errors import InputError

from .decoders import VOCAB, make
from .test_hf_generate import _prompt

pytestmark = pytest.mark.hf
MAX_LEN = 20


@pytest.fixture(scope="module")
def pair():
    model = make("llama", seed=4)
    return model, tcomp.optimize(model, {"input_ids": _prompt(0)[0]}, max_len=MAX_LEN, verify=False)


def _hf(model, ids, new, **kw):
    return model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **kw)


def test_the_cache_needs_prompt_plus_new_minus_one_slots(pair):
    model, fast = pair
    ids, mask = _prompt(1)  # 12 tokens
    new = MAX_LEN - ids.shape[1] + 1  # the last token is chosen, never run: 20 slots hold 12 + 9
    out = tcomp.generate(fast, ids, attention_mask=mask, max_new_tokens=new)
    assert out.shape == (2, 12 + new) and torch.equal(out, _hf(model, ids, new, attention_mask=mask))
    assert torch.equal(fast.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                     do_sample=False), out)  # fmt: skip
    with pytest.raises(InputError, match=r"needs 21 KV-cache slots, above the 20.*max_len=21"):
        tcomp.generate(fast, ids, max_new_tokens=new + 1)
    assert torch.equal(tcomp.generate(fast, ids, max_new_tokens=0), ids)
    with pytest.raises(InputError, match=r"input_ids must be \(batch, tokens\)"):
        tcomp.generate(fast, ids[0], max_new_tokens=2)


def test_eos_and_pad_come_from_the_models_generation_config(pair):
    model, fast = pair
    ids, _ = _prompt(2)
    greedy = tcomp.generate(fast, ids, max_new_tokens=8)
    eos = int(greedy[0, ids.shape[1] + 2])  # row 0 says it by its third new token
    model.generation_config.eos_token_id = fast.generation_config.eos_token_id = eos
    try:
        ref = model.generate(ids, max_new_tokens=8, do_sample=False)  # HF stops and pads with pad_token_id
        out = tcomp.generate(fast, ids, max_new_tokens=8)
        assert torch.equal(out, ref), (out, ref)
        row = out[0, ids.shape[1] :].tolist()
        first = row.index(eos)  # at the third new token or before
        assert first <= 2 and all(t == fast.generation_config.pad_token_id for t in row[first + 1 :])
        assert torch.equal(tcomp.generate(fast, ids, max_new_tokens=8, eos_token_id=[]), greedy)  # [] never stops
    finally:
        model.generation_config.eos_token_id = fast.generation_config.eos_token_id = None


def test_sampling_without_a_seed_draws_from_torchs_generator(pair):
    _, fast = pair
    ids, _ = _prompt(3)
    kw = dict(max_new_tokens=8, do_sample=True, temperature=3.0)
    torch.manual_seed(11)
    a = tcomp.generate(fast, ids, **kw)
    b = tcomp.generate(fast, ids, **kw)  # the generator moved on: another draw
    torch.manual_seed(11)
    assert torch.equal(tcomp.generate(fast, ids, **kw), a)
    assert not torch.equal(a, b)
    assert torch.equal(tcomp.generate(fast, ids, seed=5, **kw), tcomp.generate(fast, ids, seed=5, **kw))


def test_top_k_and_top_p_edges(pair):
    _, fast = pair
    ids, _ = _prompt(4)
    greedy = tcomp.generate(fast, ids, max_new_tokens=8)
    sample = dict(max_new_tokens=8, do_sample=True, temperature=2.0, seed=3)
    assert torch.equal(tcomp.generate(fast, ids, top_p=0.0, **sample), greedy)  # the smallest set: one token
    every = tcomp.generate(fast, ids, **sample)
    assert torch.equal(tcomp.generate(fast, ids, top_k=VOCAB + 50, top_p=1.0, **sample), every)
    assert torch.equal(tcomp.generate(fast, ids, top_k=0, **sample), every)
    for bad, match in ((dict(top_p=-0.1), "top_p must be in"), (dict(top_p=1.5), "top_p must be in"),
                       (dict(top_k=-1), "top_k must be >= 0"), (dict(temperature=0.0), "temperature must be > 0")):  # fmt: skip
        with pytest.raises(InputError, match=match):
            tcomp.generate(fast, ids, **{**sample, **bad})


def test_steps_run_without_autograd_even_when_the_weights_require_grad(pair):
    """A freshly loaded model's parameters require grad; the decoder's steps must still run as
    inference (no graph recorded, so the GPU's CUDA graphs may replay): logits carry no grad_fn,
    and tcomp.generate runs with grad mode left as the caller had it."""
    model, fast = pair
    assert any(p.requires_grad for p in model.parameters())
    dec = fast.tcomp_decoder
    ids, mask = _prompt(1)
    assert torch.is_grad_enabled()
    logits = dec.step(ids, mask, start=0)
    assert not logits.requires_grad and logits.grad_fn is None
    out = tcomp.generate(fast, ids, attention_mask=mask, max_new_tokens=3)
    assert out.shape == (2, ids.shape[1] + 3) and torch.is_grad_enabled()
