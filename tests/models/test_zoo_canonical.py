"""Every zoo model optimizes to one tcomp.attention per attention layer within its contract."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp import models as zoo
from tcomp.dialect import attention_nodes


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_model_canonicalizes(name):
    e = zoo.get(name)
    fast = tcomp.optimize(e.model, e.example_inputs, example_kwargs=e.example_kwargs)
    rec = fast.report["canonicalize"]
    assert rec.status == "applied", (rec.reason, rec.notes)
    assert len(attention_nodes(fast.graph_module)) == e.n_attention_layers
    assert rec.error <= rec.tolerance
    if e.make_inputs is not None:
        args, kwargs = e.make_inputs(3, 11, 7)
        with torch.no_grad():
            want, got = e.model(*args, **kwargs), fast(*args, **kwargs)
        assert ((got - want).norm() / want.norm()).item() < 1e-5
