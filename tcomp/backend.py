"""The backend interface and registry (core side; implementations live in ``backends/``).

A backend lowers the dialect ops it supports and leaves the rest to the eager reference. Each op
has a checker that says why a node cannot be lowered (lightning-thunder's executor pattern), and
lowering is FP_EQUIVALENT to eager, verified by the pipeline like any pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.fx as fx

from tcomp.errors import InputError
from tcomp.pipeline import PassResult

Checker = Callable[[fx.Node], "str | None"]  # None: supported; else the reason it is not


class Backend:
    """Subclasses set ``name`` and fill ``impls`` with ``{op target: (checker, implementation)}``."""

    name = "base"

    def __init__(self) -> None:
        self.impls: dict[Any, tuple[Checker, Callable]] = {}

    def available(self) -> str | None:
        """None when the backend can run here, else why not."""
        return None

    def lower(self, gm: fx.GraphModule, target: str = "") -> PassResult:
        """Replace every supported dialect node by the backend's implementation; the others stay
        on the eager reference and are listed in the notes."""
        result = PassResult(gm)
        why_not = self.available()
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or node.target not in self.impls:
                continue
            checker, impl = self.impls[node.target]
            reason = why_not or checker(node)
            if reason:
                result.notes.append(f"{node.name}: stays eager ({reason})")
                continue
            node.target = impl
            node.kwargs = {**node.kwargs, **self.launch_kwargs(target)}
            result.rewrites += 1
        gm.recompile()
        return result

    def launch_kwargs(self, target: str) -> dict[str, Any]:
        return {}


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise InputError(f"unknown backend {name!r}; registered: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]


def registered_backends() -> dict[str, Backend]:
    return dict(_BACKENDS)
