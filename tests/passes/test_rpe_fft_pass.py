"""rpe_detect (Toeplitz proof of relative-position biases) and the attention.rpe_fft pass: the GPT zoo
models with T5 buckets and ALiBi end to end against a hand-written float64 kernelized-RPE forward,
at the example length and others; non-Toeplitz biases skipped with the reason."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import tcomp
import tcomp.passes  # noqa: F401 - registers the passes
from tcomp.capture import capture
from tcomp.dialect import attention_nodes, is_rpe_linear_attention
from tcomp.models.gpt import GPT, GPTConfig, alibi_slopes
from tcomp.passes.rpe_detect import NotRelative, toeplitz_coeffs
from tcomp.pipeline import run_pipeline
from tests.attention_zoo import AttnSpec, build, inputs

PIPE = ["canonicalize", "attention.linear", "attention.rpe_fft"]


def _gpt(position: str, **kw) -> GPT:
    torch.manual_seed(3)
    m = GPT(GPTConfig(position=position, depth=2, heads=4, dim=32, **kw)).eval()
    if m.t5_bias is not None:  # a trained-looking table, not N(0, 1) noise of the init
        m.t5_bias.table.weight.data = torch.randn_like(m.t5_bias.table.weight) * 0.5
    return m


def kernel_rpe_forward(m: GPT, ids: torch.Tensor, fmap=lambda t: F.elu(t) + 1) -> torch.Tensor:
    """The GPT in float64 with every attention replaced by quadratic kernelized attention with the
    model's relative bias: weights phi(q_i).phi(k_j) exp(bias_ij), causal, rows normalised."""
    m = m.double()
    c, (b, n) = m.cfg, ids.shape
    x = m.tok_emb(ids)
    bias = m.position_bias(n, ids.device, torch.float64)[0]  # (H, n, n)
    w_pos = torch.exp(bias - bias.amax(-1, keepdim=True)) * torch.ones(n, n, dtype=torch.float64).tril()
    for blk in m.blocks:
        qkv = blk.attn.qkv(blk.norm1(x)).view(b, n, 3 * c.heads, c.head_dim).transpose(1, 2)
        q, k, v = qkv.split([c.heads] * 3, dim=1)
        w = (fmap(q) @ fmap(k).transpose(-2, -1)) * w_pos
        y = (w / w.sum(-1, keepdim=True)) @ v
        x = x + blk.attn.proj(y.transpose(1, 2).reshape(b, n, -1))
        x = x + blk.mlp(blk.norm2(x))
    return m.lm_head(m.norm(x))


@pytest.mark.parametrize("position", ["t5", "alibi"])
def test_gpt_with_relative_bias_runs_through_rpe_fft(position):
    model = _gpt(position)
    res = run_pipeline(capture(model, (torch.randint(0, 256, (2, 9)),)).gm, PIPE)
    rec = res.records[-1]
    assert rec.status == "applied" and rec.rewrites == 2 and not attention_nodes(res.gm)
    assert sum(is_rpe_linear_attention(n) for n in res.gm.graph.nodes) == 2
    assert rec.sites[0]["rpe_family"] == ("linear" if position == "alibi" else "offset table")
    assert 9 in rec.sites[0]["rpe_checked_lengths"] and 1 in rec.sites[0]["rpe_checked_lengths"]
    ref_model = _gpt(position)
    for b, n in [(2, 9), (1, 1), (3, 13), (1, 40)]:  # the example length, 1, primes, longer
        ids = torch.randint(0, 256, (b, n), generator=torch.Generator().manual_seed(n))
        got = res.gm(ids)
        want = kernel_rpe_forward(ref_model, ids)
        assert torch.isfinite(got).all()
        assert (got.double() - want).norm() <= 1e-4 * want.norm(), (position, n)


def test_detect_records_alibi_slopes_and_t5_offsets():
    n = 12
    pos = torch.arange(n, dtype=torch.float64)
    slopes = alibi_slopes(6).double()
    alibi = slopes[:, None, None] * (pos[None, :] - pos[:, None])
    c = toeplitz_coeffs(alibi[None])
    assert c.shape == (6, 2 * n - 1)
    assert torch.equal(c[:, n - 1], torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(c[:, 0], -(n - 1) * slopes)
    gpt = _gpt("t5")
    t5 = gpt.position_bias(n, torch.device("cpu"), torch.float32).double()
    assert toeplitz_coeffs(t5).shape == (4, 2 * n - 1)
    broken = t5.clone()
    broken[0, 2, 5, 3] += 0.25
    with pytest.raises(NotRelative, match="head 2, entry \\(5, 3\\)"):
        toeplitz_coeffs(broken)
    with pytest.raises(NotRelative, match="differs across the batch"):
        toeplitz_coeffs(torch.cat([t5, t5 + 1.0]))


def test_non_toeplitz_bias_is_left_alone_with_reason():
    spec = AttnSpec(spelling="matmul_div", bias=True)  # a learned (1, H, N, N) bias: not j - i
    model = build(spec, layers=2)
    (x,) = inputs(spec, 2, 6, padded=False)
    res = run_pipeline(capture(model, (x,)).gm, PIPE)
    rec = res.records[-1]
    assert rec.status == "skipped" and len(attention_nodes(res.gm)) == 2
    assert sum("not a function of j - i" in note for note in rec.notes) == 2


def test_model_is_not_mutated_and_favor_map_runs():
    model = _gpt("alibi")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 256, (2, 8))
    res = run_pipeline(
        capture(model, (ids,)).gm,
        ["canonicalize", ("attention.rpe_fft", {"feature_map": "favor", "num_features": 64})],
    )
    assert res.records[-1].rewrites == 2
    out = res.gm(ids)
    assert torch.isfinite(out).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


class AlibiEncoder(torch.nn.Module):
    """Bidirectional self-attention with a symmetric ALiBi bias and a key-padding mask (SDPA)."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads, self.qkv, self.o = heads, torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        pos = torch.arange(n, device=x.device, dtype=x.dtype)
        bias = -self.slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs()
        bias = bias[None].masked_fill(~pad[:, None, None, :], float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.o(y.transpose(1, 2).reshape(b, n, d))


def test_padding_mask_with_symmetric_alibi():
    torch.manual_seed(0)
    model = AlibiEncoder().eval()
    x = torch.randn(2, 7, 16)
    pad = torch.ones(2, 7, dtype=torch.bool)
    pad[1, 4:] = False
    res = run_pipeline(capture(model, (x, pad)).gm, PIPE)
    rec = res.records[-1]
    if rec.rewrites == 0:  # the padded bias must reach the pass as a Toeplitz bias + a key mask
        pytest.fail(f"site not rewritten: {rec.notes}")
    got = res.gm(x, pad)
    # float64 quadratic reference: elu+1 features, exp(-slope |j - i|) weights, padded keys dropped
    m = model.double()
    q, k, v = m.qkv(x.double()).view(2, 7, 3, 2, -1).permute(2, 0, 3, 1, 4).unbind(0)
    pos = torch.arange(7, dtype=torch.float64)
    c = torch.exp(-m.slopes[:, None, None].double() * (pos[None, :] - pos[:, None]).abs())
    w = ((F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)) * c * pad[:, None, None, :]
    y = (w / w.sum(-1, keepdim=True)) @ v
    want = m.o(y.transpose(1, 2).reshape(2, 7, 16))
    assert (got.double() - want).norm() <= 1e-5 * want.norm()
    # padded keys contribute nothing
    x2 = torch.where(pad[..., None], x, x * 3 + 1)
    assert torch.allclose(res.gm(x2, pad)[pad], got[pad], atol=1e-5)


def test_optimize_verifies_the_empirical_contract():
    model = _gpt("t5")
    ids = torch.randint(0, 256, (2, 10))
    # T5's bias couples queries and keys: attention.linear finds nothing to rewrite, rpe_fft does
    om = tcomp.optimize(model, (ids,), passes=["attention.linear", "attention.rpe_fft"], on_failure="skip")
    rec = om.report["attention.rpe_fft"]
    assert rec.status == "applied" and rec.exactness == "empirical" and 0 < rec.error <= rec.tolerance
    assert torch.isfinite(om(torch.randint(0, 256, (1, 17)))).all()
    # a tolerance below the measured error rolls the pass back
    om = tcomp.optimize(model, (ids,), passes=[("attention.rpe_fft", {"tolerance": rec.error / 10})], on_failure="skip")
    assert om.report["attention.rpe_fft"].status == "rolled_back"
