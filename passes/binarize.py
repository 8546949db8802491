"""``binarize``: 1-bit linear layers, ``W ≈ alpha[n] * sign(W)``, sign bits packed 8 per byte as
graph buffers (format: tcomp/quant.py).

* W1A16 (default, op ``tcomp.linear_w1``): activations stay in the model's dtype.
* W1A1 (``activations=True``, op ``tcomp.linear_w1a1``, XNOR-Net / BiT style): activations are
  binarized at run time as ``x ≈ tau + beta * sign(x - tau)`` with ``beta = mean|x - tau|`` per
  token, so the product is an XNOR-popcount of packed bits; the threshold's share
  ``alpha * (sign(W) · tau)`` is folded into a per-channel shift once, here.

Scales. Without calibration ``alpha[n] = mean_k |W[n, k]|`` (the L2-optimal scale for the signs of the
weight alone) and ``tau = 0``. With ``calibration=`` batches (``tcomp.optimize(..., calibration=...)``)
the pass records each layer's inputs X on them and fits what the outputs need: ``tau`` = the mean of
each input channel (W1A1), and ``alpha[n]`` by least squares of the layer's output ``X · W[n]`` on
what the binarized layer computes per unit of alpha (``X · sign(W[n])`` for W1A16, ``beta * (s_x ·
sign(W[n])) + tau · sign(W[n])`` for W1A1), capped at ``max|W[n, :]|`` so that no 1-bit weight leaves
its row's range. Inputs come from the unbinarized model.

Contract (EMPIRICAL): binarization has no useful worst-case bound (each weight may move by up to
``max|W[n, :]|``, which this pass does check site by site), so what is promised is measured: the
relative L2 error of the model's outputs to the float64 reference on the given inputs, at most
``tolerance`` (0.75 by default; else the pipeline rolls the pass back; ``verify=False`` forces it).
Per layer, for Gaussian-like rows the relative weight error is ``sqrt(1 - 2/pi) ≈ 0.60``; post-training
binarization of a pretrained transformer without retraining moves its outputs by about their own
norm (MiniLM: 1.0-1.3), which this tolerance refuses. Real-model fidelity (MiniLM cosine):
bench/quant_minilm.py. Selection and its defaults: ``tcomp/passes/quant_common.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tcomp.calibration import record_inputs
from tcomp.contract import Contract, Exactness, PassResult
from tcomp.options import option
from tcomp.passes.quant_common import Selection, quantize_linears, select
from tcomp.quant import binarize as binarize_weight
from tcomp.quant import binarize_activations, dequantize_bits, max_weight_error, scale_dtype
from tcomp.registry import PassContext, register_pass

CONTRACT = Contract(
    Exactness.EMPIRICAL,
    metric="relative L2 error of the outputs to the float64 reference on the given inputs",
    tolerance=0.75,
    preconditions="finite weights; per weight |alpha*sign(w) - w| <= max|w[n,:]| (checked)",
)


def fit_alpha(y: Tensor, z: Tensor, fallback: Tensor) -> Tensor:
    """Per output channel the least-squares ``alpha`` of ``y ≈ alpha * z`` over rows (T, N); the
    ``fallback`` where ``z`` is all zero or the fit is not a positive finite number."""
    num, den = (y * z).sum(0), (z * z).sum(0)
    alpha = num / den.clamp_min(torch.finfo(den.dtype).tiny)
    return torch.where((den > 0) & (alpha > 0) & torch.isfinite(alpha), alpha, fallback)


def encode(w: Tensor, inputs: Tensor | None, activations: bool):
    """(buffers, extra args, max weight error in half-spans) of one layer; ``inputs`` (T, K) are the
    calibration inputs of the layer (None: uncalibrated)."""
    n, k = w.shape
    w64 = w.detach().to(torch.float64)
    s_w = torch.where(w64 >= 0, 1.0, -1.0).to(torch.float64)
    packed, alpha = binarize_weight(w)  # signs packed, alpha = mean|W| (the uncalibrated scale)
    alpha = alpha.to(torch.float64)
    tau = torch.zeros(k, dtype=torch.float64, device=w.device)
    if inputs is not None:
        x = inputs.to(w.device, torch.float64)
        y = x @ w64.T
        if activations:
            tau = x.mean(dim=0)
            signs, beta = binarize_activations(x, tau, torch.float64)
            z = beta[:, None] * (signs @ s_w.T) + (tau @ s_w.T)[None, :]
        else:
            z = x @ s_w.T
        # capped at max|W[n, :]|: every 1-bit weight stays within the row's range (the check below)
        alpha = torch.minimum(fit_alpha(y, z, alpha), w64.abs().amax(dim=1))
    alpha = alpha.to(scale_dtype(w.dtype))
    amax = w64.abs().amax(dim=1)
    span = torch.where(amax > 0, 2 * amax, torch.ones_like(amax))  # error <= span/2 = max|w[n,:]|
    err = max_weight_error(w, dequantize_bits(packed, alpha, k), span)
    if not activations:
        return {"packed": packed, "alpha": alpha}, (k,), err
    shift = alpha.to(torch.float64) * (s_w @ tau)
    work = torch.float64 if w.dtype == torch.float64 else torch.float32
    return {"packed": packed, "alpha": alpha, "tau": tau.to(work), "shift": shift.to(work)}, (k,), err


def _layer_inputs(gm, selection: dict[str, Any], calibration: Any) -> dict[str, Tensor]:
    """Each selected linear node's inputs on the calibration batches, as (tokens, K) rows."""
    nodes, _ = select(gm, **selection)
    seen: dict[str, list[Tensor]] = {}

    def observe(name: str, args: tuple) -> None:
        x = args[0]
        seen.setdefault(name, []).append(x.detach().reshape(-1, x.shape[-1]).to(torch.float64).cpu())

    record_inputs(gm, nodes, calibration, observe)
    return {name: torch.cat(xs) for name, xs in seen.items()}


@dataclass(frozen=True)
class BinarizeOptions(Selection):
    """Options of ``binarize`` (calibration batches, when the run has them, fit the scales)."""

    activations: bool = option(False, help="binarize activations too (W1A1, XNOR-popcount) instead of W1A16")


@register_pass("binarize", CONTRACT, options=BinarizeOptions, after=("canonicalize",))
def binarize(gm, opts: BinarizeOptions, ctx: PassContext) -> PassResult:
    """1-bit weights (sign * per-channel scale, bit-packed) for the selected linear layers; with
    ``activations=True`` 1-bit activations too (W1A1). The context's calibration batches fit the
    scales and thresholds (see the module docstring)."""
    selection, activations, calibration = opts.selection, opts.activations, ctx.calibration
    op = torch.ops.tcomp.linear_w1a1.default if activations else torch.ops.tcomp.linear_w1.default
    fmt = "w1a1" if activations else "w1"
    if calibration is None:
        result = quantize_linears(
            gm, fmt, op, lambda w: encode(w, None, activations), selection=selection,
            rounds_activations=activations,
        )  # fmt: skip
        result.notes.append(
            "uncalibrated: alpha = mean|W|" + (", threshold 0" if activations else "")
            + " (calibration=... fits them to the layers' outputs)"
        )  # fmt: skip
        return result
    inputs = _layer_inputs(gm, selection, calibration)
    result = quantize_linears(
        gm, fmt, op, lambda w, x: encode(w, x, activations), selection=selection, site_data=inputs,
        rounds_activations=activations,
    )  # fmt: skip
    tokens = max((x.shape[0] for x in inputs.values()), default=0)
    result.notes.append(
        f"calibrated on {tokens} tokens: alpha by least squares on each layer's outputs"
        + (", threshold = per-channel input mean" if activations else "")
    )
    return result
