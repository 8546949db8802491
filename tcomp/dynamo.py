"""``torch.compile(model, backend="tcomp")``: the torch.compile face of tcomp.

Dynamo hands the backend a torch-level fx graph. The backend reaches tcomp's IR (ATen ops, as
torch.export produces them) through AOTAutograd's inference graph, with two ops kept whole the
way torch.export keeps them: ``aten.scaled_dot_product_attention``, ``aten.linear`` and
``aten.matmul``. They are CompositeImplicitAutograd ops, which AOTAutograd would otherwise decompose
at dispatch -- SDPA into the device-specific ``aten._scaled_dot_product_flash_attention_for_cpu``
(which canonicalize does not read), linear into ``t`` + ``addmm``, matmul into
``expand/clone/_unsafe_view/bmm`` chains the chain reader does not follow. Kept whole, explicit
``softmax(q @ k^T * s) @ v`` code reads ``matmul -> mul -> _softmax -> matmul`` as in export graphs.
Keeping them uses torch.export's private helpers; where those are missing the ops decompose and
the report's notes say so.

The inference graph then runs the Plan that ``tcomp.plan.build_plan`` makes of the options (the
same builder as ``tcomp.optimize`` and the CLI): the ``canonicalize`` pass (every attention
spelling becomes one ``torch.ops.tcomp.attention`` node), the extra ``passes`` ordered by their
constraints and, when ``options={"backend": ...}`` names a backend other than ``"eager"``, that
backend's steps. Each compiled graph leaves a :class:`DynamoReport` in
:data:`REPORTS` (attention sites found, pass records, notes).

Training graphs (grad enabled and an input or parameter requiring grad) fall back: AOTAutograd
compiles their forward and backward unchanged (eager ATen kernels, gradients exactly as eager's
decomposition computes them). They are not rewritten because the dialect ops have no backward
(``tcomp.attention`` and the others are inference ops: a rewrite would have to drop the
activations the backward graph saves), and the preserved ops have no autograd formula inside
AOTAutograd's trace. Lowering the inference graphs only is the choice that keeps training correct
without a second, differentiable dialect.

Fallbacks are reported, never silent: a graph compiled unchanged (training, or a pipeline that
raised on it: the graph then runs as AOTAutograd traced it), a lowering step that left ops on the
eager reference, a step rolled back. Each is a :class:`Fallback` in its graph's
``DynamoReport.fallbacks`` (:func:`fallbacks` lists them all) and one :class:`FallbackWarning`
per compiled graph says what fell back and why.

Registration: importing this module registers the backend under the name ``"tcomp"``; the
``torch_dynamo_backends`` entry point ``tcomp = "tcomp.dynamo:tcomp_backend"`` makes
``torch.compile(m, backend="tcomp")`` work without the import.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

if TYPE_CHECKING:
    from tcomp.plan import Plan

__all__ = [
    "REPORTS", "DynamoReport", "Fallback", "FallbackWarning", "clear_reports", "fallbacks", "reports", "tcomp_backend",
]

aten = torch.ops.aten

# CompositeImplicitAutograd ops kept as single nodes in the AOTAutograd graph (as torch.export does)
PRESERVED_OPS = (aten.scaled_dot_product_attention.default, aten.linear.default, aten.matmul.default)
# nn.MultiheadAttention's inference fast path: fused ops that hide the attention from canonicalize
FASTPATH_OPS = (aten._native_multi_head_attention.default, aten._transformer_encoder_layer_fwd.default)


class FallbackWarning(UserWarning):
    """Part or all of a graph torch.compile handed tcomp runs without tcomp's rewriting."""


@dataclass
class Fallback:
    """What of one compiled graph runs without tcomp's rewriting, and why."""

    graph_id: int
    where: str  # "graph" (all of it), a step name ("lower.triton") or "step: node"
    reason: str

    def __str__(self) -> str:
        return f"graph {self.graph_id}, {self.where}: {self.reason}"


@dataclass
class DynamoReport:
    """What the backend did to one graph Dynamo handed it."""

    graph_id: int
    mode: str  # "inference" (canonicalized) | "training" (compiled by AOTAutograd unchanged)
    backend: str  # lowering backend asked for ("eager": none)
    attention_sites: int = 0  # tcomp.attention nodes after canonicalize
    spellings: list[str] = field(default_factory=list)  # per site: "sdpa" | "decomposed"
    sites: list[dict[str, Any]] = field(default_factory=list)
    preserved: list[str] = field(default_factory=list)  # ops kept whole in the ATen graph
    passes: list[dict[str, Any]] = field(default_factory=list)  # PassRecord.to_dict() per step
    plan: dict[str, Any] = field(default_factory=dict)  # Plan.to_dict() of what ran
    notes: list[str] = field(default_factory=list)
    fallbacks: list[Fallback] = field(default_factory=list)  # what runs without tcomp's rewriting
    aten_code: str = ""  # the ATen graph as AOTAutograd produced it (before canonicalize)
    code: str = ""  # the graph that runs


REPORTS: list[DynamoReport] = []


def reports() -> list[DynamoReport]:
    """The reports of every graph compiled since the last :func:`clear_reports`."""
    return list(REPORTS)


def clear_reports() -> None:
    REPORTS.clear()


def fallbacks() -> list[Fallback]:
    """Every fallback of the graphs compiled since the last :func:`clear_reports`."""
    return [f for r in REPORTS for f in r.fallbacks]


def _fall_back(report: DynamoReport, where: str, reason: str) -> None:
    report.fallbacks.append(Fallback(report.graph_id, where, reason))


def _warn(report: DynamoReport) -> None:
    """One warning per compiled graph that has fallbacks, naming the first few."""
    if not report.fallbacks:
        return
    shown = "; ".join(f"{f.where}: {f.reason}" for f in report.fallbacks[:3])
    more = f" (and {len(report.fallbacks) - 3} more)" if len(report.fallbacks) > 3 else ""
    warnings.warn(
        f"tcomp (torch.compile backend), graph {report.graph_id} ({report.mode}): {shown}{more}. "
        "tcomp.dynamo.fallbacks() lists every fallback",
        FallbackWarning,
        stacklevel=2,
    )


@contextlib.contextmanager
def _preserve_ops():
    """Keep ``PRESERVED_OPS`` whole while AOTAutograd traces (torch.export's own mechanism).
    Private torch API: if it is missing, the ops decompose and the report notes it."""
    try:
        from torch._export.utils import _special_op_to_preserve_cia
        from torch.export.exported_program import _override_composite_implicit_decomp
    except ImportError:  # pragma: no cover - depends on the torch version
        yield False
        return
    with _override_composite_implicit_decomp({op: _special_op_to_preserve_cia for op in PRESERVED_OPS}):
        yield True


def _needs_grad(gm: fx.GraphModule, example_inputs: list) -> bool:
    if not torch.is_grad_enabled():
        return False
    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)]
    tensors += list(gm.parameters())
    return any(t.requires_grad for t in tensors)


def _options(options: dict[str, Any] | None, extra: dict[str, Any]) -> dict[str, Any]:
    from tcomp.options import suggest

    opts = dict(options or {})
    opts.update({k: v for k, v in extra.items() if k != "mode"})
    known = ("backend", "target", "passes")
    for key in opts:
        if key not in known:
            raise TypeError(f"tcomp backend: unknown option {key!r}{suggest(key, known)}; known: {', '.join(known)}")
    return opts


def build_dynamo_plan(opts: dict[str, Any]) -> Plan:
    """The Plan of ``torch.compile(m, backend="tcomp", options=opts)``: canonicalize, the extra
    ``passes`` (default none), the backend's steps (default backend ``"eager"``, target ``"cpu"``)."""
    from tcomp.plan import build_plan

    # `or []`, not None (the default pipeline); build_plan refuses a bare name such as "tokens.merge"
    return build_plan(opts.get("target") or "cpu", opts.get("passes") or [], opts.get("backend") or "eager")


def tcomp_backend(gm: fx.GraphModule, example_inputs: list, **options: Any):
    """A ``torch.compile`` backend: AOTAutograd inference graph -> canonicalize -> (lowering).

    Options (``torch.compile(m, backend="tcomp", options={...})`` or keyword arguments when called
    directly): ``backend`` (``"eager"``, the default, runs the canonicalized graph; ``"triton"`` ...
    lowers with that tcomp backend), ``target`` (for the lowering, default ``"cpu"``) and ``passes``
    (extra passes run after canonicalize, in any form ``build_plan`` reads; default none). Unknown
    names and options raise before anything is compiled.
    """
    from torch._functorch.aot_autograd import aot_module_simplified, make_boxed_func

    import tcomp.backends  # noqa: F401 - registers the lowering backends
    import tcomp.dialect  # noqa: F401 - registers torch.ops.tcomp.attention
    import tcomp.passes  # noqa: F401 - registers canonicalize and the other passes

    opts = _options(options.pop("options", None), options)
    plan = build_dynamo_plan(opts)  # names and options checked before AOTAutograd runs
    report = DynamoReport(graph_id=len(REPORTS), mode="inference", backend=plan.backend, plan=plan.to_dict())
    REPORTS.append(report)

    def nop(fx_gm: fx.GraphModule, _inputs):
        report.code = fx_gm.code
        return make_boxed_func(fx_gm)

    if _needs_grad(gm, example_inputs):
        report.mode = "training"
        report.notes.append("grad is enabled: graph compiled by AOTAutograd unchanged (inference only)")
        _fall_back(
            report, "graph", "grad is enabled: forward and backward compiled by AOTAutograd unchanged (tcomp rewrites "
            "inference graphs only; its dialect ops have no backward). Run under torch.no_grad() to get tcomp's graph",
        )  # fmt: skip
        _warn(report)
        return aot_module_simplified(gm, example_inputs, fw_compiler=nop, bw_compiler=nop)

    def inference_compiler(aten_gm: fx.GraphModule, _inputs):
        return make_boxed_func(_rewrite(aten_gm, report, plan))

    with _preserve_ops() as ok:
        compiled = aot_module_simplified(
            gm, example_inputs, fw_compiler=inference_compiler, inference_compiler=inference_compiler
        )
    if ok:
        report.preserved = [str(op) for op in PRESERVED_OPS]
    else:
        report.notes.append("this torch cannot keep SDPA/linear whole; they were decomposed")
    _warn(report)
    return compiled


def _rewrite(aten_gm: fx.GraphModule, report: DynamoReport, plan: Plan) -> fx.GraphModule:
    from tcomp import meta
    from tcomp.dialect import attention_nodes
    from tcomp.pipeline import run_pipeline

    report.aten_code = aten_gm.code
    fused = sorted({str(n.target) for n in aten_gm.graph.nodes if n.target in FASTPATH_OPS})
    if fused:
        report.notes.append(
            f"nn.MultiheadAttention/TransformerEncoderLayer fast path traced ({', '.join(fused)}): its attention "
            "is one fused op tcomp cannot see or rewrite; call torch.backends.mha.set_fastpath_enabled(False) "
            "before compiling, or use tcomp.optimize, which turns the fast path off while capturing"
        )
    try:
        result = run_pipeline(aten_gm, plan)
    except Exception as exc:  # noqa: BLE001 - the graph still runs, as AOTAutograd traced it; reported
        first = (str(exc).strip().splitlines() or [""])[0]
        _fall_back(report, "graph", f"tcomp's pipeline failed on it ({type(exc).__name__}: {first}); it runs unchanged")
        report.notes.append(f"pipeline failed, graph runs unchanged: {type(exc).__name__}: {first}")
        report.code = aten_gm.code
        return aten_gm
    report.passes = [r.to_dict() for r in result.records]
    for r in result.records:
        report.notes += [f"{r.name}: {n}" for n in r.notes]
        if r.status == "rolled_back":
            report.notes.append(f"{r.name} rolled back: {r.reason}")
            _fall_back(report, r.name, f"rolled back: {r.reason}")
        for n in r.notes:
            if "stays eager" in n:  # a backend's lowering left these on the eager reference
                _fall_back(report, r.name, n)
    canon = next((r for r in result.records if r.name == "canonicalize"), None)
    report.sites = list(canon.sites) if canon is not None else []
    # count from the graph that runs: sites still on the reference op or lowered by a backend
    report.attention_sites = sum(
        1 for n in result.gm.graph.nodes if n.op == "call_function" and meta.ATTN_LAYER in n.meta
    )
    report.spellings = [n.meta.get(meta.ATTN_SPELLING, "") for n in attention_nodes(result.gm)]
    report.code = result.gm.code
    return result.gm


def _register() -> None:
    """Register under "tcomp" unless the ``torch_dynamo_backends`` entry point is loading this
    module (torch registers the entry point's function itself and refuses a duplicate name)."""
    from torch._dynamo import register_backend
    from torch._dynamo.backends import registry

    if "tcomp" in registry._COMPILER_FNS or registry._BACKENDS.get("tcomp") is not None:
        return
    register_backend(name="tcomp")(tcomp_backend)


_register()
