"""The pass registry: :class:`Pass`, :class:`Step`, :class:`PassContext`, ``register_pass`` and
the ordering of passes by their declared after/before constraints.

A pass is a pure function ``fn(gm, opts, ctx) -> PassResult``: ``opts`` is an instance of the
pass's frozen options dataclass (``tcomp.options``: types, defaults, ranges, allowed values -- the
one place defaults live; the contract is derived from it), ``ctx`` a :class:`PassContext` with
what the run provides and is not an option: the plan's Target, calibration batches and the seed.
Passes register with ``@register_pass`` when passes/ is imported; a :class:`Step` is a pass with
validated options, what a plan (``tcomp.plan``) and the pipeline (``tcomp.pipeline``) run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch.fx as fx

from tcomp import options as options_mod
from tcomp.contract import Contract, PassResult
from tcomp.errors import PassError
from tcomp.options import NoOptions

if TYPE_CHECKING:
    from tcomp.targets import Target


PassFn = Callable[..., PassResult]


@dataclass(frozen=True)
class PassContext:
    """What a run hands every pass besides its options: the plan's target (None when no face gave
    one, e.g. ``run_pipeline`` on a list), calibration batches (model inputs; never a JSON option)
    and the seed of the passes' random features (``softmax_free``'s k-means does not read it yet)."""

    target: Target | None = None
    calibration: Any = field(default=None, compare=False, repr=False)
    seed: int = 0


@dataclass(frozen=True)
class Pass:
    """A registered pass: ``fn(gm, opts, ctx) -> PassResult`` with ``opts`` an instance of
    ``options`` (its frozen dataclass) and ``ctx`` a :class:`PassContext`. A step built by hand
    without ``options`` (a backend's lowering) is called ``fn(gm)``."""

    name: str
    fn: PassFn
    contract: Contract  # under the default options
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    default: bool = False  # part of the default pipeline (only exact / FP-equivalent passes may be)
    description: str = ""
    options: type | None = None
    derive: Callable[[Any], Contract] | None = None  # contract from the options instance

    def make_options(self, raw: Any = None, **kw: Any) -> Any:
        """Validated options from a mapping and keywords; None when the step declares none."""
        if self.options is None:
            if raw or kw:
                raise options_mod.OptionError(f"step {self.name!r} takes no options")
            return None
        if isinstance(raw, self.options) and not kw:
            return raw
        merged = options_mod.to_dict(raw) if isinstance(raw, self.options) else dict(raw or {})
        return options_mod.make(self.options, {**merged, **kw}, self.name)

    def contract_of(self, opts: Any = None) -> Contract:
        """The contract this pass promises under ``opts`` (an options instance or a mapping)."""
        if self.derive is None:
            return self.contract
        return self.derive(opts if isinstance(opts, self.options) else self.make_options(opts))

    def run(self, gm: fx.GraphModule, opts: Any, ctx: PassContext) -> PassResult:
        return self.fn(gm) if self.options is None else self.fn(gm, opts, ctx)

    def __call__(self, gm: fx.GraphModule, ctx: PassContext | None = None, **kw: Any) -> PassResult:
        """Run directly with keyword options (tests, notebooks); ``calibration=`` and ``seed=`` go to
        the context. Options are validated and the context checked as ``build_plan`` does."""
        ctx = ctx or PassContext(calibration=kw.pop("calibration", None), seed=kw.pop("seed", 0))
        opts = self.make_options(kw)
        check_context(self, opts, ctx)
        return self.run(gm, opts, ctx)


def check_context(p: Pass, opts: Any, ctx: PassContext) -> None:
    """Run the options' ``check(ctx)`` (e.g. "needs calibration data") as an OptionError."""
    check = getattr(opts, "check", None)
    if check is not None:
        try:
            check(ctx)
        except (ValueError, PassError) as exc:
            raise options_mod.OptionError(f"pass {p.name!r}: {exc}") from exc


def check_steps(steps: Iterable[Step], ctx: PassContext) -> None:
    """:func:`check_context` for every step, in order: what a run checks before any work."""
    for s in steps:
        check_context(s.p, s.options, ctx)


_REGISTRY: dict[str, Pass] = {}


def register_pass(
    name: str,
    contract: Contract | Callable[[Any], Contract],
    *,
    options: type = NoOptions,
    after: tuple[str, ...] = (),
    before: tuple[str, ...] = (),
    default: bool = False,
) -> Callable[[PassFn], PassFn]:
    """Decorator registering ``fn(gm, opts, ctx) -> PassResult`` as pass ``name``.

    ``options``: the pass's frozen options dataclass (``tcomp.options.option`` fields); ``contract``:
    a Contract, or a function of the options instance returning one (no defaults repeated there).
    Registry names are dotted lowercase (``attention.linear``). The registry refuses approximate
    passes without a bound or a metric (the Contract refuses them) and approximate passes in the
    default pipeline.
    """
    if name != name.lower() or " " in name:
        raise PassError(f"pass names are dotted lowercase, got {name!r}")
    if not options_mod.is_options_class(options):
        raise PassError(f"pass {name!r}: options must be a frozen dataclass, got {options!r}")
    derive = None if isinstance(contract, Contract) else contract
    if derive is not None:
        contract = derive(options_mod.make(options, {}, name))
    if not isinstance(contract, Contract):
        raise PassError(f"pass {name!r}: contract must be a tcomp.Contract or a function returning one")
    if default and contract.exactness.approximate:
        raise PassError(
            f"pass {name!r} is approximate ({contract.exactness.value}); it cannot run by default"
        )

    options_mod.document(options)

    def deco(fn: PassFn) -> PassFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Pass(
            name, fn, contract, tuple(after), tuple(before), default, doc[0] if doc else "", options, derive
        )
        return fn

    return deco


def get_pass(name: str) -> Pass:
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "(none registered)"
        raise PassError(
            f"unknown pass {name!r}{options_mod.suggest(name, _REGISTRY)}; registered passes: {known}"
        )
    return _REGISTRY[name]


def registered_passes() -> dict[str, Pass]:
    return dict(_REGISTRY)


def default_pipeline() -> list[str]:
    return order([n for n, p in _REGISTRY.items() if p.default])


def order(names: list[str]) -> list[str]:
    """Order pass names so every ``after``/``before`` constraint among them holds (stable
    otherwise). Uses networkx for the topological sort; a cycle is an error naming its passes."""
    return [names[i] for i in order_indices([get_pass(n) for n in names])]


def order_indices(passes: list[Pass]) -> list[int]:
    """Positions of ``passes`` in an order that meets their constraints (a pass may repeat)."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(range(len(passes)))
    for i, p in enumerate(passes):
        for j, q in enumerate(passes):
            if i != j and q.name in p.after:
                g.add_edge(j, i)
            if i != j and q.name in p.before:
                g.add_edge(i, j)
    try:
        return list(nx.lexicographical_topological_sort(g))
    except nx.NetworkXUnfeasible:
        cycle = [passes[u].name for u, _ in nx.find_cycle(g)]
        raise PassError(
            f"the passes' after/before constraints form a cycle: {' -> '.join([*cycle, cycle[0]])}; "
            "drop one of these passes from the list"
        ) from None


@dataclass(frozen=True)
class Step:
    """One step of a plan: a pass and its validated options (None for a plain step)."""

    p: Pass
    options: Any = None

    @property
    def name(self) -> str:
        return self.p.name

    @property
    def contract(self) -> Contract:
        return self.p.contract_of(self.options)


def make_step(spec: Any) -> Step:
    """A Step from a name, a Pass, ``(name, options)`` or ``{"pass": name, "options": {...}}``."""
    if isinstance(spec, Step):
        return spec
    if isinstance(spec, Pass):
        return Step(spec, spec.make_options())
    if isinstance(spec, str):
        name, raw = spec, {}
    elif isinstance(spec, Mapping) and "pass" in spec:
        extra = set(spec) - {"pass", "options"}
        if extra:
            raise PassError(f"a plan step has the keys 'pass' and 'options', not {sorted(extra)}")
        name, raw = spec["pass"], spec.get("options") or {}
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        name, raw = spec
    else:
        raise PassError(
            f"a pass is a name, (name, options) or {{'pass': name, 'options': ...}}; got {spec!r}"
        )
    p = get_pass(name)
    return Step(p, p.make_options(raw))
