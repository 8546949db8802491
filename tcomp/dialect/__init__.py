"""The tcomp dialect: canonical ops as ``torch.library`` custom ops (namespace ``tcomp``), one file
per op family. Each file holds, for its ops, the custom op with its reference implementation
(plain PyTorch, exact in float64 on the CPU), its fake kernel (shape propagation and export) and
its node predicate and its cost formula (FLOPs and bytes as sympy expressions of the shapes),
registered as an :class:`OpDef` (``define(...)`` below the op). Importing this package registers
every op (``torch.ops.tcomp.*``); :func:`op_def` finds an op's OpDef, :func:`dialect_ops` lists them.

Passes produce these ops; backends lower them (``@backend.implements(op, ...)`` in the kernel's
own file). Nothing else needs editing to add an op: every module of this package is imported
(discovered, no hand-kept list), so a new family file registers its ops by being there. The names
below are re-exported for convenience.
"""

import importlib
import pkgutil

from tcomp.dialect.attention import attention, attention_cost, attention_nodes, is_attention
from tcomp.dialect.base import OpDef, define, dialect_ops, op_def
from tcomp.dialect.fused import bias_gelu, bias_gelu_cost, skip_layer_norm, skip_layer_norm_cost
from tcomp.dialect.linear_attention import is_linear_attention, linear_attention, linear_attention_cost
from tcomp.dialect.qlinear import (
    fp8_linear,
    linear_fp8w,
    linear_int4w,
    linear_int8w,
    linear_w1,
    linear_w1a1,
    linear_w8a8,
    qlinear_cost,
    qweight_bytes,
)
from tcomp.dialect.rpe import (
    is_rpe_linear_attention,
    rpe_attention_cost,
    rpe_feature_chunk,
    rpe_linear_attention,
    rpe_weights,
    toeplitz_conv,
    toeplitz_spectrum,
)
from tcomp.dialect.token_merge import is_token_merge, merge_plan, merged_sizes, token_merge, token_merge_cost

__all__ = [
    "OpDef", "attention", "attention_cost", "attention_nodes", "bias_gelu", "bias_gelu_cost", "define",
    "dialect_ops", "fp8_linear", "is_attention", "is_linear_attention", "is_rpe_linear_attention",
    "is_token_merge", "linear_attention", "linear_attention_cost", "linear_fp8w", "linear_int4w", "linear_int8w",
    "linear_w1", "linear_w1a1", "linear_w8a8", "merge_plan", "merged_sizes", "op_def", "qlinear_cost",
    "qweight_bytes", "rpe_attention_cost", "rpe_feature_chunk", "rpe_linear_attention", "rpe_weights",
    "skip_layer_norm", "skip_layer_norm_cost", "toeplitz_conv", "toeplitz_spectrum", "token_merge",
    "token_merge_cost",
]  # fmt: skip

for _m in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
    importlib.import_module(_m.name)  # a family file registers its ops when imported
