"""share_tensors: the prefill and decode graphs hold one KV cache and one copy of each weight, but
never one tensor for two that merely compare equal and must stay apart (state a graph writes,
another memory layout)."""

from __future__ import annotations

import copy

import torch

from tcomp.generation import share_tensors
from tcomp.graph import written_attributes


class _Step(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 4))
        self.register_buffer("table", torch.randn(4, 4))
        self.register_buffer("state", torch.zeros(4))  # written in place: a running sum
        self.register_buffer("tcomp_kv_k_0", torch.zeros(2, 4))

    def forward(self, x):
        self.state.add_(x.sum(0))
        self.state[:2].mul_(0.5)  # a write through a view
        self.tcomp_kv_k_0.index_copy_(0, torch.tensor([0]), x[:1])
        return x @ self.w + x @ self.table + self.state + self.tcomp_kv_k_0.sum(0)


def _graphs():
    gm = torch.export.export(_Step(), (torch.randn(3, 4),), strict=False).module()
    return copy.deepcopy(gm), copy.deepcopy(gm)  # two graphs, each with its own tensors


def test_written_attributes_follow_views_to_the_buffer():
    a, _ = _graphs()
    assert written_attributes(a) == {"state", "tcomp_kv_k_0"}


def test_weights_and_the_cache_are_shared_written_state_and_other_layouts_are_not():
    a, b = _graphs()
    b.tcomp_kv_k_0.normal_()  # the cache is shared whatever it holds
    b.table = b.table.t().contiguous().t()  # equal values, transposed strides
    assert torch.equal(a.table, b.table) and torch.equal(a.state, b.state)
    assert share_tensors(a, b) == 3
    assert b.w is a.w and b.tcomp_kv_k_0 is a.tcomp_kv_k_0 and b.lifted_tensor_0 is a.lifted_tensor_0
    assert b.table is not a.table and b.table.stride() == (1, 4)
    assert b.state is not a.state
    x = torch.randn(3, 4)
    a(x)  # a's running sum moves; b's must not
    assert torch.equal(b.state, torch.zeros(4)) and not torch.equal(a.state, torch.zeros(4))


def test_modules_that_are_not_graphs_share_only_the_cache():
    a, _ = _graphs()
    plain = _Step()
    plain.load_state_dict(a.state_dict(), strict=False)  # equal weights, separate tensors
    assert share_tensors(a, plain) == 1 and plain.tcomp_kv_k_0 is a.tcomp_kv_k_0 and plain.w is not a.w
