"""The backend interface and registry (core side; implementations live in ``backends/``).

A backend lowers the dialect ops it supports and leaves the rest to the eager reference. Each
implementation declares itself in its own file, next to the kernel or translation::

    @TRITON.implements(torch.ops.tcomp.linear_int8w.default, check=check, sources=kernel_sources_of)
    def linear_int8w(x, qweight, scale, bias=None, *, target: str, config=None): ...

``check(node)`` gives the reason a node cannot be lowered (None: it can; lightning-thunder's
executor pattern) and ``sources(node)`` the generated kernel text a lowered node launches (for the
artifacts' ``kernels/`` folder). A backend finds its implementations by importing every module of
its ``package`` the first time it lowers a graph or is asked for sources: no hand-kept import list.

What a backend runs in a plan is :meth:`Backend.steps`: named pipeline passes (its lowering, and
the fusions it makes), each FP_EQUIVALENT to eager and verified and reported like any pass.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch.fx as fx

from tcomp.contract import FP_EQUIVALENT, PassResult
from tcomp.errors import InputError, TcompError
from tcomp.registry import Pass

if TYPE_CHECKING:
    from tcomp.targets import Target

Checker = Callable[[fx.Node], "str | None"]  # None: supported; else the reason it is not
Sources = Callable[[fx.Node], "dict[str, str]"]  # file name -> generated kernel source


class RegistrationError(TcompError):
    """A backend implementation was declared wrongly (e.g. one op implemented twice)."""


@dataclass(frozen=True)
class Implementation:
    """One declared implementation: ``fn`` is what lowered nodes call (Triton) or the translation
    factory (ONNX); ``op`` is the dialect op it implements (None for a launcher that one of the
    backend's own steps inserts, such as a fused GEMM)."""

    op: Any
    fn: Callable
    check: Checker | None
    sources: Sources | None
    module: str

    @property
    def where(self) -> str:
        return f"{self.module}.{getattr(self.fn, '__qualname__', self.fn)}"


class Backend:
    """Subclasses set ``name`` and ``package`` (the package whose modules declare implementations
    with :meth:`implements`) and override :meth:`available`, :meth:`steps` or :meth:`lower`."""

    name = "base"
    package: str | None = None

    def __init__(self) -> None:
        self._impls: dict[Any, Implementation] = {}
        self._launchers: dict[Callable, Implementation] = {}
        self._modules: list[str] | None = None  # set once discovery has imported the package

    # ---- declaring implementations ------------------------------------------------------------

    def implements(
        self, op: Any, *, check: Checker | None = None, sources: Sources | None = None
    ) -> Callable[[Callable], Callable]:
        """Decorator: the decorated function implements dialect op ``op`` on this backend. A
        second implementation of the same op is a :class:`RegistrationError` naming both."""

        def register(fn: Callable) -> Callable:
            impl = Implementation(op, fn, check, sources, getattr(fn, "__module__", "?"))
            old = self._impls.get(op)
            if old is not None:
                raise RegistrationError(
                    f"backend {self.name!r}: {op} is implemented twice, by {old.where} and by "
                    f"{impl.where}; keep one of them"
                )
            self._impls[op] = impl
            self._launchers[fn] = impl
            return fn

        return register

    def launcher(self, *, sources: Sources) -> Callable[[Callable], Callable]:
        """Decorator for a function that one of this backend's steps puts into graphs without a
        dialect op behind it (a fused GEMM, a generated elementwise group): ``sources(node)`` is
        what :meth:`kernel_sources` reports for its nodes."""

        def register(fn: Callable) -> Callable:
            self._launchers[fn] = Implementation(None, fn, None, sources, getattr(fn, "__module__", "?"))
            return fn

        return register

    def discover(self) -> list[str]:
        """Import every module of ``package`` (their decorators register the implementations),
        once per process; returns the module names found."""
        if self.package is None:
            return []
        if self._modules is None:
            import tcomp.dialect  # noqa: F401 - implementations key on the dialect's ops

            pkg = importlib.import_module(self.package)
            names = [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}.")]
            for name in names:
                importlib.import_module(name)
            self._modules = names
        return list(self._modules)

    @property
    def impls(self) -> dict[Any, Implementation]:
        """``{dialect op: Implementation}`` of every implementation the package declares."""
        self.discover()
        return dict(self._impls)

    # ---- what the plan runs -------------------------------------------------------------------

    def available(self) -> str | None:
        """None when the backend can run here, else why not."""
        return None

    def steps(self, target: Target | str) -> list[Pass]:
        """The named steps a plan runs for this backend on ``target``, in order; each is a pass
        (FP_EQUIVALENT to eager) that the pipeline verifies and reports."""
        from tcomp.targets import get_target

        tgt = get_target(target)
        return [
            Pass(
                f"lower.{self.name}",
                partial(self.lower, target=tgt.name),
                FP_EQUIVALENT,
                description=f"dialect ops to {self.name} implementations (the others stay eager)",
            )
        ]

    def lower(self, gm: fx.GraphModule, target: Target | str) -> PassResult:
        """Replace every supported dialect node by the backend's implementation; the others stay
        on the eager reference and are listed in the notes with the checker's reason."""
        from tcomp.targets import get_target

        name = get_target(target).name
        result = PassResult(gm)
        why_not = self.available()
        impls = self.impls
        for node in list(gm.graph.nodes):
            impl = impls.get(node.target) if node.op == "call_function" else None
            if impl is None:
                continue
            reason = why_not or (impl.check(node) if impl.check is not None else None)
            if reason:
                result.notes.append(f"{node.name}: stays eager ({reason})")
                continue
            node.target = impl.fn
            node.kwargs = {**node.kwargs, **self.launch_kwargs(name)}
            result.rewrites += 1
        gm.recompile()
        return result

    def launch_kwargs(self, target: str) -> dict[str, Any]:
        """Keyword arguments added to every lowered node (e.g. the target's name)."""
        return {}

    def kernel_sources(self, gm: fx.GraphModule) -> dict[str, str]:
        """Source text of every generated kernel a lowered graph launches (file name -> text),
        from the ``sources`` of the implementations and launchers its nodes call."""
        self.discover()
        out: dict[str, str] = {}
        for n in gm.graph.nodes:
            if n.op != "call_function":
                continue
            impl = self._launchers.get(n.target)
            if impl is not None and impl.sources is not None:
                out.update(impl.sources(n))
        return out


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
