"""The Python face: ``tcomp.optimize`` and the module it returns."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from tcomp.capture import Captured, capture
from tcomp.errors import InputError
from tcomp.graph import drop_unused_tensors
from tcomp.outcome import check_on_failure, enforce, enforce_strict, requested
from tcomp.pipeline import run_pipeline
from tcomp.report import Report
from tcomp.targets import Target

if TYPE_CHECKING:
    from tcomp.plan import Plan


def _load_plugins() -> None:
    """Registration happens when the faces import the pass and backend packages."""
    import tcomp.backends  # noqa: F401
    import tcomp.dialect  # noqa: F401
    import tcomp.passes  # noqa: F401


class CapturedGraph:
    """A graph without the module that owns it: what reports need of the captured graph."""

    def __init__(self, graph: fx.Graph):
        self.graph = graph


class OptimizedModule(torch.nn.Module):
    """An ``nn.Module`` running the rewritten graph. Same call signature and output structure as
    the original model; ``.report`` says what was done, ``.graph_module`` is the graph."""

    def __init__(
        self,
        gm: fx.GraphModule,
        report: Report,
        target: Target,
        captured: Captured,
        snapshots: list[tuple[str, str]] | None = None,
        cudagraphs: bool = False,
    ):
        super().__init__()
        self.graph_module = gm
        self.snapshots = snapshots or []  # (stage, graph code) per applied pass, "captured" first
        # the graph before the passes (report.html compares its cost and nodes): its structure and
        # shape metadata only, so that weights a pass replaced (quantization) are not kept alive
        self.graph_before = CapturedGraph(copy.deepcopy(captured.gm.graph))
        self.report = report
        self.target = target
        self.plan: Plan | None = None  # the tcomp.plan.Plan that produced it (set by optimize)
        self.input_spec = captured.inputs  # what forward accepts (tcomp.input_check), None: unchecked
        self._static_dims = {k: v for k, v in captured.static_dims.items() if v}
        self._model_name = report.model
        self._device = self._graph_device()
        self._runner = None
        if cudagraphs:
            from tcomp.cudagraphs import CudaGraphRunner

            self._runner = CudaGraphRunner(gm, lambda: [*gm.parameters(), *gm.buffers()])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.input_spec is not None:  # before any kernel: a few attribute compares per tensor
            self.input_spec.check(args, kwargs, self._device)
        try:
            return (self._runner or self.graph_module)(*args, **kwargs)
        except Exception as exc:
            text = str(exc)
            if any(
                s in text
                for s in (
                    "Guard failed",
                    "input tree spec",
                    "Expected input",
                    "tree_flatten_spec",
                    "Trying to flatten",
                )
            ):
                raise InputError(self._input_help(text)) from exc
            raise

    def _input_help(self, text: str) -> str:
        """For a call the input spec let through (or a module without one) that torch.export's own
        guards refused: the guard's words and what was fixed at capture."""
        static = self._static_dims
        msg = (
            f"the inputs do not fit the graph tcomp captured for {self._model_name}: {text.splitlines()[0]}."
        )
        if static:
            msg += (
                f" These input dims were fixed at capture time: {static} (a size of 1 in the example inputs, or "
                "model code that depends on the size, fixes a dim). Capture again with example inputs of those sizes, "
                "or with a batch and sequence length of at least 2."
            )
        else:
            msg += " Call it with the same argument structure (positional/keyword, which tensors) as the example inputs."
        return msg

    def _graph_device(self) -> torch.device | None:
        from tcomp.input_check import module_device

        return module_device(self.graph_module)

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda()/.half(): recorded CUDA graphs read old storage
        if self._runner is not None:
            self._runner.reset()
        out = super()._apply(fn, *args, **kwargs)
        self._device = self._graph_device()  # the inputs' device follows the module's
        return out

    @property
    def cudagraphs(self) -> str:
        """Whether forward replays CUDA graphs: "on", "off", or why capture was given up."""
        if self._runner is None:
            return "off"
        return self._runner.disabled or "on"

    def save(self, folder: str) -> str:
        """Write the artifact folder (report, graphs, ``plan.json``, manifest with hashes); returns the
        manifest path. ``plan.json`` re-runs with ``tcomp optimize SPEC --plan`` (no calibration data)."""
        from tcomp.artifacts import write

        return str(write(self, folder))

    @property
    def code(self) -> str:
        return self.graph_module.code


def _normalize_inputs(example_inputs: Any, example_kwargs: dict | None) -> tuple[tuple, dict]:
    kwargs = dict(example_kwargs or {})
    if example_inputs is None:
        args: tuple = ()
    elif isinstance(example_inputs, dict):
        args, kwargs = (), {**example_inputs, **kwargs}
    elif isinstance(example_inputs, tuple):
        args = example_inputs
    elif isinstance(example_inputs, list):
        args = tuple(example_inputs)
    else:
        args = (example_inputs,)
    if not args and not kwargs:
        raise InputError(
            "tcomp.optimize needs example inputs: optimize(model, (x,)) or optimize(model, {'input_ids': ids})"
        )
    return args, kwargs


def optimize(
    model: torch.nn.Module,
    example_inputs: Any = None,
    target: str | Target = "cpu",
    passes: Sequence[Any] | Plan | None = None,
    verify: bool = True,
    calibration: Any = None,
    *,
    backend: str | None = None,
    example_kwargs: dict | None = None,
    dynamic: bool = True,
    verify_samples: int = 2,
    seed: int = 0,
    cudagraphs: bool | None = None,
    progress: Callable[[str], None] | None = None,
    decoder: bool | None = None,
    max_len: int | None = None,
    max_batch: int | None = None,
    kv_cache: str = "model",
    batch_buckets: Sequence[int] | None = None,
    on_failure: str = "raise",
    strict: bool = False,
    max_error: float | None = None,
    metric: Any = "rel",
    pool: Any = None,
    objective: str = "latency",
    candidates: Sequence[str] | None = None,
) -> OptimizedModule:
    """Capture ``model`` on ``example_inputs``, rewrite it with ``passes`` and return a module that
    runs the result.

    * ``example_inputs``: a tuple of positional arguments, a dict of keyword arguments, or one tensor.
    * ``target``: ``"cpu"``, ``"a100"``, ``"h100"``, ``"h200"`` or a ``Target``.
    * ``passes``: names, ``(name, options)`` pairs or ``{"pass": name, "options": {...}}`` dicts
      (``Plan.to_json``'s steps), ordered by the passes' declared after/before constraints; None
      runs the default pipeline (exact and FP-equivalent passes only); ``canonicalize`` always runs
      first. Or a ``tcomp.plan.Plan``, run as built (its target and backend win). Every option is
      checked against the pass's options dataclass before the model is captured.
    * ``verify``: check every pass against its contract on float64 references of the example inputs
      and ``verify_samples - 1`` fresh random draws; a pass that breaks its contract is rolled back.
    * ``calibration``: model inputs for passes that fit statistics (in each pass's context).
    * ``backend``: ``"triton"``, ``"onnxruntime"`` or ``"eager"``; None takes the target's default. Lowering is verified
      like a pass (FP_EQUIVALENT); ops a backend cannot run stay on the eager reference.
    * ``dynamic``: keep batch and sequence dims dynamic (the default).
    * ``cudagraphs``: replay the lowered graph as CUDA graphs, one per input shape, for CUDA inputs
      in inference (outputs are returned as fresh tensors). None: on for GPU targets.
    * ``progress``: called with the name of each step as it starts (capture, reference, each pass).
    * ``decoder``: None (default) compiles a Hugging Face causal LM for generation (True does the same
      for a plain module whose forward takes ``past_key_values`` and ``cache_position``): prefill and
      decode graphs over tcomp's static KV cache of ``max_batch`` rows (default: the example's batch)
      and ``max_len`` slots (default: the model's ``max_position_embeddings``, at most 2048), returned
      as a module that works under the model's own ``generate()`` and ``tcomp.generate``. False
      compiles the forward pass only (no cache). ``kv_cache``: the cache's format, ``"model"`` (the
      model's dtype) or ``"int8"`` (codes and a float32 scale per token and head: half a bf16
      cache's bytes; BOUNDED, see tcomp/kv_cache.py). ``batch_buckets``: smaller batch sizes that get
      a decode graph of their own over the first rows of the same cache (a step of b rows runs the
      smallest bucket >= b instead of padding to ``max_batch``); each costs a capture and a plan run.
    * ``seed``: the seed of the reference's random draws and of the passes' random features
      (``attention.linear`` and ``attention.rpe_fft``: FAVOR+, hedgehog initialisation; plus the
      site index). ``attention.softmax_free`` seeds its k-means with 0 whatever the seed.

    * ``on_failure``: what a pass named in ``passes`` that ends rolled back or skipped in every
      graph does: ``"raise"`` (default; the error names each site's measured error against the
      tolerance, or the reason), ``"warn"`` (a warning, and the result is returned) or ``"skip"``
      (the report alone says so). See tcomp/outcome.py.
    * ``strict``: an error when a softmax that a product of two activations reaches is left as the
      model wrote it (an attention spelling canonicalize cannot take, e.g. logit soft-capping); by
      default such sites are listed in ``report.unmatched`` with the link that broke the match.

    * ``max_error``: plan the passes instead of naming them (leave ``passes`` out): every candidate
      of ``candidates`` (tcomp.planner.candidates: int8, w8a8, fp8, int4_g128, int4_g32, w1,
      linear_hedgehog, softmax_free, ...) is measured alone at every site on ``calibration`` (a
      quarter held back), the greedy path by predicted saving per unit of error is cut at the
      budget, and the whole plan is checked on both splits (the worst site backed off until it
      holds). ``metric``: ``"rel"``, ``"cos"``, ``"neighbours"`` or ``metric(out, ref) -> float``,
      on the vectors ``pool`` names (``"mean"``, ``"cls"``, ``"none"`` or a callable; see
      tcomp/planner/metrics.py). ``objective``: ``"latency"`` (roofline time on the target) or
      ``"memory"`` (bytes of weights). ``report.planner`` holds every measurement and check;
      ``.plan.to_json()`` re-runs the chosen plan through ``passes=``.

    The user's model is never modified; ``.plan`` of the result is the Plan that ran.
    """
    _load_plugins()
    from tcomp.plan import build_plan

    args, kwargs = _normalize_inputs(example_inputs, example_kwargs)
    check_on_failure(on_failure)
    planned = max_error is not None
    if planned:
        _check_planned(passes, decoder, max_error, metric, pool, objective)
        passes = ["canonicalize"]  # for the checks below; the planner chooses the rest
    plan = build_plan(target, passes, backend, calibration=calibration, seed=seed)  # checks before work
    asked = [] if passes is None or planned else requested(plan)  # the default pipeline is not the user's request
    from tcomp.decoder import is_decoder, speaks_cache

    if decoder is None:
        decoder = is_decoder(model)
    elif decoder and not speaks_cache(model):
        raise InputError(
            f"{type(model).__name__} cannot generate through tcomp: it is not a Hugging Face causal LM and its forward "
            "does not take past_key_values (or cache), cache_position and attention_mask (see tcomp.models.gpt). "
            "Call tcomp.optimize(..., decoder=False)."
        )
    if decoder:
        from tcomp.optimize_decoder import optimize_decoder

        return optimize_decoder(
            model, args, kwargs, plan, verify=verify, verify_samples=verify_samples,
            cudagraphs=cudagraphs, progress=progress, max_len=max_len, max_batch=max_batch, kv_cache=kv_cache,
            batch_buckets=None if batch_buckets is None else tuple(batch_buckets), on_failure=on_failure, asked=asked,
            strict=strict,
        )  # fmt: skip
    if kv_cache != "model" or batch_buckets:
        raise InputError(
            f"kv_cache and batch_buckets are a decoder's options, and {type(model).__name__} is compiled as a single "
            "forward pass (no KV cache): pass decoder=True for a model that generates, or leave them out"
        )
    tgt = plan.target
    step = progress or (lambda _name: None)
    step("capture")
    captured = capture(model, args, kwargs, dynamic=dynamic)
    search = None
    if planned:
        step("plan")
        search, plan = _search(captured, plan, calibration, max_error, metric, pool, objective, candidates, backend,
                               step)  # fmt: skip
    reference = None
    if verify:
        from tcomp.verify import Reference

        step("float64 reference")
        reference = Reference.build(model, args, kwargs, samples=verify_samples, seed=plan.seed)  # a saved Plan brings its own seed
    result = run_pipeline(captured.gm, plan, reference=reference, progress=progress)
    enforce(asked, {"graph": result.records}, on_failure)
    enforce_strict({"graph": result.records}, strict)
    drop_unused_tensors(result.gm)  # e.g. float weights a quantization pass replaced
    report = Report(
        model=type(model).__name__, target=tgt.name, passes=result.records, dynamic_dims=captured.dims
    )
    report.sites = _sites(result.gm)
    if not report.sites and result.before_lowering is not None:  # a backend that runs the whole graph (ONNX Runtime)
        report.sites = [dict(r, runs_on=plan.backend) for r in _sites(result.before_lowering)]
    if search is not None:
        report.planner = search.to_dict()
    if reference is not None:
        report.base_error = reference.base_error
        report.final_error = result.final_error
    _add_cost(report, result.gm, tgt)
    use_graphs = tgt.kind == "gpu" if cudagraphs is None else cudagraphs
    om = OptimizedModule(result.gm, report, tgt, captured, result.snapshots, cudagraphs=use_graphs)
    om.plan = dataclasses.replace(plan, calibration=None)  # the batches are not kept alive
    return om


def _check_planned(passes: Any, decoder: bool | None, max_error: Any, metric: Any, pool: Any, objective: str) -> None:
    from tcomp.planner import check

    if passes is not None:
        raise InputError(
            "max_error= chooses the passes itself: leave passes= out (or re-run a chosen plan with passes=plan and "
            "no max_error)"
        )
    if decoder:
        raise InputError("max_error= plans a single forward pass; decoders that generate are not planned yet: "
                         "pass decoder=False, or name the passes")  # fmt: skip
    check(max_error, metric, pool, objective)


def _search(captured, plan, calibration, max_error, metric, pool, objective, candidates, backend, step):
    """Run the planner on the canonicalized graph; (its record, the plan it chose, with the backend).
    ``step`` hears each measurement as ``plan: <candidate> at <site> (i/n)``."""
    from tcomp.plan import build_plan
    from tcomp.planner import search_plan

    exact = run_pipeline(captured.gm, plan.steps)  # canonicalize alone
    search = search_plan(
        exact.gm, calibration, plan.target, max_error=max_error, metric=metric, pool=pool, objective=objective,
        candidates=candidates, seed=plan.seed, progress=lambda what, i, n: step(f"plan: {what} ({i}/{n})"),
    )  # fmt: skip
    chosen = build_plan(plan.target, [*(s.name for s in plan.steps), *search.steps], backend,
                        calibration=search.calibration, seed=plan.seed)  # fmt: skip
    return search, chosen


def _sites(gm: fx.GraphModule) -> list[dict[str, Any]]:
    """Every attention site canonicalize found, whether still on the reference op or lowered."""
    from tcomp import meta
    from tcomp.dialect import is_attention
    from tcomp.report import site_record

    sites = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and meta.ATTN_LAYER in n.meta:
            rec = site_record(n)
            rec["runs_on"] = (
                "eager" if is_attention(n) else getattr(n.target, "__module__", "").rsplit(".", 2)[-2]
            )
            sites.append(rec)
    return sites


def _add_cost(report: Report, gm: fx.GraphModule, target: Target) -> None:
    from tcomp.cost import cost_summary

    report.cost, report.cost_symbolic = cost_summary(gm, target)
