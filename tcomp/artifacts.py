"""Artifact folders: what ``tcomp optimize -o DIR`` and ``OptimizedModule.save(DIR)`` write.

A folder holds ``report.json`` / ``report.txt`` (the per-pass report), ``report.html`` (the same
as one self-contained page with the cost plot and a picture of the graph), ``graph_before.txt`` /
``graph_after.txt``, ``runner.py`` (the rewritten graph as generated PyTorch source),
``weights.safetensors``, ``kernels/`` (the generated Triton sources, when any were compiled),
``plan.json`` (the typed Plan that ran, ``Plan.to_json()``: target, backend, seed and every step's
full options, when the module carries one) and ``manifest.json`` (versions, target, passes with
contracts and measured errors, input/output tree specs, sha256 of every file). ``load(folder)``
checks every hash and runs the runner: no pickle, no need for the original model's code.

``tcomp optimize SPEC --plan DIR/plan.json`` (or ``Plan.from_json``) runs the same plan again.
Calibration batches are not in ``plan.json``: a plan whose passes need them (e.g.
``quantize.int4_gptq``) is refused when re-run without them, before any work.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tcomp.errors import InputError
from tcomp.report import render_module
from tcomp.runner import emit, specs_of, tensors_of


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    from tcomp.version import __version__

    out = {"tcomp": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("triton", "onnxruntime", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional dependency absent or broken
            pass
    return out


def write(om: Any, folder: str | Path) -> Path:
    """Write the artifact folder of an ``OptimizedModule``; returns the manifest path. Files are
    written to a temporary folder first and moved into place, so a failure leaves nothing half-done.
    ``plan.json`` is ``om.plan.to_json()`` (absent when ``om.plan`` is None); it holds no
    calibration data, so a plan that needs calibration must be given it again to re-run."""
    import shutil
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tcomp-", dir=folder.parent))
    try:
        rep = om.report
        snapshots = getattr(om, "snapshots", [])
        (tmp / "report.json").write_text(rep.to_json())
        (tmp / "report.txt").write_text(rep.render())
        (tmp / "report.html").write_text(render_module(om), encoding="utf-8")
        (tmp / "graph_before.txt").write_text(snapshots[0][1] if snapshots else "")
        (tmp / "graph_after.txt").write_text(om.graph_module.code)
        runner_src, names = emit(om.graph_module)
        (tmp / "runner.py").write_text(runner_src)
        save_file(_dedup(tensors_of(om.graph_module, names)), str(tmp / "weights.safetensors"))
        plan = getattr(om, "plan", None)
        if plan is not None:  # what ran, re-runnable; calibration data is not part of it
            (tmp / "plan.json").write_text(plan.to_json())
        kernels = kernel_sources(om)
        if kernels:
            (tmp / "kernels").mkdir()
            for name, text in kernels.items():
                (tmp / "kernels" / name).write_text(text)
        in_spec, out_spec = specs_of(om.graph_module)
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": "tcomp-artifact/1",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": rep.model,
            "target": rep.target,
            "versions": versions(),
            "passes": [
                {
                    "name": r.name,
                    "contract": r.contract,
                    "status": r.status,
                    "rewrites": r.rewrites,
                    "error": r.error,
                }
                for r in rep.passes
            ],
            "attention_sites": len(rep.sites),
            "in_spec": in_spec,
            "out_spec": out_spec,
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / "manifest.json"


def check(folder: str | Path) -> list[str]:
    """Files of an artifact folder whose sha256 no longer matches the manifest (empty: all good)."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    bad = []
    for name, digest in manifest["files"].items():  # names are relative paths
        p = folder / name
        if not p.exists() or _sha256(p) != digest:
            bad.append(name)
    return bad


def backend_names(om: Any) -> list[str]:
    """The backends whose steps changed the graph of ``om``: those of the applied
    ``lower.<backend>`` / ``fuse.<backend>.*`` steps in its report."""
    names = []
    for r in om.report.passes:
        kind, _, rest = r.name.partition(".")
        if kind in ("lower", "fuse") and r.status == "applied" and rest:
            names.append(rest.split(".")[0])
    return list(dict.fromkeys(names))


def kernel_sources(om: Any) -> dict[str, str]:
    """File name -> source of every generated kernel the graph of ``om`` launches, as its
    backends report them (``Backend.kernel_sources``)."""
    from tcomp.backend import registered_backends

    backends = registered_backends()
    out: dict[str, str] = {}
    for name in backend_names(om):
        if name in backends:
            out.update(backends[name].kernel_sources(om.graph_module))
    return out


def _dedup(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied embeddings): give each its own copy."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        t = t.detach()
        out[name] = t.clone().contiguous() if key in seen or not t.is_contiguous() else t
        seen.add(key)
    return out


class LoadedModule(torch.nn.Module):
    """A saved artifact, running from its generated runner: same call structure as the original."""

    def __init__(
        self, program: torch.nn.Module, in_spec: Any, out_spec: Any, manifest: dict, cudagraphs: bool = False
    ) -> None:
        super().__init__()
        self.program = program
        self.manifest = manifest
        self._in_spec, self._out_spec = in_spec, out_spec
        self._graphs = None
        if cudagraphs:  # replayed per input signature, as OptimizedModule does (tcomp/cudagraphs.py)
            from tcomp.cudagraphs import CudaGraphRunner

            self._graphs = CudaGraphRunner(program, lambda: [*program.parameters(), *program.buffers()])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        import torch.fx._pytree as fx_pytree
        import torch.utils._pytree as pytree

        flat = fx_pytree.tree_flatten_spec((args, kwargs), self._in_spec) if self._in_spec else list(args)
        out = (self._graphs or self.program)(*flat)
        return pytree.tree_unflatten(list(out), self._out_spec) if self._out_spec else out

    def run_named(self, named: dict[str, Any]) -> Any:
        """Call with every tensor input by name (the model's parameter names), whether the model
        took it positionally or as a keyword -- what `tcomp run` does with a safetensors file."""
        import torch.utils._pytree as pytree

        out = self.program(**named)
        return pytree.tree_unflatten(list(out), self._out_spec) if self._out_spec else out


def load(
    folder: str | Path, device: str | torch.device = "cpu", cudagraphs: bool | None = None
) -> LoadedModule:
    """Run a saved artifact folder. Refuses a folder whose files do not match the manifest's hashes.
    ``cudagraphs``: replay CUDA graphs per input shape (None: on when ``device`` is a GPU)."""
    import importlib.util

    import torch.utils._pytree as pytree

    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        raise InputError(f"{folder} is not a tcomp artifact folder (no manifest.json)")
    bad = check(folder)
    if bad:
        raise InputError(
            f"refusing to load {folder}: these files do not match the manifest's sha256: {', '.join(bad)}"
        )
    manifest = json.loads((folder / "manifest.json").read_text())
    spec = importlib.util.spec_from_file_location(
        f"tcomp_runner_{abs(hash(str(folder)))}", folder / "runner.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tensors = load_file(str(folder / "weights.safetensors"), device=str(device))
    program = mod.Program(tensors).eval()
    in_spec = pytree.treespec_loads(manifest["in_spec"]) if manifest.get("in_spec") else None
    out_spec = pytree.treespec_loads(manifest["out_spec"]) if manifest.get("out_spec") else None
    graphs = torch.device(device).type == "cuda" if cudagraphs is None else cudagraphs
    return LoadedModule(program, in_spec, out_spec, manifest, cudagraphs=graphs)
