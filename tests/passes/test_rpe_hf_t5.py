"""attention.rpe_fft on a Hugging Face T5 encoder after attention.linear: unscaled scores, the
bucketed bias computed in layer 0 and reused by every layer, the padding mask HF writes into the
bias (sdpa: ``where(mask, bias, min)``; eager: ``bias + where(mask, 0, min)``) peeled back off.
Checked against a float64 kernelized-attention-with-RPE forward of the same weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("transformers")

import tcomp  # noqa: E402
from tcomp.dialect import attention_nodes, is_rpe_linear_attention  # noqa: E402
from tests.hf_zoo import VOCAB, make  # noqa: E402
from tests.passes.test_rpe_coeffs import quadratic_nodes  # noqa: E402


def kernel_rpe_t5(model, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """T5EncoderModel in float64 with every self-attention replaced by quadratic kernelized
    attention with the layer-0 relative bias: weights (elu(q)+1).(elu(k)+1) exp(bias_ij), padded
    keys dropped, rows normalised (T5: no 1/sqrt(d) scaling, which elu+1 ignores anyway)."""
    enc = copy.deepcopy(model).double().encoder
    b, n = ids.shape
    x = enc.embed_tokens(ids)
    bias = enc.block[0].layer[0].SelfAttention.compute_bias(n, n)[0]
    c = torch.exp(bias - bias.amax(-1, keepdim=True)) * keep[:, None, None, :].double()
    for blk in enc.block:
        sa = blk.layer[0].SelfAttention
        h = blk.layer[0].layer_norm(x)
        q, k, v = (p(h).view(b, n, sa.n_heads, -1).transpose(1, 2) for p in (sa.q, sa.k, sa.v))
        w = ((F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)) * c
        y = ((w / w.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(b, n, -1)
        x = blk.layer[1](x + sa.o(y))
    return enc.final_layer_norm(x)


@pytest.mark.hf
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hf_t5_encoder_sites_rewritten_and_match_float64(impl):
    case = make("t5-encoder", impl)
    fast = tcomp.optimize(
        case.model, case.kwargs, passes=["attention.linear", "attention.rpe_fft"], verify=False,
        on_failure="skip",  # T5's bias couples queries and keys: attention.linear has nothing to take
    )  # fmt: skip
    rec = fast.report["attention.rpe_fft"]
    assert rec.status == "applied" and rec.rewrites == 2, rec.notes
    gm = fast.graph_module
    assert not attention_nodes(gm) and sum(is_rpe_linear_attention(n) for n in gm.graph.nodes) == 2
    assert all(s["rpe_coefficients"] == "from the bias family, O(n)" for s in rec.sites)
    seq = next(n for n in gm.graph.nodes if n.name == "input_ids").meta["val"].shape[1]
    assert quadratic_nodes(gm, seq) == []
    for b, n in [(2, 10), (3, 23)]:  # the example length and another one
        g = torch.Generator().manual_seed(n)
        ids = torch.randint(2, VOCAB, (b, n), generator=g)
        keep = torch.ones(b, n, dtype=torch.long)
        keep[1, n - 3 :] = 0
        with torch.no_grad():
            got = fast(input_ids=ids, attention_mask=keep).last_hidden_state
        want = kernel_rpe_t5(case.model, ids, keep)
        assert torch.isfinite(got).all()
        assert (got.double() - want).norm() <= 1e-5 * want.norm(), (impl, n)
