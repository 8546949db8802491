"""nn.Module + example inputs -> ATen-level ``torch.fx.GraphModule`` through ``torch.export``.

The captured graph is ``ExportedProgram.module()``: flat placeholders, parameters as ``get_attr``
nodes, and pytree code that accepts the model's own argument structure and rebuilds its own output
structure (Hugging Face ``ModelOutput`` included). Batch and sequence dims are dynamic by default
(``Dim.AUTO`` on dims 0 and 1 of every tensor input); dims the model's code fixes stay static and
are listed in ``Captured.static_dims``. ``Captured.inputs`` records what the graph accepts (each
input's dtype, rank, device, fixed dims and ranges; :mod:`tcomp.input_check`), which the compiled
module checks on every call.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.fx.experimental.symbolic_shapes  # noqa: F401 - read by _describe_failure (not loaded by import torch)
import torch.utils._pytree as pytree
from torch.export import Dim, ExportedProgram

from tcomp import meta
from tcomp.errors import CaptureError, InputError, user_frame
from tcomp.input_check import InputSpec, spec_of

_LEAF_TYPES = (torch.Tensor, int, float, bool, str, type(None))


@dataclass
class Captured:
    """A captured model: the graph, the program it came from and what is known of its inputs."""

    gm: fx.GraphModule
    exported: ExportedProgram
    example_args: tuple
    example_kwargs: dict
    # input path (e.g. "args[0]", "kwargs['input_ids']") -> {dim: "dynamic" | size}
    dims: dict[str, dict[int, int | str]] = field(default_factory=dict)
    # what the graph accepts (dtype, rank, device, fixed dims and ranges of each input), checked on
    # every call of the compiled module (tcomp.input_check); None: not known, calls run unchecked
    inputs: InputSpec | None = None

    @property
    def static_dims(self) -> dict[str, dict[int, int]]:
        """Dims that were asked to be dynamic but the model's code fixed to one size."""
        return {k: {d: s for d, s in v.items() if s != "dynamic"} for k, v in self.dims.items()}


def _path_str(path) -> str:
    return pytree.keystr(path)


def check_inputs(args: tuple, kwargs: dict) -> None:
    """Refuse input types torch.export cannot take, naming the offending input."""
    leaves, _ = pytree.tree_flatten_with_path((args, kwargs))
    for path, leaf in leaves:
        if not isinstance(leaf, _LEAF_TYPES):
            raise InputError(
                f"example input {input_name(path)} is a {type(leaf).__name__}; tcomp captures models whose inputs are "
                "tensors, numbers, strings, None, or lists/tuples/dicts of them. Convert it to a tensor "
                "(for text: tokenize first) or wrap the model in a module that takes tensors."
            )


def _dynamic_spec(model: torch.nn.Module, args: tuple, kwargs: dict):
    """``Dim.AUTO`` on dims 0 and 1 of every tensor input, keyed by the forward's parameter names."""

    def spec(x):
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return None
        return {d: Dim.AUTO for d in range(min(2, x.dim()))}

    def is_leaf(x):
        return not isinstance(x, (tuple, list, dict))

    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as exc:
        raise InputError(f"the example inputs do not fit {type(model).__name__}.forward: {exc}") from exc
    return {name: pytree.tree_map(spec, value, is_leaf=is_leaf) for name, value in bound.arguments.items()}


def _describe_failure(model: torch.nn.Module, exc: BaseException) -> str:
    where = user_frame(exc.__traceback__)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    data_dep = isinstance(
        exc, torch.fx.experimental.symbolic_shapes.GuardOnDataDependentSymNode
    ) or re.search(r"data.dependent|GuardOnDataDependent|Could not guard on data-dependent", text)
    if data_dep:
        cause = (
            "the model branches in Python on the value of a tensor (data-dependent control flow), which a "
            "graph cannot represent. Rewrite the branch with torch.where / torch.cond, or move it out of forward()."
        )
    elif "Constraints violated" in text or "specialized" in text.lower():
        cause = (
            "the model fixes a batch or sequence size that tcomp tried to keep dynamic. Call "
            "tcomp.optimize(..., dynamic=False) to capture static shapes."
        )
    else:
        cause = f"{type(exc).__name__}: {first}"
    loc = f" at {where}" if where else ""
    return f"could not capture {type(model).__name__}{loc}: {cause}"


def capture(
    model: torch.nn.Module,
    args: tuple = (),
    kwargs: dict | None = None,
    *,
    dynamic: bool = True,
) -> Captured:
    """Capture ``model(*args, **kwargs)`` as an ATen-level fx graph.

    The model is never modified: it is captured from a copy in eval mode (inference graphs).
    Raises ``InputError`` for inputs that are not tensors/numbers and ``CaptureError`` naming the
    model's source line when the model cannot be traced.
    """
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"tcomp.optimize expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(args, tuple):
        args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    kwargs = dict(kwargs or {})
    check_inputs(args, kwargs)
    work = copy.deepcopy(model).eval()
    _disable_hf_cache(work)
    specs = _dynamic_spec(work, args, kwargs) if dynamic else None
    try:
        with _no_mha_fastpath():
            ep = torch.export.export(work, args, kwargs, strict=False, dynamic_shapes=specs)
    except Exception as exc:  # noqa: BLE001 - turned into a message that names the user's code
        if dynamic and _exports_statically(work, args, kwargs):
            raise CaptureError(
                f"{type(model).__name__} cannot be captured with dynamic batch and sequence dims "
                f"({_describe_failure(model, exc)}). It can be captured with static shapes: call "
                "tcomp.optimize(..., dynamic=False); the optimized module then accepts only the example sizes."
            ) from exc
        raise CaptureError(_describe_failure(model, exc)) from exc
    gm = ep.module()
    return Captured(
        gm=gm, exported=ep, example_args=args, example_kwargs=kwargs, dims=_dims_of(ep, args, kwargs, dynamic),
        inputs=spec_of(model, gm, ep, args, kwargs, dynamic),
    )  # fmt: skip


@contextlib.contextmanager
def _no_mha_fastpath():
    """nn.TransformerEncoderLayer and nn.MultiheadAttention may take a fused "fast path" in eval
    mode (one opaque op per layer, seen under torch 2.11's export), which hides the attention from
    canonicalize. Switch it off while capturing; the setting is restored afterwards."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def _exports_statically(work: torch.nn.Module, args: tuple, kwargs: dict) -> bool:
    try:
        with _no_mha_fastpath():
            torch.export.export(work, args, kwargs, strict=False)
        return True
    except Exception:  # noqa: BLE001
        return False


def _dims_of(
    ep: ExportedProgram, args: tuple, kwargs: dict, dynamic: bool
) -> dict[str, dict[int, int | str]]:
    """Which of dims 0/1 of each tensor input ended up symbolic in the captured graph."""
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user_inputs = [
        n
        for n, s in zip(placeholders, ep.graph_signature.input_specs)
        if s.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    leaves, _ = pytree.tree_flatten_with_path((args, kwargs))
    tensor_leaves = [(p, x) for p, x in leaves if isinstance(x, torch.Tensor)]
    out: dict[str, dict[int, int | str]] = {}
    ph_by_val = [n for n in user_inputs if isinstance(n.meta.get(meta.VAL), torch.Tensor)]
    for (path, x), node in zip(tensor_leaves, ph_by_val):
        shape = node.meta[meta.VAL].shape
        info: dict[int, int | str] = {}
        for d in range(min(2, x.dim())):
            size = shape[d]
            expr = size.node.expr if isinstance(size, torch.SymInt) else None
            # a SymInt whose expression is a number was specialized by the model's code
            info[d] = (
                "dynamic"
                if expr is not None and not expr.is_number
                else int(expr if expr is not None else size)
            )
        out[input_name(path)] = info
    return out


def input_name(path) -> str:
    """Readable name of an input from its pytree path over ``(args, kwargs)``."""
    s = _path_str(path)
    if s.startswith("[0]"):
        return "args" + s[3:]
    if s.startswith("[1]"):
        return "kwargs" + s[3:]
    return s


def _disable_hf_cache(model: torch.nn.Module) -> None:
    """Hugging Face decoders return a cache object by default; an inference graph does not need it.
    Called on tcomp's private copy of the model, never on the user's."""
    for mod in model.modules():
        config = getattr(mod, "config", None)
        if config is not None and getattr(config, "use_cache", False):
            config.use_cache = False
