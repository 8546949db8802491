"""``binarize``: 1-bit linear layers, ``W ≈ alpha[n] * sign(W)`` with ``alpha[n] = mean_k |W[n, k]|``
(the L2-optimal scale for the signs), sign bits packed 8 per byte as graph buffers (op
``tcomp.linear_w1``; format: tcomp/quant.py). Activations stay in the model's dtype (W1A16).

Contract (EMPIRICAL): binarization has no useful worst-case bound (each weight may move by up to
``max|W[n, :]|``, which this pass does check site by site), so what is promised is measured: the
relative L2 error of the model's outputs to the float64 reference on the given inputs, at most
``tolerance`` = 0.75 (else the pipeline rolls the pass back; ``verify=False`` forces it). Per layer,
for Gaussian-like rows the relative weight error is ``sqrt(1 - 2/pi) ≈ 0.60``; post-training
binarization of a pretrained transformer without retraining moves its outputs by about their own
norm (MiniLM: 1.0-1.3), which this tolerance refuses. Real-model fidelity (MiniLM cosine): bench/quant_minilm.py.
Selection and its defaults: ``tcomp/passes/quant_common.py``.
"""

from __future__ import annotations

import torch

from tcomp.passes.quant_common import DEFAULT_SKIP, quantize_linears
from tcomp.pipeline import Contract, Exactness, PassResult, register_pass
from tcomp.quant import binarize as binarize_weight
from tcomp.quant import dequantize_bits, max_weight_error

CONTRACT = Contract(
    Exactness.EMPIRICAL,
    metric="relative L2 error of the outputs to the float64 reference on the given inputs",
    tolerance=0.75,
    preconditions="finite weights; per weight |alpha*sign(w) - w| <= max|w[n,:]| (checked)",
)


def _encode(w: torch.Tensor):
    packed, alpha = binarize_weight(w)
    k = w.shape[1]
    amax = w.detach().abs().amax(dim=1).to(torch.float64)
    span = torch.where(amax > 0, 2 * amax, torch.ones_like(amax))  # error <= span/2 = max|w[n,:]|
    return (
        {"packed": packed, "alpha": alpha},
        (k,),
        max_weight_error(w, dequantize_bits(packed, alpha, k), span),
    )


@register_pass("binarize", CONTRACT, after=("canonicalize",))
def binarize(
    gm,
    include: tuple[str, ...] = ("*",),
    skip: tuple[str, ...] = DEFAULT_SKIP,
    types: tuple[str, ...] = ("Linear",),
    skip_first_last: bool = True,
) -> PassResult:
    """1-bit weights (sign * per-channel mean|W|, bit-packed) for the selected linear layers."""
    selection = {"include": tuple(include), "skip": tuple(skip), "types": tuple(types)}
    selection["skip_first_last"] = skip_first_last
    return quantize_linears(gm, "w1", torch.ops.tcomp.linear_w1.default, _encode, selection=selection)
