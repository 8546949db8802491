"""Attention transfer for ``attention.linear``: fitting hedgehog feature maps (and, optionally, a
per-head affine correction of the attention output) so that a linear-attention site reproduces the
softmax attention it replaces, on calibration samples (``feature_maps.SiteSample``).

* ``fit_hedgehog``: Adam on the per-head q/k maps, optionally keeping the weights with the lowest
  loss on held-out calibration sentences (``holdout``). ``loss``:
  ``"attention"`` -- KL divergence between the softmax attention rows and the linear attention rows
  (the Hedgehog loss, Zhang et al. 2024); ``"output"`` -- relative squared error of the attention
  output; ``"both"`` -- their sum. Only rows of real tokens count: for a self-attention site with a
  key-padding mask, the query rows at padded positions (whose outputs nothing reads) are left out.
* ``fit_correction``: a per-head affine map ``out @ C_h + c_h`` of the linear attention output,
  solved in closed form (ridge regression towards the identity) against target outputs -- the
  low-cost final step of LoLCATs (Zhang et al. 2024), here without gradient descent. It changes
  the site's output beyond the feature map (the contract stays EMPIRICAL).

Targets default to the sample's own softmax attention; ``sequential`` fitting in the pass hands in
the original model's outputs while the samples come from the already-linearized model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tcomp.passes.feature_maps import FeatureMap, SiteSample, eager, kernelize, rel_err

LOSSES = ("attention", "output", "both")


def eager_site(fmap: FeatureMap, smp: SiteSample, wq=None, wk=None) -> Tensor:
    """The site's linear attention output on one sample, run eagerly (with the output correction)."""
    km, qm = smp.key_query_masks()
    out = kernelize(eager, fmap, smp.q, smp.k, smp.v, km, qm, smp.key_bias(), smp.causal,
                    fmap.q_weight if wq is None else wq, fmap.k_weight if wk is None else wk)  # fmt: skip
    return fmap.correct(eager, out, fmap.out_weight, fmap.out_bias)


def site_error(fmap: FeatureMap, samples: list[SiteSample], targets: list[Tensor] | None = None) -> float:
    """Mean relative error of the site's linear attention output vs ``targets`` (default: the
    samples' softmax attention outputs) on the rows of real tokens (``query_rows``)."""
    with torch.no_grad():
        targets = targets or [smp.attention() for smp in samples]
        errs = [rel_err(eager_site(fmap, smp) * query_rows(smp), t * query_rows(smp)) for smp, t in zip(samples, targets)]
    return float(sum(errs) / len(errs))


def query_rows(smp: SiteSample) -> Tensor:
    """(B, 1|H, N, 1) float weights of the query rows that matter: real tokens. A self-attention
    site's key-padding mask also marks its padded query positions."""
    km, qm = smp.key_query_masks()
    n, m = smp.q.shape[-2], smp.k.shape[-2]
    rows = torch.ones(*smp.q.shape[:-2], n, 1)
    if km is not None and n == m:
        rows = rows * km.transpose(-2, -1)
    if qm is not None:
        rows = rows * qm
    return rows.float()


def linear_weights(fmap: FeatureMap, smp: SiteSample, wq, wk) -> Tensor:
    """Attention weights (B, H, N, M) of the linear attention (rows sum to 1 or are all zero)."""
    qf = fmap.apply(eager, smp.q, "q", wq)
    kf = fmap.apply(eager, smp.k, "k", wk)
    n_rep = qf.shape[1] // kf.shape[1]
    if n_rep > 1:
        kf = kf.repeat_interleave(n_rep, 1)
    sc = torch.matmul(qf, kf.transpose(-2, -1))
    kb = smp.key_bias()
    if kb is not None:
        top = kb.amax(-1, keepdim=True)
        sc = sc * torch.exp(kb - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    km, qm = smp.key_query_masks()
    if km is not None:
        sc = sc * km * qm
    if smp.causal:
        sc = sc * torch.ones(sc.shape[-2:], dtype=torch.bool).tril()
    return sc / sc.sum(-1, keepdim=True).clamp_min(1e-20)


def _values(smp: SiteSample, heads: int) -> Tensor:
    n_rep = heads // smp.v.shape[1]
    return smp.v.repeat_interleave(n_rep, 1) if n_rep > 1 else smp.v


def stack(samples: list[SiteSample], targets: list[Tensor] | None = None):
    """The samples (and targets) as one padded sample, so each fitting step runs a few large ops
    instead of many small ones: sequences padded to the longest, padded keys and queries masked
    out. Samples with an additive bias or differing settings are returned as they are."""
    one = {(s.q.shape[1], s.k.shape[1], s.scale, s.causal, s.q.shape[-2] == s.k.shape[-2]) for s in samples}
    if len(samples) < 2 or len(one) > 1 or any(s.bias is not None for s in samples):
        return samples, targets
    n = max(s.q.shape[-2] for s in samples)
    m = max(s.k.shape[-2] for s in samples)
    mh = max(1 if s.mask is None or s.mask.dim() < 3 else s.mask.shape[-3] for s in samples)

    def pad(t: Tensor, rows: int, cols: int | None = None) -> Tensor:
        return torch.nn.functional.pad(t, (0, 0 if cols is None else cols, 0, rows))

    qs, ks, vs, masks = [], [], [], []
    for s in samples:
        b, _, ns, _ = s.q.shape
        ms = s.k.shape[-2]
        mask = torch.ones(b, mh, ns, ms, dtype=torch.bool)
        if s.mask is not None:
            mask = mask & s.mask.to(torch.bool)
        masks.append(pad(mask.to(torch.uint8), n - ns, m - ms).to(torch.bool))
        qs.append(pad(s.q, n - ns))
        ks.append(pad(s.k, m - ms))
        vs.append(pad(s.v, m - ms))
    s0 = samples[0]
    merged = SiteSample(torch.cat(qs), torch.cat(ks), torch.cat(vs), None, torch.cat(masks), s0.scale, s0.causal)
    if targets is not None:
        targets = [torch.cat([pad(t, n - t.shape[-2]) for t in targets])]
    return [merged], targets


class _Batch:
    """What the loss needs of one sample, computed once: softmax weights, row weights, targets."""

    def __init__(self, smp: SiteSample, target: Tensor | None):
        self.smp = smp
        self.weights = smp.softmax()
        self.rows = query_rows(smp).expand(*self.weights.shape[:-1], 1) * (self.weights.sum(-1, keepdim=True) > 0)
        self.entropy = torch.special.xlogy(self.weights, self.weights).sum(-1, keepdim=True)
        self.target = smp.attention() if target is None else target
        self.target_sq = float((self.target.pow(2) * self.rows).sum().clamp_min(1e-30))


def _loss(fmap: FeatureMap, b: _Batch, wq, wk, loss: str) -> Tensor:
    lin = linear_weights(fmap, b.smp, wq, wk)
    total = lin.new_zeros(())
    if loss in ("attention", "both"):  # KL(softmax row || linear row), mean over the real rows
        kl = b.entropy - (b.weights * torch.log(lin + 1e-12)).sum(-1, keepdim=True)
        total = total + (kl * b.rows).sum() / b.rows.sum().clamp_min(1.0)
    if loss in ("output", "both"):  # relative squared error of the attention output
        out = torch.matmul(lin, _values(b.smp, lin.shape[1]))
        total = total + ((out - b.target).pow(2) * b.rows).sum() / b.target_sq
    return total


def _split(smp: SiteSample, target: Tensor | None, holdout: float):
    """The stacked sample's sentences split into a fitting part and a held-out (validation) part."""
    nv = int(smp.q.shape[0] * holdout)
    if smp.bias is not None or nv < 1 or nv >= smp.q.shape[0]:
        return [(smp, target)], []

    def part(sl):
        m = None if smp.mask is None else smp.mask[sl]  # stacked: one mask row per sentence
        return SiteSample(smp.q[sl], smp.k[sl], smp.v[sl], None, m, smp.scale, smp.causal), (
            None if target is None else target[sl]
        )

    n = smp.q.shape[0]
    return [part(slice(0, n - nv))], [part(slice(n - nv, n))]


def fit_hedgehog(fmap: FeatureMap, samples: list[SiteSample], steps: int, lr: float, advance=None,
                 loss: str = "attention", targets: list[Tensor] | None = None, holdout: float = 0.0,
                 check: int = 10) -> float:  # fmt: skip
    """Fit the per-head q/k maps by attention transfer (Adam at ``lr``); returns the final loss.
    ``targets``: outputs the ``output`` loss aims at (default: each sample's own). ``holdout``: the
    fraction of calibration sentences kept out of the fit to pick, every ``check`` steps, the
    weights with the lowest held-out loss (early stopping: the maps overfit a few sentences)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    wq = fmap.q_weight.clone().requires_grad_(True)
    wk = fmap.k_weight.clone().requires_grad_(True)
    opt = torch.optim.Adam([wq, wk], lr=lr)
    samples, targets = stack(samples, targets)
    pairs = list(zip(samples, targets or [None] * len(samples)))
    fit, val = _split(*pairs[0], holdout) if len(pairs) == 1 and holdout > 0 else (pairs, [])
    data = [_Batch(smp, t) for smp, t in fit]
    vdata = [_Batch(smp, t) for smp, t in val]

    def val_loss() -> float:
        with torch.no_grad():
            return float(sum(_loss(fmap, b, wq, wk, loss) for b in vdata))

    best = (val_loss(), wq.detach().clone(), wk.detach().clone()) if vdata else None
    value = math.nan
    with torch.enable_grad():
        for step in range(steps):
            total = sum(_loss(fmap, b, wq, wk, loss) for b in data) / len(data)
            opt.zero_grad()
            total.backward()
            opt.step()
            value = float(total.detach())
            if best is not None and ((step + 1) % check == 0 or step + 1 == steps):
                v = val_loss()
                if v < best[0]:
                    best = (v, wq.detach().clone(), wk.detach().clone())
            if advance is not None:
                advance()
    fmap.q_weight, fmap.k_weight = (best[1], best[2]) if best is not None else (wq.detach(), wk.detach())
    return value


def fit_correction(fmap: FeatureMap, samples: list[SiteSample], targets: list[Tensor] | None = None,
                   ridge: float = 0.1) -> None:  # fmt: skip
    """Per head, the affine map ``[out, 1] @ A`` (A of shape (D + 1, D)) closest to the targets on
    the real tokens, by ridge regression towards the identity (``ridge`` relative to the mean
    diagonal of the Gram matrix); stored as ``fmap.out_weight`` (H, D, D) and ``fmap.out_bias``."""
    fmap.out_weight = fmap.out_bias = None
    gram = rhs = None
    with torch.no_grad():
        for smp, t in zip(samples, targets or [None] * len(samples)):
            out = eager_site(fmap, smp).double()
            t = (smp.attention() if t is None else t).double()
            rows = query_rows(smp).double().expand(*out.shape[:-1], 1)
            x = torch.cat([out, torch.ones_like(out[..., :1])], -1) * rows  # (B, H, N, D + 1)
            g = torch.einsum("bhni,bhnj->hij", x, x)
            r = torch.einsum("bhni,bhnj->hij", x, t * rows)
            gram, rhs = (g, r) if gram is None else (gram + g, rhs + r)
    d = gram.shape[-1] - 1
    lam = ridge * torch.diagonal(gram, dim1=-2, dim2=-1)[:, :d].mean(-1).clamp_min(1e-12)  # (H,)
    eye = torch.eye(d + 1, d, dtype=gram.dtype)
    a = torch.linalg.solve(gram + lam[:, None, None] * torch.eye(d + 1, dtype=gram.dtype), rhs + lam[:, None, None] * eye)
    fmap.out_weight = a[:, :d].float().contiguous()
    fmap.out_bias = a[:, d:].float().contiguous()
