"""Pass infrastructure: contracts, the registry and the verified pipeline.

A pass is a pure function ``fn(gm, opts, ctx) -> PassResult``: ``opts`` is an instance of the
pass's frozen options dataclass (``tcomp.options``: types, defaults, ranges, allowed values -- the
one place defaults live; the contract is derived from it), ``ctx`` a :class:`PassContext` with
what the run provides and is not an option: the plan's Target, calibration batches and the seed.
Options are validated and the context checked when the plan is built (``tcomp.plan.build_plan``),
before any capture. The pipeline hands each step its own copy of the graph (parameters shared,
never mutated), verifies the result against its contract when asked, and rolls the step back --
keeping the previous graph and recording why -- when the check fails or the pass raises. Nothing
wrong is handed to the user silently.
"""

from __future__ import annotations

import copy
import enum
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch.fx as fx

from tcomp import options as options_mod
from tcomp.errors import PassError
from tcomp.options import NoOptions
from tcomp.verify import bitwise_equal, rel_error

if TYPE_CHECKING:
    from tcomp.targets import Target


class Exactness(enum.Enum):
    """How close a rewritten graph is to the one before (see DESIGN.md, "Pass contracts")."""

    EXACT = "exact"  # same float operations: bitwise equal outputs
    FP_EQUIVALENT = "fp_equivalent"  # equal in real arithmetic, differs by rounding
    BOUNDED = "bounded"  # approximate with an analytic bound under stated preconditions
    EMPIRICAL = "empirical"  # approximate, no theorem: a named metric and a threshold

    @property
    def approximate(self) -> bool:
        return self in (Exactness.BOUNDED, Exactness.EMPIRICAL)


@dataclass(frozen=True)
class Contract:
    """What a pass promises. Approximate passes must state a bound or a metric with a threshold.

    ``tolerance`` is the relative-error bound the pipeline checks against the float64 reference for
    BOUNDED and EMPIRICAL passes (``metric`` names what it measures, ``bound`` states the theorem).
    """

    exactness: Exactness
    bound: str | None = None
    metric: str | None = None
    tolerance: float | None = None
    preconditions: str | None = None

    def __post_init__(self) -> None:
        if self.exactness is Exactness.BOUNDED and not (self.bound and self.tolerance is not None):
            raise PassError(
                "a BOUNDED contract needs `bound` (the statement) and `tolerance` (what is checked)"
            )
        if self.exactness is Exactness.EMPIRICAL and not (self.metric and self.tolerance is not None):
            raise PassError(
                "an EMPIRICAL contract needs `metric` (what is measured) and `tolerance` (its threshold)"
            )

    def describe(self) -> str:
        s = self.exactness.value
        if self.bound:
            s += f" ({self.bound})"
        if self.metric:
            s += f" ({self.metric} <= {self.tolerance:g})"
        return s


EXACT = Contract(Exactness.EXACT)
FP_EQUIVALENT = Contract(Exactness.FP_EQUIVALENT)


@dataclass
class PassResult:
    """What a pass returns: the new graph, how many rewrites it made, and notes for the report
    (e.g. a site it skipped and why)."""

    gm: fx.GraphModule
    rewrites: int = 0
    notes: list[str] = field(default_factory=list)
    sites: list[dict[str, Any]] = field(default_factory=list)


PassFn = Callable[..., PassResult]


@dataclass(frozen=True)
class PassContext:
    """What a run hands every pass besides its options: the plan's target (None when no face gave
    one, e.g. ``run_pipeline`` on a list), calibration batches (model inputs; never a JSON option)
    and the seed all randomness derives from."""

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
        raise PassError(f"unknown pass {name!r}{options_mod.suggest(name, _REGISTRY)}; registered passes: {known}")
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
        raise PassError(f"a pass is a name, (name, options) or {{'pass': name, 'options': ...}}; got {spec!r}")
    p = get_pass(name)
    return Step(p, p.make_options(raw))


# -- the pipeline --------------------------------------------------------------------------------


@dataclass
class PassRecord:
    """One row of the report."""

    name: str
    contract: str
    exactness: str
    status: str  # "applied" | "rolled_back" | "skipped"
    rewrites: int = 0
    error: float | None = None  # measured max relative error vs float64 reference after the pass
    tolerance: float | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    sites: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("error", "tolerance"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = str(d[k])
        return d


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule with its own graph, sharing parameters and submodules with ``gm``."""
    new = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    for key in ("meta",):
        if hasattr(gm, key):
            setattr(new, key, copy.copy(getattr(gm, key)))
    return new


@dataclass
class PipelineResult:
    gm: fx.GraphModule
    records: list[PassRecord]
    snapshots: list[tuple[str, str]]  # (stage name, graph code) -- "captured" first
    final_error: float | None = None  # error of ``gm`` vs the float64 reference, when verified


def run_pipeline(
    gm: fx.GraphModule,
    plan: Any,
    *,
    reference: Any | None = None,
    progress: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Run the steps of ``plan`` in order on a copy of ``gm``.

    ``plan``: a ``tcomp.plan.Plan`` (its passes, then its backend's steps), or a list of steps as
    ``make_step`` reads them, run as given with no target (``calibration`` and ``seed`` may then sit
    in a step's options dict, handed to the context: the form tests use).

    With a ``reference`` (``tcomp.verify.Reference``) each pass is verified against its contract:
    EXACT -> bitwise equal to the previous stage; FP_EQUIVALENT -> error vs float64 no worse than
    the original's own error times a small factor; BOUNDED/EMPIRICAL -> error within the contract's
    tolerance. A failing or raising pass is rolled back and recorded with the reason.
    """
    steps, ctx = plan.runnable() if hasattr(plan, "runnable") else _listed(plan)
    debug = os.environ.get("TCOMP_DEBUG", "") not in ("", "0")
    current, snapshots, records = gm, [("captured", gm.code)], []
    prev_out = reference.run(current) if reference is not None else None
    for step in steps:
        if progress:
            progress(step.name)
        t0 = time.perf_counter()
        rec, new_gm, outs = _apply(step, ctx, current, reference, prev_out, _rounding_budget(current, records))
        rec.seconds = time.perf_counter() - t0
        records.append(rec)
        if new_gm is None:
            continue
        current, prev_out = new_gm, outs if outs is not None else prev_out
        snapshots.append((step.name, current.code))
        if debug:
            print(f"[tcomp] after {step.name}:\n{current.graph}")
    final = reference.error_of(prev_out) if reference is not None else None
    return PipelineResult(current, records, snapshots, final)


def _listed(specs: list[Any]) -> tuple[list[Step], PassContext]:
    """Steps and context of a plain list (see ``run_pipeline``); options are validated first."""
    calibration, seed, steps = None, 0, []
    for spec in specs:
        if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[1], Mapping):
            raw = dict(spec[1])
            calibration = raw.pop("calibration", calibration)
            seed = raw.pop("seed", seed)
            spec = (spec[0], raw)
        steps.append(make_step(spec))
    ctx = PassContext(calibration=calibration, seed=seed)
    for s in steps:
        check_context(s.p, s.options, ctx)
    return steps, ctx


def _rounding_budget(gm: fx.GraphModule, records: list[PassRecord]) -> float | None:
    """For a graph with ops that round their activations at run time (W8A8, W1A1, fp8: the QUANT
    meta says so), the largest tolerance of the approximate passes applied so far; else None."""
    from tcomp import meta

    if not any((q := n.meta.get(meta.QUANT)) and q.get("rounds_activations") for n in gm.graph.nodes):
        return None
    approx = (Exactness.BOUNDED.value, Exactness.EMPIRICAL.value)
    tols = [r.tolerance for r in records if r.status == "applied" and r.exactness in approx and r.tolerance]
    return max(tols, default=None)


def _apply(step: Step, ctx: PassContext, current: fx.GraphModule, reference: Any, prev_out: Any, budget=None):
    """Run one step on a copy of ``current`` and check it: ``(record, new graph or None if not
    applied, its outputs on the reference inputs or None if unverified)``. ``budget``: see
    ``_rounding_budget`` and ``_check``."""
    contract = step.contract
    rec = PassRecord(step.name, contract.describe(), contract.exactness.value, "applied")
    try:
        result = step.p.run(copy_graph_module(current), step.options, ctx)
        result.gm.graph.lint()
        result.gm.recompile()
    except Exception as exc:  # noqa: BLE001 - a failing pass is rolled back, never fatal
        rec.status, rec.reason = "rolled_back", f"pass raised {type(exc).__name__}: {exc}"
        return rec, None, None
    rec.rewrites, rec.notes, rec.sites = result.rewrites, list(result.notes), list(result.sites)
    if result.rewrites == 0:
        rec.status, rec.reason = "skipped", "nothing to rewrite"
        return rec, None, None
    if reference is None:
        return rec, result.gm, None
    try:
        outs = reference.run(result.gm)
        rec.error = reference.error_of(outs)
        ok, why = _check(contract, rec, outs, prev_out, reference, budget)
    except Exception as exc:  # noqa: BLE001
        ok, why = False, f"the rewritten graph failed to run: {type(exc).__name__}: {exc}"
    if not ok:
        rec.status, rec.reason = "rolled_back", why
        return rec, None, None
    return rec, result.gm, outs


def _check(contract: Contract, rec: PassRecord, outs, prev_out, reference, budget=None) -> tuple[bool, str]:
    ex = contract.exactness
    if not math.isfinite(rec.error):
        return False, "output is NaN/inf or changed structure"
    if ex is Exactness.EXACT:
        rec.tolerance = 0.0
        if all(bitwise_equal(a, b) for a, b in zip(outs, prev_out)):
            return True, ""
        return False, "EXACT contract broken: outputs differ bitwise from the previous stage"
    if ex is Exactness.FP_EQUIVALENT:
        rec.tolerance = reference.fp_tolerance()
    else:
        rec.tolerance = contract.tolerance
    if rec.error <= rec.tolerance:
        return True, ""
    if ex is Exactness.FP_EQUIVALENT and (before := reference.error_of(prev_out)) > rec.tolerance:
        # an approximate pass came before (quantization, linear attention): the stage this one must
        # be FP-equivalent to is the previous one, not the float64 original
        drift = max(rel_error(a, b) for a, b in zip(outs, prev_out))
        rec.notes.append(
            f"checked against the previous stage (its error vs float64 was already {before:.3g}): "
            f"drift {drift:.3g}"
        )
        if drift <= rec.tolerance:
            return True, ""
        if budget is not None and drift <= before and rec.error <= budget:
            # ops that round activations at run time (W8A8, W1A1, fp8) turn a last-bit difference
            # upstream (another LayerNorm or softmax kernel) into a whole rounding step, so the
            # model-level drift cannot be float-sized; each such op's backend translation is
            # FP-equivalent on equal inputs (tested per op). Accepted when the drift is below the
            # previous stage's own error and the result still meets the approximate contracts.
            rec.notes.append(
                f"activations are rounded at run time: drift {drift:.3g} accepted (below the previous "
                f"stage's error {before:.3g}; error vs float64 {rec.error:.3g} within the approximate "
                f"passes' tolerance {budget:.3g})"
            )
            return True, ""
        return (
            False,
            f"FP_EQUIVALENT contract broken: drift from the previous stage {drift:.3g} > {rec.tolerance:.3g}",
        )
    return (
        False,
        f"{ex.value} contract broken: relative error {rec.error:.3g} > tolerance {rec.tolerance:.3g}",
    )
