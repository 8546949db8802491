"""``tcomp.cached_attention`` on its Triton kernels (backends/triton/decode_attention.py) against the
float64 reference of the dialect: split-KV decode (N <= 16) and the kv_len-bounded flash prefill.

CPU (CI): under TRITON_INTERPRET=1 in fp32 and fp16 at small shapes with large tiles, the number of
splits forced so that several splits, idle splits (past kv_len) and one split (no combine launch)
all run. The unread cache slots hold NaN, and a second run with other garbage there must give the
same bits. GPU (marked ``gpu``): bf16 at caches up to 32k slots, and a CUDA-graph replay serving
other lengths than the one captured.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp.backend import get_backend  # noqa: E402
from tcomp.backends.triton import decode_attention as dec  # noqa: E402
from tcomp.backends.triton.configs import AttnConfig, DecodeConfig, decode_config  # noqa: E402
from tcomp.targets import get_target  # noqa: E402
from tcomp.verify import rel_error  # noqa: E402

REF = torch.ops.tcomp.cached_attention.default
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TARGET = "h100" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])  # bf16: GPU only
EPS = {torch.float32: 1.2e-7, torch.float16: 9.8e-4, torch.bfloat16: 7.8e-3}


def _problem(b, hk, g, n, m, d, dv, lens, use_bias, use_mask, dtype, seed, garbage=float("nan")):
    """Inputs on DEVICE with ``garbage`` in every cache slot (and bias column) no row may read."""
    gen = torch.Generator().manual_seed(seed)
    h = hk * g
    q = torch.randn(b, h, n, d, generator=gen)
    k, v = torch.randn(b, hk, m, d, generator=gen), torch.randn(b, hk, m, dv, generator=gen)
    kv_len = torch.tensor(lens, dtype=torch.int64)
    for row, length in enumerate(lens if len(lens) == b else lens * b):
        k[row, :, length:] = garbage
        v[row, :, length:] = garbage
    bias = torch.randn(1, h, n, m, generator=gen) if use_bias else None
    if bias is not None:
        bias[..., max(lens) :] = garbage
    mask = (torch.rand(b, 1, n, m, generator=gen) > 0.3) if use_mask else None
    cast = [x.to(DEVICE, dtype) if x is not None else None for x in (q, k, v, bias)]
    return (*cast, mask.to(DEVICE) if mask is not None else None, d**-0.5, kv_len.to(DEVICE))


def _check(args, got):
    q, k, v, bias, mask, scale, kv_len = args
    dtype = q.dtype
    f64 = [x.double().cpu() if x is not None else None for x in (q, k, v, bias)]
    ref = REF(*f64, None if mask is None else mask.cpu(), scale, kv_len.cpu())
    own = REF(*(x.cpu() if x is not None else None for x in (q, k, v, bias)),
              None if mask is None else mask.cpu(), scale, kv_len.cpu())  # fmt: skip
    assert got.shape == ref.shape and got.dtype == dtype
    assert torch.isfinite(got).all()
    err, own_err = rel_error(got, ref), rel_error(own, ref)
    assert err <= 4 * own_err + 16 * EPS[dtype], (err, own_err)
    return ref


@st.composite
def decode_problems(draw):
    b = draw(st.integers(1, 3))
    hk = draw(st.sampled_from([1, 2]))
    g = draw(st.sampled_from([1, 2, 4]))  # hk == 1 and g > 1: MQA
    n = draw(st.sampled_from([1, 3]))
    m = draw(st.integers(1, 90))
    d = draw(st.sampled_from([16, 40, 64, 128]))
    dv = draw(st.sampled_from([d, 24]))
    kind = draw(st.sampled_from(["one", "full", "rows", "shared"]))
    if kind == "rows":
        lens = [draw(st.integers(1, m)) for _ in range(b)]
    else:
        lens = [{"one": 1, "full": m}.get(kind) or draw(st.integers(1, m))]
    return b, hk, g, n, m, d, dv, lens


@settings(max_examples=25)
@given(
    prob=decode_problems(), use_bias=st.booleans(), use_mask=st.booleans(),
    dtype=st.sampled_from(DTYPES), block_n=st.sampled_from([16, 32, 64]),
    splits=st.sampled_from([None, 1, 2, 3, 7]), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_decode_matches_float64(prob, use_bias, use_mask, dtype, block_n, splits, seed):
    """Several splits (some past kv_len, so idle), or one (no combine), or the target's default."""
    args = _problem(*prob, use_bias, use_mask, dtype, seed)
    cfg = None if splits is None else DecodeConfig(block_n, splits, 4, 1)
    got = dec.cached_attention(*args, target=TARGET, config=cfg)
    _check(args, got)
    # other garbage in the unread slots: the very same bits
    other = _problem(*prob, use_bias, use_mask, dtype, seed, garbage=3e4)
    assert torch.equal(dec.cached_attention(*other, target=TARGET, config=cfg), got)


@pytest.mark.parametrize("splits", [2, 3, 5])
def test_every_tile_of_every_length_lands_in_one_split(splits):
    """Per-row lengths around tile and split boundaries (tiles of 16; 1..7 tiles over 2, 3, 5
    splits: remainders, idle splits, one tile per split): each row matches the reference."""
    lens = [1, 15, 16, 17, 33, 47, 64, 65, 80, 99, 112]
    args = _problem(len(lens), 1, 2, 1, 112, 16, 16, lens, False, False, torch.float32, splits)
    _check(args, dec.cached_attention(*args, target=TARGET, config=DecodeConfig(16, splits, 4, 1)))


def test_stale_partials_of_idle_splits_are_never_used(monkeypatch):
    """Scratch full of NaN (what splits past kv_len leave there): the result is unchanged."""
    args = _problem(2, 2, 2, 3, 90, 24, 24, [70, 5], True, True, torch.float16, 9)
    cfg = DecodeConfig(16, 5, 4, 1)
    clean = dec.cached_attention(*args, target=TARGET, config=cfg)
    monkeypatch.setattr(
        dec, "scratch", lambda numel, device: torch.full((numel,), float("nan"), device=device)
    )
    assert torch.equal(dec.cached_attention(*args, target=TARGET, config=cfg), clean)
    _check(args, clean)


@settings(max_examples=8)
@given(
    n=st.integers(17, 40), m=st.integers(20, 70), hk=st.sampled_from([1, 2]), g=st.sampled_from([1, 3]),
    use_bias=st.booleans(), use_mask=st.booleans(), dtype=st.sampled_from(DTYPES),
    per_row=st.booleans(), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_prefill_matches_float64(n, m, hk, g, use_bias, use_mask, dtype, per_row, seed):
    """More than DECODE_MAX_N new tokens: the flash kernel with its keys cut to kv_len."""
    gen = torch.Generator().manual_seed(seed)
    lens = [int(x) for x in torch.randint(1, m + 1, (2 if per_row else 1,), generator=gen)]
    args = _problem(2, hk, g, n, m, 40, 40, lens, use_bias, use_mask, dtype, seed)
    got = dec.cached_attention(*args, target=TARGET, config=AttnConfig(32, 32, 4, 1))
    _check(args, got)
    other = _problem(2, hk, g, n, m, 40, 40, lens, use_bias, use_mask, dtype, seed, garbage=-3e4)
    assert torch.equal(dec.cached_attention(*other, target=TARGET, config=AttnConfig(32, 32, 4, 1)), got)


@pytest.mark.parametrize("n", [1, 3, 20])
@pytest.mark.parametrize("splits", [1, 3])
def test_fully_masked_rows_and_empty_rows_are_zero(n, splits):
    """A query row whose readable keys are all masked, and a batch row with kv_len 0: zeros."""
    args = list(_problem(3, 2, 2, n, 40, 16, 16, [25, 0, 31], False, True, torch.float32, 5))
    mask = args[4].clone()
    mask[0, :, n - 1, :25] = False  # last query of row 0 sees nothing it may read
    mask[0, :, 0, 30:] = True  # (slots past kv_len do not count)
    args[4] = mask
    cfg = DecodeConfig(16, splits, 4, 1) if n <= dec.DECODE_MAX_N else None
    got = dec.cached_attention(*args, target=TARGET, config=cfg).cpu()
    _check(tuple(args), got)
    assert torch.equal(got[0, :, n - 1], torch.zeros_like(got[0, :, n - 1]))
    assert torch.equal(got[1], torch.zeros_like(got[1]))
    assert (got[2].abs().sum(-1) > 0).all() and (got[0, :, : n - 1].abs().sum(-1) > 0).all()  # the others did


def test_kv_len_past_the_cache_is_clamped_and_strided_views_are_read_in_place():
    """kv_len > M reads the whole cache; a cache viewed as (B, M, Hk, D).transpose(1, 2) and a
    kv_len of int32 work without copies."""
    gen = torch.Generator().manual_seed(11)
    b, hk, g, m, d = 2, 2, 2, 37, 32
    k = torch.randn(b, m, hk, d, generator=gen).to(DEVICE).transpose(1, 2)
    v = torch.randn(b, m, hk, d, generator=gen).to(DEVICE).transpose(1, 2)
    q = torch.randn(b, hk * g, 1, d, generator=gen).to(DEVICE)
    kv_len = torch.tensor([500, 12], dtype=torch.int32, device=DEVICE)
    got = dec.cached_attention(
        q, k, v, None, None, 0.2, kv_len, target=TARGET, config=DecodeConfig(16, 3, 4, 1)
    )
    ref = REF(q.double().cpu(), k.double().cpu(), v.double().cpu(), None, None, 0.2, kv_len.cpu())
    assert rel_error(got, ref) < 1e-5


def test_splits_fill_the_target_and_ignore_kv_len():
    """The grid comes from the target's SM count and the shapes (never from kv_len): at batch 1
    with 8 kv heads the splits give at least one program per SM; more batch, fewer splits."""
    h100, a100 = get_target("h100"), get_target("a100")
    one = decode_config(h100, 8, 131072, 128, False)
    assert one.splits * 8 >= h100.sm_count
    assert decode_config(h100, 64, 131072, 128, False).splits < one.splits
    assert decode_config(a100, 8, 131072, 128, False).splits <= one.splits
    assert decode_config(h100, 8, 64, 128, False).splits == 1  # a cache of one tile: no split


def _lowered(dtype=torch.float32):
    class Decode(torch.nn.Module):
        """A decode-step attention over a static KV cache (buffers), as decoder graphs hold it."""

        def __init__(self):
            super().__init__()
            gen = torch.Generator().manual_seed(2)
            self.register_buffer("k_cache", torch.randn(1, 2, 48, 32, generator=gen).to(dtype))
            self.register_buffer("v_cache", torch.randn(1, 2, 48, 32, generator=gen).to(dtype))
            self.k_cache[:, :, 30:] = float("nan")  # beyond every kv_len used below
            self.v_cache[:, :, 30:] = float("nan")

        def forward(self, q, kv_len):
            out = torch.ops.tcomp.cached_attention(
                q, self.k_cache, self.v_cache, None, None, 32**-0.5, kv_len
            )
            return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    return Decode().to(DEVICE)


def test_lowering_replaces_the_node():
    model = _lowered()
    q = torch.randn(1, 4, 1, 32, device=DEVICE)
    kv_len = torch.tensor([30], device=DEVICE)
    om = tcomp.optimize(model, (q, kv_len), target="h200", passes=["canonicalize"], backend="triton")
    rec = om.report["lower.triton"]
    assert rec.status == "applied" and rec.rewrites == 1, (rec.reason, rec.notes)
    assert rec.error <= rec.tolerance
    nodes = [n for n in om.graph_module.graph.nodes if n.op == "call_function"]
    assert any(n.target is dec.cached_attention for n in nodes)
    assert not any(n.target is torch.ops.tcomp.cached_attention.default for n in nodes)
    sources = get_backend("triton").kernel_sources(om.graph_module)
    assert list(sources) == ["tcomp_decode_attn_i.py"]  # fp32: full-precision dots, no bias or mask
    assert "def tcomp_decode_combine(" in sources["tcomp_decode_attn_i.py"]
    # a shorter valid length at run time: the same lowered graph, the reference's answer
    q2 = torch.randn(1, 4, 1, 32, device=DEVICE)
    short = torch.tensor([7], device=DEVICE)
    with torch.no_grad():
        got = om(q2, short)
    ref = REF(q2.double().cpu(), model.k_cache.double().cpu(), model.v_cache.double().cpu(), None, None,
              32**-0.5, short.cpu()).transpose(1, 2).reshape(1, 1, -1)  # fmt: skip
    assert rel_error(got, ref) < 1e-5


def test_check_reason_reaches_the_report():
    """float64 stays on the reference, with the checker's reason in the lowering notes."""
    model = _lowered(torch.float64)
    q = torch.randn(1, 4, 1, 32, device=DEVICE, dtype=torch.float64)
    om = tcomp.optimize(model, (q, torch.tensor([30], device=DEVICE)), target="h200", backend="triton")
    rec = om.report["lower.triton"]
    assert any("stays eager (q dtype torch.float64" in n for n in rec.notes), rec.notes


# ---- GPU -------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA (CI covers the same code under the interpreter)")
@pytest.mark.parametrize("m", [1024, 8192, 32768])
@pytest.mark.parametrize("lens", ["full", "rows"])
def test_bf16_long_caches_gpu(m, lens):
    gen = torch.Generator().manual_seed(m)
    b = 2
    row_lens = [m] if lens == "full" else [int(x) for x in torch.randint(1, m + 1, (b,), generator=gen)]
    args = _problem(b, 8, 4, 1, m, 128, 128, row_lens, False, lens == "rows", torch.bfloat16, m)
    got = dec.cached_attention(*args, target=TARGET)  # the target's default tiles and splits
    _check(args, got)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_one_cuda_graph_serves_every_kv_len_gpu():
    """Captured once; kv_len changed in place between replays (the grid never depends on it)."""
    m = 4096
    q, k, v, _, _, scale, _ = _problem(1, 8, 4, 1, m, 128, 128, [m], False, False, torch.bfloat16, 3)
    kv_len = torch.tensor([m], device="cuda")
    fn = lambda: dec.cached_attention(q, k, v, None, None, scale, kv_len, target=TARGET)  # noqa: E731
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    for length in (1, 63, 64, 65, 1000, m):
        kv_len.fill_(length)
        graph.replay()
        torch.cuda.synchronize()
        _check((q, k, v, None, None, scale, kv_len), out.clone())


@settings(max_examples=15)
@given(
    prob=decode_problems(), use_mask=st.booleans(), dtype=st.sampled_from(DTYPES),
    splits=st.sampled_from([None, 1, 3]), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_decode_on_an_int8_cache_matches_float64(prob, use_mask, dtype, splits, seed):
    """An int8 cache (tcomp/kv_cache.py): the kernel reads the codes and applies each slot's scale
    to its score / probability column; against the float64 reference of the same codes and scales.
    Unread slots hold random codes and NaN scales, never read."""
    from tcomp import kv_cache

    b, hk, g, n, m, d, dv, lens = prob
    q, k, v, _, mask, scale, kv_len = _problem(*prob, False, use_mask, torch.float32, seed, garbage=0.0)
    (qk, sk), (qv, sv) = kv_cache.quantize_rows(k.cpu()), kv_cache.quantize_rows(v.cpu())
    gen = torch.Generator().manual_seed(seed + 1)
    for row, length in enumerate(lens if len(lens) == b else lens * b):
        for codes, sc in ((qk, sk), (qv, sv)):
            codes[row, :, length:] = torch.randint(-127, 128, codes[row, :, length:].shape, generator=gen).to(torch.int8)
            sc[row, :, length:] = float("nan")
    q = q.to(dtype)
    cfg = None if splits is None else DecodeConfig(32, splits, 4, 1)
    on = [t.to(DEVICE) for t in (qk, qv, sk, sv)]
    got = dec.cached_attention(q, on[0], on[1], None, mask, scale, kv_len, on[2], on[3], target=TARGET, config=cfg)
    ref = REF(q.double().cpu(), qk, qv, None, None if mask is None else mask.cpu(), scale, kv_len.cpu(),
              sk.double(), sv.double())  # fmt: skip
    own = REF(q.cpu(), qk, qv, None, None if mask is None else mask.cpu(), scale, kv_len.cpu(), sk, sv)
    assert got.shape == ref.shape and got.dtype == dtype and torch.isfinite(got).all()
    err, own_err = rel_error(got, ref), rel_error(own, ref)
    assert err <= 4 * own_err + 16 * EPS[dtype], (err, own_err)
