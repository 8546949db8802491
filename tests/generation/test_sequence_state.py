"""The state of the sequence an optimized decoder holds across calls: continuing, starting again,
and the refusals that keep a stale or foreign cache from being read as if it were this sequence's."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp.errors import InputError

from .decoders import make
from .test_hf_generate import _prompt

pytestmark = pytest.mark.hf
GREEDY = dict(min_new_tokens=4, max_new_tokens=4, do_sample=False)


@pytest.fixture(scope="module")
def pair():
    model = make("llama", seed=2)
    return model, tcomp.optimize(model, {"input_ids": _prompt(0)[0]}, max_len=48, verify=False)


def test_continuing_with_past_key_values_equals_hf_on_the_whole_sequence(pair):
    model, fast = pair
    ids, mask = _prompt(1)
    first = fast.generate(ids, attention_mask=mask, return_dict_in_generate=True, **GREEDY)
    seq = first.sequences
    full = torch.cat([mask, torch.ones(2, seq.shape[1] - ids.shape[1], dtype=mask.dtype)], dim=1)
    more = fast.generate(seq, attention_mask=full, past_key_values=first.past_key_values, **GREEDY)
    assert torch.equal(more, model.generate(seq, attention_mask=full, **GREEDY))


def test_a_cache_state_of_a_replaced_sequence_is_refused(pair):
    model, fast = pair
    ids, _ = _prompt(2)
    first = fast.generate(ids, return_dict_in_generate=True, **GREEDY)
    fast.generate(ids[:, :5], **GREEDY)  # another sequence overwrites the cache
    with pytest.raises(InputError, match="replaced since.*without past_key_values"):
        fast.generate(first.sequences, past_key_values=first.past_key_values, **GREEDY)
    # the whole sequence without a cache state is what it says to do, and it is HF's answer
    assert torch.equal(fast.generate(first.sequences, **GREEDY), model.generate(first.sequences, **GREEDY))


def test_another_librarys_filled_cache_is_refused(pair):
    model, fast = pair
    ids, _ = _prompt(3)
    ref = model.generate(ids, return_dict_in_generate=True, **GREEDY)  # a DynamicCache of the HF model
    with pytest.raises(InputError, match="DynamicCache holding 15 tokens"):
        fast.generate(ref.sequences, past_key_values=ref.past_key_values, **GREEDY)


def test_step_refuses_unfilled_slots_and_another_batch_mid_sequence(pair):
    _, fast = pair
    runner = fast.tcomp_decoder
    ids, _ = _prompt(4)
    runner.step(ids, start=0)
    assert (runner.length, runner.rows) == (12, 2)
    with pytest.raises(InputError, match=r"start=14: the KV cache holds 12 tokens.*0\.\.12"):
        runner.step(ids[:, :1], start=14)  # slots 12, 13 were never written in this sequence
    with pytest.raises(InputError, match="current sequence has 2 rows and this step 1"):
        runner.step(ids[:1, :1])
    with pytest.raises(InputError, match=r"attention_mask has shape \(2, 5\); expected \(2, 13\)"):
        runner.step(ids[:, :1], torch.ones(2, 5, dtype=torch.long))
    assert (runner.length, runner.rows) == (12, 2)  # refused steps change nothing
    with torch.no_grad():  # and the sequence goes on as if they never came
        a = runner.step(ids[:, :1])
        runner.step(ids, start=0)
        b = runner.step(ids[:, :1])
    assert torch.equal(a, b)


def test_one_token_prompts_and_mask_holes_equal_hf(pair):
    model, fast = pair
    ids, _ = _prompt(5)
    one = ids[:, :1]  # the first step runs the decode graph at slot 0
    assert torch.equal(tcomp.generate(fast, one, max_new_tokens=4), model.generate(one, **GREEDY))
    assert torch.equal(fast.generate(one, **GREEDY), model.generate(one, **GREEDY))
    holes = torch.ones_like(ids)
    holes[0, 5:7] = 0  # zeros in the middle of a row, not left padding
    ref = model.generate(ids, attention_mask=holes, **GREEDY)
    assert torch.equal(fast.generate(ids, attention_mask=holes, **GREEDY), ref)
    assert torch.equal(tcomp.generate(fast, ids, attention_mask=holes, max_new_tokens=4), ref)


def test_decode_steps_keep_one_input_signature():
    """Every decode step of tcomp.generate calls the decode graph with the same shapes, dtypes and
    strides: the CUDA-graph runner keys its graphs by them, so a stride that changes per step (a slice
    of the growing mask) would capture a new graph each step and never replay one."""
    from tcomp.cudagraphs import _signature

    model = make("llama")
    ids = torch.randint(1, 96, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=40, verify=False)
    runner = fast.tcomp_decoder
    seen = []

    def spy(*args):
        seen.append(tuple(_signature(a) for a in args))
        return runner.decode_module(*args)

    runner._decode_runner = spy
    tcomp.generate(fast, ids, attention_mask=mask, max_new_tokens=6)
    fast.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert len(seen) == 10 and len(set(seen)) == 1, set(seen)


@pytest.mark.parametrize("family", ["llama", "mistral", "gpt2"])
def test_prompts_right_padded_to_a_prefill_graph_bucket_change_nothing(family):
    """With prefill CUDA graphs (GPU targets) a prompt is right-padded to a power-of-two length so a
    few graphs serve every prompt: the logits of the real tokens, the cache the decode steps read
    and the generated tokens are those of the unpadded prefill (sliding windows and learned
    positions included). Run here through a stand-in for the graph runner."""
    from tcomp.generation import prefill_bucket

    model = make(family)
    ids = torch.randint(1, 96, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=40, verify=False)
    runner = fast.tcomp_decoder
    plain = runner.step(ids, mask, start=0)
    want = tcomp.generate(fast, ids, attention_mask=mask, max_new_tokens=8)
    lengths = []

    def spy(input_ids, *rest):
        lengths.append(input_ids.shape[1])
        return runner.prefill_module(input_ids, *rest)

    runner._prefill_runner = spy
    padded = runner.step(ids, mask, start=0)
    assert lengths == [16] and padded.shape == plain.shape
    assert torch.allclose(padded, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(tcomp.generate(fast, ids, attention_mask=mask, max_new_tokens=8), want)
    assert runner.length == 9 + 7  # the pads never count as filled slots
    assert prefill_bucket(9, 40) == 16 and prefill_bucket(30, 31) == 30 and prefill_bucket(2000, 4096) is None
