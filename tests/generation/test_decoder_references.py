"""The float64 references of a decoder's two graphs: a pass that breaks only the decode graph, and
only past the example prompt's cache position, is rolled back -- the fresh reference prompts have
other lengths than the example's."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp import meta
from tcomp.dialect.cached_attention import is_cached_attention
from tcomp.graph import val
from tcomp.pipeline import Contract, Exactness, PassResult, register_pass

from .decoders import make
from .test_hf_generate import _prompt

pytestmark = pytest.mark.hf
SLOTS = 16


@register_pass("test.decode_reads_16_slots", Contract(Exactness.FP_EQUIVALENT), after=("canonicalize",))
def _decode_reads_16_slots(gm, opts, ctx):
    """In a decode graph only, reads at most the first 16 cache slots while claiming FP equivalence:
    exact up to slot 15, wrong from there on (a kernel broken past its first chunk)."""
    result = PassResult(gm)
    position = next(n for n in gm.graph.nodes if n.meta.get(meta.CACHE_POSITION))
    if tuple(val(position).shape) != (1,):  # the prefill graph's positions are dynamic
        return result
    for node in [n for n in gm.graph.nodes if is_cached_attention(n)]:
        kv_len = node.args[6]
        with gm.graph.inserting_before(node):
            capped = gm.graph.call_function(torch.ops.aten.clamp.default, (kv_len, None, SLOTS))
        capped.meta[meta.VAL] = val(kv_len)
        node.args = (*node.args[:6], capped)
        result.rewrites += 1
    gm.recompile()
    return result


def test_a_pass_broken_past_the_examples_cache_position_is_rolled_back():
    model = make("llama", seed=5)
    ids, _ = _prompt(6)  # 12 tokens: decode at slot 12 reads 13 slots, which the broken pass reads right
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=64, passes=["test.decode_reads_16_slots"],
                          on_failure="skip")  # fmt: skip
    decode = fast.decode_report["test.decode_reads_16_slots"]
    assert decode.status == "rolled_back", (decode.status, decode.reason, decode.notes)
    assert fast.report["test.decode_reads_16_slots"].rewrites == 0  # the prefill graph was not touched
    new = 24  # well past slot 16
    ref = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    assert torch.equal(tcomp.generate(fast, ids, max_new_tokens=new), ref)
