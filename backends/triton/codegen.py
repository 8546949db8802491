"""Compiling generated Triton source: the text is written to an on-disk cache keyed by its hash and
the versions that compile it, imported as a module, and the kernel object returned."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

_LOADED: dict[str, ModuleType] = {}


def cache_dir() -> Path:
    root = os.environ.get("TCOMP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tcomp")
    return Path(root) / "triton"


def source_key(source: str) -> str:
    import torch
    import triton

    text = f"{source}\n#torch={torch.__version__} triton={triton.__version__} interp={interpreting()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def load(source: str, name: str) -> object:
    """The object ``name`` defined by ``source`` (compiled once per process, cached on disk)."""
    key = source_key(source)
    mod = _LOADED.get(key)
    if mod is None:
        folder = cache_dir() / key
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.py"
        if not path.exists() or path.read_text() != source:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(source)
            tmp.replace(path)
        spec = importlib.util.spec_from_file_location(f"tcomp_generated_{key}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _LOADED[key] = mod
    return getattr(mod, name)
