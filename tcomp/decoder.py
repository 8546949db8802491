"""Capturing a decoder for generation: one step module over tcomp's KV cache, two graphs.

A decoder (a Hugging Face causal LM, or a plain module that speaks the cache protocol of
``tcomp.kv_cache``) is wrapped in :class:`DecoderStep`, whose ``forward(input_ids, position_ids,
cache_position, padding)`` runs the model on ``n`` new tokens at ``cache_position``, writes their keys
and values into the cache buffers it owns and returns the logits. ``torch.export`` captures it twice:

* **prefill**: ``n`` tokens, ``n`` dynamic in ``2 .. max_len``;
* **decode**: one token; every shape static (one CUDA graph per batch bucket).

``padding`` is (B, max_len), 1 for real tokens and 0 for left padding. Both graphs hold the cache as
buffers named ``tcomp_kv_{k,v}_{layer}`` (marked ``meta.KV_CACHE``) and write it with in-place
``index_copy_``; their cache-position placeholder is marked ``meta.CACHE_POSITION``.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.export import Dim

from tcomp import kv_cache, meta
from tcomp.capture import Captured, _describe_failure, _no_mha_fastpath
from tcomp.errors import CaptureError, InputError
from tcomp.verify import Reference, reference_model, rel_error

STEP_INPUTS = ("input_ids", "position_ids", "cache_position", "padding")


def is_decoder(model: torch.nn.Module) -> bool:
    """A Hugging Face model that says it can generate (not encoder-decoder): compiled for generation
    unless ``decoder=False``. Plain modules opt in with ``decoder=True`` (see :func:`speaks_cache`)."""
    config = getattr(model, "config", None)
    can = getattr(model, "can_generate", None)
    if not callable(can) or config is None:
        return False
    try:
        return bool(can()) and not getattr(config, "is_encoder_decoder", False)
    except Exception:  # noqa: BLE001 - a model whose can_generate fails is not one we drive
        return False


def speaks_cache(model: torch.nn.Module) -> bool:
    """Whether ``model`` can be compiled for generation: a Hugging Face decoder, or a module whose
    forward takes a KV cache (``past_key_values`` or ``cache``), ``cache_position`` and the
    ``attention_mask`` tcomp builds over the cache (``tcomp.kv_cache``)."""
    if is_decoder(model):
        return True
    params = _forward_params(model)
    return ("past_key_values" in params or "cache" in params) and {"cache_position", "attention_mask"} <= params


def _forward_params(model: torch.nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def is_hf(model: torch.nn.Module) -> bool:
    """A Hugging Face model (it has a ``config`` and ``can_generate``)."""
    return hasattr(model, "config") and hasattr(model, "can_generate")


@dataclass(frozen=True)
class MaskStyle:
    """How the model wants its attention mask: per layer type (``windows``: type -> sliding window
    or None), as one tensor or a dict keyed by layer type, bool or additive float."""

    windows: dict[str, int | None]
    as_dict: bool
    additive: torch.dtype | None

    @classmethod
    def of(cls, model: torch.nn.Module) -> MaskStyle:
        config = getattr(model, "config", None)
        if config is None or not is_hf(model):
            return cls({"full_attention": None}, False, None)
        window = getattr(config, "sliding_window", None)
        if getattr(config, "use_sliding_window", True) is False:
            window = None
        types = getattr(config, "layer_types", None)
        impl = getattr(config, "_attn_implementation", None) or "eager"
        if impl not in ("sdpa", "eager"):  # flash kernels take no 4-D mask, flex a BlockMask
            raise InputError(
                f"{type(model).__name__} runs attention with attn_implementation={impl!r}; tcomp's decoder graphs "
                "give attention a 4-D mask over the KV cache, which 'sdpa' and 'eager' read: load the model with "
                "attn_implementation='sdpa' (or set model.config._attn_implementation = 'sdpa'), or call "
                "tcomp.optimize(..., decoder=False)"
            )
        dtype = None if impl == "sdpa" else _model_dtype(model)  # bool masks for sdpa, additive for eager
        if types:
            unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
            if unknown:
                raise InputError(
                    f"{type(model).__name__} has attention layers of type {unknown}; tcomp's KV cache supports "
                    "'full_attention' and 'sliding_attention' layers. Call tcomp.optimize(..., decoder=False) to "
                    "optimize the forward pass without generation."
                )
            return cls({t: (window if t == "sliding_attention" else None) for t in sorted(set(types))}, True, dtype)
        return cls({"full_attention": window}, False, dtype)


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


class DecoderStep(torch.nn.Module):
    """One forward of ``model`` over ``n`` new tokens, reading and writing tcomp's KV cache."""

    def __init__(self, model: torch.nn.Module, batch: int, max_len: int, kv_format: str = "model") -> None:
        super().__init__()
        self.model = model
        self.batch, self.max_len = batch, max_len
        self.masks = MaskStyle.of(model)
        params = _forward_params(model)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._takes_positions = "position_ids" in params
        self._takes_cache_position = "cache_position" in params
        probe = kv_cache.make_probe(max_len)
        ids = torch.ones(batch, 1, dtype=torch.long, device=_device(model))
        try:
            with torch.no_grad(), _no_mha_fastpath():
                self._call(probe, ids, torch.zeros(batch, 1, dtype=torch.long, device=ids.device),
                           torch.zeros(1, dtype=torch.long, device=ids.device),
                           torch.ones(batch, max_len, dtype=torch.long, device=ids.device))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the user's forward, called the way tcomp will call it
            raise CaptureError(
                _describe_failure(model, exc) + f" (while running one token through it with tcomp's KV cache as "
                f"{self._cache_kw}, cache_position and a 4-D attention_mask; tcomp.optimize(..., decoder=False) "
                "optimizes the forward pass without generation)"
            ) from exc
        if not probe.layers:
            raise InputError(
                f"{type(model).__name__} did not write a KV cache: its attention never called "
                f"{self._cache_kw}.update(key, value, layer_idx). tcomp generates with models built on Hugging Face's "
                "attention interface or that take past_key_values/cache_position as tcomp.models.gpt does."
            )
        self.layers = probe.layers
        self.store = kv_cache.attach(self, probe.layers, batch, max_len, ids.device, kv_format)

    def _call(self, cache, input_ids, position_ids, cache_position, padding):
        cache.position = cache_position
        masks = kv_cache.attention_masks(
            cache_position, padding, windows=self.masks.windows, dtype=self.masks.additive
        )
        mask = masks if self.masks.as_dict else next(iter(masks.values()))
        kwargs = {self._cache_kw: cache, "attention_mask": mask}
        if self._takes_positions:
            kwargs["position_ids"] = position_ids
        if self._takes_cache_position:
            kwargs["cache_position"] = cache_position
        if is_hf(self.model):
            kwargs["use_cache"] = True
        try:
            out = self.model(input_ids, **kwargs)
        finally:
            cache.position = None  # never keep a traced tensor alive on the module
        if hasattr(out, "logits"):
            return out.logits
        if isinstance(out, (tuple, list)):
            return out[0]
        return out

    def forward(self, input_ids, position_ids, cache_position, padding):
        return self._call(self.store, input_ids, position_ids, cache_position, padding)


def _device(model: torch.nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def step_inputs(batch: int, n: int, start: int, max_len: int, ids: torch.Tensor | None, device) -> tuple:
    """Inputs of :class:`DecoderStep` for ``n`` tokens at positions ``start .. start+n-1``, no padding."""
    if ids is None:
        ids = torch.ones(batch, n, dtype=torch.long, device=device)
    pos = torch.arange(start, start + n, device=device)
    return (
        ids.to(device),
        pos[None, :].expand(batch, n).contiguous(),
        pos,
        torch.ones(batch, max_len, dtype=torch.long, device=device),
    )


def fit_ids(ids: torch.Tensor, batch: int, n: int) -> torch.Tensor:
    """``ids`` cut or extended to (batch, n): extra rows repeat row 0, extra columns the last one."""
    ids = ids[:batch, :n]
    if ids.shape[1] < n:
        ids = torch.cat([ids, ids[:, -1:].expand(-1, n - ids.shape[1])], dim=1)
    if ids.shape[0] < batch:
        ids = torch.cat([ids, ids[:1].expand(batch - ids.shape[0], -1)])
    return ids.contiguous()


@dataclass
class CapturedDecoder:
    """The step module and its two captured graphs."""

    step: DecoderStep
    prefill: Captured
    decode: Captured


def capture_decoder(
    model: torch.nn.Module, example_ids: torch.Tensor, *, batch: int, max_len: int, kv_format: str = "model"
) -> CapturedDecoder:
    """Capture the prefill and decode graphs of ``model`` (a private copy; the user's model is not
    touched) over a cache of ``batch`` rows and ``max_len`` slots in ``kv_format`` (kv_cache.FORMATS)."""
    work = copy.deepcopy(model).eval()
    step = DecoderStep(work, batch, max_len, kv_format)
    device = _device(work)
    n = max(2, min(example_ids.shape[1], max_len))
    ids = fit_ids(example_ids, batch, n)
    tokens = Dim("tokens", min=2, max=max_len)
    prefill_args = step_inputs(batch, n, 0, max_len, ids, device)
    dyn = ({1: tokens}, {1: tokens}, {0: tokens}, None)
    prefill = _export(step, prefill_args, dyn, model)
    decode_args = step_inputs(batch, 1, n, max_len, ids[:, -1:], device)
    decode = _export(step, decode_args, None, model)
    return CapturedDecoder(step, prefill, decode)


def capture_decode(
    model: torch.nn.Module, example_ids: torch.Tensor, *, batch: int, max_len: int, kv_format: str = "model"
) -> tuple[DecoderStep, Captured]:
    """The decode graph alone (one token a row) of ``model`` for ``batch`` rows: a batch bucket of a
    decoder captured for more rows (its cache buffers are later bound to the first rows of the
    decoder's cache, ``OptimizedDecoder``)."""
    work = copy.deepcopy(model).eval()
    step = DecoderStep(work, batch, max_len, kv_format)
    ids = fit_ids(example_ids, batch, 1)
    return step, _export(step, step_inputs(batch, 1, 1, max_len, ids, _device(work)), None, model)


def _export(step: DecoderStep, args: tuple, dynamic, model) -> Captured:
    # fresh tensors, not views: export guards on a view's ``_base`` (a one-row batch makes the
    # slices and expands here views), and the graph then fails on every real input, which has none
    args = tuple(a.clone() for a in args)
    try:
        with _no_mha_fastpath():
            ep = torch.export.export(step, args, strict=False, dynamic_shapes=dynamic)
    except Exception as exc:  # noqa: BLE001 - turned into a message that names the user's code
        raise CaptureError(_describe_failure(model, exc) + " (while capturing its decode step with tcomp's KV cache; "
                           "tcomp.optimize(..., decoder=False) optimizes the forward pass without generation)") from exc
    gm = ep.module()
    for node in list(gm.graph.nodes):  # torch.export's input guards: the step's inputs are tcomp's own
        if node.op == "call_module" and not node.users:
            gm.graph.erase_node(node)
    gm.recompile()
    mark(gm)
    dims = {"args[0]": {0: args[0].shape[0], 1: "dynamic" if dynamic else 1}}
    return Captured(gm=gm, exported=ep, example_args=args, example_kwargs={}, dims=dims)


def mark(gm: fx.GraphModule) -> None:
    """Mark the cache buffers (``meta.KV_CACHE``) and the cache-position placeholder of a step graph."""
    for node in gm.graph.nodes:
        if node.op == "get_attr" and kv_cache.is_buffer_name(node.target):
            kind, layer = node.target.split("_")[-2:]  # tcomp_kv_{kind}_{layer}
            node.meta[meta.KV_CACHE] = {"layer": int(layer), "kind": kind}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) >= 3:
        placeholders[STEP_INPUTS.index("cache_position")].meta[meta.CACHE_POSITION] = True
    if len(placeholders) == len(STEP_INPUTS):
        placeholders[STEP_INPUTS.index("padding")].meta[meta.STEP_PADDING] = True


# ---------------------------------------------------------------------- float64 references


def _restore(fn, state: dict[str, torch.Tensor]) -> None:
    """Copy a saved cache ``state`` (buffer name -> tensor) into the buffers of ``fn``."""
    for name, t in state.items():
        buf = fn.get_buffer(name)
        buf.copy_(t.to(device=buf.device, dtype=buf.dtype))


def _cache_state(step: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in step.named_buffers() if kv_cache.is_buffer_name(n)}


def build_references(step: DecoderStep, prefill_ids: list[torch.Tensor], decode_ids: torch.Tensor, *, seed: int):
    """Float64 references for the two graphs.

    Prefill: the given prompts (the example and fresh draws; one row left-padded when the batch has
    two rows or more). Decode: for each prompt, the cache the float64 model filled while reading it,
    then one new token; every candidate starts from that same cache (``StepReference.run``
    restores it), so the comparison is of one step, not of whatever the cache held before.
    """
    ref = reference_model(step)
    own = copy.deepcopy(step).eval()
    B, M = step.batch, step.max_len
    gen = torch.Generator().manual_seed(seed)
    pre_inputs, pre_out, dec_inputs, dec_out, states = [], [], [], [], []
    pre_own, dec_own = [], []
    with torch.no_grad():
        for i, ids in enumerate(prefill_ids):
            n = ids.shape[1]
            args = list(step_inputs(B, n, 0, M, ids, "cpu"))
            if i % 2 == 1 and B >= 2 and n >= 3:  # left padding on row 0
                pad = int(torch.randint(1, n - 1, (1,), generator=gen))
                mask = torch.ones(B, n, dtype=torch.long)
                mask[0, :pad] = 0
                args[1] = (mask.cumsum(-1) - 1).clamp(min=0)
                args[3] = torch.ones(B, M, dtype=torch.long)
                args[3][:, :n] = mask
            args = tuple(args)
            pre_inputs.append((args, {}))
            pre_out.append(ref(*args))
            pre_own.append(own(*_on(args, own)))
            states.append(_cache_state(ref))
            nxt = decode_ids[:, i % decode_ids.shape[1] : i % decode_ids.shape[1] + 1]
            dpos = args[1][:, -1:] + 1
            dargs = (nxt, dpos, torch.tensor([n]), args[3])
            dec_inputs.append((dargs, {}))
            dec_out.append(ref(*dargs))
            _restore(own, states[-1])
            dec_own.append(own(*_on(dargs, own)))
    dtype = _model_dtype(own.model)
    prefill = StepReference(pre_inputs, pre_out, dtype, max(rel_error(o, r) for o, r in zip(pre_own, pre_out)))
    decode = StepReference(dec_inputs, dec_out, dtype, max(rel_error(o, r) for o, r in zip(dec_own, dec_out)))
    decode.states = states
    decode.prefixes = [a for a, _ in pre_inputs]
    return prefill, decode


def _on(args: tuple, module: torch.nn.Module) -> tuple:
    dev = next(iter(module.buffers())).device
    return tuple(a.to(dev) for a in args)


class StepReference(Reference):
    """A Reference of a step graph: inputs move to the graph's device, and with ``states`` every
    run starts from the cache state saved for its input. A graph that keeps a recurrent state
    (``attention.linear`` on a decoder) has no cache to restore: it reads the prompt of its input
    (``prefixes``) one token at a time first, so the step is checked after the prefix as the
    graph itself summarised it -- the error generation sees."""

    states: list | None = None
    prefixes: list | None = None

    def run(self, fn):
        outs = []
        recurrent = kv_cache.has_state(fn)
        with torch.no_grad():
            for i, (a, k) in enumerate(self.inputs):
                if recurrent and self.prefixes is not None:
                    _replay(fn, _on(self.prefixes[i], fn))
                elif self.states is not None:
                    _restore(fn, self.states[i])
                outs.append(fn(*_on(a, fn), **k))
        return outs


def _replay(fn, prefix: tuple) -> None:
    """Run the one-token step graph ``fn`` over the tokens of the step inputs ``prefix`` in order
    (the first at its cache position starts a sequence)."""
    ids, pos, cpos, padding = prefix
    for t in range(ids.shape[1]):
        fn(ids[:, t : t + 1], pos[:, t : t + 1], cpos[t : t + 1], padding)
