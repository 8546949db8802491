"""``torch.compile(model, backend="tcomp")`` on the Hugging Face models of the test zoo (issue 20,
item 6): forward and backward, two sequence lengths, graph breaks, and fallbacks that are reported.

Every comparison is against the model in float64 (``tcomp.verify.reference_model``) by relative
error, with the FP_EQUIVALENT tolerance of ``tcomp.verify``: at most 4x the eager float32 model's own
error, never below 16 ulp. Parameter gradients are compared as one vector (every parameter's
gradient concatenated): a parameter whose gradient is zero in real arithmetic (the key bias under
softmax's shift invariance) has a float64 reference of ~1e-17 and no meaningful relative error of
its own.

Training graphs fall back to AOTAutograd unchanged (tcomp rewrites inference graphs only; see
tcomp/dynamo.py); the tests check that the gradients are right and that the fallback is reported.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tcomp.dynamo as td
from tcomp.verify import Reference, reference_model, rel_error

pytest.importorskip("transformers")
from tests.hf_zoo import ARCHS as ZOO  # noqa: E402
from tests.hf_zoo import make  # noqa: E402
from tests.test_dynamo import fresh_dynamo  # noqa: E402, F401 - autouse: a fresh Dynamo and no reports per test

# every model of the HF zoo: encoders (text, T5's relative bias, vision, Swin's windows) and decoders
# (learned positions, RoPE + GQA)
ARCHS = list(ZOO)


def _inputs(case, n: int, seed: int) -> dict:
    """Fresh random inputs like the case's example, with sequence length ``n`` (text models)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in case.kwargs.items():
        if k == "input_ids":
            out[k] = torch.randint(2, 128, (v.shape[0], n), generator=gen)
        elif k == "attention_mask":
            mask = torch.ones(v.shape[0], n, dtype=v.dtype)
            if case.arch in ("gpt2", "llama"):
                mask[1, :3] = 0  # left padding on decoders
            else:
                mask[1, n - 3 :] = 0  # right padding on encoders
            out[k] = mask
        elif isinstance(v, torch.Tensor) and v.is_floating_point():
            out[k] = torch.randn(v.shape, generator=gen)
        else:
            out[k] = v
    return out


def _run(model, kwargs, params: nn.Module, grad: bool = True):
    """The hidden states and the gradient (one vector) of a random projection of them."""
    kwargs = {k: v.to(torch.float64) if _is_float(v) and _is_f64(params) else v for k, v in kwargs.items()}
    h = model(**kwargs).last_hidden_state
    if not grad:
        return h.detach(), None
    w = torch.randn(h.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64).to(h.dtype)
    (h * w).sum().backward()
    g = torch.cat([p.grad.flatten().double() for p in params.parameters() if p.grad is not None])
    params.zero_grad(set_to_none=True)
    return h.detach(), g


def _is_float(v) -> bool:
    return isinstance(v, torch.Tensor) and v.is_floating_point()


def _is_f64(m: nn.Module) -> bool:
    return next(m.parameters()).dtype == torch.float64


def _fp_equivalent(got, eager, ref, what: str) -> None:
    """``got`` is FP_EQUIVALENT to eager: its error vs float64 is within tcomp.verify's tolerance."""
    base = rel_error(eager, ref)
    tol = Reference(inputs=[], outputs=[], dtype=torch.float32, base_error=base).fp_tolerance()
    err = rel_error(got, ref)
    assert err <= tol, f"{what}: error {err:.3g} vs float64, tolerance {tol:.3g} (eager's own {base:.3g})"


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_and_backward_at_two_lengths(arch):
    case = make(arch, "sdpa")
    model = case.model  # eval mode (no dropout), parameters require grad: training graphs
    ref = reference_model(model).requires_grad_(True)
    eager, mine = copy.deepcopy(model), copy.deepcopy(model)
    compiled = torch.compile(mine, backend="tcomp")
    lengths = (10, 14) if "input_ids" in case.kwargs else (10,)  # vision: the image size is fixed
    for i, n in enumerate(lengths):
        x = _inputs(case, n, seed=i)
        h64, g64 = _run(ref, x, ref)
        h32, g32 = _run(eager, x, eager)
        with pytest.warns(td.FallbackWarning, match="grad is enabled") if i == 0 else _no_check():
            hc, gc = _run(compiled, x, mine)
        _fp_equivalent(hc, h32, h64, f"{arch} n={n} output")
        _fp_equivalent(gc, g32, g64, f"{arch} n={n} parameter gradients")
    training = [r for r in td.reports() if r.mode == "training"]
    assert training and all(
        any(f.where == "graph" and "AOTAutograd unchanged" in f.reason for f in r.fallbacks) for r in training
    )
    assert len(td.fallbacks()) >= len(training)

    # inference: the graphs tcomp rewrites, one tcomp.attention per layer. Dynamo saw the sequence
    # length change in training, so the inference graph is dynamic from its first compile: every
    # later length runs on it without another compile
    td.clear_reports()
    with torch.no_grad():
        for i, n in enumerate((14, 7, 10) if len(lengths) > 1 else lengths):
            x = _inputs(case, n, seed=10 + i)
            got = _run(compiled, x, mine, grad=False)[0]
            _fp_equivalent(got, _run(eager, x, eager, grad=False)[0], _run(ref, x, ref, grad=False)[0], f"{arch} n={n} inference")  # fmt: skip
            assert len(td.reports()) == 1, f"n={n} compiled again: the inference graph is not dynamic"
    inference = [r for r in td.reports() if r.mode == "inference"]
    assert inference and all(r.attention_sites == case.n_attention_layers for r in inference), [
        (r.attention_sites, r.notes) for r in inference
    ]
    assert not any(r.fallbacks for r in inference), [r.fallbacks for r in inference]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), eager.state_dict().values()))


class _no_check:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Breaks(nn.Module):
    """A BERT whose forward breaks Dynamo's graph three ways: print, .item() and a branch on a value."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        h = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        print("tcomp graph break")
        scale = h.abs().mean().item()
        if h.norm() > 0:  # data-dependent: always true here, unknown to Dynamo
            h = h * 2
        else:
            h = h - 1
        return h / (1 + scale)


def test_graph_breaks(capsys):
    case = make("bert", "sdpa")
    model = Breaks(case.model)
    ref = reference_model(model).requires_grad_(True)
    mine = copy.deepcopy(model)
    compiled = torch.compile(mine, backend="tcomp")
    x = _inputs(case, 12, seed=5)

    def run(m, params, grad=True):
        kw = x
        out = m(**kw)
        if not grad:
            return out.detach(), None
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(
            out.dtype
        )
        (out * w).sum().backward()
        g = torch.cat([p.grad.flatten().double() for p in params.parameters() if p.grad is not None])
        params.zero_grad(set_to_none=True)
        return out.detach(), g

    h64, g64 = run(ref, ref)
    h32, g32 = run(model, model)
    hc, gc = run(compiled, mine)
    _fp_equivalent(hc, h32, h64, "graph breaks: output")
    _fp_equivalent(gc, g32, g64, "graph breaks: parameter gradients")
    assert len(td.reports()) >= 2, "Dynamo handed tcomp one graph: the breaks did not break"
    td.clear_reports()
    with torch.no_grad():
        _fp_equivalent(run(compiled, mine, grad=False)[0], run(model, model, grad=False)[0],
                       run(ref, ref, grad=False)[0], "graph breaks: inference")  # fmt: skip
    reps = td.reports()
    assert len(reps) >= 2 and all(r.mode == "inference" for r in reps)
    assert sum(r.attention_sites for r in reps) == case.n_attention_layers
    assert capsys.readouterr().out.count("tcomp graph break") >= 4  # the print ran, eagerly, on every call


def test_an_unsupported_graph_falls_back_and_is_reported():
    """ONNX Runtime's CPU provider takes float32/float64 only: a half-precision graph stays eager,
    runs, and the fallback is a warning and a record naming the reason."""
    pytest.importorskip("onnxruntime")
    case = make("bert", "sdpa")
    model = case.model.to(torch.bfloat16)
    x = _inputs(case, 10, seed=6)
    compiled = torch.compile(model, backend="tcomp", options={"backend": "onnxruntime"})
    with torch.no_grad(), pytest.warns(td.FallbackWarning, match="bfloat16"):
        got = compiled(**x).last_hidden_state
        want = model(**x).last_hidden_state
    assert torch.isfinite(got).all() and rel_error(got, want) < 1e-2
    fb = td.fallbacks()
    assert fb and all(f.where == "lower.onnxruntime" and "bfloat16" in f.reason for f in fb), fb
    assert "stays eager" in str(fb[0])


def test_a_graph_the_pipeline_cannot_take_runs_unchanged_and_is_reported(monkeypatch):
    import tcomp.pipeline

    def broken(gm, plan, **kwargs):
        raise RuntimeError("no rule for this graph")

    monkeypatch.setattr(tcomp.pipeline, "run_pipeline", broken)
    case = make("gpt2", "sdpa")
    x = _inputs(case, 10, seed=8)
    compiled = torch.compile(case.model, backend="tcomp")
    with torch.no_grad(), pytest.warns(td.FallbackWarning, match="no rule for this graph"):
        got = compiled(**x).last_hidden_state
    with torch.no_grad():
        want = case.model(**x).last_hidden_state
    assert rel_error(got, want) < 1e-6
    (rep,) = td.reports()
    assert (
        rep.fallbacks[0].where == "graph"
        and "RuntimeError: no rule for this graph" in rep.fallbacks[0].reason
    )
    assert rep.attention_sites == 0
