"""The ONNX Runtime backend: the whole graph becomes one ONNX model run by an InferenceSession.

``lower`` exports the (canonicalized) GraphModule with the dynamo ONNX exporter, translating the
dialect op ``tcomp.attention`` into standard ONNX ops (MatMul / Softmax / Where, opset 18), then
replaces everything between the placeholders and the output node by one call
``run_onnx(key, model_bytes, *placeholders)`` plus ``getitem`` nodes. The placeholders and the
output node (with the pytree ``_in_spec`` / ``_out_spec`` codegen) are kept, so the lowered module
has the same call signature and output structure as before.

The ONNX bytes are stored on the GraphModule as a uint8 buffer (``_onnx_model``) and passed to the
runner, so a pickled or reloaded GraphModule recreates its session from them; sessions are cached
per process in ``_SESSIONS`` keyed by the sha256 of the bytes.

Each module of this package translates one op family (``attention``, ``qlinear``,
``token_merge``, ``rms_norm``, ``fused``; ``contrib`` holds the com.microsoft op schemas they
emit) and declares its translations with ``@ONNX.implements(op, check=...)`` on a factory
``make(fused) -> onnxscript function``; the backend imports them all
the first time it exports (``Backend.discover``) and builds the exporter's
``custom_translation_table`` from them. A ``check`` reason on any node keeps the whole graph eager.

With ``fused=True`` the backend emits ORT's com.microsoft contrib kernels where the graph has
them: ``tcomp.attention`` as ``MultiHeadAttention``, and, rewritten on the fx graph first by the
step ``fuse.onnxruntime.epilogues`` (``fused.py``), residual add + LayerNorm as
``SkipLayerNormalization`` and linear bias + GELU as ``BiasGelu`` (erf) / ``FastGelu`` (tanh) --
float32 sites only. Float32/float64 only; half precision and non-CPU inputs stay on the eager
graph (the lowering reports why and rewrites nothing).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
from functools import partial
from typing import Any

import torch
import torch.fx as fx

from tcomp.backend import Backend, register_backend
from tcomp.contract import FP_EQUIVALENT, PassResult
from tcomp.graph import val
from tcomp.registry import Pass
from tcomp.targets import Target, get_target

_SESSIONS: dict[str, Any] = {}  # sha256 of the ONNX bytes -> onnxruntime.InferenceSession
EXAMPLE_INPUTS_ATTR = "_tcomp_example_inputs"  # optional flat tuple of real tensors on the gm
ONNX_BUFFER = "_onnx_model"

SUPPORTED_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- runtime


def _session(key: str, model: Any) -> Any:
    sess = _SESSIONS.get(key)
    if sess is None:
        import onnxruntime as ort

        data = model.numpy().tobytes() if isinstance(model, torch.Tensor) else bytes(model)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # DequantizeLinear + MatMul (tcomp.linear_int8w) fuses into MatMulNBits: keep float compute
        # (ORT's default, 4, quantizes the activations to int8 -- another function; qlinear.py)
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        _SESSIONS[key] = sess
    return sess


@torch.fx.wrap
def run_onnx(key: str, model: Any, *inputs: torch.Tensor) -> tuple:
    """Run the cached session ``key`` (created from ``model``, the ONNX bytes, when missing)."""
    sess = _session(key, model)
    names = [i.name for i in sess.get_inputs()]
    feed = {}
    for name, x in zip(_input_order(sess, key), inputs):
        if name is None or name not in names:
            continue
        feed[name] = x.detach().cpu().contiguous().numpy() if isinstance(x, torch.Tensor) else x
    outs = sess.run(None, feed)
    return tuple(torch.from_numpy(o) for o in outs)


_INPUT_ORDER: dict[str, list] = {}


def _input_order(sess: Any, key: str) -> list:
    """Which ONNX input each placeholder feeds (None for placeholders the export dropped)."""
    order = _INPUT_ORDER.get(key)
    if order is None:
        meta = sess.get_modelmeta().custom_metadata_map
        order = (
            [n or None for n in meta.get("tcomp_inputs", "").split(",")]
            if "tcomp_inputs" in meta
            else [i.name for i in sess.get_inputs()]
        )
        _INPUT_ORDER[key] = order
    return order


# --------------------------------------------------------------------------- lowering


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    package = "tcomp.backends.onnxruntime"

    def __init__(self, fused: bool = False) -> None:
        super().__init__()
        # com.microsoft contrib ops: MultiHeadAttention instead of standard ops, and the fused
        # epilogues SkipLayerNormalization and BiasGelu/FastGelu (fused.py)
        self.fused = fused

    def available(self) -> str | None:
        for mod in ("onnxruntime", "onnxscript", "onnx"):
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not installed (pip install onnxruntime onnxscript onnx)"
        return None

    def steps(self, target: Target | str) -> list[Pass]:
        """``fuse.onnxruntime.epilogues`` (with ``fused``), then ``lower.onnxruntime``."""
        from tcomp.backends.onnxruntime.fused import fuse_step

        fuse = Pass(
            "fuse.onnxruntime.epilogues",
            fuse_step,
            FP_EQUIVALENT,
            description="linear bias + GELU and residual add + LayerNorm to the dialect ops that "
            "become com.microsoft BiasGelu/FastGelu and SkipLayerNormalization (float32 sites)",
        )
        lower = Pass(
            "lower.onnxruntime",
            partial(self.lower, target=get_target(target).name),
            FP_EQUIVALENT,
            description="the whole graph to one ONNX model run by an onnxruntime InferenceSession",
        )
        return [fuse, lower] if self.fused else [lower]

    def translations(self, fused: bool | None = None) -> dict[Any, Any]:
        """The exporter's ``custom_translation_table``: each declared op's onnxscript function
        (``fused``: contrib-op variants; None: this backend's option)."""
        fused = self.fused if fused is None else fused
        return {op: impl.fn(fused=fused) for op, impl in self.impls.items()}

    def lower(self, gm: fx.GraphModule, target: Target | str) -> PassResult:
        """Export the whole graph to ONNX and run it with onnxruntime (a graph with any node the
        translations refuse stays eager, with the reason in the notes)."""
        get_target(target)  # the CPU provider runs whatever the target; a bad name still fails here
        result = PassResult(gm)
        reason = self.available() or self.unsupported(gm)
        if reason:
            result.notes.append(f"whole graph stays eager ({reason})")
            return result
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        out_node = next(n for n in gm.graph.nodes if n.op == "output")
        onnx_bytes, input_names = export_onnx(gm, fused=self.fused, translations=self.translations())
        key = hashlib.sha256(onnx_bytes).hexdigest()
        _session(key, onnx_bytes)
        attn = sum(
            1
            for n in gm.graph.nodes
            if n.op == "call_function" and n.target is torch.ops.tcomp.attention.default
        )

        flat_out = out_node.args[0]
        leaves, spec = torch.utils._pytree.tree_flatten(flat_out)
        gm.register_buffer(
            ONNX_BUFFER, torch.frombuffer(bytearray(onnx_bytes), dtype=torch.uint8), persistent=True
        )
        with gm.graph.inserting_before(out_node):
            model_node = gm.graph.get_attr(ONNX_BUFFER)
            call = gm.graph.call_function(run_onnx, (key, model_node, *placeholders))
            new_leaves = []
            tensor_leaves = [x for x in leaves if isinstance(x, fx.Node)]
            for i, _ in enumerate(tensor_leaves):
                g = gm.graph.call_function(_getitem, (call, i))
                g.meta["val"] = tensor_leaves[i].meta.get("val")
                new_leaves.append(g)
        it = iter(new_leaves)
        rebuilt = [next(it) if isinstance(x, fx.Node) else x for x in leaves]
        out_node.args = (torch.utils._pytree.tree_unflatten(rebuilt, spec),)
        for n in reversed(list(gm.graph.nodes)):
            if n.op in ("placeholder", "output") or n is model_node or n is call or n in new_leaves:
                continue
            gm.graph.erase_node(n)
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
        _INPUT_ORDER[key] = input_names
        result.rewrites = 1
        result.notes.append(
            f"whole graph exported to ONNX ({len(onnx_bytes) / 1e6:.1f} MB, {attn} tcomp.attention sites "
            + ("as com.microsoft.MultiHeadAttention" if self.fused else "as MatMul/Softmax/Where")
            + ") and run by an onnxruntime InferenceSession (ORT_ENABLE_ALL)"
        )
        return result

    def unsupported(self, gm: fx.GraphModule) -> str | None:
        """Why ``gm`` cannot run on ONNX Runtime's CPU provider (None: it can): an input's device
        or dtype, or the first node a translation's ``check`` refuses."""
        for n in gm.graph.nodes:
            if n.op != "placeholder":
                continue
            v = val(n)
            if isinstance(v, torch.Tensor):
                if v.device.type != "cpu":
                    return (
                        f"input {n.name} is on {v.device.type}: the backend runs ONNX Runtime's CPU provider"
                    )
                if v.is_floating_point() and v.dtype not in SUPPORTED_DTYPES:
                    return f"input {n.name} has dtype {v.dtype} (supported: float32, float64)"
        impls = self.impls
        for n in gm.graph.nodes:
            impl = impls.get(n.target) if n.op == "call_function" else None
            if impl is not None and impl.check is not None and (reason := impl.check(n)):
                return f"{n.name}: {reason}"
        return None


def _getitem(t: tuple, i: int) -> Any:
    return t[i]


def _hint(d: Any) -> int:
    if isinstance(d, int):
        return d
    try:
        return int(d.node.hint)
    except Exception:  # noqa: BLE001
        return 4


def example_tensors(gm: fx.GraphModule) -> tuple:
    """Real tensors for the placeholders: ``gm._tcomp_example_inputs`` / ``gm.meta[...]`` when set,
    else random ones matching the fake values (ints: small positive values; bools: True)."""
    given = getattr(gm, EXAMPLE_INPUTS_ATTR, None) or getattr(gm, "meta", {}).get(EXAMPLE_INPUTS_ATTR)
    if given is not None:
        return tuple(given)
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        v = val(n)
        if not isinstance(v, torch.Tensor):
            out.append(v)
            continue
        shape = tuple(max(_hint(d), 2) if not isinstance(d, int) else d for d in v.shape)
        if v.dtype == torch.bool:
            out.append(torch.ones(shape, dtype=torch.bool))
        elif v.is_floating_point():
            out.append(torch.randn(shape, generator=gen, dtype=torch.float32).to(v.dtype))
        else:
            out.append(torch.randint(1, 4, shape, generator=gen, dtype=v.dtype))
    return tuple(out)


def dynamic_shapes(gm: fx.GraphModule) -> tuple:
    """One ``{dim: Dim}`` per placeholder, dims sharing a symbol sharing a Dim."""
    from torch.export import Dim

    dims: dict[str, Any] = {}
    out = []
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        v = val(n)
        spec = {}
        if isinstance(v, torch.Tensor):
            for i, d in enumerate(v.shape):
                if not isinstance(d, int):
                    name = str(d)
                    if name not in dims:
                        dims[name] = Dim(f"d_{''.join(c if c.isalnum() else '_' for c in name)}", min=1)
                    spec[i] = dims[name]
        out.append(spec or None)
    return tuple(out)


def export_onnx(
    gm: fx.GraphModule,
    *,
    optimize: bool = True,
    fused: bool = False,
    translations: dict[Any, Any] | None = None,
) -> tuple[bytes, list]:
    """ONNX bytes of ``gm`` (flat inputs, flat tuple output) and the ONNX input name per placeholder.
    ``translations``: the custom translation table (default: the registered backend's, for ``fused``)."""
    import onnx

    flat = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    flat.graph.set_codegen(fx.graph.CodeGen())
    out_node = next(n for n in flat.graph.nodes if n.op == "output")
    leaves = [x for x in torch.utils._pytree.tree_leaves(out_node.args[0]) if isinstance(x, fx.Node)]
    out_node.args = (tuple(leaves),)
    flat.recompile()
    flat.eval()
    args = example_tensors(gm)
    ph_names = [n.name for n in flat.graph.nodes if n.op == "placeholder"]
    program = torch.onnx.export(
        flat,
        args,
        dynamo=True,
        custom_translation_table=translations if translations is not None else ONNX.translations(fused),
        dynamic_shapes=dynamic_shapes(gm),
        input_names=ph_names,
        optimize=optimize,
        verbose=False,
    )
    model = program.model_proto
    onnx_inputs = {i.name for i in model.graph.input}
    names = [n if n in onnx_inputs else "" for n in ph_names]
    if not any(names):  # names not kept: positional
        names = [i.name for i in model.graph.input]
    entry = model.metadata_props.add()
    entry.key, entry.value = "tcomp_inputs", ",".join(names)
    buf = io.BytesIO()
    onnx.save_model(model, buf)
    return buf.getvalue(), [n or None for n in names]


ONNX = register_backend(OnnxRuntimeBackend())
