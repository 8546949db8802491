"""Bad input gets a clear error that names the place in the user's model; the model is untouched."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp.errors import CaptureError, InputError


class DataDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = self.lin(x)
        if y.sum() > 0:  # branches on a tensor value
            return y * 2
        return y


class Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.softmax(self.lin(x), -1)


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_data_dependent_control_flow_names_the_line():
    m = DataDependent()
    before = _state(m)
    with pytest.raises(CaptureError) as e:
        tcomp.optimize(m, (torch.randn(2, 3, 8),))
    msg = str(e.value)
    assert "DataDependent" in msg and "test_errors.py" in msg and "y.sum() > 0" in msg
    assert "torch.where" in msg or "torch.cond" in msg
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.training  # mode untouched


def test_unsupported_input_type():
    with pytest.raises(InputError, match="set"):
        tcomp.optimize(Plain(), ({1, 2},))
    with pytest.raises(InputError, match="needs example inputs"):
        tcomp.optimize(Plain())


def test_wrong_example_shape_names_the_line():
    with pytest.raises(CaptureError) as e:
        tcomp.optimize(Plain(), (torch.randn(2, 3, 5),))
    assert "test_errors.py" in str(e.value) and "self.lin(x)" in str(e.value)


def test_inputs_that_do_not_fit_the_captured_graph():
    fast = tcomp.optimize(Plain(), (torch.randn(2, 3, 8),))
    assert fast(torch.randn(4, 9, 8)).shape == (4, 9, 8)  # dynamic batch and sequence
    with pytest.raises(InputError, match="do not fit"):
        fast(torch.randn(2, 3, 8), torch.randn(1))
    fixed = tcomp.optimize(Plain(), (torch.randn(1, 3, 8),))  # batch 1 cannot stay dynamic
    with pytest.raises(InputError, match="fixed at capture time"):
        fixed(torch.randn(2, 3, 8))


def test_unknown_target_and_pass():
    with pytest.raises(InputError, match="valid targets"):
        tcomp.optimize(Plain(), (torch.randn(2, 3, 8),), target="tpu")
    with pytest.raises(tcomp.PassError, match="unknown pass"):
        tcomp.optimize(Plain(), (torch.randn(2, 3, 8),), passes=["attention.nope"])


class FixedSeq(torch.nn.Module):
    """Reshapes with a hard-coded sequence length of 3: dynamic sequence dims cannot hold."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        n = x.shape[1]
        table = torch.arange(3 * 8, dtype=x.dtype).view(3, 8)
        torch._check(n == 3)  # noqa: SLF001 - the model's own assumption
        return self.lin(x) + table


def test_model_that_cannot_be_dynamic_says_so():
    m = FixedSeq()
    x = torch.randn(2, 3, 8)
    fast = tcomp.optimize(m, (x,))  # Dim.AUTO lets export specialize the dim instead of failing
    assert fast.report.dynamic_dims["args[0]"] == {0: "dynamic", 1: 3}
    with pytest.raises(InputError, match="fixed at capture time"):
        fast(torch.randn(2, 4, 8))


def test_a_float64_reference_that_cannot_fit_is_refused_before_any_copy(monkeypatch):
    """verify=True needs a float64 copy of the model on the CPU: when the machine lacks the memory
    (here: it says 100 bytes are free, the copy needs 576) optimize stops with what it needs and what to pass; verify=False works."""
    import tcomp.verify as verify

    monkeypatch.setattr(verify, "host_memory_available", lambda: 100)
    m = Plain()
    with pytest.raises(InputError, match=r"float64 copy of Plain.*verify=False"):
        tcomp.optimize(m, (torch.randn(2, 8),), target="cpu", verify=True)
    out = tcomp.optimize(m, (torch.randn(2, 8),), target="cpu", verify=False)
    x = torch.randn(3, 8)
    torch.testing.assert_close(out(x), m(x))
