"""The backend interface: implementations declared in their own files and found by discovery,
checkers' reasons in the lowering notes, kernel sources through the backend, the backend's named
steps in the report, and the Target reaching every Triton launcher."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tcomp
import tcomp.backends  # noqa: F401 - registers the backends
from tcomp.backend import Backend, RegistrationError, get_backend
from tcomp.targets import Target, get_target

BACKENDS = Path(tcomp.backends.__file__).parent
HAVE_TRITON = get_backend("triton").available() is None
DIALECT_QLINEARS = ("linear_int8w", "linear_fp8w", "linear_int4w", "linear_w8a8", "linear_w1", "linear_w1a1", "fp8_linear")


def _declared(folder: Path, name: str) -> int:
    """How many decorator lines ``@NAME.implements(`` the modules of ``folder`` hold."""
    line = re.compile(rf"^@{name}\.implements\(", re.M)
    return sum(len(line.findall(p.read_text())) for p in folder.glob("*.py"))


def test_triton_discovers_every_kernel_module():
    b = get_backend("triton")
    impls = b.impls
    want = {
        getattr(torch.ops.tcomp, op).default
        for op in (
            "attention",
            "cached_attention",
            "linear_attention",
            "token_merge",
            "rms_norm",
            *DIALECT_QLINEARS,
        )
    }
    assert want <= set(impls)
    # every declaration found, no hand-kept list
    assert len(impls) == _declared(BACKENDS / "triton", "TRITON")
    for op, impl in impls.items():
        mod = sys.modules[impl.module]
        assert impl.module.startswith("tcomp.backends.triton.") and getattr(mod, impl.fn.__name__) is impl.fn
        assert impl.op is op and impl.check is not None and impl.sources is not None, impl.where


def test_onnxruntime_translations_come_from_the_declarations():
    b = get_backend("onnxruntime")
    impls = b.impls
    want = {
        getattr(torch.ops.tcomp, op).default
        for op in ("attention", "token_merge", "bias_gelu", "skip_layer_norm", "rms_norm", "embedding_int8", *DIALECT_QLINEARS)
    }
    assert set(impls) == want
    assert len(impls) == _declared(BACKENDS / "onnxruntime", "ONNX")
    assert all(impl.module.startswith("tcomp.backends.onnxruntime.") for impl in impls.values())


def _package(tmp_path: Path, monkeypatch, name: str, kernels: str) -> Backend:
    """A throwaway backend package ``name`` whose module ``kernels.py`` holds ``kernels``."""
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from tcomp.backend import Backend\n"
        f"class Toy(Backend):\n    name = {name!r}\n    package = {name!r}\n"
        "BACKEND = Toy()\n"
    )
    (pkg / "kernels.py").write_text(f"import torch\nfrom {name} import BACKEND\n" + textwrap.dedent(kernels))
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        monkeypatch.delitem(sys.modules, mod)
    import importlib

    return importlib.import_module(name).BACKEND


def test_a_module_implementing_one_op_twice_is_an_error(tmp_path, monkeypatch):
    toy = _package(
        tmp_path,
        monkeypatch,
        "tcomp_toy_twice",
        """
        @BACKEND.implements(torch.ops.tcomp.attention.default)
        def first(*args, **kwargs): ...

        @BACKEND.implements(torch.ops.tcomp.attention.default)
        def second(*args, **kwargs): ...
        """,
    )
    with pytest.raises(RegistrationError, match="implemented twice") as err:
        toy.discover()
    assert "tcomp_toy_twice.kernels.first" in str(err.value) and "tcomp_toy_twice.kernels.second" in str(
        err.value
    )


def _attention_graph(dtype: torch.dtype) -> torch.fx.GraphModule:
    class Attn(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    from tcomp.capture import capture
    from tcomp.pipeline import run_pipeline

    q, k, v = (torch.randn(1, 2, 5, 8, dtype=dtype) for _ in range(3))
    return run_pipeline(capture(Attn(), (q, k, v)).gm, ["canonicalize"]).gm


def test_discovered_module_lowers_and_its_check_reason_reaches_the_notes(tmp_path, monkeypatch):
    toy = _package(
        tmp_path,
        monkeypatch,
        "tcomp_toy_check",
        """
        def check(node):
            return "toy kernels take no float64" if node.args[0].meta["val"].dtype == torch.float64 else None

        @BACKEND.implements(torch.ops.tcomp.attention.default, check=check, sources=lambda n: {"toy.py": "# toy"})
        def toy_attention(q, k, v, *args, **kwargs):
            return torch.ops.tcomp.attention.default(q, k, v, *args)
        """,
    )
    assert list(toy.impls) == [torch.ops.tcomp.attention.default]  # found without any import list
    refused = toy.lower(_attention_graph(torch.float64), target="cpu")
    assert refused.rewrites == 0 and any(
        "stays eager (toy kernels take no float64)" in n for n in refused.notes
    )
    done = toy.lower(_attention_graph(torch.float32), target="cpu")
    assert done.rewrites == 1 and toy.kernel_sources(done.gm) == {"toy.py": "# toy"}
    (node,) = [n for n in done.gm.graph.nodes if n.op == "call_function"]
    assert node.target.__name__ == "toy_attention"


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
def test_triton_check_reason_surfaces_in_the_report():
    class Attn(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = (torch.randn(1, 2, 5, 8, dtype=torch.float64) for _ in range(3))
    om = tcomp.optimize(Attn(), (q, k, v), target="h200", backend="triton")
    rec = om.report["lower.triton"]
    assert any("stays eager (dtype torch.float64" in n for n in rec.notes), rec.notes


class Tiny(nn.Module):
    """Attention, a residual add + LayerNorm, and an MLP whose linears end in GELU and a residual."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.qkv, self.up, self.down = nn.Linear(c, 3 * c), nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.ln = nn.LayerNorm(c)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        h = self.ln(x + a)
        return self.down(F.gelu(self.up(h))) + h


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
@pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="no GPU, no interpreter",
)
def test_triton_steps_are_separate_records_of_the_report():
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = Tiny().eval().to(dev)
    om = tcomp.optimize(model, (torch.randn(2, 7, 16, device=dev),), target="h200", backend="triton")
    names = [r.name for r in om.report.passes]
    steps = [
        "lower.triton", "fuse.triton.projections", "fuse.triton.gemm_epilogue", "fuse.triton.rotary",
        "fuse.triton.elementwise",
    ]  # fmt: skip
    assert names[-5:] == steps
    for name in ("fuse.triton.projections", "fuse.triton.rotary"):  # nothing of theirs in this model
        assert om.report[name].rewrites == 0
    for name in (s for s in steps if s not in ("fuse.triton.projections", "fuse.triton.rotary")):
        rec = om.report[name]
        assert rec.status == "applied" and rec.rewrites >= 1, (name, rec.reason, rec.notes)
        assert rec.error <= rec.tolerance
    x = torch.randn(3, 5, 16, device=dev)
    with torch.no_grad():
        assert torch.allclose(om(x), model(x), rtol=1e-4, atol=1e-4)
    sources = get_backend("triton").kernel_sources(om.graph_module)
    assert any(n.startswith("tcomp_attn_fwd") for n in sources)
    assert any(n.startswith("tcomp_gemm") for n in sources) and any(
        n.startswith("tcomp_fused_") for n in sources
    )


def test_backend_steps():
    assert get_backend("eager").steps("cpu") == []
    assert [p.name for p in get_backend("triton").steps("h100")] == [
        "lower.triton",
        "fuse.triton.projections",
        "fuse.triton.gemm_epilogue",
        "fuse.triton.rotary",
        "fuse.triton.elementwise",
    ]
    ort = get_backend("onnxruntime")
    assert [p.name for p in ort.steps("cpu")] == ["lower.onnxruntime"]
    old, ort.fused = ort.fused, True
    try:
        assert [p.name for p in ort.steps("cpu")] == ["fuse.onnxruntime.epilogues", "lower.onnxruntime"]
    finally:
        ort.fused = old
    assert all(p.contract.exactness.value == "fp_equivalent" for p in get_backend("triton").steps("h100"))


def test_every_triton_launcher_needs_the_target():
    b = get_backend("triton")
    from tcomp.backends.triton import gemm

    for fn in [impl.fn for impl in b.impls.values()] + [gemm.linear]:
        param = inspect.signature(fn).parameters["target"]
        assert param.default is inspect.Parameter.empty, f"{fn.__module__}.{fn.__name__} defaults its target"
    for path in (BACKENDS / "triton").glob("*.py"):
        assert '"h200"' not in path.read_text() and '"h100"' not in path.read_text(), path


def test_attention_tiles_follow_the_target_properties():
    from tcomp.backends.triton.configs import attention_config

    h100, h200, a100, cpu = (get_target(n) for n in ("h100", "h200", "a100", "cpu"))
    assert h100.hopper and h200.hopper and not a100.hopper and a100.ampere and not cpu.ampere
    assert attention_config(h100, 64, 512, 512, False) == attention_config(h200, 64, 512, 512, False)
    assert attention_config(a100, 64, 512, 512, False) != attention_config(h200, 64, 512, 512, False)
    # a registered-by-the-user Hopper card gets Hopper tiles without any name test
    mine = Target(
        name="my-h100-pcie", kind="gpu", peak_flops={"bf16": 756e12}, bandwidth=2.0e12,
        smem_per_sm=228 * 1024, sm_count=114, default_backend="triton", description="test",
        compute_capability=(9, 0),
    )  # fmt: skip
    assert attention_config(mine, 128, 512, 512, False) == attention_config(h200, 128, 512, 512, False)


def test_backend_objects_import_without_triton_or_onnxruntime():
    """The backends and their discovery work where neither triton nor onnxruntime imports;
    lowering then says why every dialect node stays eager."""
    code = textwrap.dedent(
        """
        import sys
        for mod in ("triton", "onnxruntime"):
            sys.modules[mod] = None  # import fails as if not installed
        import torch, tcomp
        from tcomp.backend import get_backend
        from tests.backends.test_backend import _attention_graph
        tri, ort = get_backend("triton"), get_backend("onnxruntime")
        assert len(tri.impls) >= 9 and len(ort.impls) >= 10
        res = tri.lower(_attention_graph(torch.float32), target="h200")
        assert res.rewrites == 0 and "triton is not installed" in res.notes[0], res.notes
        res = ort.lower(_attention_graph(torch.float32), target="cpu")
        assert res.rewrites == 0 and "onnxruntime is not installed" in res.notes[0], res.notes
        print("ok")
        """
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
