"""Artifact folders: what ``tcomp optimize -o DIR`` and ``OptimizedModule.save(DIR)`` write.

A folder holds ``report.json`` / ``report.txt`` (the per-pass report), ``report.html`` (the same
as one self-contained page with the cost plot and a picture of the graph), ``graph_before.txt`` /
``graph_after.txt``, ``runner.py`` (the rewritten graph as generated PyTorch source),
``weights.safetensors``, ``kernels/`` (the generated Triton sources, when any were compiled),
``plan.json`` (the typed Plan that ran, ``Plan.to_json()``: target, backend, seed and every step's
full options, when the module carries one) and ``manifest.json`` (versions, target, passes with
contracts and measured errors, input/output tree specs, ``inputs``: what the graph accepts, which
the loaded module checks on every call (:mod:`tcomp.input_check`), sha256 of every file).
``load(folder)`` checks every hash and runs the runner: no pickle, no need for the original model's code.

A decoder compiled for generation writes one folder holding both of its graphs (format
``tcomp-decoder/1``, :mod:`tcomp.artifacts_decoder`), built from the same pieces: ``write_graph``
per graph, ``write_plan``, ``write_manifest``, inside ``staging``; ``load`` returns the decoder.

``tcomp optimize SPEC --plan DIR/plan.json`` (or ``Plan.from_json``) runs the same plan again.
Calibration batches are not in ``plan.json``: a plan whose passes need them (e.g.
``quantize.int4_gptq``) is refused when re-run without them, before any work.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import platform
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.fx as fx
from safetensors.torch import load_file, save_file

from tcomp.errors import InputError
from tcomp.input_check import InputSpec, module_device
from tcomp.report import render_html
from tcomp.runner import emit, specs_of, tensors_of

FORMAT = "tcomp-artifact/1"  # one graph; tcomp.artifacts_decoder.FORMAT: a decoder's two graphs


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


@contextlib.contextmanager
def staging(folder: str | Path) -> Iterator[Path]:
    """A temporary folder next to ``folder`` to write into; it replaces ``folder`` when the block
    ends, and is removed if the block raises (a failure leaves nothing half-done)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tcomp-", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_graph(
    dest: Path,
    gm: fx.GraphModule,
    report: Any,
    *,
    target: Any = None,
    graph_before: Any = None,
    captured_code: str = "",
) -> list[str]:
    """Write the files of one graph into ``dest``: ``report.json`` / ``report.txt`` /
    ``report.html``, ``graph_before.txt`` (``captured_code``) / ``graph_after.txt``, ``runner.py``
    and ``kernels/`` (when its backends compiled any). Returns the names of the tensors the runner
    needs (``get_attr`` targets); the caller stores them."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "report.json").write_text(report.to_json())
    (dest / "report.txt").write_text(report.render())
    html = render_html(report, graph_after=gm, graph_before=graph_before, target=target)
    (dest / "report.html").write_text(html, encoding="utf-8")
    (dest / "graph_before.txt").write_text(captured_code)
    (dest / "graph_after.txt").write_text(gm.code)
    runner_src, names = emit(gm)
    (dest / "runner.py").write_text(runner_src)
    kernels = kernel_sources(SimpleNamespace(report=report, graph_module=gm))
    if kernels:
        (dest / "kernels").mkdir()
        for name, text in kernels.items():
            (dest / "kernels" / name).write_text(text)
    return names


def write_plan(dest: Path, plan: Any) -> None:
    """``plan.json``: what ran, re-runnable (absent when ``plan`` is None). Calibration data is not
    part of it."""
    if plan is not None:
        (dest / "plan.json").write_text(plan.to_json())


def pass_entries(report: Any) -> list[dict]:
    """The manifest's record of each step of a report: name, contract, status, rewrites, error."""
    return [
        {"name": r.name, "contract": r.contract, "status": r.status, "rewrites": r.rewrites, "error": r.error}
        for r in report.passes
    ]


def write_manifest(dest: Path, manifest: dict) -> Path:
    """Write ``manifest.json`` with ``created``, ``versions`` and the sha256 of every file already
    in ``dest`` (paths relative to it) added to ``manifest``."""
    files = {str(p.relative_to(dest)): _sha256(p) for p in sorted(dest.rglob("*")) if p.is_file()}
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    full = {"format": manifest["format"], "created": created, **manifest, "versions": versions(), "files": files}
    path = dest / "manifest.json"
    path.write_text(json.dumps(full, indent=2, default=str))
    return path


def write(om: Any, folder: str | Path) -> Path:
    """Write the artifact folder of an ``OptimizedModule``; returns the manifest path. Files are
    written to a temporary folder first and moved into place, so a failure leaves nothing half-done.
    ``plan.json`` is ``om.plan.to_json()`` (absent when ``om.plan`` is None); it holds no
    calibration data, so a plan that needs calibration must be given it again to re-run."""
    folder = Path(folder)
    with staging(folder) as tmp:
        rep = om.report
        snapshots = getattr(om, "snapshots", [])
        names = write_graph(
            tmp, om.graph_module, rep, target=getattr(om, "target", None),
            graph_before=getattr(om, "graph_before", None), captured_code=snapshots[0][1] if snapshots else "",
        )  # fmt: skip
        save_file(_dedup(tensors_of(om.graph_module, names)), str(tmp / "weights.safetensors"))
        write_plan(tmp, getattr(om, "plan", None))
        in_spec, out_spec = specs_of(om.graph_module)
        write_manifest(tmp, {
            "format": FORMAT,
            "model": rep.model,
            "target": rep.target,
            "passes": pass_entries(rep),
            "attention_sites": len(rep.sites),
            "in_spec": in_spec,
            "out_spec": out_spec,
            "inputs": spec.to_json() if (spec := getattr(om, "input_spec", None)) is not None else None,
        })  # fmt: skip
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
        # what forward accepts (manifest["inputs"], tcomp.input_check); None: a folder written without it
        self.input_spec = InputSpec.from_json(manifest["inputs"]) if manifest.get("inputs") else None
        self._layout = None  # (positional names, keyword names) of the in_spec, to call with either
        if self.input_spec is not None and in_spec is not None:
            positional, keywords = in_spec.children()
            self._layout = (self.input_spec.names[: positional.num_children], list(keywords.context))
        self._device = module_device(program)
        self._graphs = None
        if cudagraphs:  # replayed per input signature, as OptimizedModule does (tcomp/cudagraphs.py)
            from tcomp.cudagraphs import CudaGraphRunner

            self._graphs = CudaGraphRunner(program, lambda: [*program.parameters(), *program.buffers()])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        import torch.fx._pytree as fx_pytree
        import torch.utils._pytree as pytree

        if self.input_spec is not None:  # before any kernel, as OptimizedModule.forward
            bound = self.input_spec.check(args, kwargs, self._device)
            if self._layout is not None:  # by position or keyword, as the model's forward takes them
                positional, keywords = self._layout
                args, kwargs = tuple(bound[n] for n in positional), {k: bound[k] for k in keywords}
        flat = fx_pytree.tree_flatten_spec((args, kwargs), self._in_spec) if self._in_spec else list(args)
        out = (self._graphs or self.program)(*flat)
        return pytree.tree_unflatten(list(out), self._out_spec) if self._out_spec else out

    def run_named(self, named: dict[str, Any]) -> Any:
        """Call with every tensor input by name (the model's parameter names), whether the model
        took it positionally or as a keyword -- what `tcomp run` does with a safetensors file."""
        import torch.utils._pytree as pytree

        spec = self.input_spec
        if spec is not None and all(a.tree is None for a in spec.args):  # each input one leaf: names agree
            constants = {a.name: a.leaves[0].value for a in spec.args if a.leaves[0].dtype is None}
            named = spec.check((), {**constants, **named}, self._device)  # a file holds tensors only
        out = self.program(**named)
        return pytree.tree_unflatten(list(out), self._out_spec) if self._out_spec else out

    def _apply(self, fn, *args, **kwargs):  # .to(device): the inputs' device follows the weights'
        out = super()._apply(fn, *args, **kwargs)
        self._device = module_device(self.program)
        return out


def load(
    folder: str | Path, device: str | torch.device = "cpu", cudagraphs: bool | None = None
) -> Any:
    """Run a saved artifact folder: a :class:`LoadedModule`, or for a decoder's folder (format
    ``tcomp-decoder/1``, see :mod:`tcomp.artifacts_decoder`) an ``OptimizedDecoder`` that
    generates. Refuses a folder whose files do not match the manifest's hashes. ``cudagraphs``:
    replay CUDA graphs per input shape (None: on when ``device`` is a GPU)."""
    import torch.utils._pytree as pytree

    folder = Path(folder)
    manifest = checked_manifest(folder)
    graphs = torch.device(device).type == "cuda" if cudagraphs is None else cudagraphs
    fmt = manifest.get("format", FORMAT)
    if fmt != FORMAT:
        from tcomp import artifacts_decoder

        if fmt != artifacts_decoder.FORMAT:
            raise InputError(
                f"{folder}: unknown artifact format {fmt!r}; this tcomp reads {FORMAT} and "
                f"{artifacts_decoder.FORMAT} (write it again with this version)"
            )
        return artifacts_decoder.load_decoder(folder, manifest, device, cudagraphs=graphs)
    mod = import_runner(folder / "runner.py")
    tensors = load_file(str(folder / "weights.safetensors"), device=str(device))
    program = mod.Program(tensors).eval()
    in_spec = pytree.treespec_loads(manifest["in_spec"]) if manifest.get("in_spec") else None
    out_spec = pytree.treespec_loads(manifest["out_spec"]) if manifest.get("out_spec") else None
    return LoadedModule(program, in_spec, out_spec, manifest, cudagraphs=graphs)


def checked_manifest(folder: Path) -> dict:
    """The manifest of an artifact folder whose every file matches its sha256 (refused otherwise)."""
    if not (folder / "manifest.json").exists():
        raise InputError(f"{folder} is not a tcomp artifact folder (no manifest.json)")
    bad = check(folder)
    if bad:
        raise InputError(
            f"refusing to load {folder}: these files do not match the manifest's sha256: {', '.join(bad)}"
        )
    return json.loads((folder / "manifest.json").read_text())


def import_runner(path: Path) -> Any:
    """The generated ``runner.py`` at ``path`` as a module (a fresh one per path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tcomp_runner_{abs(hash(str(path.resolve())))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
