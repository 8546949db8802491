"""What tcomp says when a model cannot be compiled for generation, and the attention
implementations it can: every refusal names the cause and what to pass instead, and leaves the
user's model as it was."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp.decoder import MaskStyle
from tcomp.errors import CaptureError, InputError

from .decoders import make
from .test_hf_generate import _prompt

pytestmark = pytest.mark.hf


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, before) -> bool:
    return model.state_dict().keys() == before.keys() and all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )


@pytest.mark.parametrize("impl", ["flex_attention", "flash_attention_2"])
def test_attention_implementations_without_4d_masks_are_refused(impl):
    model = make("llama")
    model.config._attn_implementation = impl
    before = _state(model)
    with pytest.raises(InputError, match=rf"attn_implementation='{impl}'.*attn_implementation='sdpa'.*decoder=False"):
        tcomp.optimize(model, {"input_ids": _prompt(0)[0]}, max_len=32, verify=False)
    assert _same(model, before) and model.config._attn_implementation == impl


def test_eager_attention_gets_additive_masks_and_generates_like_hf():
    model = make("llama")
    assert MaskStyle.of(model).additive is None  # sdpa: bool masks
    model.config._attn_implementation = "eager"
    assert MaskStyle.of(model).additive == torch.float32  # eager adds its mask to the scores
    ids, mask = _prompt(1)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=32, verify=False)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(tcomp.generate(fast, ids, attention_mask=mask, max_new_tokens=8), ref)


class _Raises(torch.nn.Module):
    """Takes the cache arguments, but its forward fails on them."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)

    def forward(self, input_ids, past_key_values=None, cache_position=None, attention_mask=None):
        raise ValueError("this model wants a tuple of past keys")


class _NoMask(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)

    def forward(self, input_ids, past_key_values=None, cache_position=None):
        return self.emb(input_ids)


def test_a_forward_that_fails_on_the_cache_protocol_is_a_capture_error():
    model = _Raises()
    before = _state(model)
    ids = torch.randint(0, 16, (2, 6))
    with pytest.raises(CaptureError, match=r"_Raises at .*test_decoder_errors.py.*wants a tuple.*decoder=False"):
        tcomp.optimize(model, {"input_ids": ids}, decoder=True, max_len=16)
    assert _same(model, before) and not list(model.buffers())  # no cache attached to it


def test_a_forward_without_attention_mask_does_not_speak_the_protocol():
    model = _NoMask()
    with pytest.raises(InputError, match="attention_mask.*decoder=False"):
        tcomp.optimize(model, {"input_ids": torch.randint(0, 16, (2, 6))}, decoder=True, max_len=16)


class _NoCacheWrites(torch.nn.Module):
    """Speaks the protocol's signature, but nothing in it writes the cache (no attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)

    def forward(self, input_ids, past_key_values=None, cache_position=None, attention_mask=None):
        return self.emb(input_ids)


def test_a_model_without_a_cache_path_is_refused():
    with pytest.raises(InputError, match=r"_NoCacheWrites did not write a KV cache.*update\(key, value, layer_idx\)"):
        tcomp.optimize(_NoCacheWrites(), {"input_ids": torch.randint(0, 16, (2, 6))}, decoder=True, max_len=16)


def test_the_hf_face_refuses_inputs_embeds_and_3d_masks():
    model = make("llama")
    ids, _ = _prompt(2)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=32, verify=False)
    with pytest.raises(InputError, match="takes input_ids.*inputs_embeds are not supported"):
        fast(inputs_embeds=torch.randn(2, 12, 64))
    with pytest.raises(InputError, match="2-D attention_mask"):
        fast(ids, attention_mask=torch.ones(2, 1, 12))


@pytest.mark.parametrize("family", ["gpt2", "opt", "zoo-learned"])
def test_max_len_past_a_learned_position_table_is_refused_at_optimize(family):
    """A learned position table bounds the sequence: asking for a longer cache is an error at
    optimize that names the table and the limit (not an index error mid-generation); rotary models
    have no table and may ask for more than their configured positions."""
    if family == "zoo-learned":
        from tcomp.models.gpt import GPT, GPTConfig

        model = GPT(GPTConfig(vocab_size=64, dim=32, heads=4, depth=1, max_len=24, position="learned")).eval()
        limit, table = 24, "pos_emb"
    else:
        model, limit = make(family), 128
        table = "wpe" if family == "gpt2" else "embed_positions"
    ids = torch.randint(1, 60, (2, 5))
    with pytest.raises(InputError, match=rf"max_len={limit + 1} is past the {limit} positions .*{table}.*max_len={limit} or less"):
        tcomp.optimize(model, {"input_ids": ids}, max_len=limit + 1, verify=False, decoder=True)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=limit, verify=False, decoder=True)
    assert tcomp.generate(fast, ids, max_new_tokens=3).shape == (2, 8)
    rope = make("llama")  # max_position_embeddings 128, no table: a longer cache is allowed
    assert tcomp.optimize(rope, {"input_ids": ids}, max_len=200, verify=False).tcomp_decoder.max_len == 200
