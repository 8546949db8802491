"""Model specs for the command line: a zoo name (``bert``, ``minilm``, ``default``) or
``package.module:factory`` where ``factory()`` returns a zoo entry, ``(model, example_inputs)`` or
``(model, example_args, example_kwargs)``."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

from tcomp.errors import InputError


@dataclass
class Loaded:
    name: str
    model: torch.nn.Module
    args: tuple
    kwargs: dict = field(default_factory=dict)


def load_spec(spec: str, seed: int = 0) -> Loaded:
    from tcomp import models as zoo

    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise InputError(
                f"cannot load {spec!r}: {exc}. Use package.module:factory with the package importable."
            ) from exc
        return _from_object(spec, factory())
    name = zoo.default() if spec == "default" else spec
    if name not in zoo.ZOO:
        raise InputError(
            f"unknown model {spec!r}; zoo models: {', '.join(zoo.names())}, or package.module:factory"
        )
    entry = zoo.get(name, seed=seed)
    return Loaded(name, entry.model, tuple(entry.example_inputs), dict(entry.example_kwargs))


def _from_object(name: str, obj: Any) -> Loaded:
    if hasattr(obj, "model") and hasattr(obj, "example_inputs"):
        return Loaded(
            name, obj.model, tuple(obj.example_inputs), dict(getattr(obj, "example_kwargs", {}) or {})
        )
    if isinstance(obj, tuple) and obj and isinstance(obj[0], torch.nn.Module):
        model, rest = obj[0], obj[1:]
        args = rest[0] if rest else ()
        kwargs = rest[1] if len(rest) > 1 else {}
        if isinstance(args, dict):
            args, kwargs = (), args
        if not isinstance(args, tuple):
            args = (args,)
        return Loaded(name, model, args, kwargs)
    raise InputError(f"{name} returned {type(obj).__name__}; return (model, example_inputs) or a zoo entry")
