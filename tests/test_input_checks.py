"""Run-time input checks (issue 20, item 8): a compiled model -- ``tcomp.optimize``'s module on each
backend, and the artifact ``tcomp.load`` gives back -- called with an input that does not fit the
graph (dtype, rank, device, a fixed dim, two dims the graph needs equal, a missing or unexpected
input, a constant changed, a length past the model's position table) raises ``InputError`` before
any kernel runs, naming the input and what the graph expects; a fitting input still runs and
matches eager."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest
import torch
from torch import nn

import tcomp
from tcomp.errors import InputError
from tcomp.verify import rel_error

HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxscript", "onnx"))
HAVE_TRITON = importlib.util.find_spec("triton") is not None and (
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
)
D = 16


class Block(nn.Module):
    """Self-attention over ``x`` (B, N, D) with a key-padding mask ``keep`` (B, N) and a ``scale``."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(D, 2, batch_first=True)
        self.out = nn.Linear(D, D)

    def forward(self, x, keep, scale=2.0):
        h = self.attn(x, x, x, key_padding_mask=~keep, need_weights=False)[0]
        return self.out(x + h) * scale


def _inputs(b: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    keep = torch.ones(b, n, dtype=torch.bool)
    keep[-1, n - 2 :] = False  # a padded row
    return torch.randn(b, n, D, generator=gen), keep


def _wrong_calls(x: torch.Tensor, keep: torch.Tensor) -> list[tuple[str, tuple, dict, str, list[str]]]:
    """(kind, args, kwargs, the input the message must name, what else it must say)."""
    return [
        ("dtype", (x.double(), keep, 2.0), {}, "x", ["torch.float64", "torch.float32", ".to(torch.float32)"]),
        ("mask dtype", (x, keep.long(), 2.0), {}, "keep", ["torch.int64", "torch.bool"]),
        # without the check this broadcasts to (2, N, D) and returns a wrong answer
        ("rank", (x[0], keep, 2.0), {}, "x", ["rank 2", "rank 3"]),
        ("device", (x.to("meta"), keep, 2.0), {}, "x", ["meta", "on cpu", ".to('cpu')"]),
        (
            "fixed dim",
            (torch.randn(*x.shape[:2], D + 1), keep, 2.0),
            {},
            "x",
            [f"fixed at capture time to {D}", "dim 2"],
        ),
        ("equal dims", (x, keep[:, :-1], 2.0), {}, "keep", ["needs these two dims equal", "'x'"]),
        ("missing", (x,), {"scale": 2.0}, "keep", ["missing input", "torch.bool"]),
        ("extra", (x, keep, 2.0), {"mask": keep}, "mask", ["unexpected input", "x, keep, scale"]),
        ("too many", (x, keep, 2.0, keep), {}, "x, keep, scale", ["4 positional inputs"]),
        ("constant", (x, keep, 3.0), {}, "scale", ["scale=2.0", "another capture"]),
    ]


def _assert_refused(fn, args, kwargs, name, words):
    with pytest.raises(InputError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert f"'{name}'" in msg or name in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    assert "tcomp captured for Block" in msg


BACKENDS = [
    pytest.param("eager", id="eager"),
    pytest.param("onnxruntime", id="onnxruntime", marks=pytest.mark.skipif(not HAVE_ORT, reason="no ORT")),
    pytest.param(
        "triton", id="triton", marks=pytest.mark.skipif(not HAVE_TRITON, reason="no GPU, no interpreter")
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_inputs_are_refused_before_any_kernel(backend, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = Block().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, keep = _inputs(2, 6, seed=1)
    target = "h100" if backend == "triton" else "cpu"
    fast = tcomp.optimize(
        model, (x, keep, 2.0), target=target, backend=backend, verify=False, cudagraphs=False
    )
    lowered = [r for r in fast.report.passes if r.name == f"lower.{backend}"]
    assert backend == "eager" or (lowered and lowered[0].status == "applied"), fast.report.passes
    fast.save(tmp_path / "a")
    loaded = tcomp.load(tmp_path / "a")
    assert loaded.manifest["inputs"]["args"][0]["name"] == "x"

    # a kernel that ran would be a check that came too late: make every graph call fail loudly
    for module in (fast.graph_module, loaded.program):
        monkeypatch.setattr(module, "forward", _never_called)
    for kind, args, kwargs, name, words in _wrong_calls(x, keep):
        for which, fn in (("optimize", fast), ("load", loaded)):
            try:
                _assert_refused(fn, args, kwargs, name, words)
            except AssertionError as exc:
                raise AssertionError(f"{kind} ({which})") from exc
    monkeypatch.undo()

    # fitting inputs of other sizes run and match eager (float64 reference: relative error)
    x2, keep2 = _inputs(3, 9, seed=2)
    ref64 = Block().double().eval()
    ref64.load_state_dict(model.state_dict())
    with torch.no_grad():
        want = ref64(x2.double(), keep2, 2.0)
        own = rel_error(model(x2, keep2, 2.0), want)
        for fn in (fast, loaded):
            got = fn(x2, keep2, 2.0)
            assert torch.isfinite(got).all()
            assert rel_error(got, want) <= max(4 * own, 1e-5), (rel_error(got, want), own)
            got_kw = fn(x=x2, keep=keep2, scale=2.0)  # by keyword too
            assert rel_error(got_kw, want) <= max(4 * own, 1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched


def _never_called(*args, **kwargs):
    raise AssertionError("the graph ran on an input the check should have refused")


def test_a_length_past_the_position_table_is_refused(tmp_path):
    """BERT learned 64 positions: a 70-token input used to crash inside the embedding kernel
    ("index out of range in self"); now the call names input_ids, the 64 and the table."""
    pytest.importorskip("transformers")
    from tests.hf_zoo import make

    case = make("bert", "sdpa")
    fast = tcomp.optimize(case.model, case.kwargs, verify=False)
    fast.save(tmp_path / "a")
    loaded = tcomp.load(tmp_path / "a")
    gen = torch.Generator().manual_seed(3)
    for n, fits in ((64, True), (70, False)):
        kwargs = {
            "input_ids": torch.randint(2, 128, (2, n), generator=gen),
            "attention_mask": torch.ones(2, n, dtype=torch.long),
        }
        for fn in (fast, loaded):
            if fits:
                with torch.no_grad():
                    got, want = fn(**kwargs).last_hidden_state, case.model(**kwargs).last_hidden_state
                assert rel_error(got, want) < 1e-5
                continue
            with pytest.raises(InputError) as e:
                fn(**kwargs)
            msg = str(e.value)
            assert "'input_ids'" in msg and "size 70 in dim 1" in msg and "<= 64" in msg, msg
            assert "position table embeddings.position_embeddings" in msg, msg


def test_fixed_sizes_and_ranges_are_recorded_and_checked():
    """dynamic=False fixes every dim (the message says how to get dynamic dims); a dim of size 1 in
    the example is pinned (and the message says to capture with 2 or more); a range torch.export
    recorded bounds the dim."""
    torch.manual_seed(0)
    model = Block().eval()
    x, keep = _inputs(2, 6, seed=4)
    static = tcomp.optimize(model, (x, keep), verify=False, dynamic=False)
    assert [d.size for d in static.input_spec.args[0].leaves[0].dims] == [2, 6, D]
    with pytest.raises(
        InputError, match=r"'x' has size 7 in dim 1, which was fixed at capture time to 6.*dynamic=True"
    ):
        static(*_inputs(2, 7, seed=5))
    one = tcomp.optimize(model, _inputs(1, 6, seed=6), verify=False)
    with pytest.raises(InputError, match=r"'x' has size 2 in dim 0, which was fixed.*at least 2"):
        one(*_inputs(2, 6, seed=7))
    assert (
        "shape (dynamic, dynamic, 16)" in tcomp.optimize(model, (x, keep), verify=False).input_spec.describe()
    )

    # an export range: a dim declared with a maximum (the spec is built from torch.export's record)
    from torch.export import Dim

    from tcomp.input_check import spec_of

    n = Dim("n", min=2, max=8)
    ep = torch.export.export(model, (x, keep), dynamic_shapes=({1: n}, {1: n}), strict=False)
    spec = spec_of(model, ep.module(), ep, (x, keep), {}, dynamic=True)
    assert spec.args[0].leaves[0].dims[1].high == 8
    spec.check(_inputs(2, 8, seed=8), {}, torch.device("cpu"))
    with pytest.raises(
        InputError, match=r"'x' has size 9 in dim 1.*built for <= 8.*range torch.export recorded"
    ):
        spec.check(_inputs(2, 9, seed=9), {}, torch.device("cpu"))


def test_the_spec_survives_the_manifest():
    from tcomp.input_check import InputSpec

    torch.manual_seed(0)
    model = Block().eval()
    x, keep = _inputs(2, 6, seed=10)
    spec = tcomp.optimize(model, (x, keep), example_kwargs={"scale": 0.5}, verify=False).input_spec
    again = InputSpec.from_json(spec.to_json())
    assert again.to_json() == spec.to_json() and again.describe() == spec.describe()
    assert re.search(r"keep: torch.bool, rank 2", again.describe())


def test_a_decoder_refuses_what_its_graphs_cannot_take():
    """A decoder compiled for generation (its graphs run on inputs tcomp builds): token ids that are
    not integers, more rows than max_batch, more tokens than max_len -- each an InputError naming the
    input and the limit, before any graph runs; fitting ids still match eager."""
    from tcomp import models as zoo

    e = zoo.get("gpt-learned")
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(1, 64, (2, 8), generator=gen)
    fast = tcomp.optimize(
        e.model, {"input_ids": ids}, decoder=True, max_len=16, verify=False, cudagraphs=False
    )
    for bad, words in (
        (ids.float(), ["input_ids has dtype torch.float32", "input_ids.long()"]),
        (ids.repeat(2, 1), ["batch 4 is above the 2 rows", "max_batch=4"]),
        (
            torch.randint(1, 64, (2, 20), generator=gen),
            ["20 new tokens exceed the KV cache of 16 slots", "max_len=20"],
        ),
    ):
        with pytest.raises(InputError) as exc:
            fast(bad)
        assert all(w in str(exc.value) for w in words), str(exc.value)
    fresh = torch.randint(1, 64, (2, 8), generator=gen)
    with torch.no_grad():
        got, want = fast(fresh), e.model(fresh)
    want = want[0] if isinstance(want, tuple) else getattr(want, "logits", want)
    assert rel_error(got, want) < 1e-5
