"""Module paths in reports read as the user's model names them, from torch.export and from Dynamo."""

from __future__ import annotations

import pytest

from tcomp.graph import _clean_path


@pytest.mark.parametrize(
    "raw, want",
    [
        ("L['self'].encoder.layer[0]", "encoder.layer[0]"),  # torch.export
        ("encoder.layer.0", "encoder.layer.0"),
        ("L['self']", ""),
        ("L['self']._modules['enc']._modules['0']", "enc.0"),
        ("L['args[0]'].layers.0.input_layernorm", "layers.0.input_layernorm"),  # torch.compile of a module
        ("L['fn'].blocks.1.attn", "blocks.1.attn"),
    ],
)
def test_clean_path(raw, want):
    assert _clean_path(raw) == want
