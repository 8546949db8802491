"""Attention spellings of issue 20 (item 2) each become one ``tcomp.attention`` per block, with the
bias kept exact: an ALiBi bias computed once in the top-level forward and passed to each layer;
float32 upcasts around the softmax (fp32, fp16 and bf16 models); ``masked_fill`` of a bool mask with
-inf or the dtype's minimum (``mask == 0`` and ``~mask``); the scale on q, on k or on both; a causal
mask given as a bool tensor, which becomes the op's ``causal`` flag with no mask tensor kept. Each
runs ``optimize(strict=True)`` under canonicalize's FP_EQUIVALENT check against float64 and is then
checked again on fresh inputs of another size."""

from __future__ import annotations

import math

import pytest
import torch

import tcomp
from tests.fuzz.blocks import Attention, BlockSpec, assert_fp_equivalent, build, inputs, state_hash


def _optimize(spec: BlockSpec, seed: int = 0) -> list[dict]:
    model = build(spec, seed)
    args = inputs(spec, 2, 7, seed)
    before = state_hash(model)
    om = tcomp.optimize(model, args, strict=True)
    rec = om.report["canonicalize"]
    assert rec.status == "applied" and rec.error <= rec.tolerance, (rec.status, rec.reason, rec.error)
    assert len(om.report.sites) == spec.layers and om.report.unmatched == [], om.report.sites
    assert_fp_equivalent(om, model, inputs(spec, 3, 11, seed + 1), spec.dtype)  # fresh draw, other sizes
    assert state_hash(model) == before
    return om.report.sites


@pytest.mark.parametrize("product", ["matmul", "sdpa", "baddbmm"])
def test_alibi_made_once_outside_the_layers_is_each_sites_bias(product):
    sites = _optimize(BlockSpec(product=product, alibi=True, layers=3))
    assert all(s["bias"] and not s["mask"] and not s["causal"] for s in sites), sites


@pytest.mark.parametrize(
    ("upcast", "dtype"),
    [("float", torch.float32), ("dtype", torch.float32), ("float", torch.float16), ("dtype", torch.bfloat16)],
)
def test_upcast_around_the_softmax(upcast, dtype):
    sites = _optimize(BlockSpec(upcast=upcast, dtype=dtype, pad="masked_fill_not", fill="min"))
    assert all(s["mask"] and not s["bias"] for s in sites), sites


@pytest.mark.parametrize("fill", ["-inf", "min"])
@pytest.mark.parametrize("pad", ["masked_fill_eq0", "masked_fill_not"])
def test_masked_fill_with_a_bool_mask(pad, fill):
    sites = _optimize(BlockSpec(pad=pad, fill=fill, dtype=torch.float16 if fill == "min" else torch.float32))
    assert all(s["mask"] and not s["bias"] and not s["causal"] for s in sites), sites


@pytest.mark.parametrize(
    ("where", "product"), [("q", "matmul"), ("k", "einsum"), ("qk", "bmm"), ("qk", "sdpa")]
)
def test_scale_on_q_or_k_is_the_ops_scale(where, product):
    spec = BlockSpec(scale=where, product=product, head_dim=16)
    sites = _optimize(spec)
    assert all(math.isclose(s["scale"], 16**-0.5, rel_tol=1e-12) for s in sites), sites


@pytest.mark.parametrize(("causal", "product"), [("tril", "matmul"), ("arange", "bmm"), ("buffer", "sdpa")])
def test_a_bool_causal_mask_is_the_causal_flag(causal, product):
    sites = _optimize(BlockSpec(causal=causal, product=product))
    assert all(s["causal"] and not s["mask"] and not s["bias"] for s in sites), sites


def test_a_causal_mask_and_ed_with_padding_leaves_the_padding():
    sites = _optimize(BlockSpec(causal="tril", product="sdpa", pad="masked_fill_not", kv_heads=2))
    assert all(s["causal"] and s["mask"] for s in sites), sites


class _Windowed(Attention):
    """Causal within a window of 3 keys: the causal part is the flag, the window stays a mask."""

    def _causal(self, n, device):
        i = torch.arange(n, device=device)
        return (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < 3)


class _AntiCausal(Attention):
    """Each query reads itself and the keys after it: a triangle, but not the causal one."""

    def _causal(self, n, device):
        return torch.ones(n, n, dtype=torch.bool, device=device).triu()


@pytest.mark.parametrize(("cls", "causal"), [(_Windowed, True), (_AntiCausal, False)])
def test_a_mask_that_is_not_only_causal_stays_a_mask(monkeypatch, cls, causal):
    monkeypatch.setattr("tests.fuzz.blocks.Attention", cls)
    sites = _optimize(BlockSpec(causal="arange"))
    assert all(s["mask"] and s["causal"] == causal for s in sites), sites


class _SharedScaledOperands(torch.nn.Module):
    """The scaled q and the transposed scaled k are read elsewhere too: the scale becomes the op's and
    those readers keep their scaled values; k is scaled before views and a transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.o = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        qs, kt = q * 8**-0.25, (k * 8**-0.25).reshape(b * 2, n, 8).reshape(b, 2, n, 8).transpose(-2, -1)
        p = (qs @ kt).softmax(-1)
        extra = qs.mean() + kt.sum(-2, keepdim=True).transpose(-2, -1)  # other readers of both
        return self.o((p @ v + extra).transpose(1, 2).reshape(b, n, 16))


def test_a_scaled_operand_read_elsewhere_keeps_its_scale_there():
    torch.manual_seed(0)
    model = _SharedScaledOperands().eval()
    om = tcomp.optimize(model, (torch.randn(2, 5, 16),), strict=True)
    rec = om.report["canonicalize"]
    assert rec.status == "applied" and rec.error <= rec.tolerance and len(om.report.sites) == 1
    assert math.isclose(om.report.sites[0]["scale"], 8**-0.5, rel_tol=1e-12)
    assert_fp_equivalent(om, model, (torch.randn(3, 9, 16),), torch.float32)
