"""Artifact folders: what ``tcomp optimize -o DIR`` and ``OptimizedModule.save(DIR)`` write.

Written now: ``report.json`` / ``report.txt`` (the per-pass report), ``graph_before.txt`` /
``graph_after.txt`` (the captured and the rewritten graph) and ``manifest.json`` (versions,
target, passes with contracts and measured errors, sha256 of every file). Runnable artifacts
(kernels, weights as safetensors, a runner) come with the backends.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    import tcomp

    out = {"tcomp": tcomp.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("triton", "onnxruntime", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional dependency absent or broken
            pass
    return out


def write(om: Any, folder: str | Path) -> Path:
    """Write the artifact folder of an ``OptimizedModule``; returns the manifest path. Files are
    written to a temporary folder first and moved into place, so a failure leaves nothing half-done."""
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
        (tmp / "graph_before.txt").write_text(snapshots[0][1] if snapshots else "")
        (tmp / "graph_after.txt").write_text(om.graph_module.code)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
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
    for name, digest in manifest["files"].items():
        p = folder / name
        if not p.exists() or _sha256(p) != digest:
            bad.append(name)
    return bad
