"""CUDA-graph replay of optimized modules: same results as running the graph, one graph per input
signature, outputs that are the caller's own, and the cases that must not replay."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp.cudagraphs import CudaGraphRunner

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


class Block(torch.nn.Module):
    def __init__(self, c: int = 32):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(c, 4, batch_first=True)
        self.ff = torch.nn.Sequential(torch.nn.Linear(c, 2 * c), torch.nn.GELU(), torch.nn.Linear(2 * c, c))
        self.ln = torch.nn.LayerNorm(c)

    def forward(self, x):
        h = x + self.attn(x, x, x, need_weights=False)[0]
        return self.ln(h + self.ff(h))


def test_cpu_inputs_run_directly_and_flags_say_so():
    calls = []

    def fn(x):
        calls.append(1)
        return x * 2

    runner = CudaGraphRunner(fn, lambda: [])
    x = torch.randn(3)
    assert torch.equal(runner(x), x * 2) and torch.equal(runner(x), x * 2)
    assert len(calls) == 2 and not runner.graphs
    m = Block().eval()
    fast = tcomp.optimize(m, (torch.randn(2, 5, 32),), target="cpu")
    assert fast.cudagraphs == "off"  # CPU target: no graphs
    fast = tcomp.optimize(m, (torch.randn(2, 5, 32),), target="cpu", cudagraphs=True, backend="eager")
    assert fast.cudagraphs == "on"
    y = torch.randn(2, 7, 32)
    with torch.no_grad():
        assert torch.allclose(fast(y), m(y), atol=1e-5)  # CPU tensors: the graph runs directly


@cuda
def test_replay_matches_and_outputs_are_fresh():
    torch.manual_seed(0)
    m = Block().eval().cuda().half()
    fast = tcomp.optimize(m, (torch.randn(2, 8, 32, device="cuda", dtype=torch.half),), target="h200")
    assert fast.cudagraphs == "on"
    with torch.no_grad():
        outs = []
        for n in (16, 16, 16, 24, 24, 24, 16):
            x = torch.randn(3, n, 32, device="cuda", dtype=torch.half)
            y = fast(x)
            ref = m(x)
            assert torch.allclose(y.float(), ref.float(), rtol=2e-2, atol=2e-2)
            outs.append((y, y.clone()))
    for y, saved in outs:  # later replays did not overwrite earlier results
        assert torch.equal(y, saved)
    assert fast.cudagraphs == "on" and len(fast._runner.graphs) == 2


@cuda
def test_grad_mode_with_trainable_params_runs_directly():
    m = Block().eval().cuda()
    fast = tcomp.optimize(m, (torch.randn(2, 8, 32, device="cuda"),), target="h200")
    x = torch.randn(2, 8, 32, device="cuda", requires_grad=True)
    for _ in range(3):
        fast(x)
    assert not fast._runner.graphs


@cuda
def test_loaded_artifact_replays_graphs(tmp_path):
    torch.manual_seed(0)
    m = Block().eval().cuda()
    fast = tcomp.optimize(m, (torch.randn(2, 8, 32, device="cuda"),), target="h200")
    fast.save(str(tmp_path / "a"))
    loaded = tcomp.load(str(tmp_path / "a"), device="cuda")
    x = torch.randn(4, 12, 32, device="cuda")
    with torch.no_grad():
        outs = [loaded(x) for _ in range(3)]
        ref = m(x)
    for y in outs:
        assert torch.allclose(y, ref, rtol=1e-3, atol=1e-3)
    assert len(loaded._graphs.graphs) == 1
