"""Run-time input checks: what a compiled graph accepts, recorded at capture and checked on every call.

A graph captured by ``torch.export`` is valid for the inputs it was captured for: each tensor's
dtype, rank and device, the sizes of the dims the export fixed, the range of the dims it kept
dynamic (and which dims must be equal: they share a symbol), the argument structure and the values
of non-tensor arguments. Called with anything else, a graph gives a crash deep inside a kernel or,
worse, a broadcast that silently computes something else. :class:`InputSpec` records all of it at
capture (:func:`spec_of`, from the example inputs, the export's placeholders and its range
constraints, plus the rows of the model's learned position table, past which no token has a
position) and :meth:`InputSpec.check` refuses a call that does not fit with an ``InputError`` that
names the input, says what the graph expects and what to do, before any kernel runs.

The check runs on every call, so it does only attribute compares: no sync, no tensor op. The spec
travels in an artifact's manifest (:meth:`InputSpec.to_json`), so a loaded artifact checks too.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from tcomp.errors import InputError

_CONSTANTS = (int, float, bool, str, type(None))


@dataclass(frozen=True)
class DimSpec:
    """One dim of a tensor input: a fixed ``size``, or dynamic within ``low .. high`` (``high``
    None: no bound), equal to every other dim of the same ``symbol``."""

    size: int | None = None
    symbol: str | None = None
    low: int = 0
    high: int | None = None
    bound: str = ""  # where ``high`` comes from, for the message
    pinned: bool = False  # asked to be dynamic, fixed by the example (size 1) or the model's code

    def describe(self) -> str:
        if self.size is not None:
            return str(self.size)
        text = "dynamic"
        if self.high is not None:
            text = f"{self.low}..{self.high}" if self.low > 0 else f"<= {self.high}"
        elif self.low > 0:
            text = f">= {self.low}"
        return text


@dataclass(frozen=True)
class LeafSpec:
    """A tensor input (``dtype``, ``dims``, ``device``) or a constant one (``value``)."""

    name: str  # readable: "input_ids", "past[0][1]", "args[0]"
    dtype: torch.dtype | None = None  # None: a constant
    dims: tuple[DimSpec, ...] = ()
    device: torch.device | None = None  # the device at capture
    on_model_device: bool = True  # the graph's weights' device applies (else ``device``)
    value: Any = None

    def describe(self, device: torch.device | None = None) -> str:
        if self.dtype is None:
            return f"{self.name}={self.value!r}"
        shape = ", ".join(d.describe() for d in self.dims)
        fixed = [f"dim {i} = {d.size}" for i, d in enumerate(self.dims) if d.size is not None]
        dev = device if (self.on_model_device and device is not None) else self.device
        return (
            f"{self.name}: {self.dtype}, rank {len(self.dims)}, shape ({shape})"
            + (f" with {', '.join(fixed)} fixed" if fixed else "")
            + f", on {dev}"
        )


@dataclass(frozen=True)
class ArgSpec:
    """One argument of the model's forward: a leaf, or a tuple/list/dict of leaves (``tree``)."""

    name: str
    leaves: tuple[LeafSpec, ...]
    tree: pytree.TreeSpec | None = None  # None: the argument is one leaf


class InputSpec:
    """What a compiled graph accepts; :meth:`check` refuses anything else before it runs."""

    def __init__(self, model: str, args: list[ArgSpec], device: torch.device, dynamic: bool = True) -> None:
        self.model, self.args, self.device, self.dynamic = model, list(args), device, dynamic
        self.names = [a.name for a in self.args]
        self._index = {a.name: a for a in self.args}

    # ---------------------------------------------------------------- the check (every call)
    def check(self, args: tuple, kwargs: dict, device: torch.device | None = None) -> dict[str, Any]:
        """Raise ``InputError`` unless ``(args, kwargs)`` fit the graph; return them by name.
        ``device``: where the graph's weights are now (None: where they were at capture)."""
        names = self.names
        if len(args) > len(names):
            self._fail(
                f"got {len(args)} positional inputs, and it takes {len(names)} ({', '.join(names)}). "
                "Call it with the same argument structure (positional/keyword, which tensors) as the example inputs"
            )
        bound = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in self._index:
                self._fail(
                    f"unexpected input {key!r}: the graph takes {', '.join(names)} (the example inputs' names). "
                    f"Leave {key!r} out, or optimize again with example inputs that include it"
                )
            if key in bound:
                self._fail(f"input {key!r} is given both by position and by keyword; give it once")
            bound[key] = value
        if len(bound) != len(names):
            missing = [n for n in names if n not in bound]
            self._fail(
                f"missing input {missing[0]!r}"
                + (f" (and {', '.join(map(repr, missing[1:]))})" if missing[1:] else "")
                + f": the graph was captured with it ({self._index[missing[0]].leaves[0].describe(device)}); pass "
                f"{missing[0]}=... as in the example inputs, or optimize again with example inputs without it"
            )
        sizes: dict[str, tuple[int, str, int]] = {}
        dev = self.device if device is None else device
        for arg in self.args:
            value = bound[arg.name]
            if arg.tree is None:
                self._leaf(arg.leaves[0], value, sizes, dev)
                continue
            leaves, tree = pytree.tree_flatten(value)
            if tree != arg.tree:
                self._fail(
                    f"input {arg.name!r} has the structure {tree}, and the graph was captured for {arg.tree} "
                    "(the same containers, keys and number of tensors as the example input)"
                )
            for spec, leaf in zip(arg.leaves, leaves):
                self._leaf(spec, leaf, sizes, dev)
        return bound

    def _leaf(self, spec: LeafSpec, x: Any, sizes: dict, device: torch.device) -> None:
        if spec.dtype is None:
            if isinstance(x, torch.Tensor) or x != spec.value:  # 2 for 2.0 passes, as export's guard
                self._fail(
                    f"input {spec.name!r} is {_show(x)}, and the graph was captured with {spec.name}={spec.value!r}: "
                    "a different value takes another capture. Pass the same value, or optimize again with "
                    "example inputs that have the one you need"
                )
            return
        if not isinstance(x, torch.Tensor):
            self._fail(f"input {spec.name!r} is {_show(x)}; expected a tensor ({spec.describe(device)})")
        if x.dtype != spec.dtype:
            self._fail(
                f"input {spec.name!r} has dtype {x.dtype}, and the graph was compiled for {spec.dtype} "
                f"({spec.describe(device)}). Convert it with .to({spec.dtype}), or optimize again with example "
                f"inputs of dtype {x.dtype}"
            )
        dims = spec.dims
        if x.dim() != len(dims):
            self._fail(
                f"input {spec.name!r} has rank {x.dim()} (shape {tuple(x.shape)}), and the graph expects rank "
                f"{len(dims)} ({spec.describe(device)}). Add or drop dims to match (e.g. a batch dim: x[None])"
            )
        want = device if spec.on_model_device else spec.device
        if x.device != want:
            self._fail(
                f"input {spec.name!r} is on {x.device}, and the graph runs on {want} ({spec.describe(device)}). "
                f"Move it with .to({str(want)!r})"
                + (
                    f", or move the compiled module with .to({str(x.device)!r})"
                    if spec.on_model_device
                    else ""
                )
            )
        shape = x.shape
        for i, d in enumerate(dims):
            n = shape[i]
            if d.size is not None:
                if n != d.size:
                    self._fail(self._fixed(spec, i, n, device))
                continue
            if n < d.low or (d.high is not None and n > d.high):
                self._fail(
                    f"input {spec.name!r} has size {n} in dim {i}, and the graph was built for {d.describe()} there"
                    f"{d.bound}. Use inputs within that range (split a longer sequence), or optimize a model that "
                    "takes longer ones"
                )
            if d.symbol is not None:
                seen = sizes.setdefault(d.symbol, (n, spec.name, i))
                if seen[0] != n:
                    self._fail(
                        f"input {spec.name!r} has size {n} in dim {i}, and input {seen[1]!r} has {seen[0]} in dim "
                        f"{seen[2]}: the captured graph needs these two dims equal (the example inputs had them "
                        "equal and the model's code relies on it). Give both the same size"
                    )

    def _fixed(self, spec: LeafSpec, i: int, n: int, device: torch.device) -> str:
        d = spec.dims[i]
        msg = (
            f"input {spec.name!r} has size {n} in dim {i}, which was fixed at capture time to {d.size} "
            f"({spec.describe(device)})."
        )
        if d.pinned:
            msg += (
                " tcomp asked for a dynamic dim there, and the example's size (1 fixes a dim) or the model's code "
                f"fixed it. Capture again with example inputs of size {n} there, or with a batch and sequence "
                "length of at least 2"
            )
        elif not self.dynamic:
            msg += f" It was captured with dynamic=False: optimize again with dynamic=True, or with size {n} there"
        else:
            msg += f" Only inputs of size {d.size} there fit; optimize again with example inputs of size {n} for others"
        return msg

    def _fail(self, what: str) -> None:
        raise InputError(f"the inputs do not fit the graph tcomp captured for {self.model}: {what}")

    def describe(self, device: torch.device | None = None) -> str:
        """Every input, one per line: what the graph expects."""
        return "\n".join(leaf.describe(device or self.device) for a in self.args for leaf in a.leaves)

    # ---------------------------------------------------------------- the manifest
    def to_json(self) -> dict[str, Any]:
        def leaf(s: LeafSpec) -> dict[str, Any]:
            if s.dtype is None:
                return {"name": s.name, "value": s.value}
            return {
                "name": s.name,
                "dtype": str(s.dtype).removeprefix("torch."),
                "dims": [{k: v for k, v in vars(d).items() if v != getattr(_NO_DIM, k)} for d in s.dims],
                "device": str(s.device),
                "on_model_device": s.on_model_device,
            }

        return {
            "model": self.model,
            "device": str(self.device),
            "dynamic": self.dynamic,
            "args": [
                {
                    "name": a.name,
                    "tree": pytree.treespec_dumps(a.tree) if a.tree is not None else None,
                    "leaves": [leaf(s) for s in a.leaves],
                }
                for a in self.args
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputSpec:
        def leaf(d: dict[str, Any]) -> LeafSpec:
            if "dtype" not in d:
                return LeafSpec(d["name"], value=d.get("value"))
            dtype = getattr(torch, d["dtype"], None)
            if not isinstance(dtype, torch.dtype):
                raise InputError(
                    f"the manifest names the input dtype {d['dtype']!r}, which this torch does not have"
                )
            return LeafSpec(
                d["name"], dtype, tuple(DimSpec(**dim) for dim in d["dims"]), torch.device(d["device"]),
                d.get("on_model_device", True),
            )  # fmt: skip

        args = [
            ArgSpec(
                a["name"],
                tuple(leaf(s) for s in a["leaves"]),
                pytree.treespec_loads(a["tree"]) if a["tree"] else None,
            )
            for a in data["args"]
        ]
        return cls(data["model"], args, torch.device(data["device"]), data.get("dynamic", True))


_NO_DIM = DimSpec()  # the defaults a manifest leaves out


def _show(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, _CONSTANTS):
        return repr(x)
    return f"a {type(x).__name__}"


def module_device(module: torch.nn.Module) -> torch.device | None:
    """The device of a module's first parameter or buffer (None: it holds none)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return None


# -------------------------------------------------------------------- building the spec (capture)


def learned_positions(model: torch.nn.Module) -> tuple[str, int] | None:
    """(module path, positions) of the learned position table of ``model`` -- an ``nn.Embedding``
    named for positions (GPT-2's ``wpe``, BERT's ``position_embeddings``, the zoo's ``pos``): the
    config's position count, else the table's rows, less the rows below a ``padding_idx`` that
    offsets the positions (RoBERTa counts from ``pad_token_id + 1``). None without one (rotary,
    ALiBi, relative biases: any length has a position)."""
    config = getattr(model, "config", None) or getattr(model, "cfg", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    limit = limit or getattr(config, "max_len", None)
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1].lower()
        if isinstance(mod, torch.nn.Embedding) and (
            leaf == "wpe" or leaf.startswith("pos") or "position" in leaf
        ):
            rows = int(limit or mod.num_embeddings)
            if mod.padding_idx is not None:
                rows = min(rows, mod.num_embeddings - mod.padding_idx - 1)
            return name, rows
    return None


def spec_of(
    model: torch.nn.Module, gm: torch.fx.GraphModule, ep: Any, args: tuple, kwargs: dict, dynamic: bool
) -> InputSpec | None:
    """The :class:`InputSpec` of a graph ``gm`` that ``torch.export`` (program ``ep``) captured from
    ``model(*args, **kwargs)``; None when its placeholders cannot be matched to the inputs (the graph
    then runs unchecked, as before)."""
    in_spec = getattr(gm, "_in_spec", None)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if in_spec is None or in_spec.num_leaves != len(placeholders):
        return None
    try:
        names = list(inspect.signature(gm.forward).parameters)
    except (TypeError, ValueError):
        return None
    # each leaf's path in the (args, kwargs) tree, in the order of the placeholders
    paths = [
        p
        for p, _ in pytree.tree_flatten_with_path(
            pytree.tree_unflatten(list(range(len(placeholders))), in_spec)
        )[0]
    ]
    values = _flat_example(args, kwargs, in_spec)
    model_device = module_device(model) or next(
        (v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu")
    )
    ranges = getattr(ep, "range_constraints", {}) or {}
    per_arg: dict[str, list[tuple[tuple, LeafSpec]]] = {}
    for path, node, example in zip(paths, placeholders, values):
        top, rest = path[0].idx, path[1:]
        first = rest[0]
        name = names[first.idx] if top == 0 else first.key
        if top == 0 and first.idx >= len(names):
            return None
        leaf_name = name + pytree.keystr(rest[1:])
        fake = node.meta.get("val")
        if isinstance(fake, torch.Tensor) and isinstance(example, torch.Tensor):
            dims = tuple(_dim(s, i, dynamic, ranges) for i, s in enumerate(fake.shape))
            spec = LeafSpec(leaf_name, example.dtype, dims, example.device, example.device == model_device)
        elif isinstance(example, _CONSTANTS) and not isinstance(example, torch.Tensor):
            spec = LeafSpec(leaf_name, value=example)
        else:
            return None
        per_arg.setdefault(name, []).append((rest[1:], spec))
    arg_specs = []
    bound = dict(zip(names, args)) | dict(kwargs)
    for name in names:
        if name not in per_arg:
            return None
        leaves = tuple(s for _, s in per_arg[name])
        nested = len(per_arg[name]) != 1 or per_arg[name][0][0] != ()
        arg_specs.append(ArgSpec(name, leaves, pytree.tree_flatten(bound[name])[1] if nested else None))
    return InputSpec(type(model).__name__, _bound_positions(arg_specs, model), model_device, dynamic)


def _flat_example(args: tuple, kwargs: dict, in_spec: pytree.TreeSpec) -> list:
    import torch.fx._pytree as fx_pytree

    return list(fx_pytree.tree_flatten_spec((args, kwargs), in_spec))


def _dim(size: Any, i: int, dynamic: bool, ranges: dict) -> DimSpec:
    expr = size.node.expr if isinstance(size, torch.SymInt) else None
    if expr is None or expr.is_number:
        # dims 0 and 1 were asked to be dynamic (capture's Dim.AUTO); a number there was pinned
        return DimSpec(size=int(expr if expr is not None else size), pinned=dynamic and i < 2)
    if not expr.is_symbol:  # a size derived from others (e.g. 2*s0): equal to that, checked by them
        return DimSpec()
    vr = ranges.get(expr)
    low = _integer(vr.lower) if vr is not None else None
    high = _integer(vr.upper) if vr is not None else None
    low = low if low is not None and low > 2 else 0  # export says 2 for its 0/1 specialization; 1 runs
    bound = " (the range torch.export recorded for it)" if high is not None else ""
    return DimSpec(symbol=str(expr), low=low or 0, high=high, bound=bound)


def _integer(x: Any) -> int | None:
    """A range end as an int; None for infinity (``int_oo``) or anything not a whole number."""
    return int(x) if getattr(x, "is_Integer", False) or isinstance(x, int) else None


def _bound_positions(args: list[ArgSpec], model: torch.nn.Module) -> list[ArgSpec]:
    """``args`` with the sequence dim (dim 1 of ``input_ids``, else of the first 2-D integer input,
    and every dim equal to it) bounded by the rows of the model's learned position table: past
    them the embedding lookup fails inside its kernel."""
    table = learned_positions(model)
    tensors = [leaf for a in args for leaf in a.leaves if leaf.dtype is not None]
    ids = next((t for t in tensors if t.name == "input_ids"), None) or next(
        (t for t in tensors if len(t.dims) == 2 and not t.dtype.is_floating_point and t.dtype != torch.bool),
        None,
    )
    if table is None or ids is None or len(ids.dims) < 2 or ids.dims[1].symbol is None:
        return args
    path, rows = table
    symbol = ids.dims[1].symbol
    why = f" (the {rows} positions of {type(model).__name__}'s position table {path}: a token past them has no position)"

    def bounded(leaf: LeafSpec) -> LeafSpec:
        if leaf.dtype is None or all(d.symbol != symbol for d in leaf.dims):
            return leaf
        dims = tuple(
            DimSpec(symbol=d.symbol, low=d.low, high=min(d.high or rows, rows), bound=why)
            if d.symbol == symbol
            else d
            for d in leaf.dims
        )
        return LeafSpec(leaf.name, leaf.dtype, dims, leaf.device, leaf.on_model_device)

    return [ArgSpec(a.name, tuple(bounded(leaf) for leaf in a.leaves), a.tree) for a in args]
