"""tokens.merge: r = 0 is the identity, merging exact duplicates with proportional attention is
lossless (the correctness anchor), padding never mixes with real tokens, schedules, unmerge."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tcomp.passes  # noqa: F401 - registers the passes
from tcomp import models
from tcomp.capture import capture
from tcomp.dialect import attention_nodes, is_token_merge
from tcomp.pipeline import copy_graph_module, get_pass, run_pipeline
from tcomp.verify import bitwise_equal, rel_error

MERGE = get_pass("tokens.merge")


@functools.cache
def _canonical(name: str, seed: int = 0, **cfg):
    """(zoo entry, canonicalized graph) -- built once per configuration."""
    e = models.get(name, seed=seed, **cfg)
    cap = capture(e.model, e.example_inputs, e.example_kwargs)
    return e, run_pipeline(cap.gm, ["canonicalize"]).gm


def _merge(gm, **opts):
    return MERGE(copy_graph_module(gm), **opts)


def _run(gm, args, kwargs=None):
    with torch.no_grad():
        return gm(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["vit", "bert", "bert-eager"])
def test_r0_is_the_identity(name):
    e, gm = _canonical(name, depth=3)
    res = _merge(gm, r=0)
    assert res.rewrites == 0 and not any(is_token_merge(n) for n in res.gm.graph.nodes)
    args, kw = e.example_inputs, e.example_kwargs
    assert bitwise_equal(_run(res.gm, args, kw), _run(gm, args, kw))


@pytest.mark.parametrize("name", ["vit", "bert", "bert-eager"])
def test_one_merge_per_block_proportional_attention_output_shape_kept(name):
    e, gm = _canonical(name, depth=3)
    res = _merge(gm, r=2)
    merges = [n for n in res.gm.graph.nodes if is_token_merge(n)]
    assert res.rewrites == len(merges) == 3
    assert [s["r"] for s in res.sites] == [2, 2, 2]
    for a in attention_nodes(res.gm)[1:]:  # after the first merge: a (B, 1, 1, N') log-size bias
        assert a.args[3] is not None and tuple(a.args[3].meta["val"].shape[1:3]) == (1, 1)
    args, kw = e.example_inputs, e.example_kwargs
    out, ref = _run(res.gm, args, kw), _run(gm, args, kw)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert 0 < rel_error(out, ref) < 1.0  # merged: close, but not the same function


# -- the anchor: exact duplicates merged with proportional attention are lossless ---------------


@functools.cache
def _dup_vit(seed: int):
    """A ViT (8x8 patches of 4 px) whose position embeddings are zero, its canonical graph, and a
    batch of images whose patch columns come in equal adjacent pairs: with CLS protected, every
    token of set A (patches 0, 2, 4, ...) has an exact twin in set B (patches 1, 3, 5, ...)."""
    e = models.get("vit", seed=seed, depth=2, image_size=32, patch_size=4)
    with torch.no_grad():
        e.model.pos_embed.zero_()
    g = torch.Generator().manual_seed(seed)
    half = torch.randn(2, 3, 32, 4, 4, generator=g)  # (B, C, H, 4 patch columns, 4 px)
    img = half.repeat_interleave(2, dim=3).reshape(2, 3, 32, 32)
    cap = capture(e.model, (img,))
    gm = run_pipeline(cap.gm, ["canonicalize"]).gm
    with torch.no_grad():
        ref64 = models.get("vit", seed=seed, depth=2, image_size=32, patch_size=4).model
        ref64.pos_embed.data.zero_()
        ref = ref64.double()(img.double())
    return gm, img, ref, rel_error(_run(gm, (img,)), ref)


@settings(max_examples=10)
@given(seed=st.integers(0, 1), r=st.integers(1, 32))
def test_merging_exact_duplicates_is_lossless(seed, r):
    """FP_EQUIVALENT on the pooled (CLS) output: duplicates merged, the rest untouched."""
    gm, img, ref, own = _dup_vit(seed)
    res = _merge(gm, r=[r, 0])
    assert res.rewrites == 1
    assert rel_error(_run(res.gm, (img,)), ref) <= max(8 * own, 1e-5)


def test_merging_non_duplicates_is_not_lossless():
    """The anchor test can fail: the same model on images without twins loses accuracy."""
    gm, img, ref, own = _dup_vit(0)
    noisy = img + 0.5 * torch.randn(img.shape, generator=torch.Generator().manual_seed(1))
    res = _merge(gm, r=[16, 0])
    assert rel_error(_run(res.gm, (noisy,)), _run(gm, (noisy,))) > 100 * max(own, 1e-7)


@functools.cache
def _dup_bert(seed: int):
    """BERT with zero position embeddings (equal ids -> equal tokens) and its canonical graph."""
    e = models.get("bert", seed=seed, depth=2)
    with torch.no_grad():
        e.model.embeddings.position.weight.zero_()
    cap = capture(e.model, e.example_inputs, e.example_kwargs)
    return e.model, run_pipeline(cap.gm, ["canonicalize"]).gm


@settings(max_examples=8)
@given(seed=st.integers(0, 1), pairs=st.lists(st.integers(3, 6), min_size=2, max_size=2), data=st.data())
def test_duplicates_with_padding_are_lossless_token_level(seed, pairs, data):
    """Rows [CLS, a, a, b, b, ..., pad...]: merging twins (and padding) keeps every real token's
    unmerged output (FP_EQUIVALENT)."""
    model, gm = _dup_bert(seed)
    g = torch.Generator().manual_seed(seed + 7)
    n = 16
    ids = torch.zeros(2, n, dtype=torch.long)
    mask = torch.zeros(2, n, dtype=torch.long)
    for row, p in enumerate(pairs):
        words = torch.randint(2, 1000, (p,), generator=g).repeat_interleave(2)
        ids[row, 0], ids[row, 1 : 1 + 2 * p] = 1, words
        mask[row, : 1 + 2 * p] = 1
    r = data.draw(st.integers(1, min(pairs) + min((n - 1 - 2 * p) // 2 for p in pairs)))
    res = _merge(gm, r=[r, 0])
    with torch.no_grad():
        ref = model.double()(ids, attention_mask=mask)
        model.float()
        base, out = gm(ids, attention_mask=mask), res.gm(ids, attention_mask=mask)
    real = mask.bool()
    own = rel_error(base[real], ref[real])
    assert rel_error(out[real], ref[real]) <= max(8 * own, 1e-5)


# -- padding -------------------------------------------------------------------------------------


@st.composite
def _merge_case(draw):
    b, n, h, d, c = draw(st.integers(1, 3)), draw(st.integers(4, 24)), draw(st.integers(1, 3)), 4, 6
    keep = torch.tensor(
        draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=b, max_size=b))
    )
    protected = draw(st.sampled_from([[], [0], [0, 1], [0, -1]]))
    r = draw(st.integers(0, (n - len(protected)) // 2))
    seed = draw(st.integers(0, 2**16))
    return b, n, h, d, c, keep, protected, r, seed


@given(case=_merge_case())
def test_op_padding_never_mixes_with_real_tokens(case):
    b, n, h, d, c, keep, protected, r, seed = case
    g = torch.Generator().manual_seed(seed)
    x, k = torch.randn(b, n, c, generator=g), torch.randn(b, h, n, d, generator=g)
    size = torch.randint(1, 4, (b, n), generator=g).float()
    new_x, new_size, new_keep, assign = torch.ops.tcomp.token_merge(x, k, size, keep, r, protected)
    assert new_x.shape == (b, n - r, c) and assign.shape == (b, n)
    assert set(assign.unique().tolist()) == set(range(n - r))  # every slot holds a token
    slot_keep = new_keep.gather(1, assign)
    # a token changes class only when it is dropped with weight 0: sizes of real slots are the
    # sizes of the real tokens in them, padding slots the sizes of padding tokens in them
    real_in = torch.zeros_like(new_size).scatter_add(1, assign, size * (keep & slot_keep))
    assert torch.equal(real_in, new_size * new_keep)
    for j, i in enumerate(protected):  # protected tokens keep their own value and size, in front
        assert torch.allclose(new_x[:, j], x[:, i], rtol=1e-6, atol=1e-7)
        assert torch.equal(new_size[:, j], size[:, i])
    # real slots do not depend on padding content
    x2, k2 = x.clone(), k.clone()
    x2[~keep] = torch.randn(int((~keep).sum()), c, generator=g)
    k2.transpose(1, 2)[~keep] = torch.randn(int((~keep).sum()), h, d, generator=g)
    new_x2, _, _, assign2 = torch.ops.tcomp.token_merge(x2, k2, size, keep, r, protected)
    assert torch.equal(assign2[keep], assign[keep])
    assert torch.allclose(new_x2[new_keep], new_x[new_keep], rtol=1e-6, atol=1e-6)


@settings(max_examples=8)
@given(seed=st.integers(0, 2**16), r=st.integers(1, 4))
def test_model_real_tokens_unaffected_by_padding_content(seed, r):
    e, gm = _canonical("bert", depth=2, seq=16)
    res = _merge(gm, r=r)
    g = torch.Generator().manual_seed(seed)
    mask = models.padding_mask(2, 16, seed)
    ids = models.random_ids(2, 16, 1000, seed) * mask
    other = torch.where(mask.bool(), ids, torch.randint(1, 1000, ids.shape, generator=g))
    a, b = _run(res.gm, (ids,), {"attention_mask": mask}), _run(res.gm, (other,), {"attention_mask": mask})
    real = mask.bool()
    assert torch.isfinite(a).all()
    assert torch.allclose(a[real], b[real], rtol=1e-5, atol=1e-6)


def test_tolerance_option_sets_the_checked_contract():
    """``tolerance`` is the EMPIRICAL threshold the pipeline checks: one far below the measured
    error rolls the merge back with the reason, the default lets the same merge through."""
    import tcomp
    from tcomp.errors import PassError

    e = models.get("vit", seed=0, depth=2)
    passes = lambda **o: ["canonicalize", ("tokens.merge", {"r": 2, **o})]  # noqa: E731
    strict = tcomp.optimize(e.model, e.example_inputs, passes=passes(tolerance=1e-9), backend="eager", on_failure="skip")
    rec = strict.report["tokens.merge"]
    assert rec.status == "rolled_back" and rec.tolerance == 1e-9 and "tolerance" in rec.reason
    loose = tcomp.optimize(e.model, e.example_inputs, passes=passes(), backend="eager")
    rec = loose.report["tokens.merge"]
    assert rec.status == "applied" and rec.tolerance == 0.35 and 1e-9 < rec.error <= 0.35
    assert MERGE.contract_of({"tolerance": 0.7}).tolerance == 0.7
    with pytest.raises(PassError, match="tolerance"):
        _merge(_canonical("vit", depth=2)[1], r=1, tolerance=-1.0)
