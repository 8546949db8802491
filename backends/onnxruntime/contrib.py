"""ORT's com.microsoft contrib ops as onnxscript ``Op`` objects, for the translations that emit
them (attention as ``MultiHeadAttention``, fused epilogues, ``MatMulNBits`` for int4 weights)."""

from __future__ import annotations

from typing import Any


class MsftOps:
    """ORT's com.microsoft contrib ops the backend emits, with hand-written schemas (onnx does not
    ship ORT's contrib schemas and the exporter needs one to build a node). Only the inputs,
    outputs and attributes tcomp uses are declared; ORT checks the node against its full schema."""

    def __init__(self) -> None:
        f32 = ["tensor(float)", "tensor(float16)"]
        self.MultiHeadAttention = contrib_op(
            "MultiHeadAttention",
            ["query", "key", "value", "bias?", "key_padding_mask?:M", "attention_bias?"],
            {"num_heads": "INT", "scale": "FLOAT"},
            {"T": f32, "M": ["tensor(int32)"]},
        )
        self.SkipLayerNormalization = contrib_op(
            "SkipLayerNormalization",
            ["input", "skip", "gamma", "beta?", "bias?"],
            {"epsilon": "FLOAT"},
            {"T": f32},
        )
        self.BiasGelu = contrib_op("BiasGelu", ["A", "B"], {}, {"T": f32})
        self.FastGelu = contrib_op("FastGelu", ["X", "bias?"], {}, {"T": f32})


def contrib_op(name: str, inputs: list[str], attrs: dict[str, str], types: dict[str, list[str]]) -> Any:
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
