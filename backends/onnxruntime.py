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

With ``fused=True`` the backend emits ORT's com.microsoft contrib kernels where the graph has
them: ``tcomp.attention`` as ``MultiHeadAttention``, and, rewritten on the fx graph first
(``onnxruntime_fusions.py``), residual add + LayerNorm as ``SkipLayerNormalization`` and linear
bias + GELU as ``BiasGelu`` (erf) / ``FastGelu`` (tanh) -- float32 sites only.

Attention translation (trace-only onnxscript function, specialised in Python on the call's
arguments): bias None or additive float, mask None or bool (True = keep), causal (top-left),
GQA/MQA (k/v heads expanded), any static scale. Fully-masked rows give zeros (NaN rows from
Softmax over all ``-inf`` are zeroed), as the reference does. Float32/float64 only; half precision
and non-CPU inputs stay on the eager graph (the lowering reports why and rewrites nothing).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
from typing import Any

import torch
import torch.fx as fx

from tcomp.backend import Backend, register_backend
from tcomp.backends.onnxruntime_fusions import fuse_epilogues
from tcomp.graph import val
from tcomp.pipeline import PassResult

_SESSIONS: dict[str, Any] = {}  # sha256 of the ONNX bytes -> onnxruntime.InferenceSession
EXAMPLE_INPUTS_ATTR = "_tcomp_example_inputs"  # optional flat tuple of real tensors on the gm
ONNX_BUFFER = "_onnx_model"

_SUPPORTED_DTYPES = (torch.float32, torch.float64)
# further dialect ops' ONNX translations: {op overload: factory of the onnxscript function}
TRANSLATIONS: dict[Any, Any] = {}


# --------------------------------------------------------------------------- runtime


def _session(key: str, model: Any) -> Any:
    sess = _SESSIONS.get(key)
    if sess is None:
        import onnxruntime as ort

        data = model.numpy().tobytes() if isinstance(model, torch.Tensor) else bytes(model)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # DequantizeLinear + MatMul (tcomp.linear_int8w) fuses into MatMulNBits: keep float compute
        # (ORT's default, 4, quantizes the activations to int8 -- another function; onnx_quant.py)
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


# --------------------------------------------------------------------------- attention in ONNX


def _attention_onnx(fused: bool = False):
    """The translation function for ``tcomp.attention`` (built lazily: onnxscript is optional).
    ``fused``: emit ORT's com.microsoft MultiHeadAttention contrib op (float32, CPU) instead of
    MatMul/Softmax/Where."""
    from onnxscript import BOOL, FLOAT
    from onnxscript import opset18 as op

    msft = _MsftOps() if fused else None

    def tcomp_attention(
        q: FLOAT,
        k: FLOAT,
        v: FLOAT,
        bias: FLOAT | None = None,
        mask: BOOL | None = None,
        scale: float = 1.0,
        causal: bool = False,
    ) -> FLOAT:
        h, hk = q.shape[1], k.shape[1]
        d, dv = q.shape[3], v.shape[3]
        if isinstance(h, int) and isinstance(hk, int) and h != hk:  # GQA / MQA: expand k/v heads
            k, v = _expand_heads(op, k, h, hk), _expand_heads(op, v, h, hk)
        if fused and all(isinstance(x, int) for x in (h, d, dv)):
            return _mha(op, msft, q, k, v, bias, mask, float(scale), bool(causal), h, d, dv)
        kt = op.Transpose(k, perm=[0, 1, 3, 2])
        scores = op.Mul(op.MatMul(q, kt), op.CastLike(op.Constant(value_float=float(scale)), q))
        if bias is not None:
            scores = op.Add(scores, op.CastLike(bias, scores))
        keep = mask
        if causal:
            shp = op.Shape(scores)
            n = op.Squeeze(op.Slice(shp, [-2], [-1]), [0])
            m = op.Squeeze(op.Slice(shp, [-1], [2**62]), [0])
            zero = op.Constant(value_int=0)
            one = op.Constant(value_int=1)
            rows = op.Unsqueeze(op.Range(zero, n, one), [1])
            cols = op.Unsqueeze(op.Range(zero, m, one), [0])
            tri = op.LessOrEqual(cols, rows)  # (N, M): key j <= query i
            keep = tri if keep is None else op.And(keep, tri)
        if keep is not None:
            neg_inf = op.CastLike(op.Constant(value_float=float("-inf")), scores)
            scores = op.Where(keep, scores, neg_inf)
        p = op.Softmax(scores, axis=-1)
        if keep is not None or bias is not None:  # rows with every key masked: NaN -> zeros
            p = op.Where(op.IsNaN(p), op.CastLike(op.Constant(value_float=0.0), p), p)
        return op.MatMul(p, v)

    # this module uses string annotations; the exporter infers the signature from real types
    tcomp_attention.__annotations__ = {
        "q": FLOAT,
        "k": FLOAT,
        "v": FLOAT,
        "bias": FLOAT | None,
        "mask": BOOL | None,
        "scale": float,
        "causal": bool,
        "return": FLOAT,
    }
    return tcomp_attention


class _MsftOps:
    """ORT's com.microsoft contrib ops the backend emits, with hand-written schemas (onnx does not
    ship ORT's contrib schemas and the exporter needs one to build a node). Only the inputs,
    outputs and attributes tcomp uses are declared; ORT checks the node against its full schema."""

    def __init__(self) -> None:
        f32 = ["tensor(float)", "tensor(float16)"]
        self.MultiHeadAttention = _contrib_op(
            "MultiHeadAttention",
            ["query", "key", "value", "bias?", "key_padding_mask?:M", "attention_bias?"],
            {"num_heads": "INT", "scale": "FLOAT"},
            {"T": f32, "M": ["tensor(int32)"]},
        )
        self.SkipLayerNormalization = _contrib_op(
            "SkipLayerNormalization",
            ["input", "skip", "gamma", "beta?", "bias?"],
            {"epsilon": "FLOAT"},
            {"T": f32},
        )
        self.BiasGelu = _contrib_op("BiasGelu", ["A", "B"], {}, {"T": f32})
        self.FastGelu = _contrib_op("FastGelu", ["X", "bias?"], {}, {"T": f32})


def _contrib_op(name: str, inputs: list[str], attrs: dict[str, str], types: dict[str, list[str]]) -> Any:
    """An onnxscript ``Op`` of the com.microsoft domain. ``inputs``: ``"name"``, ``"name?"``
    (optional), ``"name:M"`` (type constraint M instead of T); one output "output" of type T."""
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    P, Opt = OpSchema.FormalParameter, OpSchema.FormalParameterOption
    params = []
    for spec in inputs:
        spec, _, tc = spec.partition(":")
        optional = spec.endswith("?")
        params.append(P(spec.rstrip("?"), tc or "T", param_option=Opt.Optional if optional else Opt.Single))
    schema = OpSchema(
        name,
        "com.microsoft",
        1,
        inputs=params,
        outputs=[P("output", "T")],
        type_constraints=[(k, v, "") for k, v in types.items()],
        attributes=[OpSchema.Attribute(a, getattr(OpSchema.AttrType, t), "") for a, t in attrs.items()],
    )
    return Op(Opset("com.microsoft", 1), name, schema)


def _epilogue_onnx() -> dict:
    """Translations of the fused-epilogue dialect ops (``backends/onnxruntime_fusions.py``) into
    their com.microsoft kernels."""
    from onnxscript import FLOAT

    msft = _MsftOps()

    def tcomp_bias_gelu(x: FLOAT, bias: FLOAT, approximate: str = "none") -> FLOAT:
        if approximate == "none":
            return msft.BiasGelu(x, bias)  # exact erf GELU
        return msft.FastGelu(x, bias)  # the tanh formula, as aten.gelu(approximate="tanh")

    def tcomp_skip_layer_norm(
        x: FLOAT,
        skip: FLOAT,
        weight: FLOAT,
        bias: FLOAT | None = None,
        residual_bias: FLOAT | None = None,
        eps: float = 1e-5,
    ) -> FLOAT:
        return msft.SkipLayerNormalization(x, skip, weight, bias, residual_bias, epsilon=float(eps))

    tcomp_bias_gelu.__annotations__ = {"x": FLOAT, "bias": FLOAT, "approximate": str, "return": FLOAT}
    tcomp_skip_layer_norm.__annotations__ = {
        "x": FLOAT,
        "skip": FLOAT,
        "weight": FLOAT,
        "bias": FLOAT | None,
        "residual_bias": FLOAT | None,
        "eps": float,
        "return": FLOAT,
    }
    return {
        torch.ops.tcomp.bias_gelu.default: tcomp_bias_gelu,
        torch.ops.tcomp.skip_layer_norm.default: tcomp_skip_layer_norm,
    }


def _mha(op, msft, q, k, v, bias, mask, scale, causal, h, d, dv):
    """tcomp.attention through com.microsoft.MultiHeadAttention: (B, H, N, D) -> (B, N, H*D) in,
    bias and masks folded into one additive ``attention_bias`` (B|1, H|1, N, M) with -inf where
    masked, rows with every key masked (NaN) set to zeros afterwards."""

    def to_bsd(x, width):
        return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, h * width]))

    keep = mask
    n = op.Slice(op.Shape(q), [2], [3])
    m = op.Slice(op.Shape(k), [2], [3])
    if causal:
        zero, one = op.Constant(value_int=0), op.Constant(value_int=1)
        rows = op.Unsqueeze(op.Range(zero, op.Squeeze(n, [0]), one), [1])
        cols = op.Unsqueeze(op.Range(zero, op.Squeeze(m, [0]), one), [0])
        tri = op.LessOrEqual(cols, rows)
        keep = tri if keep is None else op.And(keep, tri)
    ab = None
    if bias is not None:
        ab = op.CastLike(bias, q)
    if keep is not None:
        zero_f = op.CastLike(op.Constant(value_float=0.0), q)
        neg_inf = op.CastLike(op.Constant(value_float=float("-inf")), q)
        ab = op.Where(keep, zero_f if ab is None else ab, neg_inf)
    inputs = [to_bsd(q, d), to_bsd(k, d), to_bsd(v, dv)]
    if ab is not None:
        full = op.Concat(op.Constant(value_ints=[1, 1]), n, m, axis=0)
        ab = op.Expand(ab, full)
        inputs += [None, None, ab]  # bias (QKV projection bias), key_padding_mask, attention_bias
    out = msft.MultiHeadAttention(*inputs, num_heads=h, scale=scale)
    if keep is not None or bias is not None:
        out = op.Where(op.IsNaN(out), op.CastLike(op.Constant(value_float=0.0), out), out)
    out = op.Reshape(out, op.Constant(value_ints=[0, 0, h, dv]))
    return op.Transpose(out, perm=[0, 2, 1, 3])


def _expand_heads(op: Any, x: Any, h: int, hk: int) -> Any:
    """(B, Hk, M, D) -> (B, H, M, D), key/value head ``j`` repeated ``h // hk`` times in place."""
    rep = h // hk
    x5 = op.Unsqueeze(x, [2])  # (B, Hk, 1, M, D)
    shp = op.Shape(x)
    target = op.Concat(
        op.Slice(shp, [0], [2]), op.Constant(value_ints=[rep]), op.Slice(shp, [2], [4]), axis=0
    )
    x5 = op.Expand(x5, target)
    new = op.Concat(op.Slice(shp, [0], [1]), op.Constant(value_ints=[h]), op.Slice(shp, [2], [4]), axis=0)
    return op.Reshape(x5, new)


# --------------------------------------------------------------------------- lowering


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, fused: bool = False) -> None:
        super().__init__()
        # com.microsoft contrib ops: MultiHeadAttention instead of standard ops, and the fused
        # epilogues SkipLayerNormalization and BiasGelu/FastGelu (backends/onnxruntime_fusions.py)
        self.fused = fused
        import tcomp.dialect  # noqa: F401 - the dialect must be registered to key on it

    def available(self) -> str | None:
        for mod in ("onnxruntime", "onnxscript", "onnx"):
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not installed (pip install onnxruntime onnxscript onnx)"
        return None

    def lower(self, gm: fx.GraphModule, target: str = "") -> PassResult:
        result = PassResult(gm)
        reason = self.available() or _unsupported(gm)
        if reason:
            result.notes.append(f"whole graph stays eager ({reason})")
            return result
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        out_node = next(n for n in gm.graph.nodes if n.op == "output")
        fusions = fuse_epilogues(gm) if self.fused else {}
        onnx_bytes, input_names = export_onnx(gm, fused=self.fused)
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
        if fusions:
            result.notes.append(
                f"{fusions['skip_layer_norm']} residual add + LayerNorm as com.microsoft.SkipLayerNormalization, "
                f"{fusions['bias_gelu']} linear bias + GELU as com.microsoft.BiasGelu/FastGelu"
            )
        return result


def _getitem(t: tuple, i: int) -> Any:
    return t[i]


def _unsupported(gm: fx.GraphModule) -> str | None:
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        v = val(n)
        if isinstance(v, torch.Tensor):
            if v.device.type != "cpu":
                return f"input {n.name} is on {v.device.type}: the backend runs ONNX Runtime's CPU provider"
            if v.is_floating_point() and v.dtype not in _SUPPORTED_DTYPES:
                return f"input {n.name} has dtype {v.dtype} (supported: float32, float64)"
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is torch.ops.tcomp.attention.default:
            q = val(n.args[0])
            if q is None or q.dim() != 4:
                return f"{n.name}: needs 4-D q/k/v with known shapes"
            if q.dtype not in _SUPPORTED_DTYPES:
                return f"{n.name}: attention dtype {q.dtype} (supported: float32, float64)"
    return None


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


def export_onnx(gm: fx.GraphModule, *, optimize: bool = True, fused: bool = False) -> tuple[bytes, list]:
    """ONNX bytes of ``gm`` (flat inputs, flat tuple output) and the ONNX input name per placeholder."""
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
        custom_translation_table={
            torch.ops.tcomp.attention.default: _attention_onnx(fused),
            **{o: make() for o, make in TRANSLATIONS.items()},
            **_epilogue_onnx(),
        },
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


register_backend(OnnxRuntimeBackend())

import tcomp.backends.onnx_quant  # noqa: E402,F401 - registers the quantized linears' translations
from tcomp.backends import onnx_token_merge  # noqa: E402,F401 - registers tcomp.token_merge's translation
