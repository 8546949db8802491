"""The int8 KV cache (``tcomp.optimize(..., kv_cache="int8")``): codes and a float32 scale per token
and head, each cached value within scale/2 of what the model wrote; the cache form of attention
takes the codes and scales; its output moves no more than the stated bound; decoders of several
families stay close to HF eager (teacher-forced logits) and save and reload."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tcomp
from tcomp import kv_cache
from tcomp.errors import InputError
from tcomp.verify import rel_error

from .decoders import VOCAB, make

pytestmark = pytest.mark.hf
MAX_LEN = 40
NEW = 12


def _ids(seed: int, batch: int = 2, n: int = 9) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


@example(seed=5737, scale=300.0)  # float32's x / s put a value 2.2e-6 of s past the half step
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-3, 1.0, 300.0]))
def test_rows_within_half_their_scale_and_nan_poisons_its_row(seed, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 5, 16, generator=g) * scale
    x[0, 0, 0] = 0.0  # a row of zeros: scale 1, exact
    q, s = kv_cache.quantize_rows(x)
    assert q.dtype == torch.int8 and s.shape == (2, 3, 5, 1) and q.abs().max() <= 127
    err = (kv_cache.dequantize_rows(q, s, torch.float64) - x.double()).abs()
    # s/2, plus float32's roundings of x/s and of q*s (codes up to 127: at most 2^-17 of s each)
    assert (err <= s.double() * (0.5 + 2**-16)).all()
    assert s[0, 0, 0].item() == 1.0 and (q[0, 0, 0] == 0).all()
    x[1, 2, 3, 4] = float("nan")
    q, s = kv_cache.quantize_rows(x)
    assert kv_cache.dequantize_rows(q, s, torch.float32)[1, 2, 3].isnan().all()
    assert not kv_cache.dequantize_rows(q, s, torch.float32)[1, 2, 2].isnan().any()


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(2, 24), n=st.sampled_from([1, 3]), spread=st.floats(0.1, 4.0))
def test_cached_attention_on_int8_codes_within_the_stated_bound(seed, m, n, spread):
    """|out(int8 cache) - out(exact cache)| <= dv + (exp(2 * scale * |q|_1 * dk) - 1) * max|v| per
    element, dk/dv the largest key/value errors (float64 throughout, so only the cache rounds)."""
    g = torch.Generator().manual_seed(seed)
    b, h, hk, d = 2, 4, 2, 16
    q = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hk, m, d, generator=g, dtype=torch.float64) * spread
    v = torch.randn(b, hk, m, d, generator=g, dtype=torch.float64)
    kv_len = torch.tensor([m])
    scale = 1 / math.sqrt(d)
    (qk, sk), (qv, sv) = kv_cache.quantize_rows(k), kv_cache.quantize_rows(v)
    sk, sv = sk.double(), sv.double()
    exact = torch.ops.tcomp.cached_attention(q, k, v, None, None, scale, kv_len)
    got = torch.ops.tcomp.cached_attention(q, qk, qv, None, None, scale, kv_len, sk, sv)
    dk = (kv_cache.dequantize_rows(qk, sk, torch.float64) - k).abs().max()
    dv = (kv_cache.dequantize_rows(qv, sv, torch.float64) - v).abs().max()
    q1 = q.abs().sum(-1, keepdim=True)  # (b, h, n, 1)
    bound = dv + (torch.exp(2 * scale * q1 * dk) - 1) * v.abs().max()
    assert got.dtype == torch.float64 and torch.isfinite(got).all()
    assert ((got - exact).abs() <= bound * (1 + 1e-9)).all()
    assert not torch.equal(got, exact)  # the cache really rounded


@pytest.mark.parametrize("family", ["llama", "gpt2", "falcon", "stablelm"])
def test_int8_cache_halves_the_bytes_and_stays_close_to_hf_eager(family):
    model = make(family)
    ids = _ids(1)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, kv_cache="int8", verify=False)
    plain = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, verify=False)
    dec, ref_dec = fast.tcomp_decoder, plain.tcomp_decoder

    def cache_bytes(d):
        return sum(t.numel() * t.element_size() for n, t in d.decode_module.named_buffers() if kv_cache.is_buffer_name(n))

    codes = [t for n, t in dec.decode_module.named_buffers() if n.startswith(("tcomp_kv_k_", "tcomp_kv_v_"))]
    assert codes and all(t.dtype == torch.int8 for t in codes)
    d = codes[0].shape[-1]
    assert cache_bytes(dec) == cache_bytes(ref_dec) * (d + 4) // (4 * d)  # fp32 model: 1 + 4/d bytes per 4
    for g in (dec.prefill_module, dec.decode_module):  # the cache form reads codes and scales
        sites = [n for n in g.graph.nodes if n.target is torch.ops.tcomp.cached_attention.default]
        assert len(sites) == dec.n_layers and all(len(n.args) == 9 for n in sites), family
    # teacher forcing: every step fed HF's greedy tokens, logits against HF's full forward
    new = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    with torch.no_grad():
        want = model(new).logits
    got = [dec.step(ids, start=0)[:, -1]]
    for t in range(NEW - 1):
        got.append(dec.step(new[:, ids.shape[1] + t : ids.shape[1] + t + 1])[:, -1])
    errs = [rel_error(a, want[:, ids.shape[1] - 1 + i]) for i, a in enumerate(got)]
    assert max(errs) < 0.03, (family, errs)  # measured <= 0.01 on these configs
    assert min(errs) > 0  # the cache really is int8


def test_int8_decoder_saves_and_reloads(tmp_path):
    model = make("llama", seed=2)
    ids = _ids(3)
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, kv_cache="int8", verify=False)
    out = tcomp.generate(fast, ids, max_new_tokens=8)
    fast.save(str(tmp_path / "lm"))
    loaded = tcomp.load(str(tmp_path / "lm"))
    assert torch.equal(tcomp.generate(loaded, ids, max_new_tokens=8), out)
    assert any(t.dtype == torch.int8 for n, t in loaded.decode_module.named_buffers() if kv_cache.is_buffer_name(n))


def test_kv_cache_option_errors():
    model = make("gpt2")
    ids = _ids(4)
    with pytest.raises(InputError, match=r"kv_cache='fp4'.*'model', 'int8'"):
        tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, kv_cache="fp4", verify=False)
    with pytest.raises(InputError, match=r"kv_cache and batch_buckets are a decoder's options"):
        tcomp.optimize(model, {"input_ids": ids}, decoder=False, kv_cache="int8", verify=False)
