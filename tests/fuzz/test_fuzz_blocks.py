"""Fuzzing canonicalize, passes and backends with random small transformers (issue 20, item 7).

Each example draws a stack of blocks in one of many spellings (``tests.fuzz.blocks``: the product,
where the scale goes, padding and causal masks in every form, an ALiBi bias made outside the layers,
float32 upcasts, fused or separate q/k/v, MHA/GQA/MQA, pre/post-norm, fp32/fp16/bf16, head dims
8..64)
and checks: the model is captured; canonicalize finds one ``tcomp.attention`` per block built, with
the bias/mask/causal the model wrote, under ``strict=True``; the result is FP_EQUIVALENT to the model
against float64 on fresh inputs of another length; a pass or backend that takes such models
(``quantize.int8_weight``, ``attention.linear``, lowering to ``eager`` or ``onnxruntime``) holds its
contract or refuses with a tcomp error naming it; the user's model is never changed.

Budget: under ``HYPOTHESIS_PROFILE=ci`` each property runs a few examples (a capture, a float64
reference and a verified pipeline each: about a minute for both on one core); other profiles run
their own count (``thorough``, ``make test-thorough``: 300 models through canonicalize, 100 through
a pass or backend).
"""

from __future__ import annotations

import os

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tcomp
from tcomp.errors import TcompError
from tests.fuzz.blocks import BlockSpec, assert_fp_equivalent, build, inputs, specs, state_hash

_CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"


def _examples(ci: int, share: float = 1.0) -> int:
    """``ci`` examples in the CI profile (the suite's time budget), else ``share`` of the active
    profile's count (the pass property runs a second pipeline per example, an ONNX export at times)."""
    return ci if _CI else max(1, int(settings.default.max_examples * share))


def _expected(spec: BlockSpec) -> dict:
    """What each site should say about the masks the model wrote. Eager attention applies each one
    to the scores on its own. SDPA gets one ``attn_mask``: with any float in it, the bool masks are
    folded into that float, which is the causal flag only when it is the additive causal mask alone."""
    bool_pad = spec.pad not in (None, "additive")
    if spec.product != "sdpa":
        return {
            "bias": spec.alibi or spec.pad == "additive",
            "mask": bool_pad,
            "causal": spec.causal is not None,
        }
    floats = [x for x in (spec.alibi, spec.pad == "additive", spec.causal == "additive") if x]
    if not floats:
        return {"bias": False, "mask": bool_pad, "causal": spec.causal is not None}
    causal_alone = spec.causal == "additive" and len(floats) == 1 and not bool_pad
    return {"bias": not causal_alone, "mask": False, "causal": causal_alone}


sizes = st.tuples(st.integers(2, 3), st.integers(2, 12))  # batch, length (>= 2: both dims stay dynamic)


@settings(max_examples=_examples(10))
@given(spec=specs(), bn=sizes, seed=st.integers(0, 2**16))
@example(  # every rewrite of the spelling at once: GQA, a causal buffer and-ed with padding, fp16
    spec=BlockSpec(product="sdpa", scale="qk", pad="masked_fill_not", causal="buffer", heads=4, kv_heads=2,
                   dtype=torch.float16),
    bn=(2, 9), seed=1,
)  # fmt: skip
@example(  # 3-D products, scale after an ALiBi bias and an additive causal mask, bf16
    spec=BlockSpec(product="bmm", scale="div", scale_last=True, alibi=True, causal="additive", fill="min",
                   upcast="float", heads=2, kv_heads=1, gqa_expand=True, dtype=torch.bfloat16, layers=3),
    bn=(3, 6), seed=2,
)  # fmt: skip
def test_every_block_is_one_site_and_stays_fp_equivalent(spec, bn, seed):
    model = build(spec, seed)
    args = inputs(spec, *bn, seed)
    before = state_hash(model)
    om = tcomp.optimize(model, args, strict=True)
    rec = om.report["canonicalize"]
    assert rec.status == "applied" and rec.error <= rec.tolerance, (rec.status, rec.reason, rec.error)
    assert om.report.unmatched == [] and len(om.report.sites) == spec.layers, om.report.sites
    want = _expected(spec)
    for site in om.report.sites:
        assert {k: site[k] for k in want} == want, site
    assert_fp_equivalent(om, model, inputs(spec, bn[0], bn[1] + 3, seed + 1), spec.dtype)
    assert state_hash(model) == before


@st.composite
def _steps(draw):
    """A drawn model and a pass or backend that accepts its dtype (ONNX Runtime: float32)."""
    spec = draw(specs())
    steps = ["quantize.int8_weight", "eager"] + (["attention.linear"] if spec.causal is None else [])
    steps += ["onnxruntime"] if spec.dtype == torch.float32 else []
    return spec, draw(st.sampled_from(steps))


@settings(max_examples=_examples(5, share=1 / 3))
@given(drawn=_steps(), bn=sizes, seed=st.integers(0, 2**16))
def test_passes_and_backends_hold_their_contract_or_refuse(drawn, bn, seed):
    spec, step = drawn
    model = build(spec, seed)
    args = inputs(spec, *bn, seed)
    before = state_hash(model)
    kwargs = {"backend": step} if step in ("eager", "onnxruntime") else {"passes": [step]}
    try:
        om = tcomp.optimize(model, args, **kwargs)
    except TcompError as exc:  # a refusal (PassFailed, an input or pass error) names what refused
        assert step in str(exc), exc
    else:
        for rec in om.report.passes:
            if rec.status == "applied" and rec.tolerance is not None:
                assert rec.error is not None and rec.error <= rec.tolerance, (
                    rec.name,
                    rec.error,
                    rec.tolerance,
                )
        assert len(om.report["canonicalize"].sites) == spec.layers
        if step in ("eager", "onnxruntime"):  # lowering is FP_EQUIVALENT; check it again on a fresh draw
            assert_fp_equivalent(om, model, inputs(spec, bn[0], bn[1] + 3, seed + 1), spec.dtype)
        else:
            with torch.no_grad():
                assert torch.isfinite(om(*inputs(spec, bn[0], bn[1] + 3, seed + 1))).all()
    assert state_hash(model) == before
