"""Generation through tcomp on the zoo GPT (plain PyTorch that speaks tcomp's KV-cache protocol).

For every position encoding (rope, ALiBi, T5, learned; GQA, MQA and both attention spellings among
the cases): greedy decoding through the optimized decoder equals a greedy loop that runs the
ORIGINAL model without a cache on the whole growing sequence, token for token; the logits of every
step agree with that model's last-position logits; a left-padded row generates what it generates
alone; the user's model is left as it was; token merging refuses decoders and says why.
"""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp.models.gpt import GPT, GPTConfig
from tcomp.outcome import PassFailed, PassFailedWarning
from tcomp.verify import rel_error

NEW = 32
MAX_LEN = 48
CASES = {
    "rope": dict(position="rope"),
    "rope-gqa": dict(position="rope", n_kv_heads=2, norm="rmsnorm", mlp="swiglu", bias=False),
    "alibi-mqa": dict(position="alibi", n_kv_heads=1),
    "t5": dict(position="t5", attn_scale=1.0),
    "learned-gqa-eager": dict(position="learned", n_kv_heads=2, attn_impl="eager"),
}


def _model(case: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**CASES[case])).eval()


def _ids(seed: int, batch: int = 2, n: int = 12) -> torch.Tensor:
    return torch.randint(1, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _greedy_no_cache(
    model: GPT, ids: torch.Tensor, new: int = NEW
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reference: the model without a cache on the whole sequence so far, at every step."""
    seq, logits = ids, []
    for _ in range(new):
        last = model(seq)[:, -1]
        logits.append(last)
        seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    return seq, logits


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def _cached_logits(fast, seq: torch.Tensor, n: int, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Last-position logits of ``fast`` over ``seq`` (prompt of ``n`` tokens, then one token a step)."""
    mask = torch.ones_like(seq) if mask is None else mask
    pos = _positions(mask)
    out = [fast.step(seq[:, :n], mask[:, :n], pos[:, :n], start=0)[:, -1]]
    for t in range(n, seq.shape[1] - 1):
        out.append(fast.step(seq[:, t : t + 1], mask[:, : t + 1], pos[:, t : t + 1])[:, -1])
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_generation_equals_the_model_without_cache(case):
    model = _model(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = sorted(n for n, _ in model.named_buffers())
    fast = tcomp.optimize(model, {"input_ids": _ids(0, n=9)}, max_len=MAX_LEN, decoder=True)
    assert isinstance(fast, tcomp.OptimizedDecoder)
    for rec in fast.report.passes + fast.decode_report.passes:
        assert rec.status == "applied", (rec.name, rec.reason, rec.notes)
    ids = _ids(1)  # another prompt length than the example's: the prefill graph's n is dynamic
    ref, ref_logits = _greedy_no_cache(model, ids)
    out = tcomp.generate(fast, ids, max_new_tokens=NEW)
    assert torch.equal(out, ref), case
    got = _cached_logits(fast, ref, ids.shape[1])
    assert len(got) == NEW
    for step, (a, b) in enumerate(zip(got, ref_logits)):
        err = rel_error(a, b)
        assert err < 1e-5, (case, step, err)
    # the prompt's logits at every position equal the model's forward
    with torch.no_grad():
        assert rel_error(fast(ids), model(ids)) < 1e-5
    # the user's model is as it was: weights, buffers, mode, and its forward without a cache
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sorted(n for n, _ in model.named_buffers()) == buffers and not model.training
    assert torch.equal(_greedy_no_cache(model, ids)[0], ref)


@pytest.mark.parametrize("case", sorted(CASES))
def test_left_padded_row_generates_what_it_generates_alone(case):
    """The no-cache reference of a left-padded row is the model on the row's real tokens alone:
    rope and learned positions count real tokens, ALiBi/T5 distances between real tokens are equal
    and padding slots are masked out. Padding slots hold random tokens, so any leak would show."""
    model = _model(case, seed=1)
    ids = _ids(2, batch=3)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, verify=False, decoder=True)
    out = tcomp.generate(fast, ids, attention_mask=mask, max_new_tokens=NEW)
    full = torch.cat([mask, torch.ones(3, NEW, dtype=mask.dtype)], dim=1)
    got = _cached_logits(fast, out, ids.shape[1], full)
    for row in range(3):
        alone = ids[row : row + 1, mask[row].bool()]
        ref, ref_logits = _greedy_no_cache(model, alone)
        assert torch.equal(out[row, ids.shape[1] :], ref[0, alone.shape[1] :]), (case, row)
        for step, ref_step in enumerate(ref_logits):
            err = rel_error(got[step][row], ref_step[0])
            assert err < 1e-5, (case, row, step, err)


def test_token_merge_refuses_decoders_and_says_why():
    model = _model("rope-gqa")
    ids = _ids(3)
    with pytest.raises(PassFailed, match=r"tokens.merge did not apply \(prefill: skipped: not applicable"):
        tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, decoder=True, passes=[("tokens.merge", {"r": 2})])
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, decoder=True, passes=[("tokens.merge", {"r": 2})],
                          on_failure="skip")  # fmt: skip
    for report in (fast.report, fast.decode_report):
        rec = report["tokens.merge"]
        assert rec.status == "skipped" and rec.rewrites == 0, (rec.status, rec.reason)
        assert "not applicable" in rec.reason and "decoder step graph (KV cache)" in rec.reason, rec.reason
        assert rec.reason in rec.notes
    ref, _ = _greedy_no_cache(model, ids)
    assert torch.equal(tcomp.generate(fast, ids, max_new_tokens=NEW), ref)
    # the forward pass alone (no cache) is refused for its causal attention
    with pytest.warns(PassFailedWarning, match="tokens.merge did not apply"):  # warn: said, and returned
        fwd = tcomp.optimize(model, {"input_ids": ids}, decoder=False, passes=[("tokens.merge", {"r": 2})],
                             on_failure="warn")  # fmt: skip
    rec = fwd.report["tokens.merge"]
    assert rec.status == "skipped" and "causal attention" in rec.reason, rec.reason
    with torch.no_grad():
        assert rel_error(fwd(ids), model(ids)) < 1e-5


def test_cache_arguments_are_checked():
    model = _model("rope")
    ids = _ids(4, n=5)
    with pytest.raises(ValueError, match="go with past_key_values"):
        model(ids, attention_mask=torch.ones(2, 1, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool attention_mask"):
        model(ids, past_key_values=object(), cache_position=torch.arange(5))


@pytest.mark.parametrize("name", ["attention.softmax_free", "attention.rpe_fft"])
def test_attention_rewrites_say_why_they_leave_a_decoders_cache_alone(name):
    """No silent no-op: a pass that rewrites softmax attention reports, on both step graphs, that
    the cached attention sites stay softmax and why; the decoder still generates as the model."""
    model = _model("rope-gqa")
    ids = _ids(3)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, decoder=True, passes=[name], on_failure="skip")
    for report in (fast.report, fast.decode_report):
        rec = report[name]
        assert rec.status == "skipped" and rec.rewrites == 0, (rec.status, rec.reason)
        assert rec.reason.startswith("not applicable") and "read the KV cache" in rec.reason, rec.reason
        assert rec.reason in rec.notes
    ref, _ = _greedy_no_cache(model, ids)
    assert torch.equal(tcomp.generate(fast, ids, max_new_tokens=NEW), ref)


@pytest.mark.parametrize("case", ["rope-gqa", "learned-gqa-eager", "alibi-mqa", "t5"])
def test_zoo_gpt_generates_through_a_linear_attention_state(case):
    """attention.linear on the zoo GPT (no Hugging Face mixin): with a plain causal mask (bool under
    SDPA, additive under eager attention) every layer's cache becomes a state and tcomp.generate's
    greedy tokens equal greedy decoding by whole-sequence prefills; a position bias folded into the
    mask (ALiBi, T5's buckets) is more than a mask: those sites keep softmax and say so."""
    model = _model(case)
    ids = _ids(3)
    biased = case in ("alibi-mqa", "t5")
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, decoder=True, passes=["attention.linear"],
                          on_failure="skip" if biased else "raise")  # fmt: skip
    biased = case in ("alibi-mqa", "t5")
    for report in (fast.report, fast.decode_report):
        rec = report["attention.linear"]
        if biased:
            assert rec.rewrites == 0 and "more than a mask" in " ".join(rec.notes), rec.notes
        else:
            assert rec.status == "applied" and rec.rewrites == model.cfg.depth, (rec.status, rec.reason, rec.notes)
    assert fast.recurrent is not biased
    seq = ids
    for _ in range(NEW):
        seq = torch.cat([seq, fast.step(seq, start=0)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(tcomp.generate(fast, ids, max_new_tokens=NEW), seq)
